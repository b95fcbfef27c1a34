"""The datasets builder on the synthetic release (every config, normal and streaming) and on the real CSV rows."""

from __future__ import annotations

import csv
import shutil
from collections import Counter
from pathlib import Path

import datasets
import numpy as np
import pytest

import radgenome_hf
from radgenome_hf.errors import MissingVolumeError, ReleaseNotFoundError, ShapeMismatchError
from radgenome_hf.access.lazymasks import LazyMask, MaskSet
from radgenome_hf.ontology import get_ontology
from radgenome_hf.access.volume import Volume

CORE_CONFIGS = ["reports", "segmentation", "grounded_reports", "vqa"]


def _load(release_root, config, tmp_path, **kw):
    return datasets.load_dataset("radgenome", config, data_dir=str(release_root), cache_dir=str(tmp_path / "hf"), **kw)


def _plain(row: dict) -> dict:
    """A row with lazy objects replaced by what identifies them (for comparisons)."""
    out = {}
    for k, v in row.items():
        if isinstance(v, Volume):
            out[k] = ("volume", str(v.path))
        elif isinstance(v, LazyMask):
            out[k] = ("mask", v.path, v.structure, v.source)
        elif isinstance(v, MaskSet):
            out[k] = ("masks", v.region_path, v.anatomy_path)
        else:
            out[k] = v
    return out


