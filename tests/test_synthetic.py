"""The synthetic release: layouts, determinism, phantom realism, and the invariants of the real CSVs."""

from __future__ import annotations

import csv
import gzip
import io
import re
import tarfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radgenome_hf import names
from radgenome_hf.ontology import get_ontology, normalize_name
from radgenome_hf.testing.synthetic import (
    REALISTIC_SHAPE,
    REALISTIC_SPACING,
    SyntheticConfig,
    make_phantom,
    write_release,
)
from radgenome_hf.io.tables import (
    CTRATE_LABEL_HEADER,
    CTRATE_LABELS,
    CTRATE_METADATA_HEADER,
    CTRATE_REPORT_HEADER,
    RADGENOME_HEADERS,
)

SMALL = dict(n_train_patients=2, n_valid_patients=1, shape=(32, 32, 24))


def _csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="", encoding="utf-8") as f:
        raw = f.read()
    assert "\r" not in raw, f"{path}: CRLF line endings"
    rows = list(csv.reader(io.StringIO(raw)))
    return rows[0], rows[1:]


def _rg_csv(rel, split: str, table: str) -> list[list[str]]:
    header, rows = _csv(rel.radgenome_root / "dataset" / "radgenome_files" / names.radgenome_csv_name(split, table))
    assert tuple(header) == RADGENOME_HEADERS[table]
    return rows


def _load(path_or_bytes) -> nib.Nifti1Image:
    if isinstance(path_or_bytes, (bytes, bytearray)):
        return nib.Nifti1Image.from_bytes(gzip.decompress(path_or_bytes))
    return nib.load(str(path_or_bytes))


def _archive_members(rel, split: str, kind: str) -> dict[str, bytes]:
    ds = rel.radgenome_root / "dataset"
    if split == "train" and kind == "anatomy":
        parts = sorted(ds.glob("train_anatomy_mask_a?"))
        blob = b"".join(p.read_bytes() for p in parts)
    else:
        blob = (ds / f"{split}_{kind}_mask.tar.gz").read_bytes()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(blob), mode="r:gz") as tf:
        for m in tf:
            if m.isfile():
                out[m.name] = tf.extractfile(m).read()
    return out


@pytest.fixture(scope="module")
def both_release(tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("synth_both"), SyntheticConfig(**SMALL, mask_layout="both"),
                         progress=False)


@pytest.fixture(scope="module")
def masks_of(synthetic_release):
    """volume stem -> (kind -> {normalised name: bool array}), read from the archives."""
    rel = synthetic_release
    out: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    affines: dict[str, list[np.ndarray]] = {}
    for split in ("train", "valid"):
        for kind in ("region", "anatomy"):
            for member, data in _archive_members(rel, split, kind).items():
                parsed = names.parse_mask_member(member)
                assert parsed is not None, member
                vn, k, name = parsed
                img = _load(data)
                out.setdefault(vn.stem, {}).setdefault(k, {})[normalize_name(name)] = np.asanyarray(img.dataobj) > 0
                affines.setdefault(vn.stem, []).append(img.affine)
    return out, affines


# ------------------------------------------------------------------------------------------------------------
def test_default_release_shape_and_repr(synthetic_release):
    rel = synthetic_release
    assert len(rel.volumes) >= 8 and len(rel.ctrate_volumes) > len(rel.volumes)
    stems = [names.VolumeName.parse(v) for v in rel.ctrate_volumes]
    assert any(v.reconstruction >= 10 for v in stems), "a multi-digit reconstruction id must exist"
    assert any(v.reconstruction == 2 for v in stems)
    assert any(v.scan == "b" for v in stems)
    assert "train_2_a_11" in rel.volumes  # RadGenome keeps the multi-digit reconstruction
    # RadGenome keeps one reconstruction per scan
    scans = Counter(names.VolumeName.parse(v).scan_id for v in rel.volumes)
    assert set(scans.values()) == {1}
    r = repr(rel)
    assert "radgenome_volumes=" in r and "ctrate_volumes=" in r and str(rel.root) in r
    assert rel.ground_truth_path.is_file()


