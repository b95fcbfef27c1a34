"""CT-RATE's 18 abnormality labels checked against the report's grounded findings (part of the quality stage).

CT-RATE's labels were predicted from the report text by a classifier, so some disagree with the text. For each
label, :func:`label_mentions` reads what the grounded report (:mod:`~radgenome_hf.generate.ground`: finding
phrases with their anatomy paths, negated phrases with their sentence's paths) says: the abnormality is
``present``, ``absent`` (negated, or a normal statement such as a normal heart size), or not mentioned (``None``).
:func:`label_checks_for` compares that with the label values:

| check | label 1 | label 0 |
| --- | --- | --- |
| mentioned present | ``agrees`` | ``disagrees`` |
| mentioned absent | ``disagrees`` | ``agrees`` |
| not mentioned | ``not_mentioned`` | ``not_mentioned`` |

and ``None`` where the label value is blank. A mention as present anywhere in the report (findings or impressions)
wins over a mention as absent. The label -> finding vocabulary (synonyms, the anatomy each finding must be
grounded in, the sentence cues of what grounding keeps no finding of, such as devices) is data:
``radgenome_hf/data/label_vocabulary.json``, read by :func:`radgenome_hf.ontology.get_label_vocabulary`.

>>> from radgenome_hf.generate.ground import GroundedReport, ground_report
>>> report = GroundedReport("train_1_a_1", ground_report(
...     "Heart contour and size are normal. No pleural effusion was detected. A 4 mm nodule in the right upper lobe."))
>>> m = label_mentions(report)
>>> m["Cardiomegaly"], m["Pleural effusion"], m["Lung nodule"], m["Emphysema"]
('absent', 'absent', 'present', None)
>>> labels = dict.fromkeys(m, 0) | {"Lung nodule": 1, "Pleural effusion": 1}
>>> c = label_checks_for(report, labels)
>>> c["Cardiomegaly"], c["Pleural effusion"], c["Lung nodule"], c["Emphysema"]
('agrees', 'disagrees', 'agrees', 'not_mentioned')
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Iterable, Mapping, Sequence

from ..ontology import get_label_vocabulary
from .anatomy_pairs import labels_by_volume
from .ground import _CLAUSE_SPLIT, _NEG_AFTER, _NEG_BEFORE, GroundedReport, Sentence, _norm_text

__all__ = ["CHECKS", "MENTIONS", "label_mentions", "sentence_mentions", "label_checks_for", "add_label_checks",
           "disagrees", "label_disagreements"]

CHECKS = ("agrees", "disagrees", "not_mentioned")
MENTIONS = ("present", "absent")


@dataclass(frozen=True)
class _Rule:
    findings: re.Pattern[str]
    not_: re.Pattern[str] | None
    anatomy: tuple[str, ...]
    when: re.Pattern[str] | None
    unless: re.Pattern[str] | None

    def matches(self, phrase: str, paths: Sequence[str], low: str) -> bool:
        """Whether a finding phrase grounded at ``paths``, in the lower-case sentence ``low``, names the label."""
        if not self.findings.search(phrase) or (self.not_ is not None and self.not_.search(phrase)):
            return False
        if self.anatomy and not any(p == a or p.startswith(a + "/") for p in paths for a in self.anatomy):
            return False
        if self.when is not None and not self.when.search(low):
            return False
        return self.unless is None or not self.unless.search(low)


@dataclass(frozen=True)
class _Label:
    rules: tuple[_Rule, ...]
    text: re.Pattern[str] | None
    absent_text: re.Pattern[str] | None


def _any_of(patterns: Iterable[str]) -> re.Pattern[str] | None:
    patterns = list(patterns)
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


@lru_cache(maxsize=1)
def _vocabulary() -> dict[str, _Label]:
    out = {}
    for label, entry in get_label_vocabulary().items():
        rules = tuple(_Rule(_any_of(r["findings"]), _any_of(r.get("not", ())), tuple(r.get("anatomy", ())),  # type: ignore[arg-type]
                            re.compile(r["when"]) if "when" in r else None,
                            re.compile(r["unless"]) if "unless" in r else None) for r in entry["rules"])
        out[label] = _Label(rules, _any_of(entry["text"]), _any_of(entry["absent_text"]))
    return out


def _negated_at(low: str, at: int) -> bool:
    """Whether the clause of ``low`` around position ``at`` negates what is written there ("no catheter",
    "a catheter was not observed"), with the grounding's own negation cues."""
    start, end = 0, len(low)
    for sep in _CLAUSE_SPLIT.finditer(low):
        if sep.end() <= at:
            start = sep.end()
        elif sep.start() > at:
            end = sep.start()
            break
    return bool(_NEG_BEFORE.search(low, start, at) or _NEG_AFTER.search(low, at, end))


