"""The RadGenome anatomy ontology: the one place that reads the package's data files (``data/ontology.json``, the
grounding lexicon ``data/lexicon.json`` and the CT-RATE label vocabulary ``data/label_vocabulary.json``).

Anatomy is a ``/``-separated path (``lung/lung/right lung/right lung upper lobe``); the same node name can sit
under several parents (``right lung upper lobe`` is under ``right lung`` and under ``lung upper lobe``), so the
ontology is a set of paths plus facts about node names.

>>> onto = get_ontology()
>>> onto.parent("lung/lung/right lung")
'lung/lung'
>>> onto.depth("lung/lung/right lung")
3
>>> onto.grounding_mask("bone/bone/vertebrae/thoracic vertebrae/thoracic vertebrae 12 (T12)")
('anatomy', 'thoracic vertebrae 12 (t12)')
>>> onto.grounding_mask("pleura/pleura")
('region', 'pleura')
>>> onto.grounding_mask("")
('whole', None)
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Iterable, Literal

from .errors import MalformedFileError, UnknownAnatomyError

MaskSource = Literal["anatomy", "region", "whole"]
_WS = re.compile(r"\s+")


def normalize_name(name: str) -> str:
    """Canonical form of a node or mask name: lower case, single spaces, no ``.nii.gz``.

    >>> normalize_name("  Thoracic  Vertebrae 12 (T12).nii.gz")
    'thoracic vertebrae 12 (t12)'
    """
    text = name.strip()
    for suffix in (".nii.gz", ".nii"):
        if text.lower().endswith(suffix):
            text = text[: -len(suffix)]
    return _WS.sub(" ", text.strip().lower())


def normalize_path(path: str | None) -> str:
    """Canonical form of an anatomy path; ``None``/NaN/empty/``whole scan`` become ``""`` (the whole scan)."""
    if path is None or (isinstance(path, float) and path != path):
        return ""
    text = str(path).strip()
    if text.lower() in ("", "nan", "whole scan", "whole"):
        return ""
    return "/".join(normalize_name(p) for p in text.split("/") if p.strip())


@dataclass(frozen=True)
class CTRateLabel:
    label: str
    fvlm_organ: str | None
    path: str | None


@dataclass
class Ontology:
    """Anatomy paths, mask names, synonyms and label mappings. Build with :func:`get_ontology`."""

    paths: tuple[str, ...]
    top_level: tuple[str, ...]
    region_masks: tuple[str, ...]
    anatomy_masks: tuple[str, ...]
    synonyms: dict[str, tuple[str, ...]]
    ctrate_labels: tuple[CTRateLabel, ...]
    fvlm_organs: dict[str, str]
    totalsegmentator: dict[str, str]
    _path_set: frozenset[str] = field(init=False, repr=False)
    _children: dict[str, tuple[str, ...]] = field(init=False, repr=False)
    _by_leaf: dict[str, tuple[str, ...]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._path_set = frozenset(self.paths)
        children: dict[str, list[str]] = {}
        by_leaf: dict[str, list[str]] = {}
        for p in self.paths:
            parent = p.rpartition("/")[0]
            children.setdefault(parent, []).append(p)
            by_leaf.setdefault(p.rsplit("/", 1)[-1], []).append(p)
        self._children = {k: tuple(v) for k, v in children.items()}
        self._by_leaf = {k: tuple(v) for k, v in by_leaf.items()}

    # -- paths ---------------------------------------------------------------------------------------
    def __contains__(self, path: object) -> bool:
        return isinstance(path, str) and normalize_path(path) in self._path_set

    def validate(self, path: str) -> str:
        """Return the normalised path, or raise :class:`UnknownAnatomyError` (``""`` is the whole scan)."""
        p = normalize_path(path)
        if p and p not in self._path_set:
            close = [q for q in self.paths if q.endswith("/" + p.rsplit("/", 1)[-1])][:3]
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UnknownAnatomyError(f"anatomy path {path!r} is not in the RadGenome ontology{hint}")
        return p

    def parent(self, path: str) -> str | None:
        """Parent path, ``None`` for a top-level node (and for the whole scan)."""
        p = self.validate(path)
        if not p or "/" not in p:
            return None
        return p.rpartition("/")[0]

    def children(self, path: str = "") -> tuple[str, ...]:
        """Direct children; ``children("")`` gives the top-level paths."""
        return self._children.get(self.validate(path), ())

    def depth(self, path: str) -> int:
        """Number of levels (``lung`` = 1); the whole scan is 0."""
        p = self.validate(path)
        return 0 if not p else p.count("/") + 1

    def ancestors(self, path: str) -> list[str]:
        """Every level of a path from the top down, the path itself last (the release's multi-granularity)."""
        p = self.validate(path)
        parts = p.split("/") if p else []
        return ["/".join(parts[: i + 1]) for i in range(len(parts))]

    def leaf(self, path: str) -> str:
        """Last node name of a path (``""`` for the whole scan)."""
        p = normalize_path(path)
        return p.rsplit("/", 1)[-1] if p else ""

    def paths_ending_in(self, name: str) -> tuple[str, ...]:
        """Every path whose last node is ``name`` (normalised)."""
        return self._by_leaf.get(normalize_name(name), ())

    def region_of(self, path: str) -> str:
        """Top-level node of a path (``""`` for the whole scan)."""
        p = normalize_path(path)
        return p.split("/", 1)[0] if p else ""

    # -- grounding masks ------------------------------------------------------------------------------
    def grounding_mask(
        self,
        path: str | None,
        available_anatomy: Iterable[str] | None = None,
        available_regions: Iterable[str] | None = None,
    ) -> tuple[MaskSource, str | None]:
        """Which mask grounds a path, by the official rule.

        The anatomy mask named by the path's last node, else the region mask named by its first node, else the
        whole scan. With ``available_*`` given (the mask names a volume really has), a mask is used only if it is
        available; without them, the ontology's lists decide. Returns ``(source, normalised mask name)``.
        """
        p = normalize_path(path)
        if not p:
            return "whole", None
        leaf = p.rsplit("/", 1)[-1]
        anatomy = (
            {normalize_name(n) for n in available_anatomy}
            if available_anatomy is not None
            else set(self.anatomy_masks)
        )
        if leaf in anatomy:
            return "anatomy", leaf
        region = p.split("/", 1)[0]
        regions = (
            {normalize_name(n) for n in available_regions}
            if available_regions is not None
            else set(self.region_masks)
        )
        if region in regions:
            return "region", region
        return "whole", None

    # -- labels ---------------------------------------------------------------------------------------
    @property
    def label_names(self) -> tuple[str, ...]:
        """CT-RATE's 18 abnormality labels, in the CSV's column order."""
        return tuple(l.label for l in self.ctrate_labels)

    def labels_of_organ(self, organ: str) -> tuple[str, ...]:
        """CT-RATE labels fVLM maps to an organ (``lung``, ``heart``, ``esophagus``, ``aorta``)."""
        return tuple(l.label for l in self.ctrate_labels if l.fvlm_organ == organ)

    def from_totalsegmentator(self, class_name: str) -> str | None:
        """Ontology node name of a TotalSegmentator class (v1 or v2 name), ``None`` if it has none."""
        return self.totalsegmentator.get(class_name)

    def synonyms_of(self, name: str) -> tuple[str, ...]:
        return self.synonyms.get(normalize_name(name), ())


@lru_cache(maxsize=1)
def get_ontology() -> Ontology:
    """The ontology shipped in ``radgenome_hf/data/ontology.json`` (read once, cached)."""
    raw = json.loads(resources.files("radgenome_hf").joinpath("data/ontology.json").read_text("utf-8"))
    return Ontology(
        paths=tuple(raw["paths"]),
        top_level=tuple(raw["top_level"]),
        region_masks=tuple(raw["region_masks"]),
        anatomy_masks=tuple(raw["anatomy_masks"]),
        synonyms={k: tuple(v) for k, v in raw["synonyms"].items()},
        ctrate_labels=tuple(CTRateLabel(**d) for d in raw["ctrate_labels"]),
        fvlm_organs=dict(raw["fvlm_organs"]),
        totalsegmentator=dict(raw["totalsegmentator"]),
    )


@lru_cache(maxsize=1)
def get_lexicon_data() -> dict:
    """The grounding lexicon learned from real RadGenome rows (``radgenome_hf/data/lexicon.json``, written by
    ``builder_scripts/make_lexicon.py``): ``findings``, ``finding_anatomy``, ``implies`` and ``collapse``.

    >>> get_lexicon_data()["implies"]["mediastinum/aorta"][-1]
    'abdomen/abdomen/aorta'
    """
    return json.loads(resources.files("radgenome_hf").joinpath("data/lexicon.json").read_text("utf-8"))


#: The keys a rule of ``data/label_vocabulary.json`` may have (see its ``description``).
LABEL_RULE_KEYS = frozenset({"findings", "not", "anatomy", "when", "unless"})


@lru_cache(maxsize=1)
def get_label_vocabulary() -> dict[str, dict]:
    """How each CT-RATE label is recognised in grounded findings (``radgenome_hf/data/label_vocabulary.json``):
    ``{label: {"rules": [...], "text": [...], "absent_text": [...]}}`` for every label of :attr:`Ontology.label_names`,
    checked on read (every label present, known keys, anatomy paths of the ontology, patterns that compile).

    >>> v = get_label_vocabulary()
    >>> list(v) == list(get_ontology().label_names), v["Pleural effusion"]["rules"][0]["anatomy"]
    (True, ['pleura', 'lung'])
    """
    name = "data/label_vocabulary.json"
    raw = json.loads(resources.files("radgenome_hf").joinpath(name).read_text("utf-8"))["labels"]
    onto = get_ontology()

    def bad(msg: str) -> MalformedFileError:
        return MalformedFileError(f"radgenome_hf/{name}", f"{msg}; fix the package data file")

    if set(raw) != set(onto.label_names):
        raise bad(f"labels {sorted(set(raw) ^ set(onto.label_names))} are not CT-RATE's 18 labels")
    out: dict[str, dict] = {}
    for label in onto.label_names:
        entry = raw[label]
        if set(entry) - {"rules", "text", "absent_text"}:
            raise bad(f"{label!r} has unknown keys {sorted(set(entry) - {'rules', 'text', 'absent_text'})}")
        rules = entry.get("rules", [])
        for rule in rules:
            if set(rule) - LABEL_RULE_KEYS or not rule.get("findings"):
                raise bad(f"{label!r}: a rule needs 'findings' and may have {sorted(LABEL_RULE_KEYS)}, got {sorted(rule)}")
            for path in rule.get("anatomy", ()):
                if path not in onto:
                    raise bad(f"{label!r}: anatomy {path!r} is not an ontology path")
        patterns = [p for r in rules for k in ("findings", "not") for p in r.get(k, ())]
        patterns += [r[k] for r in rules for k in ("when", "unless") if k in r]
        for p in patterns + entry.get("text", []) + entry.get("absent_text", []):
            try:
                re.compile(p)
            except re.error as exc:
                raise bad(f"{label!r}: pattern {p!r} does not compile ({exc})") from exc
        out[label] = {"rules": rules, "text": entry.get("text", []), "absent_text": entry.get("absent_text", [])}
    return out
