"""Evaluate a regenerated release against a reference release (stage 5, *evaluate*).

Both releases are read in the upstream layout: a folder holding ``<split>_vqa_abnormality.csv``,
``<split>_vqa_size.csv``, ``<split>_case_disorders.csv`` (and ``<split>_region_report.csv`` when present),
directly or under ``dataset/radgenome_files/`` or ``RadGenome-ChestCT/dataset/radgenome_files/``. Only the
volumes present in both are compared. The measures:

- ``paths``: precision / recall / F1 over the abnormal (volume, anatomy path) pairs, every level of every path
  (the ``vqa_location`` rows); ``region``: the same over (volume, top-level region); ``specific``: over
  (volume, most specific path), i.e. abnormal paths with no abnormal descendant; ``per_region``: ``paths``
  restricted to one top-level region.
- ``findings``: finding phrases at the same (volume, path): recall = reference phrases matched by a rebuilt
  phrase there, precision = rebuilt phrases matched by a reference phrase there.
- ``sizes``: (volume, size) pairs, sizes compared in mm (``"2 cm"`` = ``"20 mm"``).
- ``disorders``: case-disorder phrases per volume.
- ``region_report``: the (volume, path) rows of the region reports (whole-scan rows included), when both
  releases have one.

Phrases match forgivingly (:func:`phrases_match`): they share a content-word stem (the first 5 letters of a
word), where laterality, sizes, numbers, quantifiers and anatomy words do not count. So ``"passive atelectatic
changes"`` matches ``"atelectasis"`` and ``"thickening of the bronchial wall"`` matches ``"bronchial wall
thickening"``, but ``"pleural effusion"`` does not match ``"pleural thickening"``.

With the reports (``reports=``, columns ``VolumeName, Findings_EN, Impressions_EN``) and ``drop_negated=True``,
reference phrases that the report states only negatively (every sentence clause mentioning all its stems is
negated, e.g. ``"pericardial effusion"`` from "Pericardial effusion-thickening was not observed") are dropped
before comparing; the same test counts the rebuilt phrases stated only negatively (``rebuilt_negated``).

>>> phrases_match("passive atelectatic changes", "atelectasis")
True
>>> phrases_match("left pleural effusion", "pleural thickening")
False
>>> prf(tp=3, n_pred=4, n_ref=6)
PRF(tp=3, n_pred=4, n_ref=6)
>>> r = prf(3, 4, 6); (r.precision, r.recall, round(r.f1, 3))
(0.75, 0.5, 0.6)
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

from ..names import VolumeName
from ..ontology import get_ontology, normalize_path
from ..io.tables import read_case_disorders, read_region_report, read_vqa

__all__ = [
    "PRF", "prf", "EvaluationResult", "evaluate", "phrase_stems", "phrases_match", "split_phrases",
    "size_mm", "read_release", "rebuild_from_reports", "read_reports", "negated_only", "report_segments",
    "write_json",
]

NO_FINDINGS = "no findings"

# ------------------------------------------------------------------------------------------------
# phrase matching
# ------------------------------------------------------------------------------------------------

#: Words that never decide a match: laterality, quantity, degree, generic heads and anatomy words.
_IGNORED = frozenset(
    """left right both bilateral bilaterally sided side one two three several multiple many few some numerous
    minimal mild minor slight small smaller large larger millimetric milimetric centimetric tiny marked moderate
    significant nonspecific non specific diffuse focal patchy scattered localized local areas area changes
    change appearance appearances pattern findings finding signs sign view views level levels place places
    lung lungs pulmonary parenchyma parenchymal lobe lobes lobar upper lower middle segment segments segmental
    subsegmental pleural pleura subpleural pericardial mediastinal mediastinum hilar heart cardiac aorta aortic
    liver hepatic renal kidney kidneys thyroid breast bone bones vertebra vertebrae vertebral rib ribs
    abdominal abdomen thoracic chest wall walls tissue tissues increase increased increases with and the of in
    on at to from for an a""".split()
)
_SIZE_TOKEN = re.compile(r"\d+(?:[.,]\d+)?\s*(?:x\s*\d+(?:[.,]\d+)?\s*)*(?:mm|cm|in)?\b")


def phrase_stems(phrase: str) -> frozenset[str]:
    """Content-word stems of a phrase (first 5 letters), laterality, sizes and anatomy words left out.

    >>> sorted(phrase_stems("Bilateral 6x4 mm calcified nodules in the right lung"))
    ['calci', 'nodul']
    """
    text = _SIZE_TOKEN.sub(" ", phrase.lower())
    words = re.findall(r"[a-z]+", text)
    return frozenset(w[:5] for w in words if len(w) >= 3 and w not in _IGNORED)


def phrases_match(a: str, b: str) -> bool:
    """Whether two finding phrases name the same finding (they share a content-word stem)."""
    return bool(phrase_stems(a) & phrase_stems(b))


def split_phrases(cell: str | None) -> list[str]:
    """Finding phrases of an ``Abnormality`` / ``Disorders`` cell (comma-joined); ``no findings`` -> ``[]``.

    >>> split_phrases("ground glass areas, atelectasis"), split_phrases("no findings")
    (['ground glass areas', 'atelectasis'], [])
    """
    if cell is None:
        return []
    out = [p.strip() for p in str(cell).split(",")]
    return [p for p in out if p and p.lower() != NO_FINDINGS]


_SIZE_RE = re.compile(r"(\d+(?:[.,]\d+)?)\s*(mm|cm|in)\b", re.I)
_UNIT = {"mm": 1.0, "cm": 10.0, "in": 25.4}


def size_mm(text: str) -> tuple[float, ...]:
    """Dimensions of a ``Size`` cell in mm, for comparing sizes written in different units.

    >>> size_mm("2 cm"), size_mm("6x4 mm"), size_mm("12-14 mm")
    ((20.0,), (6.0, 4.0), (12.0, 14.0))
    """
    t = text.lower().replace(",", ".")
    m = _SIZE_RE.search(t)
    if not m:
        return ()
    scale = _UNIT[m.group(2).lower()]
    nums = re.findall(r"\d+(?:\.\d+)?", t[: m.end()])
    return tuple(round(float(n) * scale, 2) for n in nums)


# ------------------------------------------------------------------------------------------------
# precision / recall
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PRF:
    """Counts behind a precision / recall / F1 figure: true positives, predicted, reference."""

    tp: int
    n_pred: int
    n_ref: int

    @property
    def precision(self) -> float:
        return self.tp / self.n_pred if self.n_pred else 0.0

    @property
    def recall(self) -> float:
        return self.tp / self.n_ref if self.n_ref else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {"precision": round(self.precision, 4), "recall": round(self.recall, 4), "f1": round(self.f1, 4),
                "tp": self.tp, "predicted": self.n_pred, "reference": self.n_ref}


def prf(tp: int, n_pred: int, n_ref: int) -> PRF:
    """A :class:`PRF` from counts."""
    return PRF(tp, n_pred, n_ref)


def _f1(p: float, r: float) -> float:
    return 2 * p * r / (p + r) if p + r else 0.0


def _set_prf(pred: set, ref: set) -> PRF:
    return PRF(len(pred & ref), len(pred), len(ref))


# ------------------------------------------------------------------------------------------------
# reading releases
# ------------------------------------------------------------------------------------------------

#: ``{volume stem: {path: [phrases]}}`` - abnormal rows only.
Findings = dict[str, dict[str, list[str]]]


@dataclass
class Release:
    """The comparable content of one release: abnormal findings per path, sizes and disorders per volume."""

    findings: Findings = field(default_factory=dict)
    examined: dict[str, set[str]] = field(default_factory=dict)  # every (volume, path) row, normal or not
    sizes: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # stem -> [(path, size)]
    disorders: dict[str, list[str]] = field(default_factory=dict)
    region_report: set[tuple[str, str]] | None = None  # (volume, path) of the region report, if there is one

    @property
    def volumes(self) -> set[str]:
        return set(self.examined) | set(self.disorders)


def _files(folder: Path, kind: str) -> list[Path]:
    for base in (folder, folder / "dataset" / "radgenome_files", folder / "RadGenome-ChestCT" / "dataset" / "radgenome_files"):
        found = sorted(p for p in base.glob(f"*_{kind}.csv") if re.match(r"(train|valid|validation)_", p.name))
        if found:
            return found
    return []


def read_release(folder: str | Path) -> Release:
    """Read the VQA CSVs, case disorders (and whether a region report exists) of a release folder."""
    folder = Path(folder)
    abn = _files(folder, "vqa_abnormality")
    if not abn:
        raise FileNotFoundError(f"{folder}: no <split>_vqa_abnormality.csv (looked in the folder, dataset/"
                                "radgenome_files/ and RadGenome-ChestCT/dataset/radgenome_files/)")
    rel = Release()
    reports = _files(folder, "region_report")
    if reports:
        rel.region_report = {(r["volume_name"], r["anatomy"]) for p in reports
                             for r in read_region_report(p).select(["volume_name", "anatomy"]).to_pylist()}
    for p in abn:
        for r in read_vqa(p, "abnormality").to_pylist():
            stem, path = r["volume_name"], normalize_path(r["anatomy"])
            rel.examined.setdefault(stem, set()).add(path)
            phrases = split_phrases(r["abnormality"])
            if phrases and path:
                bucket = rel.findings.setdefault(stem, {}).setdefault(path, [])
                bucket.extend(x for x in phrases if x not in bucket)
    for p in _files(folder, "vqa_size"):
        for r in read_vqa(p, "size").to_pylist():
            rel.sizes.setdefault(r["volume_name"], []).append((normalize_path(r["anatomy"]), r["size"]))
    for p in _files(folder, "case_disorders"):
        for r in read_case_disorders(p).to_pylist():
            rel.disorders[r["volume_name"]] = split_phrases(r["disorders"])
    return rel


def read_reports(path: str | Path) -> dict[str, tuple[str, str]]:
    """``{volume stem: (findings, impressions)}`` of a CSV with ``VolumeName, Findings_EN, Impressions_EN``."""
    out = {}
    with open(path, newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            out[VolumeName.parse(r["VolumeName"]).stem] = (r.get("Findings_EN") or "", r.get("Impressions_EN") or "")
    return out


# ------------------------------------------------------------------------------------------------
# negated-only phrases
# ------------------------------------------------------------------------------------------------

_NEG_BEFORE = re.compile(r"\b(no|without|neither|nor|absence of|absent|free of|negative for)\b")
_NEG_AFTER = re.compile(r"\b(not|absent|excluded|ruled out)\b")
_SEGMENT = re.compile(r";|\bbut\b|\bhowever\b|\bwhereas\b|\balthough\b|\bwhile\b|\bexcept\b|\bapart from\b")


_MENTION_IGNORED = frozenset(w[:5] for w in """left right both bilateral bilaterally sided several multiple
    minimal mild millimetric small large with and the of in on at to from for""".split())


def _stems_at(text: str) -> list[tuple[int, str]]:
    return [(m.start(), m.group(0)[:5]) for m in re.finditer(r"[a-z]{3,}", text)]


def report_segments(text: str) -> list[str]:
    """Lower-case sentence segments of a report (sentences cut at ``;``, ``but``, ``however`` ...)."""
    from .ground import split_sentences

    return [seg for s in split_sentences(text) for seg in _SEGMENT.split(s.lower()) if seg.strip()]


def negated_only(phrase: str, segments: list[str]) -> bool:
    """Whether a report (its :func:`report_segments`) states ``phrase`` only negatively.

    A segment mentions the phrase when it holds the stem of every word of it (anatomy words included:
    "pericardial effusion" is not "pleural effusion"; laterality, quantity and sizes left out); the mention is negated when a
    negation (``no``, ``without`` ...) comes before it in the segment, or ``not`` / ``absent`` follows it in the
    same comma clause. True when the phrase is mentioned and every mention is negated.

    >>> segs = report_segments("Pericardial effusion or thickening is not seen. A nodule, pleural effusion.")
    >>> negated_only("pericardial effusion", segs), negated_only("nodule", segs), negated_only("mass", segs)
    (True, False, False)
    """
    stems = frozenset(st for _, st in _stems_at(_SIZE_TOKEN.sub(" ", phrase.lower())) if st not in _MENTION_IGNORED)
    if not stems:
        return False
    mentioned = False
    for seg in segments:
        at = _stems_at(seg)
        if not stems <= {s for _, s in at}:
            continue
        mentioned = True
        first = min(i for i, s in at if s in stems)
        last = max(i for i, s in at if s in stems)
        comma_end = seg.find(",", last)
        after = seg[last:] if comma_end < 0 else seg[last:comma_end]
        if not (_NEG_BEFORE.search(seg[:first]) or _NEG_AFTER.search(after)):
            return False
    return mentioned


# ------------------------------------------------------------------------------------------------
# evaluation
# ------------------------------------------------------------------------------------------------


@dataclass
class EvaluationResult:
    """Agreement of a rebuilt release with a reference release (see the module docstring)."""

    volumes: int
    only_rebuilt: int
    only_reference: int
    paths: PRF
    region: PRF
    specific: PRF
    per_region: dict[str, PRF]
    findings: PRF  # tp counts matched reference phrases; precision uses matched rebuilt phrases
    findings_matched_pred: int
    sizes: PRF
    disorders: PRF
    region_report: PRF | None = None  # (volume, path) rows of the region reports, when both releases have one
    dropped_negated: int = 0
    reference_phrases: int = 0
    rebuilt_negated: int | None = None
    rebuilt_phrases: int = 0

    @property
    def finding_recall(self) -> float:
        return self.findings.recall

    @property
    def finding_precision(self) -> float:
        return self.findings_matched_pred / self.findings.n_pred if self.findings.n_pred else 0.0

    def to_dict(self) -> dict:
        return {
            "volumes": self.volumes, "only_rebuilt": self.only_rebuilt, "only_reference": self.only_reference,
            "paths": self.paths.to_dict(), "region": self.region.to_dict(), "specific": self.specific.to_dict(),
            "per_region": {k: v.to_dict() for k, v in sorted(self.per_region.items())},
            "findings": {"recall": round(self.finding_recall, 4), "precision": round(self.finding_precision, 4),
                         "reference_matched": self.findings.tp, "reference": self.findings.n_ref,
                         "rebuilt_matched": self.findings_matched_pred, "rebuilt": self.findings.n_pred},
            "sizes": self.sizes.to_dict(), "disorders": self.disorders.to_dict(),
            "region_report": self.region_report.to_dict() if self.region_report else None,
            "dropped_negated": self.dropped_negated, "reference_phrases": self.reference_phrases,
            "rebuilt_negated": self.rebuilt_negated, "rebuilt_phrases": self.rebuilt_phrases,
        }

    def summary(self) -> str:
        """A plain-text table of the figures."""
        def line(name: str, r: PRF) -> str:
            return f"{name:<34} {r.precision:6.3f} {r.recall:6.3f} {r.f1:6.3f}   ({r.tp}/{r.n_pred} pred, {r.n_ref} ref)"

        out = [f"volumes compared: {self.volumes} (only rebuilt: {self.only_rebuilt}, only reference: "
               f"{self.only_reference})", f"{'measure':<34} {'P':>6} {'R':>6} {'F1':>6}",
               line("(volume, path) every level", self.paths), line("(volume, top-level region)", self.region),
               line("(volume, most specific path)", self.specific)]
        for k, v in sorted(self.per_region.items()):
            out.append(line(f"  region {k}", v))
        out.append(f"{'findings at the same path':<34} {self.finding_precision:6.3f} {self.finding_recall:6.3f} "
                   f"{_f1(self.finding_precision, self.finding_recall):6.3f}   ({self.findings.tp}/"
                   f"{self.findings.n_ref} ref matched, {self.findings_matched_pred}/{self.findings.n_pred} rebuilt)")
        out.append(line("sizes (volume, size in mm)", self.sizes))
        out.append(line("case disorders (phrases)", self.disorders))
        if self.region_report:
            out.append(line("region report (volume, path)", self.region_report))
        if self.dropped_negated:
            out.append(f"reference phrases dropped as negated: {self.dropped_negated} of {self.reference_phrases}")
        if self.rebuilt_negated is not None:
            out.append(f"rebuilt phrases stated only negatively: {self.rebuilt_negated} of {self.rebuilt_phrases}")
        return "\n".join(out)


def _specific(paths: Iterable[str]) -> set[str]:
    ps = set(paths)
    return {p for p in ps if not any(q.startswith(p + "/") for q in ps)}


def _drop_negated(findings: Findings, reports: Mapping[str, tuple[str, str]]) -> tuple[Findings, int, int]:
    """(findings without phrases stated only negatively, phrases dropped, phrases seen)."""
    out: Findings = {}
    dropped = seen = 0
    cache: dict[str, bool] = {}
    for stem, by_path in findings.items():
        rep = reports.get(stem)
        sents = report_segments(" ".join(rep)) if rep else []
        cache.clear()
        for path, phrases in by_path.items():
            keep = []
            for ph in phrases:
                seen += 1
                if ph not in cache:
                    cache[ph] = bool(sents) and negated_only(ph, sents)
                if cache[ph]:
                    dropped += 1
                else:
                    keep.append(ph)
            if keep:
                out.setdefault(stem, {})[path] = keep
    return out, dropped, seen


def _count_negated(findings: Findings, reports: Mapping[str, tuple[str, str]]) -> tuple[int, int]:
    """(distinct (volume, phrase) pairs stated only negatively, distinct pairs) of a release."""
    neg = total = 0
    for stem, by_path in findings.items():
        rep = reports.get(stem)
        sents = report_segments(" ".join(rep)) if rep else []
        for ph in {p for ps in by_path.values() for p in ps}:
            total += 1
            neg += bool(sents) and negated_only(ph, sents)
    return neg, total


def evaluate(rebuilt: str | Path | Release, reference: str | Path | Release, *,
             reports: str | Path | Mapping[str, tuple[str, str]] | None = None,
             drop_negated: bool = False) -> EvaluationResult:
    """Compare a rebuilt release with a reference release (folders or :class:`Release` objects).

    >>> import tempfile, pathlib
    >>> from radgenome_hf.io.tables import write_csv
    >>> def release(folder, rows):
    ...     write_csv(folder / "train_vqa_abnormality.csv", ("Volumename", "Anatomy", "Abnormality"), rows)
    ...     return folder
    >>> with tempfile.TemporaryDirectory() as d:
    ...     ref = release(pathlib.Path(d, "ref"), [("train_1_a_1.nii.gz", "lung", "nodule"),
    ...         ("train_1_a_1.nii.gz", "lung/lung", "nodule"), ("train_1_a_1.nii.gz", "pleura", "effusion")])
    ...     new = release(pathlib.Path(d, "new"), [("train_1_a_1.nii.gz", "lung", "nodules"),
    ...         ("train_1_a_1.nii.gz", "lung/lung", "nodules"), ("train_1_a_1.nii.gz", "heart", "no findings")])
    ...     r = evaluate(new, ref)
    >>> r.paths, r.region, round(r.paths.f1, 3), r.finding_recall, r.finding_precision
    (PRF(tp=2, n_pred=2, n_ref=3), PRF(tp=1, n_pred=1, n_ref=2), 0.8, 0.6666666666666666, 1.0)
    """
    new = rebuilt if isinstance(rebuilt, Release) else read_release(rebuilt)
    ref = reference if isinstance(reference, Release) else read_release(reference)
    rep = read_reports(reports) if isinstance(reports, (str, Path)) else reports
    common = new.volumes & ref.volumes
    ref_find = {k: v for k, v in ref.findings.items() if k in common}
    new_find = {k: v for k, v in new.findings.items() if k in common}
    dropped = 0
    ref_phrases = sum(len(ps) for v in ref_find.values() for ps in v.values())
    if drop_negated:
        if rep is None:
            raise ValueError("drop_negated needs the reports (reports=...)")
        ref_find, dropped, ref_phrases = _drop_negated(ref_find, rep)
    rebuilt_negated = None
    rebuilt_phrases = 0
    if rep is not None:
        rebuilt_negated, rebuilt_phrases = _count_negated(new_find, rep)

    onto = get_ontology()
    pred_paths = {(v, p) for v, by in new_find.items() for p in by}
    ref_paths = {(v, p) for v, by in ref_find.items() for p in by}
    region_of = onto.region_of
    per_region = {}
    for reg in sorted({region_of(p) for _, p in pred_paths | ref_paths}):
        per_region[reg] = _set_prf({x for x in pred_paths if region_of(x[1]) == reg},
                                   {x for x in ref_paths if region_of(x[1]) == reg})
    spec_pred = {(v, p) for v, by in new_find.items() for p in _specific(by)}
    spec_ref = {(v, p) for v, by in ref_find.items() for p in _specific(by)}

    matched_ref = n_ref = matched_pred = n_pred = 0
    for v in common:
        nb, rb = new_find.get(v, {}), ref_find.get(v, {})
        for p, phrases in rb.items():
            cand = nb.get(p, [])
            n_ref += len(phrases)
            matched_ref += sum(any(phrases_match(x, y) for y in cand) for x in phrases)
        for p, phrases in nb.items():
            cand = rb.get(p, [])
            n_pred += len(phrases)
            matched_pred += sum(any(phrases_match(x, y) for y in cand) for x in phrases)

    def sizes(rel: Release) -> set[tuple[str, tuple[float, ...]]]:
        return {(v, tuple(sorted(size_mm(s)))) for v in common for _, s in rel.sizes.get(v, []) if size_mm(s)}

    d_tp = d_pred = d_ref = 0
    for v in common:
        a, b = new.disorders.get(v, []), ref.disorders.get(v, [])
        d_pred += len(a)
        d_ref += len(b)
        d_tp += sum(any(phrases_match(x, y) for y in a) for x in b)

    return EvaluationResult(
        volumes=len(common), only_rebuilt=len(new.volumes - common), only_reference=len(ref.volumes - common),
        paths=_set_prf(pred_paths, ref_paths), region=_set_prf({(v, region_of(p)) for v, p in pred_paths},
                                                                 {(v, region_of(p)) for v, p in ref_paths}),
        specific=_set_prf(spec_pred, spec_ref), per_region=per_region,
        findings=PRF(matched_ref, n_pred, n_ref), findings_matched_pred=matched_pred,
        sizes=_set_prf(sizes(new), sizes(ref)), disorders=PRF(d_tp, d_pred, d_ref),
        region_report=None if new.region_report is None or ref.region_report is None else _set_prf(
            {x for x in new.region_report if x[0] in common}, {x for x in ref.region_report if x[0] in common}),
        dropped_negated=dropped, reference_phrases=ref_phrases,
        rebuilt_negated=rebuilt_negated, rebuilt_phrases=rebuilt_phrases,
    )


def rebuild_from_reports(reports: str | Path, out: str | Path, *, seed: int = 0, split: str = "train") -> Path:
    """Ground a reports CSV (``VolumeName, Findings_EN, Impressions_EN``) and write its region report, VQA CSVs
    and case disorders into ``out`` (flat, ``<split>_*.csv``): a release to :func:`evaluate`."""
    import pyarrow as pa

    from .ground import ground_reports, write_region_report
    from .vqa import build_vqa, write_vqa

    rep = read_reports(reports)
    table = pa.table({"volume_name": list(rep), "findings": [f for f, _ in rep.values()],
                      "impressions": [i for _, i in rep.values()]})
    grounded = ground_reports(table, progress=False)
    out = Path(out)
    write_region_report(out / f"{split}_region_report.csv", grounded)
    write_vqa(out, split, build_vqa(dict(sorted(grounded.items())), seed=seed))
    return out


def write_json(result: EvaluationResult, path: str | Path) -> Path:
    """Write :meth:`EvaluationResult.to_dict` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result.to_dict(), indent=2) + "\n", encoding="utf-8")
    return path
