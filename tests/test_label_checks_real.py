"""The CT-RATE label checks on the real development reports (patients 1-120, read from ``../shared/reference`` at test
time, never copied into the repository; skipped without them). No CT-RATE labels are available for them, so the
floors guard how many reports the checks find mentioning each label (present / absent), set a little below the
figures reached (``python benchmarks/bench_quality.py --only labels``, whose ``--label-sample 30`` prints decisions
to check by hand)."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import pytest

REPORTS = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference" / "ctrate-dev-reports" / "reports.csv"

pytestmark = pytest.mark.skipif(not REPORTS.is_file(), reason=f"development reports not found at {REPORTS.resolve()}; "
                                "these tests need the team's shared reference folder")

#: (label, mention) -> floor; reached: 38, 33, 26, 14 / 117, 111 absent, 17 / 114, 70 / 17, 30 / 76, 24, 23, 43
FLOORS = {("Medical material", "present"): 34, ("Arterial wall calcification", "present"): 29,
          ("Coronary artery wall calcification", "present"): 23, ("Cardiomegaly", "present"): 12,
          ("Cardiomegaly", "absent"): 105, ("Pericardial effusion", "absent"): 100,
          ("Lymphadenopathy", "present"): 15, ("Lymphadenopathy", "absent"): 100, ("Lung nodule", "present"): 63,
          ("Lung nodule", "absent"): 15, ("Pleural effusion", "present"): 27, ("Pleural effusion", "absent"): 68,
          ("Emphysema", "present"): 21, ("Hiatal hernia", "present"): 20, ("Atelectasis", "present"): 38}


@pytest.fixture(scope="module")
def mentions():
    from radgenome_hf.generate.evaluate import read_reports
    from radgenome_hf.generate.ground import GroundedReport, ground_report
    from radgenome_hf.generate.label_checks import label_mentions

    return {stem: label_mentions(GroundedReport(stem, ground_report(f, i)))
            for stem, (f, i) in read_reports(REPORTS).items()}


def test_mentions_on_the_dev_reports_do_not_regress(mentions):
    from radgenome_hf.io.tables import CTRATE_LABELS

    assert len(mentions) == 165 and all(list(m) == list(CTRATE_LABELS) for m in mentions.values())
    counts = Counter((label, said) for m in mentions.values() for label, said in m.items())
    low = {k: counts[k] for k, floor in FLOORS.items() if counts[k] < floor}
    assert not low, f"below the floor: {low}"
    # every label is mentioned somewhere in the development reports, and none in every report
    for label in CTRATE_LABELS:
        assert 0 < counts[(label, "present")] + counts[(label, "absent")] < len(mentions), label


def test_vocabulary_holds_patterns_not_report_text():
    from importlib import resources

    text = REPORTS.read_text("utf-8").lower()
    sentences = {s.strip() for s in re.split(r"(?<=[.;])\s+", text) if len(s.strip()) >= 40}
    blob = resources.files("radgenome_hf").joinpath("data/label_vocabulary.json").read_text("utf-8").lower()
    assert not any(s in blob for s in sentences)
    raw = json.loads(blob)["labels"]
    patterns = [p for e in raw.values() for r in e.get("rules", []) for k in ("findings", "not") for p in r.get(k, [])]
    patterns += [p for e in raw.values() for k in ("text", "absent_text") for p in e.get(k, [])]
    assert all(len(p) <= 200 for p in patterns)