def test_layout_every_path_from_names(synthetic_release):
    rel = synthetic_release
    gt = rel.ground_truth
    expected = {"ground_truth.json"}
    for stem, v in gt["volumes"].items():
        expected.add("CT-RATE/" + names.ctrate_volume_path(stem))
        expected.add("CT-RATE/" + names.ctrate_volume_path(stem, fixed=True))
        if v["in_radgenome"]:
            expected.add("RadGenome-ChestCT/" + names.radgenome_volume_path(stem))
    for split in ("train", "valid"):
        for table in RADGENOME_HEADERS:
            expected.add(f"RadGenome-ChestCT/dataset/radgenome_files/{names.radgenome_csv_name(split, table)}")
        rs = names.CTRATE_REPORT_SPLIT[split]
        expected |= {f"CT-RATE/dataset/radiology_text_reports/{rs}_reports.csv",
                     f"CT-RATE/dataset/metadata/{rs}_metadata.csv",
                     f"CT-RATE/dataset/multi_abnormality_labels/{names.CTRATE_LABEL_SPLIT[split]}_predicted_labels.csv"}
    expected |= {"RadGenome-ChestCT/" + a for a in gt["mask_archives"]}
    found = {p.relative_to(rel.root).as_posix() for p in rel.root.rglob("*") if p.is_file()}
    assert found == expected
    assert "RadGenome-ChestCT/dataset/train_preprocessed/train_1/train_1a/train_1_a_1.nii.gz" in found
    assert "CT-RATE/dataset/train/train_1/train_1_a/train_1_a_1.nii.gz" in found
    assert {"RadGenome-ChestCT/dataset/train_anatomy_mask_aa", "RadGenome-ChestCT/dataset/train_anatomy_mask_ab",
            "RadGenome-ChestCT/dataset/train_region_mask.tar.gz",
            "RadGenome-ChestCT/dataset/valid_anatomy_mask.tar.gz",
            "RadGenome-ChestCT/dataset/valid_region_mask.tar.gz"} <= found


def test_split_parts_and_archives_match_folders(both_release):
    rel = both_release
    ds = rel.radgenome_root / "dataset"
    parts = sorted(ds.glob("train_anatomy_mask_a?"))
    assert [p.name for p in parts][:2] == ["train_anatomy_mask_aa", "train_anatomy_mask_ab"] and len(parts) >= 2
    heads = [p.read_bytes()[:2] for p in parts]
    assert heads[0] == b"\x1f\x8b" and all(h != b"\x1f\x8b" for h in heads[1:])
    with pytest.raises((OSError, tarfile.TarError, EOFError)):
        with tarfile.open(parts[1], "r:gz") as tf:
            tf.getmembers()
    folder_files = {p.relative_to(ds).as_posix(): p.read_bytes()
                    for p in ds.glob("*_mask/seg_*/*.nii.gz")}
    archived: dict[str, bytes] = {}
    for split in ("train", "valid"):
        for kind in ("region", "anatomy"):
            archived.update(_archive_members(rel, split, kind))
    assert archived.keys() == folder_files.keys()
    assert all(archived[k] == folder_files[k] for k in archived)
    # member and folder names are the names.py layout
    for member in archived:
        vn, kind, name = names.parse_mask_member(member)
        assert "dataset/" + member == names.mask_path(vn, kind, name)
    # SAT casing of vertebrae, lower case elsewhere
    assert any(re.search(r"thoracic vertebrae 5 \(T5\)\.nii\.gz$", m) for m in archived)
    assert any(m.endswith("/lung nodule.nii.gz") for m in archived)