def sentence_mentions(sentence: Sentence) -> dict[str, str]:
    """``{label: "present" | "absent"}`` for the labels one grounded sentence mentions.

    >>> from radgenome_hf.generate.ground import analyze_sentence
    >>> sentence_mentions(analyze_sentence("No pericardial or pleural effusion was detected."))
    {'Pericardial effusion': 'absent', 'Pleural effusion': 'absent'}
    >>> sentence_mentions(analyze_sentence("A central venous catheter is seen on the right."))
    {'Medical material': 'present'}
    """
    low = _norm_text(sentence.text)
    positives = [(_norm_text(f), paths) for f, paths in sentence.finding_paths]
    negatives = [(_norm_text(f), sentence.paths) for f in sentence.negated]  # judged at the sentence's paths
    out: dict[str, str] = {}
    for label, lab in _vocabulary().items():
        present = any(rule.matches(f, paths, low) for f, paths in positives for rule in lab.rules)
        absent = any(rule.matches(f, paths, low) for f, paths in negatives for rule in lab.rules)
        if lab.text is not None:
            for m in lab.text.finditer(low):
                if _negated_at(low, m.start()):
                    absent = True
                else:
                    present = True
        if lab.absent_text is not None and lab.absent_text.search(low):
            absent = True
        if present or absent:
            out[label] = "present" if present else "absent"
    return out


def label_mentions(report: GroundedReport | Sequence[Sentence]) -> dict[str, str | None]:
    """``{label: "present" | "absent" | None}`` for all 18 labels: what the whole report says (``None``: not
    mentioned). A mention as present anywhere wins over one as absent."""
    sentences = report.sentences if isinstance(report, GroundedReport) else report
    out: dict[str, str | None] = dict.fromkeys(_vocabulary())
    for s in sentences:
        for label, said in sentence_mentions(s).items():
            if out[label] != "present":
                out[label] = said
    return out


def label_checks_for(report: GroundedReport | Sequence[Sentence],
                     labels: Mapping[str, int | None] | None) -> dict[str, str | None] | None:
    """``{label: "agrees" | "disagrees" | "not_mentioned" | None}`` of one report and its CT-RATE label values
    (``None`` for a blank label value; ``None`` altogether when the volume has no labels row)."""
    if labels is None:
        return None
    out: dict[str, str | None] = {}
    for label, said in label_mentions(report).items():
        value = labels.get(label)
        if value is None:
            out[label] = None
        elif said is None:
            out[label] = "not_mentioned"
        else:
            out[label] = "agrees" if (said == "present") == bool(value) else "disagrees"
    return out


def add_label_checks(quality: Mapping[str, dict], grounded: Mapping[str, GroundedReport],
                     labels: Any) -> dict[str, dict]:
    """The quality rows (``{volume stem: row}``) with a ``label_checks`` field each: the checks of the volume's
    grounded report against its CT-RATE labels (``labels``: a ``tables.read_ctrate_labels`` table, a mapping
    ``{volume: {label: 0/1}}``, or ``None``); ``None`` for a volume without a grounded report or a labels row."""
    by_stem = labels_by_volume(labels)
    return {s: {**row, "label_checks": label_checks_for(grounded[s], by_stem.get(s)) if s in grounded else None}
            for s, row in quality.items()}


def disagrees(checks: Mapping[str, str | None] | None) -> bool:
    """Whether any label of a report disagrees with its text (``checks``: a row's ``quality["label_checks"]``)."""
    return bool(checks) and "disagrees" in checks.values()  # type: ignore[union-attr]


def label_disagreements(checks: Mapping[str, Sequence[Mapping[str, str | None] | None]]) -> dict[str, dict[str, int]]:
    """Counts per split (``checks``: split -> the reports' ``label_checks``): reports checked, reports with any
    label disagreeing, and reports disagreeing label by label (the dataset card's table: a row per count).

    >>> label_disagreements({"train": [{"Cardiomegaly": "disagrees", "Lung nodule": "agrees"}, None,
    ...                                 {"Cardiomegaly": "agrees", "Lung nodule": "not_mentioned"}]})["any label"]
    {'train': 1}
    """
    out: dict[str, dict[str, int]] = {"reports checked": {}, "any label": {}}
    for split, rows in checks.items():
        rows = [r for r in rows if r]
        out["reports checked"][split] = len(rows)
        out["any label"][split] = sum(disagrees(r) for r in rows)
        for label in _vocabulary():
            out.setdefault(label, {})[split] = sum(r.get(label) == "disagrees" for r in rows)
    return out