@pytest.fixture(scope="module")
def loaded(synthetic_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("builder")
    return {c: _load(synthetic_release.root, c, tmp) for c in CORE_CONFIGS}


@pytest.mark.parametrize("config", CORE_CONFIGS)
def test_every_config_loads_with_ids_and_both_splits(loaded, config):
    ds = loaded[config]
    assert set(ds) == {"train", "validation"}
    for split, d in ds.items():
        assert len(d) > 0
        for col in ("volume_name", "patient_id", "scan_id", "reconstruction_id"):
            assert col in d.column_names
        row = d[0]
        name = row["volume_name"]
        assert row["patient_id"] == "_".join(name.split("_")[:2])
        assert row["scan_id"] == "_".join(name.split("_")[:3])
        assert row["reconstruction_id"] == int(name.split("_")[3])
        assert name.startswith("train_" if split == "train" else "valid_")


@pytest.mark.parametrize("config", CORE_CONFIGS)
def test_streaming_yields_the_same_rows(loaded, synthetic_release, tmp_path, config):
    streamed = _load(synthetic_release.root, config, tmp_path, streaming=True)
    for split, d in loaded[config].items():
        s = streamed[split]
        assert s.features.keys() == d.features.keys()
        assert [_plain(r) for r in s] == [_plain(r) for r in d]


def test_volumes_decode_lazily_and_masks_on_demand(loaded):
    row = next(r for r in loaded["vqa"]["train"] if r["anatomy"].endswith("lobe"))
    vol, mask = row["volume"], row["mask"]
    assert isinstance(vol, Volume) and "loaded=False" in repr(vol)
    assert mask.source == "anatomy" and mask.structure == get_ontology().leaf(row["anatomy"])
    m = mask.array()
    assert m.shape == vol.shape and m.dtype == bool and m.sum() == mask.voxel_count > 0
    bbox = mask.bbox
    crop = vol.crop(bbox)
    assert crop.shape == tuple(b - a for a, b in zip(bbox[:3], bbox[3:]))
    assert np.array_equal(crop, vol.array()[bbox[0]:bbox[3], bbox[1]:bbox[4], bbox[2]:bbox[5]])
    # lungs are air-filled: the lobe's voxels are mostly below -500 HU
    assert np.median(vol.array()[m]) < -500


def test_grounding_falls_back_to_region_then_whole_scan(loaded):
    rows = loaded["vqa"]["train"]
    sources = Counter((r["mask"].source) for r in rows)
    assert sources["anatomy"] > 0 and sources["region"] > 0 and sources["whole"] > 0
    for r in rows:
        if r["question_type"] == "disorders":
            assert r["mask"].source == "whole" and r["mask"].array().all()


def test_segmentation_rows_list_structures_with_bboxes(loaded):
    row = loaded["segmentation"]["train"][0]
    masks = row["masks"]
    names = {s["name"] for s in row["structures"]}
    assert {"heart", "trachea"} <= names
    for s in row["structures"]:
        if s["voxel_count"]:
            m = masks.mask(s["name"]) if s["source"] == "anatomy" else masks.region.mask(s["name"])
            assert int(m.sum()) == s["voxel_count"]
            i0, j0, k0, i1, j1, k1 = s["bbox"]
            assert m[i0:i1, j0:j1, k0:k1].sum() == s["voxel_count"]
    lm = masks.label_map(["left lung upper lobe", "heart"])
    assert set(np.unique(lm)) <= {0, 1, 2} and lm.shape == tuple(row["shape"])
    # union and label map of anatomy and region masks together, against plain numpy on the full-grid masks
    region_only = [n for n in masks.region.names if n not in masks.anatomy.names][:2]
    assert region_only
    names = ["heart", "trachea", *region_only, "left lung upper lobe"]
    full = [masks.mask(n) for n in names]
    np.testing.assert_array_equal(masks.union(names), np.logical_or.reduce(full))
    ref = np.zeros(full[0].shape, np.uint8)
    for value, m in enumerate(full, start=1):
        ref[m] = value  # later names win
    got = masks.label_map(names)
    np.testing.assert_array_equal(got, ref)
    assert got.dtype == np.uint8 and got.flags.f_contiguous and set(np.unique(got)) - {0}


def test_reports_use_fixed_volumes_and_labels(loaded):
    for r in loaded["reports"]["train"]:
        assert len(r["labels"]) == 18
        assert r["spacing"] is not None and len(r["spacing"]) == 3
        assert r["findings"] is None or "Not given." not in r["findings"]
        arr = r["volume"].array()
        assert arr.dtype in (np.int16, np.float32) and arr.min() >= -1100


def test_vqa_rows_follow_the_csvs_and_render_questions(loaded, synthetic_release):
    files = Path(synthetic_release.radgenome_root, "dataset", "radgenome_files")
    expected = Counter()
    for t in ("abnormality", "location", "presence", "size"):
        with open(files / f"train_vqa_{t}.csv", newline="") as f:
            expected[t] = sum(1 for _ in csv.DictReader(f))
    with open(files / "train_case_disorders.csv", newline="") as f:
        expected["disorders"] = sum(1 for _ in csv.DictReader(f))
    rows = loaded["vqa"]["train"]
    assert Counter(rows["question_type"]) == expected
    for r in rows:
        assert r["question"].endswith("?") or r["question"].endswith(".")
        if r["question_type"] in ("presence", "size", "abnormality") and r["anatomy"]:
            assert r["region"] in r["question"]


def test_row_order_is_deterministic(synthetic_release, tmp_path):
    a = _load(synthetic_release.root, "vqa", tmp_path / "a")["train"]
    b = _load(synthetic_release.root, "vqa", tmp_path / "b")["train"]
    assert a["question"] == b["question"] and a["volume_name"] == b["volume_name"]


def test_real_sample_rows_through_vqa(real_sample_dir, tmp_path):
    root = tmp_path / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    root.mkdir(parents=True)
    for f in real_sample_dir.glob("*.csv"):
        shutil.copy(f, root / f.name)
    ds = _load(tmp_path, "vqa", tmp_path)["train"]
    counts = {}
    for t, fname in (("abnormality", "train_vqa_abnormality.csv"), ("location", "train_vqa_location.csv"),
                     ("presence", "train_vqa_presence.csv"), ("size", "train_vqa_size.csv"),
                     ("disorders", "train_case_disorders.csv")):
        with open(real_sample_dir / fname, newline="") as f:
            counts[t] = list(csv.DictReader(f))
    by_type = {t: [r for r in ds if r["question_type"] == t] for t in counts}
    for t, real in counts.items():
        assert len(by_type[t]) == len(real), t
    # every row present, with the release's answers
    abn = [(r["volume_name"], r["anatomy"], r["answer"]) for r in by_type["abnormality"]]
    assert abn == [(r["Volumename"][:-7], r["Anatomy"], r["Abnormality"]) for r in counts["abnormality"]]
    # invariants: location = abnormality without "no findings"; presence "Yes." = location
    loc = Counter((r["volume_name"], r["anatomy"], r["finding"]) for r in by_type["location"])
    assert loc == Counter(a for a in abn if a[2] != "no findings")
    yes = Counter((r["volume_name"], r["anatomy"], r["finding"]) for r in by_type["presence"] if r["answer"] == "Yes.")
    assert yes == loc
    # each question rendered with its fields
    for r in by_type["presence"]:
        assert r["finding"] in r["question"] and r["region"] in r["question"]
    for r in by_type["location"]:
        assert r["finding"] in r["question"] and r["answer"] == r["anatomy"]
    for r in ds:
        assert r["volume"] is None  # a CSV-only copy: no volume tree


def _vqa_in_one_table(builder, split):
    """The ``vqa`` rows built the way they were before streaming: every CSV read whole, one table, then the volume,
    mask and quality columns over all of it at once."""
    import pyarrow as pa

    from radgenome_hf.hf.builder import _VQA_TABLE, _cast, _vqa_rows
    from radgenome_hf.hf.schema import VQA_TYPES
    from radgenome_hf.io.tables import read_radgenome_table

    release = builder._release()
    made = builder._vqa_shards(release, split)
    parts = [_vqa_rows(q, read_radgenome_table(release.radgenome_csv(split, _VQA_TABLE[q]), _VQA_TABLE[q]),
                       made["templates"]) for q in VQA_TYPES if release.radgenome_csv(split, _VQA_TABLE[q])]
    table = builder._attach_volume_and_mask(release, split, pa.concat_tables(parts), made["stores"])
    return _cast(builder._with_quality(release, split, table), builder.info.features)


def test_streamed_vqa_prepare_equals_the_whole_table_build(synthetic_release, tmp_path, monkeypatch):
    from radgenome_hf.io import tables

    monkeypatch.setattr(tables, "_STREAM_BLOCK", 2048)  # blocks of ~30 rows: a volume's rows span several
    ds = _load(synthetic_release.root, "vqa", tmp_path, num_shards=13)
    builder = datasets.load_dataset_builder("radgenome", "vqa", data_dir=str(synthetic_release.root),
                                            cache_dir=str(tmp_path / "hf"), num_shards=13)
    for split, name in (("train", "train"), ("valid", "validation")):
        expected = _vqa_in_one_table(builder, split)
        got = ds[name].data.table
        assert got.num_rows == expected.num_rows > 100
        assert got.equals(expected), split
    assert {r["mask"].source for r in ds["train"]} == {"anatomy", "region", "whole"}  # masks, volumes: all there
    assert all(r["volume"] is not None for r in ds["train"])
    streamed = _load(synthetic_release.root, "vqa", tmp_path / "s", streaming=True, num_shards=13, split="train")
    assert streamed.num_shards == 13
    assert [_plain(r) for r in streamed] == [_plain(r) for r in ds["train"]]


def test_a_bad_vqa_cell_is_named_at_load_time(synthetic_release, tmp_path):
    from radgenome_hf.errors import MalformedFileError

    release = tmp_path / "rel"
    shutil.copytree(synthetic_release.root, release, ignore=shutil.ignore_patterns("CT-RATE"))
    csv_path = release / "RadGenome-ChestCT" / "dataset" / "radgenome_files" / "train_vqa_presence.csv"
    lines = csv_path.read_text().splitlines(keepends=True)
    row = len(lines) - 3  # a data row near the end: in the file's last shard
    lines[row] = lines[row].replace("Yes.", "Maybe").replace("No.", "Maybe")
    csv_path.write_text("".join(lines))
    with pytest.raises(MalformedFileError) as e:
        _load(release, "vqa", tmp_path)
    assert (e.value.row, e.value.column) == (row, "Presence") and csv_path.name in str(e.value)


@pytest.mark.parametrize("extra", [{}, {"presence": ["Any {{literal}} {abnormality} in {region}?", "{region}: {abnormality}?"],
                                     "size": ["Size of {abnormality!r} in the {region:>20}?", "How big?"]}])
def test_questions_rendered_column_wise_equal_the_templates_row_by_row(real_sample_dir, extra):
    import json

    from radgenome_hf.hf.builder import _VQA_TABLE, _vqa_rows
    from radgenome_hf.hf.schema import VQA_TYPES
    from radgenome_hf.io.tables import read_radgenome_table
    from radgenome_hf.templates import QuestionTemplates

    templates = QuestionTemplates.from_upstream({f"{k}_template.json": json.dumps({k: v}) for k, v in extra.items()})
    for qtype in VQA_TYPES:
        name = f"train_{_VQA_TABLE[qtype]}.csv"
        t = read_radgenome_table(real_sample_dir / name, _VQA_TABLE[qtype])
        rows = _vqa_rows(qtype, t, templates).to_pylist()
        assert len(rows) == t.num_rows > 50
        for r in rows:
            key = f"{r['volume_name']}|{r['anatomy']}|{r['finding']}"
            assert r["question"] == templates.render(qtype, key=key, region=r["region"], abnormality=r["finding"])
    bad = QuestionTemplates.from_upstream({"size_template.json": json.dumps({"size": ["{organ}?", "{region}?"]})})
    with pytest.raises(KeyError, match="organ"):  # what str.format says, as before
        _vqa_rows("size", read_radgenome_table(real_sample_dir / "train_vqa_size.csv", "vqa_size"), bad)


def test_upstream_templates_are_used_when_shipped(synthetic_release, tmp_path):
    release = tmp_path / "rel"
    shutil.copytree(synthetic_release.root, release, ignore=shutil.ignore_patterns("CT-RATE"))
    qa = release / "RadGenome-ChestCT" / "dataset" / "qa_templates"
    qa.mkdir()
    (qa / "presence_template.json").write_text('{"presence": ["UPSTREAM: {abnormality} in {region}?"]}')
    rows = _load(release, "vqa", tmp_path)["train"]
    presence = [r for r in rows if r["question_type"] == "presence"]
    assert presence and all(r["question"].startswith("UPSTREAM: ") for r in presence)
    assert not any(r["question"].startswith("UPSTREAM") for r in rows if r["question_type"] != "presence")


def test_missing_release_folder(tmp_path):
    with pytest.raises(ReleaseNotFoundError, match="does not exist"):
        _load(tmp_path / "nowhere", "vqa", tmp_path)


def test_missing_volume_is_an_error_unless_ignored(synthetic_release, tmp_path):
    release = tmp_path / "rel"
    shutil.copytree(synthetic_release.root, release)
    victim = next((release / "RadGenome-ChestCT" / "dataset" / "train_preprocessed").rglob("*.nii.gz"))
    victim.unlink()
    with pytest.raises(MissingVolumeError, match=victim.name):
        _load(release, "vqa", tmp_path / "a")
    ds = _load(release, "vqa", tmp_path / "b", ignore_missing_volumes=True)["train"]
    stem = victim.name[: -len(".nii.gz")]
    assert all(r["volume"] is None for r in ds if r["volume_name"] == stem)
    assert any(r["volume"] is not None for r in ds)


def test_mask_that_does_not_match_its_volume(tmp_path):
    import nibabel as nib

    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=1, n_valid_patients=1, mask_layout="folders"),
                        progress=False)
    seg = next((Path(rel.radgenome_root) / "dataset" / "train_anatomy_mask").glob("seg_*"))
    target = next(seg.glob("*.nii.gz"))
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), np.eye(4)), target)
    # folder masks are packed on a volume's first use (the first row does not wait for the release), so the
    # odd file is found then, unless it is the one whose header gives the grid at prepare time
    stem = seg.name[len("seg_"):]
    with pytest.raises(ShapeMismatchError, match="shape") as err:
        ds = _load(rel.root, "vqa", tmp_path)["train"]
        row = next(r for r in ds if r["volume_name"] == stem and r["mask"].source == "anatomy")
        row["mask"].array()
    assert seg.name in str(err.value)