def test_hu_plausibility_and_masks_on_grid(synthetic_release, masks_of):
    rel = synthetic_release
    masks, affines = masks_of
    assert set(masks) == set(rel.volumes)
    for stem in rel.volumes:
        img = _load(rel.radgenome_root / names.radgenome_volume_path(stem))
        assert img.get_data_dtype() == np.int16
        assert nib.aff2axcodes(img.affine) == ("L", "P", "S")
        ct = np.asanyarray(img.dataobj)
        for a in affines[stem]:
            np.testing.assert_allclose(a, img.affine, atol=1e-4)
        for kind in ("region", "anatomy"):
            for name, m in masks[stem][kind].items():
                assert m.shape == ct.shape, (stem, name)
                assert m.any(), f"{stem}: empty mask {name!r}"
        reg = masks[stem]["region"]
        assert {"lung", "heart", "trachea and bronchie", "esophagus", "bone", "mediastinum", "pleura"} <= set(reg)
        assert ct[reg["lung"]].mean() < -700
        assert 0 < ct[reg["heart"]].mean() < 100
        assert ct[reg["bone"]].mean() > 200
        assert ct[reg["trachea and bronchie"]].mean() < -200
        assert ct[:3, :3, :].mean() < -900  # air / outside the field of view in the corners
        anat = masks[stem]["anatomy"]
        assert anat["aorta"].any() and 0 < ct[anat["aorta"]].mean() < 150
        assert ct[anat["right lung upper lobe"]].mean() < -700
        onto = get_ontology()
        for name in anat:
            assert name in onto.anatomy_masks, name
        for name in reg:
            assert name in onto.region_masks, name
        # the ground truth's voxel counts are those of the files
        gt = rel.ground_truth["volumes"][stem]
        for name, m in anat.items():
            assert gt["structures"][name] == int(m.sum())


def test_lesions_inside_their_anatomy_and_sized(synthetic_release, masks_of):
    from scipy import ndimage

    rel = synthetic_release
    masks, _ = masks_of
    n_nodules = n_eff = 0
    onto = get_ontology()
    for stem in rel.volumes:
        gt = rel.ground_truth["volumes"][stem]
        sp = gt["spacing"]
        anat, reg = masks[stem]["anatomy"], masks[stem]["region"]
        for les in gt["lesions"]:
            assert les["anatomy_path"] in onto
            assert les["anatomy_path"] in les["paths"]
            if les["kind"] == "nodule":
                n_nodules += 1
                lobe = onto.leaf(les["anatomy_path"])
                nod = anat["lung nodule"]
                lab, _ = ndimage.label(nod)
                comp = lab == lab[tuple(les["center_vox"])]
                assert lab[tuple(les["center_vox"])] > 0
                assert (comp & ~anat[lobe]).sum() == 0, f"{stem}: nodule leaves {lobe}"
                idx = np.argwhere(comp)
                ext = (idx.max(0) - idx.min(0) + 1) * np.asarray(sp)
                size = les["size_mm"]
                want = (size[0], size[-1], size[-1]) if les["size_text"].count("x") else (size[0],) * 3
                for a in range(3):
                    assert abs(ext[a] - want[a]) <= sp[a] + 1e-6, (stem, a, ext, want)
                assert min(idx.max(0) - idx.min(0) + 1) >= 2
            if les["kind"] == "pleural effusion":
                n_eff += 1
                eff = anat["lung effusion"]
                assert eff.any() and (eff & ~reg["pleura"]).sum() == 0
                assert (eff & reg["lung"]).sum() == 0
                depth = eff.sum(axis=1).max() * sp[1]
                assert abs(depth - les["extent_mm"][1]) <= sp[1] + 1e-6
            assert les["mask_name"] in anat
    assert n_nodules >= 4 and n_eff >= 2


def test_follow_up_scans_change(synthetic_release):
    gt = synthetic_release.ground_truth["volumes"]
    a = {l["lesion_id"]: l for l in gt["train_1_a_1"]["lesions"]}
    b = {l["lesion_id"]: l for l in gt["train_1_b_1"]["lesions"]}
    nod = [k for k in a if ":nodule:" in k][0]
    assert max(b[nod]["extent_mm"]) > max(a[nod]["extent_mm"])  # grew
    assert a[nod]["center_mm"] == b[nod]["center_mm"]
    assert not any("effusion" in k for k in a) and any("effusion" in k for k in b)  # appeared
    a4 = {l["kind"] for l in gt["train_4_a_1"]["lesions"]}
    b4 = {l["kind"] for l in gt["train_4_b_1"]["lesions"]}
    assert "pleural effusion" in a4 and "pleural effusion" not in b4  # resolved


