"""Patient-level splits: disjoint by patient, deterministic for a seed, stated proportion."""

from __future__ import annotations

import pytest

from radgenome_hf.errors import RadGenomeError
from radgenome_hf.generate.splits import assign_splits, split_report, write_splits

NAMES = [f"{s}_{p}_{scan}_{r}" for s in ("train", "valid") for p in range(1, 41) for scan in "ab" for r in (1, 2)]


def _patients(t, split):
    return {p for p, s in zip(t["patient_id"].to_pylist(), t["split"].to_pylist()) if s == split}


def test_disjoint_and_proportion():
    t = assign_splits(NAMES, validation=0.05, seed=0)
    train, val = _patients(t, "train"), _patients(t, "validation")
    assert not train & val
    assert len(train | val) == 80 and len(val) == round(80 * 0.05) == 4
    assert t.num_rows == len(NAMES)
    assert t["volume_name"].to_pylist() == sorted(NAMES, key=lambda n: (n.split("_")[0], int(n.split("_")[1]),
                                                                        n.split("_")[2], int(n.split("_")[3])))
    # names are never renamed; the upstream split is kept alongside
    assert set(t["original_split"].to_pylist()) == {"train", "validation"}
    rep = split_report(t)
    assert rep.patients == {"train": 76, "validation": 4} and rep.volumes == {"train": 304, "validation": 16}
    assert "validation: 4 patients / 16 volumes" in str(rep)


def test_deterministic_and_seeded():
    a = assign_splits(NAMES, validation=0.2, seed=7)
    assert a.equals(assign_splits(list(reversed(NAMES)), validation=0.2, seed=7))
    others = [_patients(assign_splits(NAMES, validation=0.2, seed=s), "validation") for s in range(4)]
    assert len({frozenset(o) for o in others}) > 1
    assert all(len(o) == 16 for o in others)


def test_edge_cases(tmp_path):
    assert set(assign_splits(["train_1_a_1", "train_2_a_1"], validation=0.01)["split"].to_pylist()) == {
        "train", "validation"}
    assert set(assign_splits(["train_1_a_1", "train_2_a_1"], validation=0.0)["split"].to_pylist()) == {"train"}
    with pytest.raises(RadGenomeError, match="within"):
        assign_splits(NAMES, validation=1.5)
    t = assign_splits(NAMES[:8], validation=0.5)
    p = write_splits(tmp_path / "splits.csv", t)
    assert p.read_text().splitlines()[0] == "volume_name,patient_id,scan_id,reconstruction_id,original_split,split"
    bad = t.set_column(5, "split", [["train"] * 3 + ["validation"] + ["train"] * 4])
    with pytest.raises(RadGenomeError, match="two splits"):
        split_report(bad)
