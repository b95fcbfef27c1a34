"""evaluate(): P/R/F1 of a rebuilt release against a reference on tiny hand-made releases, phrase matching,
dropping negated reference rows, and the ``generate evaluate`` command."""

from __future__ import annotations

import json

import pytest

from radgenome_hf.generate.evaluate import (
    evaluate,
    negated_only,
    phrases_match,
    report_segments,
    size_mm,
)
from radgenome_hf.io.tables import RADGENOME_HEADERS, write_csv

V1, V2 = "train_1_a_1.nii.gz", "train_2_a_1.nii.gz"


def release(folder, abnormality, sizes=(), disorders=()):
    write_csv(folder / "train_vqa_abnormality.csv", RADGENOME_HEADERS["vqa_abnormality"], abnormality)
    write_csv(folder / "train_vqa_size.csv", RADGENOME_HEADERS["vqa_size"], sizes)
    write_csv(folder / "train_case_disorders.csv", RADGENOME_HEADERS["case_disorders"], disorders)
    return folder


@pytest.fixture
def pair(tmp_path):
    ref = release(tmp_path / "ref", [
        (V1, "lung", "nodule, atelectasis"),
        (V1, "lung/lung", "nodule, atelectasis"),
        (V1, "lung/lung/right lung", "nodule"),
        (V1, "pleura", "pleural effusion"),
        (V1, "heart", "no findings"),
        (V2, "bone", "osteophytes"),
    ], sizes=[(V1, "lung/lung/right lung", "nodule", "2 cm")],
        disorders=[(V1, "pulmonary nodule, atelectasis"), (V2, "spondylosis")])
    new = release(tmp_path / "new", [
        (V1, "lung", "nodules, passive atelectatic changes"),
        (V1, "lung/lung", "nodules, passive atelectatic changes"),
        (V1, "lung/lung/left lung", "nodules"),
        (V1, "heart", "cardiomegaly"),
        (V1, "pleura", "no findings"),
        (V2, "bone", "degenerative changes"),
    ], sizes=[(V1, "lung/lung/left lung", "nodules", "20 mm"), (V1, "lung/lung/left lung", "nodules", "5 mm")],
        disorders=[(V1, "nodule"), (V2, "degenerative changes")])
    return new, ref


def test_path_measures(pair):
    r = evaluate(*pair)
    assert r.volumes == 2 and r.only_rebuilt == r.only_reference == 0
    # every level: ref {V1 lung, lung/lung, right lung, pleura; V2 bone}; rebuilt {V1 lung, lung/lung, left lung,
    # heart; V2 bone}: 3 shared of 5 and 5
    assert (r.paths.tp, r.paths.n_pred, r.paths.n_ref) == (3, 5, 5)
    assert r.paths.precision == r.paths.recall == pytest.approx(0.6)
    assert r.paths.f1 == pytest.approx(0.6)
    # regions: ref {V1 lung, V1 pleura, V2 bone}, rebuilt {V1 lung, V1 heart, V2 bone}
    assert (r.region.tp, r.region.n_pred, r.region.n_ref) == (2, 3, 3)
    # most specific: ref {right lung, pleura, bone}, rebuilt {left lung, heart, bone}
    assert (r.specific.tp, r.specific.n_pred, r.specific.n_ref) == (1, 3, 3)
    assert r.per_region["lung"].f1 == pytest.approx(2 / 3)
    assert r.per_region["pleura"].recall == 0 and r.per_region["heart"].precision == 0