def test_ctrate_v1_and_fixed_decode_to_same_hu(synthetic_release):
    rel = synthetic_release
    ds = rel.ctrate_root / "dataset"
    n_scl = 0
    intercepts = set()
    for split in ("train", "valid"):
        header, rows = _csv(ds / "metadata" / f"{names.CTRATE_REPORT_SPLIT[split]}_metadata.csv")
        assert tuple(header) == CTRATE_METADATA_HEADER and len(header) == 44
        for row in rows:
            assert len(row) == 44
            meta = dict(zip(header, row))
            assert re.fullmatch(r"\d{3}Y", meta["PatientAge"])
            xy = [float(x) for x in meta["XYSpacing"].strip("[]").split(",")]
            z = float(meta["ZSpacing"])
            slope, inter = float(meta["RescaleSlope"]), float(meta["RescaleIntercept"])
            intercepts.add(inter)
            v1 = _load(ds.parent / names.ctrate_volume_path(meta["VolumeName"]))
            fx = _load(ds.parent / names.ctrate_volume_path(meta["VolumeName"], fixed=True))
            np.testing.assert_array_equal(v1.affine, np.eye(4))
            assert np.isnan(v1.dataobj.slope) or v1.dataobj.slope == 1.0
            assert v1.dataobj.inter in (0.0,) or np.isnan(v1.dataobj.inter)
            hu_v1 = slope * np.asanyarray(v1.dataobj).astype(np.float32) + inter
            hu_fx = np.asanyarray(fx.dataobj)
            n_scl += fx.dataobj.inter != 0
            np.testing.assert_array_equal(hu_v1, hu_fx)
            np.testing.assert_allclose(fx.header.get_zooms(), [*xy, z], rtol=1e-6)
            assert nib.aff2axcodes(fx.affine) == ("L", "P", "S")
            ipp = [float(x) for x in meta["ImagePositionPatient"].strip("[]").split(",")]
            np.testing.assert_allclose(fx.affine[:3, 3], [-ipp[0], -ipp[1], ipp[2]], atol=1e-3)
            assert hu_fx.min() >= -1024 and hu_fx[0, 0, 0] == -1024
            stem = names.VolumeName.parse(meta["VolumeName"]).stem
            if rel.ground_truth["volumes"][stem]["in_radgenome"]:
                rg = np.asanyarray(_load(rel.radgenome_root / names.radgenome_volume_path(stem)).dataobj)
                np.testing.assert_array_equal(rg, hu_fx)
    assert n_scl >= 1, "one fixed volume must carry scl_slope/scl_inter"
    assert len(intercepts) >= 2 and -1024.0 in intercepts


def test_radgenome_csv_invariants(synthetic_release):
    rel = synthetic_release
    onto = get_ontology()
    for split in ("train", "valid"):
        ab = _rg_csv(rel, split, "vqa_abnormality")
        loc = _rg_csv(rel, split, "vqa_location")
        pres = _rg_csv(rel, split, "vqa_presence")
        size = _rg_csv(rel, split, "vqa_size")
        rr = _rg_csv(rel, split, "region_report")
        dis = _rg_csv(rel, split, "case_disorders")
        for rows in (ab, loc, pres, size, rr, dis):
            assert rows and all(r[0].endswith(".nii.gz") for r in rows)
        assert loc == [r for r in ab if r[2] != "no findings"]
        assert [r[:3] for r in pres if r[3] == "Yes."] == loc
        assert {r[3] for r in pres} == {"Yes.", "No."}
        assert len(ab) == len({(r[0], r[1]) for r in ab})  # one row per (volume, path)
        assert len(rr) == len({(r[0], r[1]) for r in rr})
        for r in ab + pres + size + rr:
            assert r[1] == "" or r[1] in onto, r
            assert r[1] == "" or onto.validate(r[1]) == r[1]
        assert all(r[1] for r in ab + pres + size)
        # each finding at every level of its path
        at = {(r[0], r[1]): set(r[2].split(", ")) for r in loc}
        for (vol, path), fs in at.items():
            for anc in onto.ancestors(path):
                assert fs <= at[(vol, anc)], (vol, path, anc)
        # "No." rows: findings not present at that path
        for r in pres:
            if r[3] == "No.":
                assert r[2] not in at.get((r[0], r[1]), set())
        # region report: whole-scan row per volume, sentences at every path of abnormality
        vols = {r[0] for r in ab}
        assert {r[0] for r in rr if r[1] == ""} == vols
        rr_paths = {(r[0], r[1]) for r in rr if r[1]}
        assert rr_paths == {(r[0], r[1]) for r in ab}
        assert {r[0] for r in dis} == vols
        # lobe findings also under the alternative grouping
        gt = rel.ground_truth["volumes"]
        for vol in vols:
            for les in gt[vol.removesuffix(".nii.gz")]["lesions"]:
                for p in onto.ancestors(les["anatomy_path"]):
                    assert les["finding"] in at[(vol, p)]
                    assert les["sentence"] in dict(((r[0], r[1]), r[2]) for r in rr)[(vol, p)]
                if les["anatomy_path"].endswith("right lung upper lobe"):
                    assert (vol, "lung/lung/lung upper lobe/right lung upper lobe") in at
                if les["size_text"]:
                    assert [vol, les["finding"], les["size_text"]] in [[r[0], r[2], r[3]] for r in size]
    size_texts = {r[3] for s in ("train", "valid") for r in _rg_csv(rel, s, "vqa_size")}
    assert any(re.fullmatch(r"\d+ mm", t) for t in size_texts)
    assert any(re.fullmatch(r"\d+x\d+ mm", t) for t in size_texts)
    assert any(re.fullmatch(r"\d+ cm", t) for t in size_texts)
    assert any(re.fullmatch(r"\d+\.\d mm", t) for t in size_texts)
    assert any(re.fullmatch(r"\d+-\d+ mm", t) for t in size_texts)
    dis = [r[1] for s in ("train", "valid") for r in _rg_csv(rel, s, "case_disorders")]
    assert "no findings" in dis and any(", " in d for d in dis)


