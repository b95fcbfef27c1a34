"""End to end on the small synthetic release: a new release folder in the upstream layout, scored against truth."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from radgenome_hf.generate.pipeline import PipelineConfig, rebuild_release
from radgenome_hf.names import VolumeName
from radgenome_hf.io.tables import RADGENOME_HEADERS


@pytest.fixture(scope="module")
def rebuilt(synthetic_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("rebuilt")
    report = rebuild_release(synthetic_release.root, out, PipelineConfig(progress=False, validation=0.34, seed=1))
    return synthetic_release, out, report


def _rows(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def test_layout_and_formats(rebuilt):
    synth, out, report = rebuilt
    assert report.problems == []
    ds = out / "RadGenome-ChestCT" / "dataset"
    vols = json.loads(synth.ground_truth_path.read_text())["radgenome_volumes"]
    assert report.volumes == len(vols)
    for split in ("train", "validation"):
        for kind, header in RADGENOME_HEADERS.items():
            rows = _rows(ds / "radgenome_files" / f"{split}_{kind}.csv")
            assert tuple(rows[0]) == header
            assert all(r[0].endswith(".nii.gz") for r in rows[1:])
        assert (ds / "scene_graph" / f"{split}.jsonl").is_file()
        assert (ds / "anatomy_pairs" / f"{split}.jsonl").is_file()
    for v in vols:
        name = VolumeName.parse(v)
        vol = out / "RadGenome-ChestCT" / "dataset" / f"{name.split}_preprocessed" / name.patient_id / \
            f"{name.patient_id}{name.scan}" / name.filename
        assert vol.is_file()
        assert any((ds / f"{name.split}_anatomy_mask" / f"seg_{name.stem}").glob("*.nii.gz"))
        assert (ds / "scene_graph" / "json" / f"{name.stem}_SceneGraph.json").is_file()
    assert (out / "CT-RATE" / "dataset" / "radiology_text_reports" / "train_reports.csv").is_file()


def test_split_by_patient(rebuilt):
    _, out, _ = rebuilt
    rows = _rows(out / "RadGenome-ChestCT" / "dataset" / "splits.csv")
    header, rows = rows[0], rows[1:]
    split_of = {}
    for r in rows:
        d = dict(zip(header, r))
        assert split_of.setdefault(d["patient_id"], d["split"]) == d["split"]
    ds = out / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    for split in ("train", "validation"):
        for r in _rows(ds / f"{split}_vqa_abnormality.csv")[1:]:
            assert split_of[VolumeName.parse(r[0]).patient_id] == split


def test_grounding_matches_truth(rebuilt):
    synth, out, _ = rebuilt
    truth = json.loads(synth.ground_truth_path.read_text())
    ds = out / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    location = {(r[0], r[1]) for s in ("train", "validation") for r in _rows(ds / f"{s}_vqa_location.csv")[1:]}
    sizes = {(r[0], r[3]) for s in ("train", "validation") for r in _rows(ds / f"{s}_vqa_size.csv")[1:]}
    for stem in truth["radgenome_volumes"]:
        for lesion in truth["volumes"][stem]["lesions"]:
            for p in lesion["paths"]:
                assert (f"{stem}.nii.gz", p) in location, (stem, lesion["kind"], p)
            if lesion["size_text"]:
                assert (f"{stem}.nii.gz", lesion["size_text"]) in sizes


def test_scene_graph_comparisons(rebuilt):
    synth, out, _ = rebuilt
    truth = json.loads(synth.ground_truth_path.read_text())
    graphs = {}
    for s in ("train", "validation"):
        for line in (out / "RadGenome-ChestCT" / "dataset" / "scene_graph" / f"{s}.jsonl").read_text().splitlines():
            g = json.loads(line)
            graphs[g["volume_name"]] = g
    checked = 0
    for stem, g in graphs.items():
        lesions = {l["kind"]: l for l in truth["volumes"][stem]["lesions"]}
        if g["prior_volume_name"] and "nodule" in lesions:
            rel = {r["name"]: r for r in g["relationships"]}["lung nodule"]
            sentence = lesions["nodule"]["sentence"]  # what the generator says changed
            expect = "worsened" if "grown" in sentence else "improved" if "decreased" in sentence else None
            if expect is None:
                continue
            assert rel["predicate"] == expect, stem
            assert rel["volume_ml_before"] > 0 and rel["volume_ml_after"] > 0
            checked += 1
        voxel_ml = abs(np.linalg.det(np.array(truth["volumes"][stem]["affine"])[:3, :3])) / 1000
        for o in g["objects"]:
            assert o["volume_ml"] == pytest.approx(o["voxel_count"] * voxel_ml, rel=1e-4)
    assert checked >= 2


def test_cli_split(synthetic_release, tmp_path, capsys):
    from radgenome_hf.cli import main

    assert main(["generate", "split", str(synthetic_release.root), str(tmp_path / "s.csv"),
                 "--validation", "0.5"]) == 0
    assert "patients" in capsys.readouterr().out
    assert (tmp_path / "s.csv").read_text().startswith("volume_name,")