def test_folder_and_archive_masks_decode_identically(synthetic_release, tmp_path):
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    cfg = SyntheticConfig(mask_layout="folders")
    rel = write_release(tmp_path / "folders", cfg, progress=False)
    a = _load(synthetic_release.root, "segmentation", tmp_path / "a")["train"][0]
    b = _load(rel.root, "segmentation", tmp_path / "b")["train"][0]
    assert a["volume_name"] == b["volume_name"]
    assert [s["name"] for s in a["structures"]] == [s["name"] for s in b["structures"]]
    for s in a["structures"][:8]:
        src = "anatomy" if s["source"] == "anatomy" else "region"
        pa_, pb = getattr(a["masks"], src), getattr(b["masks"], src)
        assert np.array_equal(pa_.mask(s["name"]), pb.mask(s["name"]))


def test_streaming_shards_split_over_nodes_and_workers(synthetic_release, tmp_path):
    import torch
    from datasets.distributed import split_dataset_by_node

    full = _load(synthetic_release.root, "vqa", tmp_path, streaming=True, split="train")
    assert full.num_shards == 8
    keys = lambda it: [(r["volume_name"], r["question_type"], r["anatomy"], r["finding"], r["answer"]) for r in it]
    everything = keys(full)
    parts = [keys(split_dataset_by_node(full, rank=r, world_size=2)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert Counter(parts[0] + parts[1]) == Counter(everything)
    plain = full.remove_columns(["volume", "mask"])
    loader = torch.utils.data.DataLoader(plain, batch_size=None, num_workers=2)
    seen = [(r["volume_name"], r["question_type"], r["anatomy"], r["finding"], r["answer"]) for r in loader]
    assert Counter(seen) == Counter(everything)


def test_iterable_state_dict_resumes_at_the_right_row(synthetic_release, tmp_path):
    ds = _load(synthetic_release.root, "vqa", tmp_path, streaming=True, split="train")
    it = iter(ds)
    head = [next(it)["question"] for _ in range(37)]
    state = ds.state_dict()
    rest = [r["question"] for r in it]
    resumed = _load(synthetic_release.root, "vqa", tmp_path, streaming=True, split="train")
    resumed.load_state_dict(state)
    assert [r["question"] for r in resumed] == rest
    assert head + rest == [r["question"] for r in ds]


def test_stable_entry_point_matches_datasets(synthetic_release, tmp_path):
    a = radgenome_hf.load_dataset("grounded_reports", data_dir=str(synthetic_release.root),
                                  cache_dir=str(tmp_path / "a"), split="validation")
    b = _load(synthetic_release.root, "grounded_reports", tmp_path / "b")["validation"]
    assert a["sentence"] == b["sentence"]


def test_region_crop_from_a_rows_mask_set_reads_only_the_box(loaded, monkeypatch):
    from radgenome_hf import training as T
    from radgenome_hf.access.masks import PackedMasks

    row = loaded["segmentation"]["train"][0]
    masks, vol = row["masks"], row["volume"]
    assert masks.shape == tuple(row["shape"])
    as_dict = {n: masks.mask(n) for n in masks.names}  # the plain full-grid form, as a reference
    monkeypatch.setattr(PackedMasks, "mask", lambda *a, **k: pytest.fail("a full-grid mask was built"))
    for anatomy in ("heart", "lung/lung/left lung/left lung upper lobe"):
        got = T.region_crop(vol, masks, anatomy, margin=3, margin_unit="voxel")
        ref = T.region_crop(vol.array(), as_dict, anatomy, margin=3, margin_unit="voxel", spacing=vol.spacing)
        assert got.bbox == ref.bbox and got.mask_name == ref.mask_name and got.mask.any()
        np.testing.assert_array_equal(got.mask, ref.mask)
        np.testing.assert_array_equal(got.image, ref.image)
