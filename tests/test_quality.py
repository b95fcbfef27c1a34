"""The quality stage: faulty volumes injected into a synthetic release are flagged, clean ones are not."""

from __future__ import annotations

import json

import numpy as np
import pytest

from radgenome_hf.generate.pipeline import PipelineConfig, rebuild_release
from radgenome_hf.generate.quality import volume_quality
from radgenome_hf.names import radgenome_volume_path
from radgenome_hf.testing.synthetic import SyntheticConfig, inject_quality_faults, write_release

FAULTS = {"nonfinite": "train_1_a_1", "rescaled_twice": "train_2_a_11", "non_chest": "valid_1_a_1"}


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    rel = write_release(tmp_path_factory.mktemp("faulty"), SyntheticConfig(
        n_train_patients=2, n_valid_patients=1, shape=(40, 40, 32), mask_layout="folders"), progress=False)
    inject_quality_faults(rel, **FAULTS)
    corrupt = rel.radgenome_root / radgenome_volume_path("valid_1_b_1")
    corrupt.write_bytes(corrupt.read_bytes()[:200])  # truncated
    out = tmp_path_factory.mktemp("faulty_rebuilt")
    report = rebuild_release(rel.root, out, PipelineConfig(progress=False, workers=1))
    rows = {}
    for split in ("train", "validation"):
        for line in (out / "RadGenome-ChestCT" / "dataset" / "quality" / f"{split}.jsonl").read_text().splitlines():
            row = json.loads(line)
            rows[row["volume_name"]] = row
    return rel, out, report, rows


def test_each_fault_is_flagged_and_no_clean_volume(faulty):
    rel, _, _, rows = faulty
    assert rows[FAULTS["nonfinite"]]["flags"] == ["nonfinite"]
    assert rows[FAULTS["nonfinite"]]["nonfinite_voxels"] > 0
    assert np.isfinite(rows[FAULTS["nonfinite"]]["hu_min"])
    assert rows[FAULTS["rescaled_twice"]]["flags"] == ["rescale_applied_twice"]
    assert rows[FAULTS["rescaled_twice"]]["rescale_intercept"] == -1024.0
    assert rows[FAULTS["rescaled_twice"]]["hu_min"] <= -2000
    assert rows[FAULTS["non_chest"]]["flags"] == ["non_chest"]
    assert rows[FAULTS["non_chest"]]["lung_coverage"] == 0.0
    clean = [v for v in rel.volumes if v not in FAULTS.values() and v != "valid_1_b_1"]
    assert clean and all(rows[v]["flags"] == [] for v in clean), {v: rows[v]["flags"] for v in clean}
    assert all(rows[v]["lung_coverage"] > 0.5 and rows[v]["intensity_source"] == "header" for v in clean)


def test_corrupt_volume_is_recorded_and_skipped(faulty):
    _, out, report, rows = faulty
    assert "valid_1_b_1" not in rows and "valid_1_b_1" in report.skipped
    failures = json.loads((out / ".work" / "run_report.json").read_text())["volumes"]["failures"]
    assert [f["volume"] for f in failures] == ["valid_1_b_1"]
    assert "valid_1_b_1" in failures[0]["error"] or "truncated" in failures[0]["error"].lower()
    assert report.volumes == len(rows)


def test_ctrate_v1_volume_reads_its_rescale_from_metadata(faulty):
    from radgenome_hf.io.release import UpstreamRelease
    from radgenome_hf.io.tables import read_ctrate_metadata
    from radgenome_hf.names import ctrate_volume_path

    rel = faulty[0]
    meta = read_ctrate_metadata(UpstreamRelease.discover(rel.root, need="ctrate").ctrate_metadata("train"))
    row = meta.filter(meta["volume_name"].to_numpy(zero_copy_only=False) == "train_2_a_1").to_pylist()[0]
    q = volume_quality(rel.ctrate_root / ctrate_volume_path("train_2_a_1"), None, metadata=row)
    assert q["intensity_source"] == "metadata" and q["rescale_intercept"] == -1024.0
    assert q["flags"] == [] and q["hu_min"] >= -1024


def test_quality_cli_flags_the_faults(faulty, tmp_path, capsys):
    from radgenome_hf.cli import main

    rel, out, _, rows = faulty
    masks = tmp_path / "masks"
    masks.mkdir()
    for p in (out / ".work" / "masks").rglob("*.masks.parquet"):
        if "anatomy" in p.parent.name:
            (masks / p.name).write_bytes(p.read_bytes())
    assert main(["generate", "quality", str(rel.root), str(tmp_path / "q"), "--masks-dir", str(masks),
                 "--workers", "1"]) == 1  # the corrupt volume fails the stage
    got = {json.loads(line)["volume_name"]: json.loads(line)
           for line in (tmp_path / "q" / "quality.jsonl").read_text().splitlines()}
    assert {v: r["flags"] for v, r in got.items()} == {v: r["flags"] for v, r in rows.items()}
    assert "FAILED valid_1_b_1" in capsys.readouterr().err