def test_reports_and_labels_mention_exactly_the_lesions(synthetic_release):
    rel = synthetic_release
    ds = rel.ctrate_root / "dataset"
    gt = rel.ground_truth["volumes"]
    blanks = 0
    not_given = 0
    kind_label = {"nodule": "Lung nodule", "pleural effusion": "Pleural effusion", "cardiomegaly": "Cardiomegaly",
                  "arterial wall calcification": "Arterial wall calcification"}
    for split in ("train", "valid"):
        header, reports = _csv(ds / "radiology_text_reports" / f"{names.CTRATE_REPORT_SPLIT[split]}_reports.csv")
        assert tuple(header) == CTRATE_REPORT_HEADER
        lh, labels = _csv(ds / "multi_abnormality_labels" / f"{names.CTRATE_LABEL_SPLIT[split]}_predicted_labels.csv")
        assert tuple(lh) == CTRATE_LABEL_HEADER
        lab_by = {r[0]: dict(zip(CTRATE_LABELS, r[1:])) for r in labels}
        assert len(reports) == len(labels) == sum(1 for v in gt.values() if v["split"] == split)
        for vol, clin, tech, findings, impressions in reports:
            not_given += sum(x == "Not given." for x in (clin, tech, findings, impressions))
            g = gt[vol.removesuffix(".nii.gz")]
            sents = [s["sentence"] for s in g["report_sentences"]]
            assert findings == " ".join(sents)
            lesion_sents = [l["sentence"] for l in g["lesions"]]
            for s in lesion_sents:
                assert findings.count(s) == 1
            kinds = {l["kind"] for l in g["lesions"]}
            normal = [s["sentence"] for s in g["report_sentences"] if s["lesion"] is None]
            assert len(normal) + len(lesion_sents) == len(sents)
            for l in g["lesions"]:
                if l["kind"] == "nodule":
                    assert "nodule" in l["sentence"] and l["size_text"] in l["sentence"]
                    side, lobe = ("left" if "left" in l["anatomy_path"] else "right"), l["anatomy_path"].split(" ")[-2]
                    assert side in l["sentence"] and lobe in l["sentence"]
                if l["kind"] == "pleural effusion":
                    assert l["size_text"] in l["sentence"] and l["side"] in l["sentence"]
            assert ("nodule" in findings.replace("no mass or nodule", "")) == ("nodule" in kinds)
            assert ("effusion measuring" in findings) == ("pleural effusion" in kinds)
            assert ("cardiomegaly" in findings) == ("cardiomegaly" in kinds)
            row = lab_by[vol]
            blanks += sum(v == "" for v in row.values())
            for kind, label in kind_label.items():
                assert row[label] == ("1" if kind in kinds else "0")
            assert all(v in ("0", "1", "") for v in row.values())
    assert blanks == 1 and not_given >= 2


