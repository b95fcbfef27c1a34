"""CT-RATE labels checked against the grounded report text (generate/label_checks.py): on the synthetic release, whose
labels and templated reports are known, every check is right; a flipped label disagrees; negations count."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from radgenome_hf.generate.ground import GroundedReport, analyze_sentence, ground_report, ground_reports
from radgenome_hf.generate.label_checks import CHECKS, add_label_checks, label_checks_for, label_mentions
from radgenome_hf.io.tables import CTRATE_LABELS, read_ctrate_labels, read_ctrate_reports

#: The synthetic generator's report templates: a lesion kind's sentence says its label is present; these normal
#: statements (written when the kind is absent) say a label is absent.
KIND_LABEL = {"nodule": "Lung nodule", "pleural effusion": "Pleural effusion", "cardiomegaly": "Cardiomegaly",
              "arterial wall calcification": "Arterial wall calcification"}
NORMAL_SAYS_ABSENT = {"Heart contour and size are normal.": "Cardiomegaly",
                      "no mass or nodule was detected in either lung": "Lung nodule",
                      "No pleural effusion or pleural thickening was detected.": "Pleural effusion",
                      "No lymph node in pathological size and appearance was detected": "Lymphadenopathy"}


@pytest.fixture(scope="module")
def synthetic(synthetic_release):
    """(grounded reports, labels table, ground truth) of every CT-RATE volume of the synthetic release."""
    ds = Path(synthetic_release.ctrate_root) / "dataset"
    reports = pa.concat_tables([read_ctrate_reports(p) for p in sorted((ds / "radiology_text_reports").glob("*.csv"))])
    labels = pa.concat_tables([read_ctrate_labels(p) for p in sorted((ds / "multi_abnormality_labels").glob("*.csv"))])
    truth = json.loads(synthetic_release.ground_truth_path.read_text())["volumes"]
    return ground_reports(reports, progress=False), labels, truth


def _expected(entry: dict, labels: dict) -> dict:
    """The right check of every label of one synthetic volume, from its lesions and its report's templates."""
    present = {KIND_LABEL[lesion["kind"]] for lesion in entry["lesions"]}
    absent = {label for text, label in NORMAL_SAYS_ABSENT.items() if text in entry["findings"]}
    out = {}
    for label in CTRATE_LABELS:
        said = "present" if label in present else "absent" if label in absent else None
        value = labels[label]
        out[label] = None if value is None else "not_mentioned" if said is None else (
            "agrees" if (said == "present") == bool(value) else "disagrees")
    return out


def test_every_check_is_right_on_the_synthetic_release(synthetic):
    grounded, labels, truth = synthetic
    by_stem = {r["volume_name"]: r for r in labels.to_pylist()}
    seen = {c: 0 for c in (*CHECKS, None)}
    for stem, report in grounded.items():
        got = label_checks_for(report, by_stem[stem])
        assert got == _expected(truth[stem], by_stem[stem]), stem
        for c in got.values():
            seen[c] += 1
    # the release exercises present and absent mentions, unmentioned labels and a blank label value
    assert seen["agrees"] > len(grounded) and seen["not_mentioned"] > 10 * len(grounded) and seen[None] >= 1
    assert seen["disagrees"] == 0
    mentions = [label_mentions(r) for r in grounded.values()]
    for label in ("Lung nodule", "Pleural effusion", "Cardiomegaly"):
        assert {m[label] for m in mentions} == {"present", "absent"}, label


