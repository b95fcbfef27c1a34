"""End to end on the development set: real CT-RATE reports (patients 1-120) -> ground -> vqa -> evaluate
against the real RadGenome rows of the same volumes. The floors sit slightly below the figures reached, so a
change that makes grounding worse fails here. The data are read from ``../shared/reference`` at test time and
never copied into the repository; the test skips when they are absent."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REFERENCE = Path(__file__).resolve().parents[1] / ".." / "shared" / "reference"
REPORTS = REFERENCE / "ctrate-dev-reports" / "reports.csv"
ROWS = REFERENCE / "radgenome-real-sample"

pytestmark = pytest.mark.skipif(
    not (REPORTS.is_file() and (ROWS / "train_vqa_abnormality.csv").is_file()),
    reason=f"development data not found under {REFERENCE.resolve()} (ctrate-dev-reports/reports.csv and "
           "radgenome-real-sample/); these tests need the team's shared reference folder",
)

#: (measure, floor) - reached: path F1 0.908, region F1 0.931, most specific F1 0.839, finding recall 0.852,
#: finding precision 0.838, size precision 0.782, size recall 0.958, disorders F1 0.801 (reference phrases from
#: negated statements dropped).
FLOORS = {
    "paths_f1": 0.90, "region_f1": 0.92, "specific_f1": 0.83, "finding_recall": 0.845,
    "finding_precision": 0.83, "size_precision": 0.76, "size_recall": 0.93, "disorders_f1": 0.79,
}


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    from radgenome_hf.generate.evaluate import evaluate, rebuild_from_reports

    out = rebuild_from_reports(REPORTS, tmp_path_factory.mktemp("rebuilt"))
    return out, evaluate(out, ROWS, reports=REPORTS, drop_negated=True)


def test_dev_set_does_not_regress(dev):
    _, r = dev
    assert r.volumes == 165 and r.only_reference == 0
    got = {"paths_f1": r.paths.f1, "region_f1": r.region.f1, "specific_f1": r.specific.f1,
           "finding_recall": r.finding_recall, "finding_precision": r.finding_precision,
           "size_precision": r.sizes.precision, "size_recall": r.sizes.recall, "disorders_f1": r.disorders.f1}
    low = {k: round(v, 3) for k, v in got.items() if v < FLOORS[k]}
    assert not low, f"below the floor: {low}\n{r.summary()}"
    # about 6 % of RadGenome's abnormal phrases come from negated statements; they are dropped, not copied
    assert 0.03 < r.dropped_negated / r.reference_phrases < 0.10
    assert r.rebuilt_negated / r.rebuilt_phrases < 0.02


def test_dev_set_negation_and_no_crash():
    from radgenome_hf.generate.evaluate import read_reports
    from radgenome_hf.generate.ground import ground_report

    # "No significant difference ... in the metastases" states a stable finding (RadGenome's rows list it): no
    # negated statement
    opening = re.compile(r"^(?:no|there (?:is|are|was|were) no|neither)\b"
                         r"(?! (?:significant |apparent |obvious |marked )?(?:difference|change)s?\b)", re.I)
    contrast = re.compile(r"\b(?:but|however|whereas|except|although|apart from)\b|;")
    sentences = turned = 0
    for findings, impressions in read_reports(REPORTS).values():
        for s in ground_report(findings, impressions):
            sentences += 1
            if opening.match(s.text) and not contrast.search(s.text) and s.findings:
                turned += 1
    assert sentences > 2500
    assert turned <= 0.001 * sentences


def test_lexicon_holds_words_not_report_text():
    from radgenome_hf.ontology import get_lexicon_data

    data = get_lexicon_data()
    strings = list(data["findings"]) + list(data["finding_anatomy"]) + list(data["anatomy_terms"])
    strings += [r for rules in (data["region_priority"], data["node_priority"])
                for k, v in rules.items() for r in [k, *v]]
    assert all(len(s) <= 40 and len(s.split()) <= 3 for s in strings)
    text = REPORTS.read_text("utf-8").lower()
    sentences = {s.strip() for s in re.split(r"(?<=[.;])\s+", text) if len(s.strip()) >= 60}
    blob = json.dumps(data).lower()
    assert not any(s in blob for s in sentences)
