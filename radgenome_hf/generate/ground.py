"""Ground report sentences to anatomy paths (stage 3 of the generation module).

Pure functions over strings and tables: split a CT-RATE report into sentences (real report punctuation:
double-space impression items, parentheses, "…window;" openings), match anatomy with a lexicon built from the
ontology (node names, synonyms, plurals, laterality, lobes, vertebral levels, ribs), classify each sentence as
abnormal or normal, extract its finding phrases (with finding terms, anatomy cues and path conventions learned
from real RadGenome rows: ``data/lexicon.json``, built by ``builder_scripts/make_lexicon.py``), ground each
finding to its own anatomy, note negated findings, sizes and comparison cues, and write ``region_report`` rows
exactly as the real release does: each sentence at every level of its path (plus the ontology's alternative
groupings), sentences of one (volume, path) joined into one cell, unmatched text as whole-scan rows with an
empty ``Anatomy``.

>>> split_sentences("A nodule of approx. 6.6 mm is seen, e.g. in the RUL. No effusion.")
['A nodule of approx. 6.6 mm is seen, e.g. in the RUL.', 'No effusion.']
>>> lex = Lexicon.default()
>>> lex.match("Atelectasis in the lower lobe of the left lung.")
('lung/lung/left lung/left lung lower lobe', 'lung/lung/lung lower lobe/left lung lower lobe')
>>> lex.match("Compression fracture of the T12 vertebra.")
('bone/bone/vertebrae/thoracic vertebrae/thoracic vertebrae 12 (t12)',)
>>> s = analyze_sentence("A 6x4 mm nodule in the right lower lobe.")
>>> s.abnormal, s.findings, [z.text for z in s.sizes]
(True, ('nodule',), ['6x4 mm'])
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, Mapping, Protocol, Sequence, runtime_checkable

from ..names import VolumeName
from ..io.tables import RADGENOME_HEADERS, write_csv
from ..ontology import Ontology, get_lexicon_data, get_ontology, normalize_name, normalize_path

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = [
    "Sentence", "SizeMention", "Lexicon", "GroundedReport", "GroundingBackend", "LexiconBackend",
    "split_sentences", "parse_sizes", "analyze_sentence", "ground_report", "ground_reports",
    "region_report_rows", "write_region_report", "path_sort_key", "FINDING_TERMS",
]

# ------------------------------------------------------------------------------------------------
# sentence splitting
# ------------------------------------------------------------------------------------------------

#: Tokens that end with a full stop without ending a sentence (lower case, without the stop).
ABBREVIATIONS = frozenset(
    "approx appr e.g i.e etc vs cf dr fig figs no nos ca resp incl max min st mt ap pa lat ant post sup inf "
    "mr mrs ms prof sr jr dept est".split()
)

#: A capitalised word (no acronym, no eponym) right after a lower-case word starts a new item.
_CAPITAL_ITEM = re.compile(r"(?<=[a-z)]) (?!(?:Covid|Schmorl|Hounsfield|Ca|In)\b)(?=[A-Z][a-z]{2,}\b)")
_SPLIT_RE = re.compile(r"([.!?]+)(?=\s+|$)|(?<=[a-z)])(\.)(?=[A-Z])")


def split_sentences(text: str | None) -> list[str]:
    """Split report text into sentences.

    Items joined by two spaces or a line break (the impressions' lists), or by one space before a capitalised
    word, are sentences of their own. Full stops inside abbreviations (``approx.``, ``e.g.``), decimals
    (``6.6 mm``) and initialisms do not end a sentence; a stop glued to the next capitalised word (``normal.No``)
    does. Semicolons stay inside a sentence (the real region reports keep "window; Several …" together).

    >>> split_sentences("Heart size is normal.No pleural effusion. Nodules, i.e. 3 mm, in the LUL.")
    ['Heart size is normal.', 'No pleural effusion.', 'Nodules, i.e. 3 mm, in the LUL.']
    >>> split_sentences("Covid pneumonia  Aortic atherosclerosis  Hepatic cyst")
    ['Covid pneumonia', 'Aortic atherosclerosis', 'Hepatic cyst']
    >>> split_sentences("Cardiomegaly Pulmonary arterial dilatation Bilateral pleural effusion")
    ['Cardiomegaly', 'Pulmonary arterial dilatation', 'Bilateral pleural effusion']
    >>> split_sentences("Not given.")
    []
    """
    if text is None:
        return []
    text = str(text).strip()
    if not text or text == "Not given.":
        return []
    # impression items are often joined by two spaces (or a line break) without a full stop
    items = [t for t in re.split(r"\s*\n\s*|\s{2,}(?=[A-Z0-9(\-•*])", text) if t.strip()]
    if len(items) == 1:  # "Cardiomegaly Pulmonary arterial dilatation": items joined by one space
        items = [t for t in _CAPITAL_ITEM.split(text) if t.strip()]
    if len(items) > 1:
        return [x for t in items for x in split_sentences(t)]
    out: list[str] = []
    start = 0
    for m in _SPLIT_RE.finditer(text):
        end = m.end()
        if text.count("(", start, m.start()) > text.count(")", start, m.start()) and ")" in text[end:end + 80]:
            continue  # "(small airway disease?, small vessel disease?)" stays in its sentence
        before = text[start:m.start()]
        word = re.split(r"[\s(]", before)[-1].lower() if before else ""
        if m.group(2) is None:  # ". " or end
            if word.rstrip(".") in ABBREVIATIONS or word in ABBREVIATIONS:
                continue
            if re.fullmatch(r"(?:[a-z]\.)+[a-z]", word):  # e.g / i.e written with inner stops
                continue
            if re.fullmatch(r"[a-z]", word) and m.group(1) == ".":  # single initial "T. "
                continue
            if re.fullmatch(r"\d+", word) and end < len(text) and re.match(r"\s*[a-z]", text[end:]):
                continue  # "segment 6. and" - numbered item followed by lower case
        piece = text[start:end].strip()
        if piece:
            out.append(piece)
        start = end
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    # a bare list number ("1.") is no sentence
    return [s for s in out if re.search(r"[A-Za-z0-9]", s) and not re.fullmatch(r"\(?\d{1,2}[.)-]?", s)]


# ------------------------------------------------------------------------------------------------
# sizes
# ------------------------------------------------------------------------------------------------

_NUM = r"\d+(?:[.,]\d+)?"
_SIZE_RE = re.compile(
    rf"(?<![\w.])(?P<a>{_NUM})(?:\s*(?:x|×|\*)\s*(?P<b>{_NUM}))?(?:\s*(?:x|×|\*)\s*(?P<c>{_NUM}))?"
    rf"(?:\s*(?:-|–|to)\s*(?P<r>{_NUM}))?\s*(?P<u>mm|cm|in)(?![\w])"
)
_UNIT_MM = {"mm": 1.0, "cm": 10.0, "in": 25.4}


@dataclass(frozen=True)
class SizeMention:
    """A size as written (``text``), its dimensions in mm and the unit it was written in."""

    text: str
    values_mm: tuple[float, ...]
    unit: str
    start: int = 0


def parse_sizes(sentence: str) -> list[SizeMention]:
    """Sizes in a sentence, text kept as written.

    >>> [(z.text, z.values_mm, z.unit) for z in parse_sizes("a 6x4 mm nodule and a 2 cm mass, 12-14 mm nodes, 5mm, 1 in")]
    [('6x4 mm', (6.0, 4.0), 'mm'), ('2 cm', (20.0,), 'cm'), ('12-14 mm', (12.0, 14.0), 'mm'), ('5mm', (5.0,), 'mm'), ('1 in', (25.4,), 'in')]
    """
    out = []
    for m in _SIZE_RE.finditer(sentence):
        unit = m.group("u")
        if unit == "in":  # "1 in 3 patients", "2 in the lung": only a size when nothing word-like follows
            rest = sentence[m.end():]
            if re.match(r"\s+(?:the|a|an|both|each|every|diameter|size|length|width|\w+)\b", rest):
                continue
        if re.search(r"(slice|section|collimation)\s+(thickness|width)?\s*(of\s+)?$", sentence[: m.start()].lower()):
            continue
        vals = [m.group(k) for k in ("a", "b", "c", "r") if m.group(k)]
        scale = _UNIT_MM[unit]
        values = tuple(round(float(v.replace(",", ".")) * scale, 3) for v in vals)
        out.append(SizeMention(m.group(0), values, unit, m.start()))
    return out


# ------------------------------------------------------------------------------------------------
# findings, negation, comparison
# ------------------------------------------------------------------------------------------------

#: Finding head terms (regex fragments, matched on word boundaries). Not anatomy: anatomy comes from the ontology.
FINDING_TERMS: tuple[str, ...] = (
    r"ground[ -]glass(?: (?:opacit(?:y|ies)|areas?|densit(?:y|ies)|nodules?|appearance|pattern))?",
    r"crazy paving(?: appearance| pattern)?", r"tree[ -]in[ -]bud(?: pattern)?", r"mosaic attenuation(?: pattern)?",
    r"honeycomb(?:ing)?", r"nodules?", r"micronodules?", r"masses", r"mass", r"lesions?", r"effusions?",
    r"atelectas[ie]s", r"consolidations?", r"opacit(?:y|ies)", r"densit(?:y|ies)", r"emphysema(?:tous changes)?",
    r"bronchiectas[ie]s", r"thickenings?", r"thickness increase", r"calcifications?", r"calcified foci",
    r"plaques?", r"atheroma(?:tous)?(?: plaques?)?", r"atherosclerosis", r"cysts?", r"hernias?", r"fractures?",
    r"lymphadenopath(?:y|ies)", r"lymphadenomegaly", r"lymph nodes?", r"cardiomegaly", r"fibrosis",
    r"fibrotic (?:changes|bands?|sequela(?:e)?)", r"sequela(?:e)?(?: changes)?", r"infiltrat(?:ion|ions|es?)",
    r"pneumonia", r"pneumonic infiltration", r"edema", r"oedema", r"pneumothorax", r"metastas[ie]s",
    r"aneurysms?", r"dilatation", r"ectasia", r"enlargement", r"stenosis", r"stones?", r"calculi", r"calculus",
    r"granulomas?", r"bullae?", r"blebs?", r"scars?", r"scarring", r"osteophytes?", r"degenerat(?:ion|ive changes)",
    r"spondylosis", r"spondylotic changes", r"hypodensit(?:y|ies)", r"hyperdensit(?:y|ies)", r"septal thickening",
    r"bands?", r"collapse", r"hepatomegaly", r"splenomegaly", r"steatosis", r"goiter", r"goitre",
    r"cavit(?:y|ies|ation)", r"abscess", r"foreign bod(?:y|ies)", r"vacuum phenomenon", r"ascites",
    r"diverticul(?:um|a)", r"spondylolisthesis", r"syndesmophytes?", r"spur formations?", r"tapering",
    r"appearances?", r"images", r"changes", r"osteodegenerative changes", r"hypertension", r"postoperative changes",
    r"accessory spleen", r"(?:macro)?lobulation",
    r"(?:cardiothoracic (?:index|ratio)|(?:heart|cardiac) sizes?|left ventricular diameter)"
    r"(?=\s+(?:(?:is|are|was|were|has|have)\s+)?(?:\w+ly\s+)?increased)",
    r"infect\w*(?:[- ]inflammatory)? (?:process(?:es)?|patholog(?:y|ies)|porces)",
    r"wall thickening", r"air trapping", r"hyperaeration", r"hyperinflation", r"artifacts?", r"fluid",
    r"collections?", r"hematoma", r"tumou?rs?", r"neoplasms?", r"malignancy", r"carcinoma", r"sclerosis",
    r"sclerotic changes", r"lytic lesions?", r"osteopenia", r"osteoporosis", r"scoliosis", r"kyphosis",
    r"hiatal hernia", r"hiatus hernia", r"pleural effusion", r"pericardial effusion",
)
# Devices (catheters, stents, pacemakers, sternotomy wires, "medical material") are no findings here: the real
# RadGenome rows hold none of them.

#: Words that stop the left extension of a finding phrase.
_STOP = frozenset(
    """a an the this that these those there here is are was were be been being has have had and or nor but with
    without in on at of to from for by as into within no not any some several multiple few many numerous both
    left right bilateral bilaterally which who also seen observed noted detected present identified visualized
    evaluated examined shows show showed showing appears appear appeared measuring measures measured approximately
    approx about up largest smallest mm cm in x size sized diameter level levels it its their other another
    compared than previous prior study exam examination current image images sections section slices slice
    mainly mostly particularly especially predominantly more less most least very all each one two three
    when where while significant obvious apparent evident definite definitive prominent marked remarkable
    suspicious possible probable likely minimal described similar natural normal usual same such catheter""".split()
)

_NEG_BEFORE = re.compile(
    r"\b(no|not|without|neither|nor|absence of|absent|free of|negative for|rule out|ruled out|exclude[ds]?|"
    r"no evidence of|no sign of|no signs of)\b"
)
_NEG_AFTER = re.compile(
    r"\b(not (?:been )?(?:observed|seen|detected|identified|found|present|visualized|noted|evident|demonstrated)|"
    r"(?:was|were|is|are) absent|(?:has|have) resolved|disappeared|no longer)\b"
)
#: Negations that only qualify a finding ("lymph nodes that do not reach pathological dimensions are observed",
#: "with a short axis not exceeding 1 cm"): RadGenome's rows list these findings as present.
_QUALIFYING_NEG = re.compile(
    r"\b(?:(?:that|which)\s+)?(?:do|does|did)\s+not\s+reach\b|\bnot\s+(?:exceeding|reaching)\b|"
    r"\b(?:that|which)\s+(?:are|is|were|was)\s+not\s+(?:pathological|significant|enlarged)\b"
)
#: Negations of something else than the finding: a comparison ("no significant difference ... in the number of
#: metastases", "which was not observed in the previous examination": a new finding).
_NOT_A_NEGATION = re.compile(
    r"\bno (?:significant |apparent |obvious |marked )?(?:difference|change)s?\b|"
    r"\b(?:(?:which|that) )?(?:(?:was|were|is|are|had been|has been) )?not (?:observed|seen|present|detected|visible|"
    r"described) (?:in|on|at) (?:the )?(?:previous|prior|earlier|last)\b"
)
_NORMAL_CUE = re.compile(
    r"\b(normal|within normal limits|unremarkable|natural|preserved|patent|in (?:the )?midline|clear|intact|"
    r"no (?:significant |obvious |apparent )?(?:pathology|pathologic|pathological|abnormality|abnormalities|findings?)|"
    r"not observed|not detected|not seen|were not|was not|not identified)\b"
)
#: "wider than normal", "above normal": a comparison with normal, no normal statement.
_THAN_NORMAL = re.compile(r"\b(?:(?:\w+er|more|above|beyond|over) than|above|beyond|over) (?:the )?normal\b")
#: Abnormal adjectives and nouns of form (``atrophic``, ``lobulated``, ``narrowing``, ``fusion``): findings by
#: themselves in a clause without a finding term, and beside a clause's findings (findings section).
_ABNORMAL_ADJ = re.compile(
    r"\b(dilated|enlarged|widened|thickened|compressed|elevated|distended|"
    r"wider than normal|above normal|larger than normal|smaller than normal|irregular|heterogeneous|hypertrophic|"
    r"hypertrophied|atrophic|ectatic|corrugated|hypodense|hyperdense|lobulated|narrowed|deformed|"
    r"irregularity|fusion|narrowing|prominence|deformity|destruction|retraction)\b"
)
_CLAUSE_SPLIT = re.compile(r";|,\s*but\b|\bbut\b|,\s*however\b|\bhowever\b|\bwhereas\b|\balthough\b|\bwhile\b")

#: Comparison cue -> predicate (checked in this order).
_COMPARISON: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("resolved", re.compile(r"\b(resolved|disappeared|no longer (?:seen|observed|visible|present))\b")),
    ("new", re.compile(r"\b(new|newly(?: developed| appeared| emerged)?|appeared)\b")),
    ("worsened", re.compile(
        r"\b(progressed|progression|progressive|worsened|worsening|increased|increase|enlarged|larger|grown|"
        r"growth|more prominent|more extensive)\b")),
    ("improved", re.compile(
        r"\b(regressed|regression|regressing|improved|improvement|decreased|decrease|reduced|reduction|smaller|"
        r"shrunk|shrinkage|less prominent|less extensive|partially resolved|resolving)\b")),
    ("no change", re.compile(r"\b(stable|unchanged|no (?:significant )?change|similar|same|persist(?:s|ed|ent|ing)?)\b")),
)
_COMPARISON_CONTEXT = re.compile(
    r"\b(compared|comparison|previous|prior|earlier|before|since|last|preceding|former|progress|regress|"
    r"in the interval|interval)\w*\b"
)
_STRONG_CHANGE = re.compile(
    r"\b(progressed|progression|regressed|regression|worsened|worsening|improved|improvement|stable|unchanged|"
    r"no (?:significant )?change|resolved|disappeared|grown|shrunk|shrunken|"
    r"(?:has|have|had) (?:\w+ )?(?:increased|decreased|enlarged|reduced|become))\b"
)


#: Words naming a disease by their ending (``hepatosteatosis``, ``cholelithiasis``, ``gynecomastia``).
_DISEASE_WORD = r"[a-z]{3,}(?:osis|oses|iasis|itis|ectasis|megaly|mastia|pathy|pathies|plasia|omas?)"
_NOT_DISEASE = frozenset("diagnosis prognosis diagnoses stoma coma aroma".split())


def _learned_terms() -> list[str]:
    """Finding terms of the learned lexicon as regex fragments; a long disease noun also matches its
    misspellings and other endings (``atelect[a-z]*``: atelectatic, atelectesis)."""
    out = []
    for t in get_lexicon_data()["findings"]:
        words = t.split()
        if len(words) == 1 and len(t) >= 9 and t.endswith(("sis", "ia")):
            out.append(re.escape(t[: max(7, len(t) - 4)]) + "[a-z]*")
        else:
            out.append(r"[\s-]".join(re.escape(w) for w in words))
    return out


@lru_cache(maxsize=1)
def _finding_re() -> re.Pattern[str]:
    labels = [re.escape(l.lower()) for l in get_ontology().label_names if l.lower() != "medical material"]
    terms = sorted(set(FINDING_TERMS) | set(labels) | set(_learned_terms()), key=len, reverse=True)
    return re.compile(r"(?<![a-z0-9])(?:" + "|".join(terms + [_DISEASE_WORD]) + r")(?![a-z0-9])")


_WORD_RE = re.compile(r"[a-z0-9][a-z0-9'\-]*")


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text.lower().replace("’", "'").replace("\u00a0", " ")).strip()


def _phrases(clause: str) -> list[tuple[int, int, str]]:
    """Finding phrases in a lower-case clause: (start, end, phrase) with up to 3 modifiers to the left."""
    heads = [(m.start(), m.end()) for m in _finding_re().finditer(clause) if m.group(0) not in _NOT_DISEASE]
    out: list[tuple[int, int, str]] = []
    i = len(heads) - 1
    while i >= 0:
        s, e = heads[i]
        # absorb an adjacent head immediately to the left ("atheroma plaques", "lung nodule")
        while i > 0 and re.fullmatch(r"[\s\-]*", clause[heads[i - 1][1]:s]):
            i -= 1
            s = heads[i][0]
        words = list(_WORD_RE.finditer(clause[:s]))
        taken = 0
        for w in reversed(words):
            tok = w.group(0).strip("-")
            gap = clause[w.end():s]
            if taken >= 3 or not re.fullmatch(r"[\s\-]*", gap) or tok in _STOP or not tok.isalpha() or len(tok) < 3:
                break
            s = w.start()
            taken += 1
        out.append((s, e, clause[s:e].strip(" -")))
        i -= 1
    out.reverse()
    return out


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for x in items:
        if x and x not in seen:
            seen[x] = None
    return tuple(seen)


# ------------------------------------------------------------------------------------------------
# the anatomy lexicon
# ------------------------------------------------------------------------------------------------

_ORDINAL_WORDS = (
    "first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth".split()
)


def _plurals(term: str) -> set[str]:
    out = {term}
    last = term.rsplit(" ", 1)[-1]
    head = term[: len(term) - len(last)]
    if last.endswith("ae"):
        out.add(head + last[:-1])  # vertebrae -> vertebra
    elif last.endswith("a") and len(last) > 3:
        out.add(head + last + "e")  # vertebra -> vertebrae
    elif last.endswith(("s", "sh", "ch", "x")):
        if not last.endswith("us"):
            out.add(head + last + "es")
    elif last.endswith("y") and len(last) > 2 and last[-2] not in "aeiou":
        out.add(head + last[:-1] + "ies")
    elif last.isalpha() and len(last) > 2:
        out.add(head + last + "s")
    return out


_SIDE_BEFORE = re.compile(r"\b(left|right|both|bilateral|bilaterally)\b(?:[\s-]+sided)?")
_SIDE_AFTER = re.compile(r"^\s*(?:on the |in the )?(left|right)(?:\s+side|-sided)?\b")
_VERT_RE = re.compile(
    r"(?<![a-z0-9])(?:(?P<k1>[ctld])\s?-?(?P<n1>\d{1,2})(?:\s*(?:-|–|to|and|,)\s*(?P<k2>[ctld])?\s?(?P<n2>\d{1,2}))?)(?![a-z0-9])"
)
_VERT_WORD_RE = re.compile(
    r"\b(?P<kind>cervical|thoracic|dorsal|lumbar)\s+(?:(?P<o1>\d{1,2})(?:st|nd|rd|th)\s+)?(?:vertebra|vertebrae|"
    r"vertebral body|vertebral bodies|vertebral)(?:\s+(?P<n1>\d{1,2}))?|\b(?P<o2>\d{1,2})(?:st|nd|rd|th)\s+"
    r"(?P<kind2>cervical|thoracic|dorsal|lumbar)\s+(?:vertebra|vertebrae|vertebral body)"
)
_RIB_RE = re.compile(
    r"(?:(?P<side>left|right)\s+)?(?P<nums>(?:(?:\d{1,2}(?:st|nd|rd|th)?|"
    + "|".join(_ORDINAL_WORDS)
    + r")(?:\s*(?:,|-|–|and|to)\s*)?)+)\s*ribs?\b(?:\s+on\s+the\s+(?P<side2>left|right))?"
    r"|\bribs?\s+(?P<nums2>\d{1,2}(?:\s*(?:,|-|–|and|to)\s*\d{1,2})*)(?:\s+on\s+the\s+(?P<side3>left|right))?"
    r"|\b(?P<side4>left|right)\s+ribs?\s+(?P<nums4>\d{1,2}(?:\s*(?:,|-|–|and|to)\s*\d{1,2})*)"
)


def _numbers(text: str) -> list[int]:
    """``"7th and 8th"`` -> [7, 8]; ``"5-7"`` -> [5, 6, 7]; ``"seventh"`` -> [7]."""
    text = text.lower()
    for i, w in enumerate(_ORDINAL_WORDS, 1):
        text = re.sub(rf"\b{w}\b", str(i), text)
    nums: list[int] = []
    for m in re.finditer(r"(\d{1,2})(?:st|nd|rd|th)?(?:\s*(?:-|–|to)\s*(\d{1,2}))?", text):
        a = int(m.group(1))
        b = int(m.group(2)) if m.group(2) else a
        if b < a or b - a > 12:
            b = a
        nums.extend(range(a, b + 1))
    return nums


_LOBE_PAIR = re.compile(r"\b(upper|middle|lower)(?:,| and| and the|, and)\s+(upper|middle|lower) lobes?\b")


@dataclass
class Lexicon:
    """Anatomy terms built from the ontology: term -> node names, and each node's paths.

    The default lexicon (:meth:`default`) uses :func:`radgenome_hf.ontology.get_ontology`.
    """

    ontology: Ontology
    terms: dict[str, frozenset[str]]
    node_paths: dict[str, tuple[str, ...]]
    ancestor_names: dict[str, frozenset[str]]
    vertebra_codes: dict[str, str]
    rib_names: frozenset[str]
    _regex: re.Pattern[str] = field(repr=False, default=None)  # type: ignore[assignment]

    @classmethod
    def from_ontology(cls, onto: Ontology) -> "Lexicon":
        node_paths: dict[str, list[str]] = {}
        ancestor_names: dict[str, set[str]] = {}
        for p in onto.paths:
            name = onto.leaf(p)
            node_paths.setdefault(name, []).append(p)
            ancestor_names.setdefault(name, set()).update(p.split("/")[:-1])
        # the deepest path(s) for a name: drop a path that is a proper prefix of another path of the same name
        best: dict[str, tuple[str, ...]] = {}
        for name, ps in node_paths.items():
            keep = [p for p in ps if not any(q != p and q.startswith(p + "/") for q in ps)]
            best[name] = tuple(keep)
        terms: dict[str, set[str]] = {}

        def add(term: str, name: str) -> None:
            term = _norm_text(term)
            if len(term) < 3 and term not in ("cw",):
                return
            for t in _plurals(term):
                terms.setdefault(t, set()).add(name)
                if "-" in t:
                    terms.setdefault(t.replace("-", " "), set()).add(name)

        vertebra_codes: dict[str, str] = {}
        rib_names: set[str] = set()
        vert_re = re.compile(r"^(\w+) vertebrae (\d+) \(([a-z]\d+)\)$")
        lobe_re = re.compile(r"^(left|right) lung (\w+) lobe$")
        for name in best:
            m = vert_re.match(name)
            if m:  # levels are matched by _VERT_RE / _VERT_WORD_RE; the full name is still a term
                vertebra_codes[m.group(3)] = name
                add(name, name)
                add(f"{m.group(1)} vertebra {m.group(2)}", name)
                continue
            if re.fullmatch(r"(?:(?:left|right) )?rib \d+", name):
                rib_names.add(name)
                continue
            add(name, name)
            for syn in onto.synonyms_of(name):
                add(syn, name)
            m = lobe_re.match(name)
            if m:
                side, pos = m.groups()
                for t in (f"{side} {pos} lobe", f"{pos} lobe of the {side} lung", f"{pos} lobe of {side} lung",
                          f"{side} lung {pos} lobe", f"{pos} {side} lobe"):
                    add(t, name)
        # ontology synonyms keyed by names that are not path nodes (mask-only names) are ignored on purpose
        for term, name in get_lexicon_data().get("anatomy_terms", {}).items():
            if name in best:  # where RadGenome's rows put the word ("lingular" -> the left lung)
                for t in _plurals(_norm_text(term)):
                    terms[t] = {name}
        return cls(
            ontology=onto,
            terms={k: frozenset(v) for k, v in terms.items()},
            node_paths=best,
            ancestor_names={k: frozenset(v) for k, v in ancestor_names.items()},
            vertebra_codes=vertebra_codes,
            rib_names=frozenset(rib_names),
        )

    @classmethod
    def default(cls) -> "Lexicon":
        return _default_lexicon()

    @property
    def regex(self) -> re.Pattern[str]:
        if self._regex is None:
            alts = sorted(self.terms, key=len, reverse=True)
            self._regex = re.compile(r"(?<![a-z0-9])(" + "|".join(re.escape(t) for t in alts) + r")(?![a-z0-9])")
        return self._regex

    # -- matching ------------------------------------------------------------------------------------
    def _side_of(self, text: str, start: int, end: int) -> str | None:
        """Laterality word right before a span (within 3 words) or right after it (``on the left``)."""
        before = text[max(0, start - 40):start]
        words = before.split()[-3:]
        window = " ".join(words)
        sides = {m.group(1) for m in _SIDE_BEFORE.finditer(window)}
        m = _SIDE_AFTER.match(text[end:end + 30])
        if m:
            sides.add(m.group(1))
        if not sides:
            return None
        if sides & {"both", "bilateral", "bilaterally"} or {"left", "right"} <= sides:
            return "both"
        return sides.pop()

    def _special(self, text: str) -> list[tuple[int, int, str]]:
        """Vertebral levels and ribs: (start, end, node name)."""
        found: list[tuple[int, int, str]] = []
        code_kind = {"c": "c", "t": "t", "d": "t", "l": "l"}
        for m in _VERT_RE.finditer(text):
            k1, n1, k2, n2 = m.group("k1"), int(m.group("n1")), m.group("k2"), m.group("n2")
            if k1 == "d" and not re.search(r"vertebra|spine|dorsal|level|body|fracture", text):
                continue
            k1 = code_kind[k1]
            levels = [(k1, n1)]
            if n2 is not None:
                k2 = code_kind[k2] if k2 else k1
                if k2 == k1 and int(n2) >= n1:
                    levels = [(k1, n) for n in range(n1, int(n2) + 1)]
                else:
                    levels.append((k2, int(n2)))
            for k, n in levels:
                name = self.vertebra_codes.get(f"{k}{n}")
                if name:
                    found.append((m.start(), m.end(), name))
        kinds = {"cervical": "c", "thoracic": "t", "dorsal": "t", "lumbar": "l"}
        for m in _VERT_WORD_RE.finditer(text):
            kind = m.group("kind") or m.group("kind2")
            num = m.group("o1") or m.group("n1") or m.group("o2")
            if num:
                name = self.vertebra_codes.get(f"{kinds[kind]}{int(num)}")
                if name:
                    found.append((m.start(), m.end(), name))
        for m in _RIB_RE.finditer(text):
            side = m.group("side") or m.group("side2") or m.group("side3") or m.group("side4")
            nums = _numbers(m.group("nums") or m.group("nums2") or m.group("nums4") or "")
            if side is None:
                side_near = self._side_of(text, m.start(), m.end())
                side = side_near if side_near in ("left", "right") else None
            for n in nums:
                name = f"{side} rib {n}" if side else f"rib {n}"
                if name in self.rib_names:
                    found.append((m.start(), m.end(), name))
            if not nums and side and f"{side} rib" in self.node_paths:
                found.append((m.start(), m.end(), f"{side} rib"))
        return found

    def _match_names(self, sentence: str) -> tuple[list[str], list[str]]:
        """(most specific names, every name mentioned) of a sentence."""
        text = _LOBE_PAIR.sub(r"\1 lobe and \2 lobe", _norm_text(sentence))  # "upper and lower lobes": both lobes
        hits: list[tuple[int, int, str]] = []
        special = self._special(text)
        taken = [(s, e) for s, e, _ in special]
        for m in self.regex.finditer(text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            names = self.terms[m.group(1)]
            side = self._side_of(text, s, e)
            for name in sorted(names):
                if side in ("left", "right") and not name.startswith(("left ", "right ")):
                    sided = f"{side} {name}"
                    if sided in self.node_paths:
                        name = sided
                hits.append((s, e, name))
        hits.extend(special)
        hits.sort()
        # a lobe named without its side where the text names one side only ("in the upper lobes of both lungs,
        # more prominently on the right", "on the left in both lower lobes") is that side's, as in RadGenome's rows
        sides = set(re.findall(r"\b(left|right)\b", text))
        if len(sides) == 1:
            side = sides.pop()
            for k, (s, e, name) in enumerate(hits):
                if name.startswith("lung ") and name.endswith(" lobe") and f"{side} {name}" in self.node_paths:
                    hits[k] = (s, e, f"{side} {name}")
        names = _dedupe(n for _, _, n in hits)
        pos = {}
        for s, e, n in hits:
            pos.setdefault(n, (s, e))
        # combine two nearby mentions into their unique common descendant ("lower lobe" + "left lung")
        changed = True
        names_l = list(names)
        while changed:
            changed = False
            for a in names_l:
                for b in names_l:
                    if a >= b or a in self.ancestor_names.get(b, ()) or b in self.ancestor_names.get(a, ()):
                        continue
                    (sa, ea), (sb, eb) = pos[a], pos[b]
                    gap = text[min(ea, eb):max(sa, sb)]
                    if len(gap.split()) > 6:
                        continue
                    common = [c for c, anc in self.ancestor_names.items() if a in anc and b in anc]
                    common = [c for c in common if not any(c in self.ancestor_names.get(d, ()) for d in common)]
                    if len(common) == 1:
                        c = common[0]
                        names_l = [n for n in names_l if n not in (a, b)]
                        if c not in names_l:
                            names_l.append(c)
                        pos[c] = (min(sa, sb), max(ea, eb))
                        changed = True
                        break
                if changed:
                    break
        # most specific: drop names that are ancestors of another matched name
        keep = [n for n in names_l if not any(n in self.ancestor_names.get(o, ()) for o in names_l if o != n)]
        return sorted(keep, key=lambda n: pos[n][0]), _dedupe(list(names) + names_l)

    def paths_for(self, names: Sequence[str], context_names: Sequence[str] = ()) -> tuple[str, ...]:
        """Paths of node names. A name under several top-level regions (``aorta``) takes the region of another
        name in ``names`` or ``context_names`` (``abdominal aorta``), else the ontology's first."""
        regions = set()
        for n in list(names) + list(context_names):
            rs = {p.split("/", 1)[0] for p in self.node_paths.get(n, ())}
            if len(rs) == 1:
                regions |= rs
        out: list[str] = []
        for n in names:
            ps = self.node_paths.get(n, ())
            rs = _dedupe(p.split("/", 1)[0] for p in ps)
            if len(rs) > 1:
                chosen = [r for r in rs if r in regions] or [rs[0]]
                ps = tuple(p for p in ps if p.split("/", 1)[0] == chosen[0])
            out.extend(ps)
        return _dedupe(out)

    def match(self, sentence: str, context: str = "") -> tuple[str, ...]:
        """Most specific anatomy paths of a sentence (all alternative groupings of a node).

        ``context`` (e.g. the previous sentence) only helps pick the region of an ambiguous node like ``aorta``.
        """
        names, mentioned = self._match_names(sentence)
        if not names:
            return ()
        ctx = list(self._match_names(context)[1]) if context else []
        return self.paths_for(names, list(mentioned) + ctx)


@lru_cache(maxsize=1)
def _default_lexicon() -> Lexicon:
    return Lexicon.from_ontology(get_ontology())


@runtime_checkable
class GroundingBackend(Protocol):
    """Sentences in, anatomy paths out (one tuple per sentence, ``()`` = whole scan)."""

    name: str

    def ground(self, sentences: Sequence[str]) -> list[tuple[str, ...]]: ...


@dataclass
class LexiconBackend:
    """The lexicon as a :class:`GroundingBackend` (sentence by sentence, no per-finding grounding)."""

    name: str = "lexicon"
    lexicon: Lexicon = field(default_factory=lambda: Lexicon.default())

    def ground(self, sentences: Sequence[str]) -> list[tuple[str, ...]]:
        return [self.lexicon.match(s) for s in sentences]


# ------------------------------------------------------------------------------------------------
# sentence analysis
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sentence:
    """One report sentence with its grounding and what it says."""

    text: str
    section: str = "findings"  # "findings" | "impressions"
    index: int = 0
    paths: tuple[str, ...] = ()  # most specific paths (every alternative grouping); () = whole scan
    abnormal: bool = False
    findings: tuple[str, ...] = ()  # positive finding phrases
    negated: tuple[str, ...] = ()  # findings said to be absent
    sizes: tuple[SizeMention, ...] = ()
    size_findings: tuple[str, ...] = ()  # the finding phrase each size belongs to (same order as sizes)
    comparison: str | None = None  # improved | worsened | no change | new | resolved
    finding_paths: tuple[tuple[str, tuple[str, ...]], ...] = ()  # (finding, its most specific paths) per finding

    def expanded_paths(self, onto: Ontology | None = None) -> tuple[str, ...]:
        """Every level of every path (the release's multi-granularity), top down, without duplicates."""
        onto = onto or get_ontology()
        return _dedupe(a for p in self.paths for a in onto.ancestors(p))


def _comparison(clauses: Sequence[tuple[str, bool]], text: str) -> str | None:
    context = bool(_COMPARISON_CONTEXT.search(text))
    for pred, rx in _COMPARISON:
        for clause, negated in clauses:
            m = rx.search(clause)
            if not m:
                continue
            if negated and pred not in ("resolved", "no change"):
                if pred == "new" or re.search(r"\b(no|not)\b[^,;]*" + re.escape(m.group(0)), clause):
                    continue  # "no new lesion", "not increased"
            if pred in ("worsened", "improved") and not (context or _STRONG_CHANGE.search(clause)):
                continue
            if pred == "no change" and m.group(0).startswith(("similar", "same", "persist")) and not context:
                continue
            return pred
    return None


#: Finding phrases that are no finding on their own (a bare word left when the head had no modifier).
_BARE = frozenset("density densities increased increase calcified calcific thickness appearance appearances images "
                  "changes fluid".split())

#: "When examined in the lung parenchyma window;" and similar openings: no anatomy of the sentence's findings.
_OPENING = re.compile(
    r"^[^;]{0,80}?\b(?:window|as far as (?:can be )?seen|within the sections?|in the sections?|included in the "
    r"(?:examination|sections?)|examination area|entered the section)\b[^;]{0,40};\s*"
)
#: Attachment chunks: a finding belongs to the anatomy named in its chunk (commas, semicolons, contrasts).
_CHUNK_SPLIT = re.compile(r";|,|\bbut\b|\bhowever\b|\bwhereas\b|\balthough\b|\bwhile\b|\band also\b|\bas well as\b")
#: A landmark: anatomy next to which a finding lies, not in which ("adjacent to the mediastinum").
_LANDMARK = re.compile(
    r"\b(?:adjacent to|neighbou?ring|next to|in the vicinity of|close to|in contact with|"
    r"in the neighbou?rhood of)\s+(?:the\s+)?(?:[a-z'-]+\s*){1,4}"
)
#: "X - no thickening was detected", "X, no Y was seen": a negation later in the clause that ends it.
_NEG_TAIL = re.compile(
    r"\b(?:no|not|none)\b[^;]*?\b(?:was|were|is|are|has been|have been)?\s*(?:detected|observed|seen|identified|"
    r"found|present|noted|visualized|evident)\b"
)


@lru_cache(maxsize=1)
def _conventions() -> tuple[dict[str, str], dict[str, tuple[str, ...]], dict[str, str]]:
    """(collapse and descend, implies, finding word -> path) of the learned lexicon, checked against the
    ontology."""
    data, onto = get_lexicon_data(), get_ontology()
    collapse = {a: b for a, b in data["collapse"].items() if a in onto and b in onto}
    collapse.update({a: b for a, b in data.get("descend", {}).items() if a in onto and b in onto})
    implies = {a: tuple(b for b in bs if b in onto) for a, bs in data["implies"].items() if a in onto}
    cues = {w: p for w, p in data["finding_anatomy"].items() if p in onto}
    return collapse, implies, cues


def apply_conventions(paths: Iterable[str]) -> tuple[str, ...]:
    """RadGenome's conventions on a finding's most specific paths (learned, see ``data/lexicon.json``): a path
    the real rows (almost) never use becomes its parent, a path implies the paths that carry the same findings
    in the real rows (``mediastinum/aorta`` -> ``abdomen/abdomen/aorta``), ancestors of others are dropped.

    >>> apply_conventions(["lung/lung/right lung/right lung middle lobe"])
    ('lung/lung/right lung',)
    >>> apply_conventions(["mediastinum/aorta"])
    ('mediastinum/aorta', 'abdomen/abdomen/aorta')
    """
    collapse, implies, _ = _conventions()
    out: list[str] = []
    for p in paths:
        parts = p.split("/")
        for i in range(1, len(parts) + 1):  # a collapsed ancestor collapses its whole subtree
            head = "/".join(parts[:i])
            if head in collapse and not collapse[head].startswith(head + "/"):
                p = collapse[head]
                break
        todo = [p]
        while todo:
            q = todo.pop(0)
            if q not in out:
                out.append(q)
                todo.extend(implies.get(q, ()))
    out = [p for p in out if not any(o != p and o.startswith(p + "/") for o in out)]
    # a path the rows never end at, when nothing below it is named: its generic tissue ("mediastinum" ->
    # "mediastinum/mediastinal tissue")
    return _dedupe(collapse[p] if collapse.get(p, "").startswith(p + "/") else p for p in out)


@lru_cache(maxsize=1)
def _region_priority() -> tuple[tuple[str, tuple[str, ...], frozenset[str]], ...]:
    """(region R, R's keywords, regions R beats) of the learned lexicon (``region_priority``)."""
    return tuple((r, tuple(w[:6] for w in r.split() if len(w) >= 4), frozenset(qs))
                 for r, qs in sorted(get_lexicon_data().get("region_priority", {}).items()))


def apply_node_priority(paths: Sequence[str], names: Sequence[str], lexicon: "Lexicon") -> tuple[str, ...]:
    """A finding grounded in two regions whose sentence names nodes A and B, where A beats B (learned from the
    rows, ``node_priority``: "plaques in the aorta and coronary arteries" are aortic rows): B's region goes.

    >>> apply_node_priority(["mediastinum/aorta", "heart/heart/heart tissue"], ["aorta", "heart"], Lexicon.default())
    ('mediastinum/aorta',)
    """
    out = list(paths)
    named = set(names)
    for a, beaten in get_lexicon_data().get("node_priority", {}).items():
        if a not in named:
            continue
        mine = {p.split("/", 1)[0] for p in lexicon.node_paths.get(a, ())}
        theirs = {p.split("/", 1)[0] for b in beaten if b in named for p in lexicon.node_paths.get(b, ())} - mine
        if theirs and any(p.split("/", 1)[0] in mine for p in out):
            out = [p for p in out if p.split("/", 1)[0] not in theirs]
    return _dedupe(out)


def apply_region_priority(paths: Sequence[str], low: str, sentence_paths: Sequence[str],
                          lexicon: "Lexicon") -> tuple[str, ...]:
    """A finding's paths in a sentence that names region R by one of its keywords, where R beats the region Q of
    some of them (learned from the rows: a sentence mentioning the pleura, "subpleural", "pleural-based", lists
    its lung findings under the pleura): Q's paths give way to R's (the sentence's own, else R's node).

    >>> apply_region_priority(["lung/lung/right lung"], "a subpleural nodule in the right lung", [], Lexicon.default())
    ('pleura/pleura',)
    """
    out = list(paths)
    for region, keywords, beaten in _region_priority():
        if not any(k in low for k in keywords) or (out and not any(p.split("/", 1)[0] in beaten for p in out)):
            continue  # (a finding grounded nowhere goes to R as well)
        out = [p for p in out if p.split("/", 1)[0] not in beaten]
        if not any(p.split("/", 1)[0] == region for p in out):
            own = [p for p in sentence_paths if p.split("/", 1)[0] == region]
            out.extend(own or lexicon.node_paths.get(region, ()))
    return _dedupe(out)


def _cue_paths(phrase: str) -> tuple[str, ...]:
    """Anatomy a finding phrase implies by its own words (``hepatosteatosis`` -> the liver), if any."""
    cues = _conventions()[2]
    onto = get_ontology()
    for w in reversed(_WORD_RE.findall(phrase)):
        p = cues.get(w)
        if p:
            leaf = onto.leaf(p)
            return tuple(q for q in onto.paths_ending_in(leaf) if q.split("/", 1)[0] == p.split("/", 1)[0])
    return ()


def _in_query(low: str, at: int) -> bool:
    """Whether position ``at`` lies inside parentheses that ask ("(small airway disease? small vessel
    disease?)", "(adenoma?)"): a differential RadGenome's VQA rows do not list (its case disorders, taken from
    the impressions, do: there the finding stays)."""
    open_ = low.rfind("(", 0, at)
    if open_ < 0 or low.rfind(")", open_, at) >= 0:
        return False
    close = low.find(")", at)
    return "?" in low[open_:close if close >= 0 else len(low)]


def analyze_sentence(text: str, *, section: str = "findings", index: int = 0,
                     paths: Sequence[str] | None = None, lexicon: Lexicon | None = None,
                     context: str = "", context_paths: Sequence[str] = ()) -> Sentence:
    """Classify one sentence, extract its findings and ground each finding (unless ``paths`` is given).

    Each finding goes to the anatomy named in its own chunk of the sentence (chunks end at commas,
    semicolons and contrasts) plus the anatomy-only chunks around it ("In the mediastinum, ...", "..., the
    largest in the left lower lobe"), else to the nearest chunk that names one; a learned anatomy cue of the
    finding's own words wins ("pericardial effusion" -> heart tissue); anatomy inside parentheses or inside
    the finding itself counts only when nothing else is named. A sentence that names no anatomy at all ("a
    nodule in this localization") takes ``context_paths`` (the previous sentence's). RadGenome's conventions
    (:func:`apply_conventions`) apply.

    >>> s = analyze_sentence("No mass or lymph nodes in pathological size were detected in both lungs.")
    >>> s.abnormal, s.negated, s.paths
    (False, ('mass', 'lymph nodes'), ('mediastinum/mediastinal tissue', 'lung/lung'))
    >>> s = analyze_sentence("Emphysema in both lungs, a cyst in the liver.")
    >>> dict(s.finding_paths)
    {'emphysema': ('lung/lung',), 'cyst': ('abdomen/abdomen/liver',)}
    """
    lexicon = lexicon or Lexicon.default()
    low = _norm_text(text)
    clauses_raw = [c for c in _CLAUSE_SPLIT.split(low) if c and c.strip()]
    positives: list[tuple[int, str]] = []
    negatives: list[str] = []
    clause_info: list[tuple[str, bool]] = []
    offset = 0
    for clause in clauses_raw:
        cstart = low.find(clause, offset)
        offset = max(offset, cstart + len(clause)) if cstart >= 0 else offset
        phrases = [x for x in _phrases(clause) if x[2] not in _BARE]
        # a negation that only qualifies what is observed negates nothing, when the clause opens positively
        blank = lambda m: " " * len(m.group(0))  # noqa: E731
        neg_clause = _NOT_A_NEGATION.sub(blank, clause)
        if phrases and not _NEG_BEFORE.search(neg_clause, 0, phrases[0][0]):
            neg_clause = _QUALIFYING_NEG.sub(blank, neg_clause)
        neg_before = _NEG_BEFORE.search(neg_clause)
        neg_after = _NEG_AFTER.search(neg_clause)
        clause_negated = False
        for s, e, ph in phrases:
            tail = _NEG_TAIL.search(neg_clause, e)
            if tail and any(tail.start() < s2 < tail.end() for s2, _, _ in phrases) and "," in clause[e:tail.start()]:
                tail = None  # "a mass in the left breast, no lymph node ... was observed": the later finding's own
            negated = bool((neg_before and neg_before.start() <= s) or neg_after or tail)
            if negated:
                negatives.append(ph)
                clause_negated = True
            elif section == "impressions" or not _in_query(low, max(cstart, 0) + s):
                positives.append((max(cstart, 0) + s, ph))
        if phrases and section != "impressions" and not _NORMAL_CUE.search(_THAN_NORMAL.sub(" ", clause)):
            # an abnormal adjective beside the clause's findings is a finding of its own, as in RadGenome's VQA
            # rows ("... septal thickenings and enlarged vascular structures", "a nodule with irregular borders")
            for m in _ABNORMAL_ADJ.finditer(clause):
                if any(s <= m.start() < e for s, e, _ in phrases) or neg_after or (
                        neg_before and neg_before.start() <= m.start()) or _in_query(low, max(cstart, 0) + m.start()):
                    continue
                positives.append((max(cstart, 0) + m.start(), m.group(0)))
        if not phrases:
            normal = bool(_NORMAL_CUE.search(_THAN_NORMAL.sub(" ", clause))) or bool(neg_before) or bool(neg_after)
            clause_negated = normal
            if not normal:  # "the liver is atrophic and its contours are corrugated": each one
                positives.extend((max(cstart, 0) + adj.start(), adj.group(0)) for adj in _ABNORMAL_ADJ.finditer(clause)
                                 if section == "impressions" or not _in_query(low, max(cstart, 0) + adj.start()))
        clause_info.append((clause, clause_negated))
    findings = _dedupe(p for _, p in positives)
    sizes = tuple(parse_sizes(text))
    size_findings: list[str] = []
    for z in sizes:
        if positives:
            nearest = min(positives, key=lambda t: abs(t[0] - z.start))
            size_findings.append(nearest[1])
        else:
            size_findings.append("")
    if paths is None:
        grounded, finding_paths = _ground_findings(low, positives, lexicon, context, context_paths)
    else:
        onto = lexicon.ontology
        grounded = tuple(onto.validate(p) for p in paths if normalize_path(p))
        finding_paths = tuple((f, grounded) for f in findings)
    return Sentence(
        text=text.strip(),
        section=section,
        index=index,
        paths=tuple(grounded),
        abnormal=bool(positives),
        findings=findings,
        negated=_dedupe(negatives),
        sizes=sizes,
        size_findings=tuple(size_findings),
        comparison=_comparison(clause_info, low),
        finding_paths=finding_paths,
    )


def _ground_findings(low: str, positives: Sequence[tuple[int, str]], lexicon: Lexicon, context: str,
                     context_paths: Sequence[str]) -> tuple[tuple[str, ...], tuple[tuple[str, tuple[str, ...]], ...]]:
    """(paths of the sentence, (finding, paths) per finding) of a lower-case sentence."""
    m = _OPENING.match(low)
    body_start = m.end() if m else 0
    # anatomy inside parentheses (a differential: "small airway disease?") grounds nothing, nor do the
    # words of a finding itself ("peribronchial thickening", "bronchiectasis") while anything else is named
    anat = re.sub(r"\([^()]*\)?", lambda x: " " * len(x.group(0)), low)
    bare = anat
    for s, phrase in positives:
        bare = bare[:s] + " " * len(phrase) + bare[s + len(phrase):]
    chunks: list[tuple[int, int]] = []
    start = body_start
    for sep in _CHUNK_SPLIT.finditer(low, body_start):
        chunks.append((start, sep.start()))
        start = sep.end()
    chunks.append((start, len(low)))
    # anatomy named as a landmark ("in a focal area adjacent to the mediastinum") is no place of the finding
    # while the sentence names another
    landmark_free = _LANDMARK.sub(lambda x: " " * len(x.group(0)), bare)
    full_paths = [lexicon.match(bare[a:b], low) if bare[a:b].strip() else () for a, b in chunks]
    free_paths = [lexicon.match(landmark_free[a:b], low) if landmark_free[a:b].strip() else () for a, b in chunks]
    chunk_paths = free_paths if any(free_paths) else full_paths
    finding_chunks = {i for i, (a, b) in enumerate(chunks) for s, _ in positives if a <= s < b}
    sentence_paths = lexicon.match(anat[body_start:], context) or ()
    names = lexicon._match_names(anat[body_start:])[0]
    out: dict[str, list[str]] = {}
    # an anatomy-only chunk that is no normal statement continues the location of the findings around it
    extra = [bool(chunk_paths[k]) and k not in finding_chunks and not _NORMAL_CUE.search(low[a:b])
             and not _NEG_BEFORE.search(low[a:b]) for k, (a, b) in enumerate(chunks)]
    for s, phrase in positives:
        i = next((k for k, (a, b) in enumerate(chunks) if a <= s < b), None)
        ps: tuple[str, ...] = ()
        if i is not None:
            ps = chunk_paths[i]
            if i > 0 and extra[i - 1]:
                ps = _dedupe(chunk_paths[i - 1] + ps)  # "In the mediastinum, a few lymph nodes ..."
            k = i + 1
            while k < len(chunks) and k not in finding_chunks and (extra[k] or not chunk_paths[k]):
                ps = _dedupe(ps + chunk_paths[k])  # "..., the largest in the right lower lobe"
                k += 1
            for k in list(range(i + 1, len(chunks))) + list(range(i - 1, -1, -1)):
                if ps:
                    break
                ps = chunk_paths[k]
        cue = _cue_paths(phrase)
        # "pleural effusion", "pericardial effusion": where RadGenome puts them, wherever they are; named anatomy
        # below the cue's place refines it ("osteophytes" -> the vertebrae, "in T3-4" -> those levels)
        finer = [p for p in ps if any(p.startswith(c + "/") for c in cue)]
        ps = tuple(finer) or cue or ps
        if not ps:
            ps = lexicon.match(phrase, low)  # the finding's own words: "pleural effusion"
        if not ps and not sentence_paths:
            ps = tuple(context_paths)  # "a nodule in this localization", "also observed": the previous anatomy
        ps = apply_node_priority(apply_conventions(ps), names, lexicon)
        ps = apply_region_priority(ps, low, sentence_paths, lexicon)
        bucket = out.setdefault(phrase, [])
        bucket.extend(q for q in ps if q not in bucket)
    finding_paths = tuple((f, tuple(v)) for f, v in out.items())
    if not positives:
        return tuple(sentence_paths), ()
    # the sentence is about its findings' anatomy and every anatomy it names ("bronchial wall thickening in
    # both lungs": bronchi and lungs), while each finding row goes to the finding's own paths
    every = _dedupe([p for _, v in finding_paths for p in v] + list(apply_conventions(sentence_paths)))
    return tuple(p for p in every if not any(o.startswith(p + "/") for o in every)), finding_paths


def ground_report(findings: str | None, impressions: str | None = None, *,
                  backend: "GroundingBackend | None" = None, lexicon: Lexicon | None = None) -> list[Sentence]:
    """Split, ground and analyse a report's findings then impressions.

    ``backend`` (a :class:`GroundingBackend`, e.g. :mod:`radgenome_hf.generate.llm`'s) chooses the paths; the
    default is the lexicon, with each finding grounded on its own and a sentence that names no anatomy taking
    the previous sentence's when that one is abnormal (a normal statement is no antecedent). Classification and
    phrase extraction always use the rules of this module.

    >>> [(s.section, s.paths) for s in ground_report("Heart size is normal.", "Left pleural effusion.")]
    [('findings', ('heart/heart',)), ('impressions', ('pleura/pleura',))]
    """
    lexicon = lexicon or Lexicon.default()
    items: list[tuple[str, str]] = [(t, "findings") for t in split_sentences(findings)]
    items += [(t, "impressions") for t in split_sentences(impressions)]
    if not items:
        return []
    paths: list[Sequence[str] | None]
    if backend is not None:
        paths = list(backend.ground([t for t, _ in items]))
    else:
        paths = [None] * len(items)
    out: list[Sentence] = []
    previous: tuple[str, ...] = ()
    for i, ((text, section), p) in enumerate(zip(items, paths)):
        if out and out[-1].section != section:
            previous = ()
        s = analyze_sentence(text, section=section, index=i, paths=p, lexicon=lexicon,
                             context=out[-1].text if out else "", context_paths=previous)
        out.append(s)
        previous = s.paths if s.abnormal else ()  # a back-reference continues a finding, not a normal statement
    return out


@dataclass
class GroundedReport:
    """One volume's grounded sentences."""

    volume_name: str  # stem, e.g. train_1_a_1
    sentences: list[Sentence]
    impressions_given: bool = True

    @property
    def stem(self) -> str:
        return self.volume_name


def ground_reports(reports: "pa.Table", *, backend: "GroundingBackend | None" = None,
                   progress: bool | None = None) -> dict[str, GroundedReport]:
    """Ground every report of a ``read_ctrate_reports`` table (columns ``volume_name``, ``findings``,
    ``impressions``); returns ``{volume stem: GroundedReport}`` in the table's order."""
    from tqdm.auto import tqdm

    cols = reports.column_names
    vname = "volume_name" if "volume_name" in cols else "VolumeName"
    fcol = "findings" if "findings" in cols else "Findings_EN"
    icol = "impressions" if "impressions" in cols else "Impressions_EN"
    names = reports.column(vname).to_pylist()
    fs = reports.column(fcol).to_pylist()
    imps = reports.column(icol).to_pylist()
    lexicon = Lexicon.default()
    out: dict[str, GroundedReport] = {}
    for name, f, imp in tqdm(list(zip(names, fs, imps)), desc="ground", unit="report",
                             disable=None if progress is None else not progress):
        stem = VolumeName.parse(name).stem
        given = bool(imp) and str(imp).strip() not in ("", "Not given.")
        out[stem] = GroundedReport(stem, ground_report(f, imp, backend=backend, lexicon=lexicon), given)
    return out


# ------------------------------------------------------------------------------------------------
# region_report rows
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _path_index() -> dict[str, int]:
    return {p: i for i, p in enumerate(get_ontology().paths)}


def path_sort_key(path: str) -> tuple[int, ...]:
    """Depth-first order of the ontology (parents before children, siblings in ontology order); ``""`` first."""
    idx = _path_index()
    p = normalize_path(path)
    if not p:
        return ()
    parts = p.split("/")
    return tuple(idx.get("/".join(parts[: i + 1]), 10**6) for i in range(len(parts)))


def region_report_rows(volume_name: str, sentences: Sequence[Sentence]) -> list[tuple[str, str, str]]:
    """``(Volumename, Anatomy, Sentence)`` rows of one volume, exactly as the real ``region_report``.

    Each sentence is listed at every level of each of its paths; the sentences of one (volume, path) are joined
    by a space in report order; sentences grounded nowhere form the whole-scan row (empty ``Anatomy``), first.
    """
    onto = get_ontology()
    filename = VolumeName.parse(volume_name).filename
    groups: dict[str, list[str]] = {}
    for s in sentences:
        levels = s.expanded_paths(onto) if s.paths else ("",)
        for a in levels:
            bucket = groups.setdefault(a, [])
            if s.text not in bucket:
                bucket.append(s.text)
    return [(filename, p, " ".join(groups[p])) for p in sorted(groups, key=path_sort_key)]


def write_region_report(path: str | Path, grounded: Mapping[str, GroundedReport] | Iterable[GroundedReport]) -> Path:
    """Write ``<split>_region_report.csv`` (header ``Volumename,Anatomy,Sentence``) atomically."""
    reports = grounded.values() if isinstance(grounded, Mapping) else grounded
    rows: list[tuple[str, str, str]] = []
    for g in reports:
        rows.extend(region_report_rows(g.volume_name, g.sentences))
    return write_csv(path, RADGENOME_HEADERS["region_report"], rows)


def normalize_finding(text: str) -> str:
    """Comparable form of a finding phrase (lower case, singular-ish, single spaces)."""
    t = normalize_name(text).replace("-", " ")
    return re.sub(r"(?<=[a-z])(ies|es|s)\b", lambda m: "y" if m.group(1) == "ies" else "", t)
