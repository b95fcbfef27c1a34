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
#: a CT-RATE label flipped on purpose: train_1_b_1's report describes a nodule
FLIPPED = ("train_1_b_1", "Lung nodule")


def _flip_label(rel, stem: str, label: str) -> None:
    import csv

    from radgenome_hf.io.release import UpstreamRelease

    path = UpstreamRelease.discover(rel.root, need="ctrate").ctrate_labels("train")
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    col = rows[0].index(label)
    for r in rows[1:]:
        if r[0] == f"{stem}.nii.gz":
            assert r[col] == "1"
            r[col] = "0"
    with open(path, "w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


@pytest.fixture(scope="module")
def faulty(tmp_path_factory):
    rel = write_release(tmp_path_factory.mktemp("faulty"), SyntheticConfig(
        n_train_patients=2, n_valid_patients=1, shape=(40, 40, 32), mask_layout="folders"), progress=False)
    inject_quality_faults(rel, **FAULTS)
    _flip_label(rel, *FLIPPED)
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


@pytest.mark.parametrize("config", ["vqa", "segmentation", "reports"])
def test_every_config_row_carries_its_volumes_quality_and_drop_flagged_drops_them(faulty, tmp_path, config):
    import radgenome_hf

    _, out, _, rows = faulty
    kw = dict(data_dir=str(out), cache_dir=str(tmp_path / "hf"), ignore_missing_volumes=True)
    full = radgenome_hf.load_dataset(config, **kw)
    kept = radgenome_hf.load_dataset(config, drop_flagged=True, **kw)
    flagged = {v for v, r in rows.items() if r["flags"]}
    assert flagged == set(FAULTS.values())
    for split in full:
        names = full[split]["volume_name"]
        if not [n for n in names if n not in flagged]:  # a split of flagged volumes only is left out
            assert split not in kept
            continue
        for name, q in zip(names, full[split]["quality"]):
            if name in rows:
                assert q["flags"] == rows[name]["flags"] and q["lung_coverage"] == pytest.approx(rows[name]["lung_coverage"])
            else:  # a volume the quality stage skipped (the truncated one) or one it never saw
                assert q is None
        want = [n for n in names if n not in flagged]
        assert kept[split]["volume_name"] == want
    assert sum(full[s].num_rows for s in full) > sum(kept[s].num_rows for s in kept)


def test_an_upstream_release_without_quality_rows_gives_null_quality(synthetic_release, tmp_path):
    import radgenome_hf

    ds = radgenome_hf.load_dataset("vqa", data_dir=str(synthetic_release.root), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    assert set(ds["quality"]) == {None}


def test_reports_rows_carry_label_checks_and_a_flipped_label_disagrees(faulty, tmp_path):
    import radgenome_hf
    from radgenome_hf.io.tables import CTRATE_LABELS

    rel, out, _, rows = faulty
    stem, label = FLIPPED
    assert rows[stem]["label_checks"][label] == "disagrees"
    assert [k for k, v in rows[stem]["label_checks"].items() if v == "disagrees"] == [label]
    for name, row in rows.items():
        assert set(row["label_checks"]) == set(CTRATE_LABELS)
        assert set(row["label_checks"].values()) <= {"agrees", "not_mentioned", None} or name == stem
    kw = dict(data_dir=str(out), cache_dir=str(tmp_path / "hf"), ignore_missing_volumes=True)
    reports = radgenome_hf.load_dataset("reports", split="train", **kw)
    for name, q in zip(reports["volume_name"], reports["quality"]):
        assert (q and q["label_checks"]) == (rows[name]["label_checks"] if name in rows else None)
    # the card's one-line filter: reports whose labels disagree with their text
    odd = reports.filter(lambda q: bool(q and q["label_checks"] and "disagrees" in q["label_checks"].values()),
                         input_columns="quality")
    assert odd["volume_name"] == [stem]
    vqa = radgenome_hf.load_dataset("vqa", split="train", **kw)  # other configs: volume flags only
    assert {q["label_checks"] is None for q in vqa["quality"] if q} == {True}


def test_the_card_shows_flag_and_disagreement_counts_per_split(faulty, tmp_path):
    import re

    from radgenome_hf.publish.build import build_release

    _, out, _, rows = faulty
    build_release(out, tmp_path / "packed", configs=("reports", "segmentation"))
    card = (tmp_path / "packed" / "README.md").read_text()
    section = card.split("### Quality flags", 1)[1].split("###", 1)[0]
    header = [c.strip() for c in re.search(r"^\| \|(.*)\|$", section, re.M).group(1).split("|")]
    for split, prefix in (("train", "train_"), ("validation", "valid_")):
        mine = [r for v, r in rows.items() if v.startswith(prefix)]
        want = {"volumes checked": len(mine), "any flag": sum(bool(r["flags"]) for r in mine),
                **{f: sum(f in r["flags"] for r in mine) for f in ("nonfinite", "rescale_applied_twice", "non_chest")}}
        cells = [c.strip() for c in re.search(rf"^\| {split} \|(.*)\|$", section, re.M).group(1).split("|")]
        got = dict(zip(header, cells))
        assert {k: int(got[k]) for k in want} == want, split
    disagree = card.split("### Reports whose CT-RATE labels disagree", 1)[1].split("###", 1)[0]
    assert re.search(r"^\| any label \| 1 \| 0 \|$", disagree, re.M), disagree
    assert re.search(rf"^\| {FLIPPED[1]} \| 1 \| 0 \|$", disagree, re.M), disagree
    # the packed release carries the checks natively: plain datasets, without this package's features
    import datasets

    plain = datasets.load_dataset(str(tmp_path / "packed"), "reports", split="train", cache_dir=str(tmp_path / "c"))
    got = {n: q["label_checks"] for n, q in zip(plain["volume_name"], plain["quality"]) if q}
    assert got == {n: r["label_checks"] for n, r in rows.items() if n.startswith("train_")}


@pytest.mark.parametrize("dtype", ["int16", "float32", "uint8"])
@pytest.mark.parametrize("order", ["F", "C", "strided"])
def test_hu_range_is_the_range_of_the_finite_voxels(dtype, order):
    from radgenome_hf.generate import quality

    rng = np.random.default_rng(0)
    a = rng.integers(-1024, 3000, (70, 60, 50)).astype(dtype, order="F" if order == "F" else "C")
    if dtype == "float32":  # non-finite voxels in some blocks (NaN first in one, an inf at the very end)
        a.reshape(-1, order="A")[[0, 5, 99_999, 100_000]] = np.nan
        a.reshape(-1, order="A")[-1] = np.inf
        a.reshape(-1, order="A")[123_457] = -np.inf
    if order == "strided":
        a = a[::2, :, 1:]
    finite = a[np.isfinite(a)] if dtype == "float32" else a
    want = (int(a.size - finite.size), float(finite.min()), float(finite.max()))
    old = quality._BLOCK_BYTES
    try:
        quality._BLOCK_BYTES = 4096  # many blocks
        assert quality.hu_range(a) == want
    finally:
        quality._BLOCK_BYTES = old
    assert quality.hu_range(a) == want
    nan = np.full((3, 3, 2), np.nan, np.float32)
    got = quality.hu_range(nan)
    assert got[0] == nan.size and np.isnan(got[1]) and np.isnan(got[2])


def test_lung_coverage_equals_the_full_grid_answer():
    from radgenome_hf.access.masks import PackedMasks
    from radgenome_hf.generate.quality import lung_coverage

    rng = np.random.default_rng(1)
    shape = (30, 20, 40)
    left = np.zeros(shape, bool)
    left[2:12, 3:15, 5:30] = rng.random((10, 12, 25)) < 0.3
    left[:, :, 17] = False  # a slice without lung inside the bbox
    upper = left.copy()
    upper[:, :, 20:] = False
    stray = np.zeros(shape, bool)
    stray[20, 10, [2, 36]] = True  # a second lung structure reaching slices the first does not
    masks = PackedMasks.from_arrays({"left lung upper lobe": upper, "left lung": left, "right lung": stray,
                                     "heart": np.ones(shape, bool), "lung nodule": np.zeros(shape, bool)})
    want = (left | upper | stray).any(axis=(0, 1)).mean()
    assert lung_coverage(masks, shape[2]) == pytest.approx(want)
    assert lung_coverage(PackedMasks.from_arrays({"heart": np.ones(shape, bool)}), shape[2]) == 0.0