def test_finding_measures(pair):
    r = evaluate(*pair)
    # reference phrases at shared paths: lung (2) + lung/lung (2) matched; right lung, pleura not rebuilt there;
    # bone: osteophytes vs degenerative changes do not match -> 4 of 7
    assert (r.findings.tp, r.findings.n_ref) == (4, 7)
    # rebuilt: 4 matched of 7 (left lung nodules, heart cardiomegaly, bone degenerative changes unmatched)
    assert (r.findings_matched_pred, r.findings.n_pred) == (4, 7)
    assert r.finding_precision == pytest.approx(4 / 7)
    # sizes compared in mm: 2 cm == 20 mm
    assert (r.sizes.tp, r.sizes.n_pred, r.sizes.n_ref) == (1, 2, 1)
    # disorders: "pulmonary nodule" ~ "nodule"; "atelectasis" and "spondylosis" unmatched
    assert (r.disorders.tp, r.disorders.n_pred, r.disorders.n_ref) == (1, 2, 3)
    d = r.to_dict()
    assert d["paths"]["f1"] == 0.6 and d["findings"]["reference"] == 7
    assert "most specific path" in r.summary()


@pytest.mark.parametrize("a, b, same", [
    ("passive atelectatic changes", "atelectasis", True),
    ("atelectesis", "linear atelectasis", True),
    ("thickening of the bronchial wall", "bronchial wall thickening", True),
    ("Right 6x4 mm nodule", "left nodules", True),
    ("pleural effusion", "pleural thickening", False),
    ("lung nodule", "lung consolidation", False),
    ("minimal changes", "mild changes", False),
])
def test_phrases_match(a, b, same):
    assert phrases_match(a, b) is same


def test_size_mm():
    assert size_mm("1.5 cm") == (15.0,) and size_mm("12x8 mm") == (12.0, 8.0) and size_mm("large") == ()


def test_negated_only():
    segs = report_segments("There is no pericardial effusion. Pleural effusion on the left, no nodule. "
                           "Effusion in the abdomen was not seen; a cyst in the liver.")
    assert negated_only("pericardial effusion", segs)
    assert not negated_only("pleural effusion", segs)
    assert negated_only("nodule", segs)
    assert not negated_only("cyst", segs)
    assert not negated_only("mass", segs)  # never mentioned: kept


def test_drop_negated(pair, tmp_path):
    new, ref = pair
    reports = tmp_path / "reports.csv"
    write_csv(reports, ("VolumeName", "Findings_EN", "Impressions_EN"), [
        (V1, "A nodule in the right lung. Atelectasis in both lungs. No pleural effusion was seen.", ""),
        (V2, "Osteophytes in the spine.", "Not given."),
    ])
    r = evaluate(new, ref, reports=reports, drop_negated=True)
    assert r.dropped_negated == 1  # "pleural effusion" (pleura) is said only negatively
    assert r.paths.n_ref == 4 and r.region.n_ref == 2
    assert r.rebuilt_negated == 0 and r.rebuilt_phrases == 4  # distinct (volume, phrase) pairs
    with pytest.raises(ValueError, match="reports"):
        evaluate(new, ref, drop_negated=True)


def test_region_report_rows(pair):
    new, ref = pair
    assert evaluate(new, ref).region_report is None
    header = RADGENOME_HEADERS["region_report"]
    write_csv(ref / "train_region_report.csv", header, [(V1, "", "Text."), (V1, "lung", "A."), (V2, "bone", "B.")])
    write_csv(new / "train_region_report.csv", header, [(V1, "lung", "A."), (V2, "bone", "B."), (V2, "heart", "C.")])
    r = evaluate(new, ref).region_report
    assert (r.tp, r.n_pred, r.n_ref) == (2, 3, 3)


def test_missing_release(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqa_abnormality"):
        evaluate(tmp_path, tmp_path)


def test_cli_evaluate(pair, tmp_path, capsys):
    from radgenome_hf.cli import main

    new, ref = pair
    out = tmp_path / "eval.json"
    assert main(["generate", "evaluate", str(new), str(ref), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(volume, path) every level" in printed and "0.600" in printed
    assert json.loads(out.read_text())["region"]["tp"] == 2
    # the upstream layout is found below the folder too
    nested = tmp_path / "rel" / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    nested.mkdir(parents=True)
    for p in new.iterdir():
        (nested / p.name).write_bytes(p.read_bytes())
    assert main(["generate", "evaluate", str(tmp_path / "rel"), str(ref)]) == 0
    assert main(["generate", "evaluate", str(new), str(ref), "--drop-negated"]) == 2