def test_a_flipped_label_disagrees(synthetic):
    grounded, labels, truth = synthetic
    stem = next(s for s, e in truth.items() if {l["kind"] for l in e["lesions"]} == {"nodule", "pleural effusion"})
    flipped = {**{r["volume_name"]: r for r in labels.to_pylist()}[stem], "Lung nodule": 0, "Cardiomegaly": 1,
               "Emphysema": 1}
    got = label_checks_for(grounded[stem], flipped)
    assert got["Lung nodule"] == "disagrees"  # the report has a nodule, the label says none
    assert got["Cardiomegaly"] == "disagrees"  # "heart contour and size are normal", the label says cardiomegaly
    assert got["Emphysema"] == "not_mentioned"  # the report says nothing of it: no disagreement either way
    assert got["Pleural effusion"] == "agrees"
    assert [k for k, v in got.items() if v == "disagrees"] == ["Cardiomegaly", "Lung nodule"]


@pytest.mark.parametrize("text", ["No pleural effusion.", "No pleural effusion was detected.",
                                  "Pleural effusion was not observed.", "There is no effusion in the pleural space."])
def test_a_negated_mention_agrees_with_label_0(text):
    report = GroundedReport("train_1_a_1", ground_report(text))
    labels = dict.fromkeys(CTRATE_LABELS, 0)
    assert label_mentions(report)["Pleural effusion"] == "absent"
    assert label_checks_for(report, labels)["Pleural effusion"] == "agrees"
    assert label_checks_for(report, {**labels, "Pleural effusion": 1})["Pleural effusion"] == "disagrees"


def test_anatomy_and_sentence_cues_decide():
    def said(text: str) -> dict:
        return {k: v for k, v in label_mentions([analyze_sentence(text)]).items() if v}

    # an effusion grounded in the heart is pericardial, not pleural; a nodule of the thyroid is no lung nodule
    assert said("Minimal pericardial effusion is observed.") == {"Pericardial effusion": "present"}
    assert "Lung nodule" not in said("A hypodense nodule in the left lobe of the thyroid gland.")
    # plaques named with the coronary arteries count for both arterial labels
    assert said("Calcified plaques are seen in the aortic wall and in the coronary arteries.") == {
        "Arterial wall calcification": "present", "Coronary artery wall calcification": "present"}
    # grounding keeps no finding of devices or of an increase in heart size: the vocabulary's sentence cues do
    assert said("A port catheter extending to the right atrium is observed.") == {"Medical material": "present"}
    assert said("An increase in heart size is observed.") == {"Cardiomegaly": "present"}
    assert said("No catheter is seen.") == {"Medical material": "absent"}
    # lymph nodes below pathological size are no lymphadenopathy; a 15 mm short axis is
    assert said("Lymph nodes with short axes below 1 cm that did not reach pathological dimensions are observed.") == {}
    assert said("A lymph node with a short axis of 15 mm is observed in the mediastinum.") == {
        "Lymphadenopathy": "present"}


def test_present_anywhere_wins_and_missing_labels():
    report = GroundedReport("train_1_a_1", ground_report("No pleural effusion on the left.",
                                                         "Right pleural effusion."))
    assert label_mentions(report)["Pleural effusion"] == "present"
    assert label_checks_for(report, None) is None
    checks = label_checks_for(report, {"Pleural effusion": 1})  # labels absent from the row: no check
    assert checks["Pleural effusion"] == "agrees" and checks["Lung nodule"] is None


def test_add_label_checks_joins_by_volume(synthetic):
    grounded, labels, _ = synthetic
    stems = list(grounded)[:3]
    quality = {s: {"volume_name": s, "flags": []} for s in stems + ["train_99_a_1"]}
    out = add_label_checks(quality, {s: grounded[s] for s in stems}, labels)
    assert out["train_99_a_1"]["label_checks"] is None  # no grounded report: no checks
    assert all(set(out[s]["label_checks"]) == set(CTRATE_LABELS) and out[s]["flags"] == [] for s in stems)
    by_stem = {r["volume_name"]: r for r in labels.to_pylist()}
    assert all(out[s]["label_checks"] == label_checks_for(grounded[s], by_stem[s]) for s in stems)
    assert add_label_checks(quality, grounded, None)[stems[0]]["label_checks"] is None  # a release without labels
