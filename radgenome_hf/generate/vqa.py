"""VQA tables from grounded reports (stage 4), in the real RadGenome files' formats and invariants.

- ``vqa_abnormality``: one row per examined (volume, path): the comma-joined finding phrases of the abnormal
  sentences grounded at that path (at any depth below it), or ``no findings`` for a path whose sentences are all
  normal. As in RadGenome's rows, the sentences are the findings section's (the impressions only when the
  findings name no abnormality). Abnormal rows of every volume come first, then the ``no findings`` rows (the
  real files' order).
- ``vqa_location``: exactly the abnormality rows without ``no findings``.
- ``vqa_presence``: the location rows with ``Presence = "Yes."`` (``Finding`` = the abnormality text), then
  ``"No."`` rows: the findings the report says are absent at that path (as the real files do), else a finding
  sampled (deterministically for ``seed``) from the findings seen elsewhere in the same top-level region and
  the CT-RATE labels mapped to that region, never one sharing a content word stem with a finding present in
  that region of that volume (``lung nodule`` is no negative where ``nodule`` is present).
- ``vqa_size``: sizes as written ("6x4 mm", "2 cm", "12-14 mm") with the finding they measure, at the most
  specific path of their sentence; as in RadGenome's rows only a sentence's single size of a lesion (no lymph
  node, no earlier examination, no "less than 1 cm").
- ``case_disorders``: the case-level findings (impressions, else findings), comma-joined, or ``no findings``.

>>> from radgenome_hf.generate.ground import GroundedReport, ground_report
>>> g = {"train_1_a_1": GroundedReport("train_1_a_1", ground_report(
...     "A 6x4 mm nodule in the right upper lobe. Heart size is normal.", None))}
>>> t = build_vqa(g, seed=0)
>>> t.abnormality[:2]
[('train_1_a_1.nii.gz', 'lung', 'nodule'), ('train_1_a_1.nii.gz', 'lung/lung', 'nodule')]
>>> t.size
[('train_1_a_1.nii.gz', 'lung/lung/lung upper lobe/right lung upper lobe', 'nodule', '6x4 mm')]
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from functools import lru_cache
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

from ..names import VolumeName, radgenome_csv_name
from ..ontology import get_ontology
from ..io.tables import RADGENOME_HEADERS, write_csv
from .ground import GroundedReport, Sentence, _dedupe, normalize_finding, path_sort_key

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "NO_FINDINGS", "VQATables", "build_vqa", "abnormality_by_path", "rederive_location_presence",
    "write_vqa", "size_rows", "disorders_rows", "VolumeFacts", "VolumeRows", "region_vocabulary", "volume_rows",
    "assemble_vqa",
]

NO_FINDINGS = "no findings"
YES, NO = "Yes.", "No."

Row = tuple[str, ...]


@dataclass
class VQATables:
    """Rows of the five VQA tables and case disorders, each a list of tuples in the real column order."""

    abnormality: list[Row] = field(default_factory=list)
    location: list[Row] = field(default_factory=list)
    presence: list[Row] = field(default_factory=list)
    size: list[Row] = field(default_factory=list)
    case_disorders: list[Row] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        return {k: len(getattr(self, k)) for k in ("abnormality", "location", "presence", "size", "case_disorders")}

    def items(self) -> list[tuple[str, list[Row]]]:
        return [("vqa_abnormality", self.abnormality), ("vqa_location", self.location),
                ("vqa_presence", self.presence), ("vqa_size", self.size), ("case_disorders", self.case_disorders)]


def abnormality_by_path(sentences: Sequence[Sentence]) -> tuple[dict[str, list[str]], dict[str, list[str]], list[str]]:
    """(positive phrases per path, negated phrases per path, examined paths in path order) of one volume.

    Every level of every grounded path counts (the release's multi-granularity); a finding counts at its own
    paths (``Sentence.finding_paths``) when the sentence has them. Whole-scan sentences (no path) are not
    examined paths.
    """
    onto = get_ontology()
    positive: dict[str, list[str]] = {}
    negative: dict[str, list[str]] = {}
    examined: dict[str, None] = {}
    sentences = _vqa_sentences(sentences)
    for s in sentences:
        for p in s.expanded_paths(onto):
            examined[p] = None
            if s.abnormal and not s.finding_paths:
                positive.setdefault(p, []).extend(s.findings)
            if s.negated:
                negative.setdefault(p, []).extend(s.negated)
        if s.abnormal:
            for finding, paths in s.finding_paths:  # each finding at its own paths
                for p in _dedupe(a for q in paths for a in onto.ancestors(q)):
                    examined[p] = None
                    positive.setdefault(p, []).append(finding)
    return ({p: list(_dedupe(v)) for p, v in positive.items() if v},
            {p: list(_dedupe(v)) for p, v in negative.items()},
            sorted(examined, key=path_sort_key))


def _vqa_sentences(sentences: Sequence[Sentence]) -> list[Sentence]:
    """The sentences the VQA rows come from: the findings section, or the impressions when the findings name
    no abnormality (RadGenome's rows hold the findings' phrases, never an impression-only one)."""
    fnd = [s for s in sentences if s.section != "impressions"]
    if any(s.abnormal for s in fnd):
        return fnd
    return list(sentences)


def _label_vocabulary() -> dict[str, list[str]]:
    """CT-RATE labels by top-level region of their ontology path (lower case), e.g. ``lung -> lung nodule``."""
    onto = get_ontology()
    vocab: dict[str, list[str]] = {}
    for lab in onto.ctrate_labels:
        if lab.path:
            vocab.setdefault(onto.region_of(lab.path), []).append(lab.label.lower())
    return vocab


_GENERIC = frozenset("lung lungs pulmonary wall small large left right multiple diffuse areas area changes bilateral "
                     "minimal mild several nonspecific some".split())


@lru_cache(maxsize=1 << 16)
def _stems(phrase: str) -> frozenset[str]:
    """Content-word stems of a finding (first 5 letters): ``calcific`` ~ ``calcification``, ``nodules`` ~ ``nodule``.

    Cached: a split's "No." sampling tests every phrase of its region vocabulary against every volume."""
    words = normalize_finding(phrase).replace(",", " ").split()
    return frozenset(w[:5] for w in words if len(w) >= 4 and w not in _GENERIC)


def _contradicts(candidate: str, present_stems: set[str]) -> bool:
    return bool(_stems(candidate) & present_stems)


def _disorders(report: GroundedReport) -> str:
    imp = [f for s in report.sentences if s.section == "impressions" and s.abnormal for f in s.findings]
    fnd = [f for s in report.sentences if s.section == "findings" and s.abnormal for f in s.findings]
    items = _dedupe(imp or fnd)
    return ", ".join(items) if items else NO_FINDINGS


def disorders_rows(grounded: Mapping[str, GroundedReport]) -> list[Row]:
    """``(Volumename, Disorders)`` per volume."""
    return [(VolumeName.parse(k).filename, _disorders(g)) for k, g in grounded.items()]


#: A size RadGenome keeps measures a lesion once: not a lymph node (its short axis), not an earlier examination's
#: measurement, not a sentence listing several sizes (learned from the real rows: of the sizes in sentences with
#: two or more of them, almost none is a row).
_NOT_SIZED = re.compile(r"\blymph nodes?\b")
#: "less than 1 cm", "not exceeding 1 cm": a threshold, no measurement.
_THRESHOLD = re.compile(r"\b(?:(?:less|smaller|lower|shorter) than|below|under|not exceeding|exceeding)\s*$")
_EARLIER = re.compile(r"\b(?:previous|prior|earlier|preceding)\b")


def size_rows(volume_name: str, sentences: Sequence[Sentence]) -> list[Row]:
    """``(Volumename, Anatomy, Abnormality, Size)`` rows of one volume.

    One row per sentence that gives exactly one size and ties it to a finding (no lymph node, no earlier
    examination, no threshold such as "less than 1 cm"), at the most specific path of that finding (else of its
    sentence); of a node's alternative groupings the last one in ontology order is used (``lung/lung/lung lower
    lobe/right lung lower lobe``, as in the real files).
    """
    filename = VolumeName.parse(volume_name).filename
    out: list[Row] = []
    for s in _vqa_sentences(sentences):
        low = s.text.lower()
        if not s.paths or not s.abnormal or len(s.sizes) != 1 or _EARLIER.search(low) or _NOT_SIZED.search(low):
            continue
        own = dict(s.finding_paths)
        for z, finding in zip(s.sizes, s.size_findings):
            if not finding or _THRESHOLD.search(low[:z.start]):
                continue
            by_leaf: dict[str, str] = {}
            for p in own.get(finding) or s.paths:
                by_leaf[p.rsplit("/", 1)[-1]] = p  # last alternative wins
            for p in by_leaf.values():
                row = (filename, p, finding, z.text)
                if row not in out:
                    out.append(row)
    return out


#: What :func:`abnormality_by_path` gives for one volume: (positive phrases per path, negated phrases per path,
#: examined paths in path order).
VolumeFacts = tuple[dict[str, list[str]], dict[str, list[str]], list[str]]


def region_vocabulary(positives: Iterable[Mapping[str, Sequence[str]]]) -> dict[str, list[str]]:
    """The findings a split's ``"No."`` rows are sampled from: per top-level region, every positive phrase of the
    split's volumes (``positives``: the first item of each volume's :data:`VolumeFacts`) and the CT-RATE labels
    mapped to that region, sorted (so the order of the volumes does not matter)."""
    onto = get_ontology()
    region_vocab: dict[str, set[str]] = {}
    for pos in positives:
        for p, phrases in pos.items():
            region_vocab.setdefault(onto.region_of(p), set()).update(phrases)
    for region, labels in _label_vocabulary().items():
        region_vocab.setdefault(region, set()).update(labels)
    return {r: sorted(v) for r, v in region_vocab.items()}


@dataclass
class VolumeRows:
    """One volume's share of the VQA tables, before the tables' grouping (abnormal rows of every volume first,
    then the ``no findings`` rows; presence ``"Yes."``, then ``"No."`` at abnormal paths, then at normal ones)."""

    abnormal: list[Row] = field(default_factory=list)  # vqa_abnormality rows with findings = vqa_location rows
    normal: list[Row] = field(default_factory=list)  # vqa_abnormality "no findings" rows
    no_abnormal: list[Row] = field(default_factory=list)  # "No." presence rows at abnormal paths
    no_normal: list[Row] = field(default_factory=list)  # "No." presence rows at normal paths
    size: list[Row] = field(default_factory=list)
    disorders: list[Row] = field(default_factory=list)


def volume_rows(stem: str, facts: VolumeFacts, vocab: Mapping[str, Sequence[str]], *, seed: int = 0) -> VolumeRows:
    """One volume's abnormality and presence rows from its :data:`VolumeFacts` and its split's
    :func:`region_vocabulary` (``size`` and ``disorders`` are the caller's: :func:`size_rows`, :func:`disorders_rows`).

    Deterministic for ``(seed, stem)``: a volume's rows depend on the vocabulary, not on which other volumes are
    processed with it.
    """
    onto = get_ontology()
    pos, neg, examined = facts
    filename = VolumeName.parse(stem).filename
    out = VolumeRows()
    present_by_region: dict[str, set[str]] = {}  # content-word stems of the findings present per region
    for p, phrases in pos.items():
        bucket = present_by_region.setdefault(onto.region_of(p), set())
        for x in phrases:
            bucket |= _stems(x)
    for p in examined:
        if p in pos:
            out.abnormal.append((filename, p, ", ".join(pos[p])))
        else:
            out.normal.append((filename, p, NO_FINDINGS))
    sampled: dict[str, str | None] = {}
    for p in examined:
        region = onto.region_of(p)
        present = present_by_region.get(region, set())
        absent = [x for x in neg.get(p, []) if not _contradicts(x, present)]
        if absent:
            finding = ", ".join(absent)
        else:
            if region not in sampled:
                rng = random.Random(f"{seed}|{stem}|{region}")
                candidates = [x for x in vocab.get(region, []) if not _contradicts(x, present)]
                sampled[region] = rng.choice(candidates) if candidates else None
            finding = sampled[region]
        if finding:
            (out.no_abnormal if p in pos else out.no_normal).append((filename, p, finding, NO))
    return out


def assemble_vqa(parts: Iterable[VolumeRows]) -> VQATables:
    """The VQA tables of a split from its volumes' rows, in the volumes' order (the real files' grouping)."""
    t = VQATables()
    normal: list[Row] = []
    no_abnormal: list[Row] = []
    no_normal: list[Row] = []
    for v in parts:
        t.abnormality += v.abnormal
        t.location += v.abnormal
        t.presence += [(*r, YES) for r in v.abnormal]
        normal += v.normal
        no_abnormal += v.no_abnormal
        no_normal += v.no_normal
        t.size += v.size
        t.case_disorders += v.disorders
    t.abnormality += normal
    t.presence += no_abnormal + no_normal
    return t


def build_vqa(grounded: Mapping[str, GroundedReport], *, seed: int = 0) -> VQATables:
    """All VQA tables of a split from grounded reports (``{stem: GroundedReport}``), deterministic for ``seed``.

    Volumes are taken in the mapping's order (pass them sorted for a stable release). The same tables come from
    :func:`abnormality_by_path` per volume, :func:`region_vocabulary` over the split, :func:`volume_rows` per volume
    and :func:`assemble_vqa` (what the rebuild runs over shards of volumes on its workers).
    """
    facts = {stem: abnormality_by_path(g.sentences) for stem, g in grounded.items()}
    vocab = region_vocabulary(f[0] for f in facts.values())
    parts = []
    for stem, g in grounded.items():
        rows = volume_rows(stem, facts[stem], vocab, seed=seed)
        rows.size = size_rows(stem, g.sentences)
        rows.disorders = disorders_rows({stem: g})
        parts.append(rows)
    return assemble_vqa(parts)


def rederive_location_presence(abnormality: "pa.Table") -> tuple["pa.Table", "pa.Table"]:
    """Re-derive ``vqa_location`` and the ``"Yes."`` rows of ``vqa_presence`` from ``vqa_abnormality`` rows.

    Accepts the raw CSV columns (``Volumename, Anatomy, Abnormality``) or :func:`tables.read_vqa`'s
    (``volume_name, anatomy, abnormality``); the outputs keep the input's naming and row order:
    location = rows whose abnormality is not ``no findings``; presence-Yes = the same rows with
    ``Finding`` = abnormality and ``Presence`` = ``"Yes."``.

    >>> import pyarrow as pa
    >>> t = pa.table({"Volumename": ["train_1_a_1.nii.gz"] * 2, "Anatomy": ["lung", "pleura"],
    ...               "Abnormality": ["nodule", "no findings"]})
    >>> loc, yes = rederive_location_presence(t)
    >>> loc.to_pylist(), yes.column_names
    ([{'Volumename': 'train_1_a_1.nii.gz', 'Anatomy': 'lung', 'Abnormality': 'nodule'}], ['Volumename', 'Anatomy', 'Finding', 'Presence'])
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    raw = "Abnormality" in abnormality.column_names
    v, a, ab = ("Volumename", "Anatomy", "Abnormality") if raw else ("volume_name", "anatomy", "abnormality")
    missing = [c for c in (v, a, ab) if c not in abnormality.column_names]
    if missing:
        from ..errors import MalformedFileError

        raise MalformedFileError(None, f"abnormality table lacks columns {missing}; expected {v}, {a}, {ab} "
                                       "(the raw CSV header or tables.read_vqa's columns)")
    col = pc.utf8_trim_whitespace(pc.fill_null(abnormality[ab], ""))
    keep = pc.not_equal(pc.utf8_lower(col), NO_FINDINGS)
    location = abnormality.select([v, a, ab]).filter(keep)
    fcol, pcol = ("Finding", "Presence") if raw else ("finding", "presence")
    presence = pa.table({
        v: location[v], a: location[a], fcol: location[ab],
        pcol: pa.array([YES] * location.num_rows, pa.string()),
    })
    return location, presence


def write_vqa(folder: str | Path, split: str, tables: VQATables) -> dict[str, Path]:
    """Write ``<split>_{vqa_*,case_disorders}.csv`` into ``folder`` (``split`` = ``train`` | ``valid``)."""
    folder = Path(folder)
    out = {}
    for kind, rows in tables.items():
        out[kind] = write_csv(folder / radgenome_csv_name(split, kind), RADGENOME_HEADERS[kind], rows)  # type: ignore[arg-type]
    return out


def check_invariants(tables: VQATables) -> list[str]:
    """Problems with the real files' invariants (empty list = all hold)."""
    problems = []
    loc = [r for r in tables.abnormality if r[2] != NO_FINDINGS]
    if loc != tables.location:
        problems.append("location rows differ from abnormality rows without 'no findings'")
    yes = [r[:3] for r in tables.presence if r[3] == YES]
    if yes != tables.location:
        problems.append("presence 'Yes.' rows differ from location rows")
    keys = [(r[0], r[1]) for r in tables.abnormality]
    if len(keys) != len(set(keys)):
        problems.append("abnormality has duplicate (volume, anatomy) rows")
    pos = {(r[0], r[1]): _stems(r[2]) for r in tables.location}
    for r in tables.presence:
        if r[3] == NO and _contradicts(r[2], pos.get((r[0], r[1]), set())):
            problems.append(f"'No.' row contradicts a present finding: {r}")
    return problems