def test_determinism_and_seed(tmp_path):
    cfg = SyntheticConfig(n_train_patients=1, n_valid_patients=1, shape=(32, 32, 24), mask_layout="archives")
    a = write_release(tmp_path / "a", cfg, progress=False)
    b = write_release(tmp_path / "b", cfg, progress=False)
    fa = {p.relative_to(a.root): p.read_bytes() for p in a.root.rglob("*") if p.is_file()}
    fb = {p.relative_to(b.root): p.read_bytes() for p in b.root.rglob("*") if p.is_file()}
    assert fa.keys() == fb.keys()
    assert all(fa[k] == fb[k] for k in fa), [str(k) for k in fa if fa[k] != fb[k]]
    c = write_release(tmp_path / "c", SyntheticConfig(**{**cfg.__dict__, "seed": 1}), progress=False)
    va = np.asanyarray(_load(a.radgenome_root / names.radgenome_volume_path("train_1_a_1")).dataobj)
    vc = np.asanyarray(_load(c.radgenome_root / names.radgenome_volume_path("train_1_a_1")).dataobj)
    assert va.shape == vc.shape and not np.array_equal(va, vc)
    p1 = make_phantom((24, 24, 16), None, 3, lesions="random")
    p2 = make_phantom((24, 24, 16), None, 3, lesions="random")
    np.testing.assert_array_equal(p1.ct, p2.ct)
    assert [l.to_dict() for l in p1.lesions] == [l.to_dict() for l in p2.lesions]


def test_make_phantom_api_and_small_nodules():
    ph = make_phantom((40, 40, 30), None, np.random.default_rng(7),
                      lesions=[{"kind": "nodule", "lobe": "left lung lower lobe", "size_mm": 6},
                               {"kind": "pleural effusion", "side": "right", "thickness": 12},
                               {"kind": "cardiomegaly"}])
    assert ph.ct.dtype == np.int16 and ph.ct.shape == (40, 40, 30) and ph.affine.shape == (4, 4)
    nod = ph.lesions[[l.kind for l in ph.lesions].index("nodule")]
    assert nod.size_mm[0] >= 2 * max(ph.spacing) - 1e-6  # raised to two voxels on a coarse grid
    assert nod.size_text in nod.sentence
    m = ph.structures["lung nodule"]
    assert m.sum() >= 2 and not (m & ~ph.structures["left lung lower lobe"]).any()
    assert "thoracic vertebrae 5 (t5)" in ph.structures and "pleura" in ph.regions
    assert ph.structures["lung"].sum() == ph.regions["lung"].sum()
    assert "Phantom(shape=(40, 40, 30)" in repr(ph)
    with pytest.raises(ValueError, match="lobe"):
        make_phantom((24, 24, 16), None, 0, lesions=[{"kind": "nodule", "lobe": "liver", "size_mm": 9}])
    # realistic settings (not rendered here: 512x512x300 is for benchmarks)
    cfg = SyntheticConfig(realistic=True)
    assert cfg.grid_shape == REALISTIC_SHAPE and cfg.grid_spacing == REALISTIC_SPACING
    fine = make_phantom((64, 64, 40), (3.0, 3.0, 3.0), 1, lesions=[
        {"kind": "nodule", "lobe": "right lung upper lobe", "size_mm": 6}], realistic=True)
    assert fine.lesions[0].size_mm == (6.0,) and fine.lesions[0].sentence.startswith("A 6 mm nodule")


def test_cli_synth(tmp_path, capsys):
    from radgenome_hf.cli.synth import register
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["synth", str(tmp_path / "out"), "--patients-train", "1", "--patients-valid", "0",
                              "--shape", "32", "32", "24", "--mask-layout", "folders", "--quiet"])
    assert args.func(args) == 0
    assert "SyntheticRelease(" in capsys.readouterr().out
    ds = tmp_path / "out" / "RadGenome-ChestCT" / "dataset"
    assert (ds / "train_anatomy_mask" / "seg_train_1_a_1" / "lung nodule.nii.gz").is_file()
    assert not list(ds.glob("*.tar.gz")) and not (ds / "radgenome_files" / "validation_vqa_size.csv").exists()
    with pytest.raises(SystemExit):
        parser.parse_args(["synth", "x", "--mask-layout", "zip"])
