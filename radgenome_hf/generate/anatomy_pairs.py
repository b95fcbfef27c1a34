"""Organ-level image–text pairs in the style of fVLM (feeds the ``anatomy_pairs`` config).

One row per (volume, organ) for the organs of ``ontology.fvlm_organs``: fVLM's four (lung, heart, esophagus,
aorta) plus ``mediastinum``, which the ontology adds so that CT-RATE's ``Lymphadenopathy`` label (unused by fVLM)
has an organ too. Per organ:

- ``caption`` = ``conc + " " + desc`` as fVLM builds it: ``conc`` from the impressions (the abnormal impression
  sentences about the organ; when a report has no impressions at all, its abnormal findings sentences stand in),
  else the template ``"<organ> shows no significant abnormalities."``; ``desc`` = the findings sentences about
  the organ. Quotes and parentheses are removed and every part ends with ``"."``. (fVLM concatenates the parts
  without a space; a space is kept here so that tokenisers see sentence boundaries.)
- ``abnormal`` = the caption does not start with the template (fVLM's rule).
- ``labels``: the CT-RATE labels the ontology maps to the organ (``ontology.labels_of_organ``) with their 0/1
  values from the labels CSV (null when the volume has no labels row).
- ``mask_name``/``mask_source``/``bbox``: the mask that grounds the organ (``ontology.grounding_mask`` among the
  volume's masks) and its voxel bbox.

A sentence is about an organ when one of its paths runs through a node with the organ's node name
(``mediastinum/aorta`` and ``abdomen/abdomen/aorta`` are both about the aorta).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

from ..names import VolumeName
from ..ontology import get_ontology
from .ground import GroundedReport, Sentence

if TYPE_CHECKING:  # pragma: no cover
    from ..access.masks import PackedMasks

__all__ = ["ANATOMY_PAIRS_FEATURES", "fvlm_organs", "organ_sentences", "caption_for", "build_anatomy_pairs",
           "normal_template", "clean_part", "write_anatomy_pairs", "labels_by_volume"]


def __getattr__(name: str) -> Any:
    """``ANATOMY_PAIRS_FEATURES`` from :mod:`radgenome_hf.hf.schema`, imported on first use (it imports ``datasets``,
    seconds, which a worker building pairs never needs)."""
    if name == "ANATOMY_PAIRS_FEATURES":
        from ..hf.schema import ANATOMY_PAIRS_FEATURES

        return ANATOMY_PAIRS_FEATURES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

def fvlm_organs() -> dict[str, str]:
    """``{organ: anatomy path}`` from the ontology."""
    return dict(get_ontology().fvlm_organs)


def normal_template(organ: str) -> str:
    """fVLM's caption for an organ without findings."""
    return f"{organ} shows no significant abnormalities."


_STRIP = re.compile(r"[\"'()\[\]]")


def clean_part(text: str) -> str:
    """Remove quotes and parentheses, squeeze spaces, end with a full stop (fVLM's text cleaning).

    >>> clean_part('Nodule (6 mm) in the "RUL"')
    'Nodule 6 mm in the RUL.'
    """
    t = re.sub(r"\s+", " ", _STRIP.sub("", text)).strip()
    if t and not t.endswith("."):
        t += "."
    return t


def organ_sentences(sentences: Sequence[Sentence], organ_path: str) -> list[Sentence]:
    """Sentences with a path through a node named like the organ's node."""
    onto = get_ontology()
    name = onto.leaf(organ_path)
    return [s for s in sentences if any(name in p.split("/") for p in s.paths)]


def caption_for(organ: str, sentences: Sequence[Sentence], *, impressions_given: bool = True) -> tuple[str, str, str]:
    """``(caption, conclusion, description)`` of one organ from its sentences.

    >>> from radgenome_hf.generate.ground import ground_report
    >>> ss = ground_report("Heart size is normal.", "Not given.")
    >>> caption_for("heart", ss, impressions_given=False)[0]
    'heart shows no significant abnormalities. Heart size is normal.'
    """
    conc_s = [s for s in sentences if s.section == "impressions" and s.abnormal]
    if not conc_s and not impressions_given:
        conc_s = [s for s in sentences if s.section == "findings" and s.abnormal]
    conc = " ".join(clean_part(s.text) for s in conc_s) or normal_template(organ)
    desc = " ".join(clean_part(s.text) for s in sentences if s.section == "findings")
    caption = f"{conc} {desc}".strip()
    return caption, conc, desc


def labels_by_volume(labels: Any) -> dict[str, dict[str, int | None]]:
    """``{stem: {label: value}}`` from a ``read_ctrate_labels`` table or a mapping (``{}`` for ``None``)."""
    if labels is None:
        return {}
    if isinstance(labels, Mapping):
        return {VolumeName.parse(k).stem: dict(v) for k, v in labels.items()}
    out = {}
    cols = [c for c in labels.column_names if c not in ("volume_name", "VolumeName")]
    key = "volume_name" if "volume_name" in labels.column_names else "VolumeName"
    onto = get_ontology()
    by_norm = {re.sub(r"[^a-z]", "", l.lower()): l for l in onto.label_names}
    for row in labels.to_pylist():
        vals = {}
        for c in cols:
            label = by_norm.get(re.sub(r"[^a-z]", "", c.lower()))
            if label is not None:
                v = row[c]
                vals[label] = None if v is None else int(v)
        out[VolumeName.parse(row[key]).stem] = vals
    return out


def build_anatomy_pairs(grounded: Mapping[str, GroundedReport], *, labels: Any = None,
                        masks_of: Callable[[str], "PackedMasks | None"] | None = None,
                        organs: Mapping[str, str] | None = None,
                        progress: bool | None = None) -> list[dict]:
    """Rows of the ``anatomy_pairs`` config (keys of :data:`ANATOMY_PAIRS_FEATURES`), volume by volume.

    ``labels``: a ``tables.read_ctrate_labels`` table or ``{volume: {label: 0/1}}``; ``masks_of(stem)``: the
    volume's :class:`~radgenome_hf.access.masks.PackedMasks` or None.
    """
    from tqdm.auto import tqdm

    onto = get_ontology()
    organs = dict(organs) if organs is not None else fvlm_organs()
    lab = labels_by_volume(labels)
    rows: list[dict] = []
    for stem, g in tqdm(list(grounded.items()), desc="anatomy pairs", unit="volume",
                        disable=None if progress is None else not progress):
        v = VolumeName.parse(stem)
        masks = masks_of(v.stem) if masks_of else None
        anatomy = [n for n in masks.names if masks.sources.get(n) != "region"] if masks is not None else []
        regions = [n for n in masks.names if masks.sources.get(n) == "region"] if masks is not None else []
        vals = lab.get(v.stem, {})
        for organ, path in organs.items():
            ss = organ_sentences(g.sentences, path)
            caption, conc, desc = caption_for(organ, ss, impressions_given=g.impressions_given)
            source, mask_name = onto.grounding_mask(path, anatomy, regions) if masks is not None else ("whole", None)
            box = masks.bbox(mask_name) if (masks is not None and mask_name) else None
            rows.append({
                "volume_name": v.stem,
                "patient_id": v.patient_id,
                "scan_id": v.scan_id,
                "reconstruction_id": v.reconstruction_id,
                "organ": organ,
                "anatomy_path": path,
                "caption": caption,
                "conclusion": conc,
                "description": desc,
                "abnormal": not caption.startswith(normal_template(organ)),
                "labels": [{"name": l, "value": vals.get(l)} for l in onto.labels_of_organ(organ)],
                "mask_name": mask_name,
                "mask_source": source,
                "bbox": None if box is None else [int(x) for x in box],
            })
    return rows


def write_anatomy_pairs(rows: Sequence[dict], path: str | Path) -> Path:
    """One zstd parquet file with the schema of :data:`ANATOMY_PAIRS_FEATURES`, written atomically."""
    from ..hf.schema import ANATOMY_PAIRS_FEATURES
    from .scene_graph import write_rows_parquet

    return write_rows_parquet(rows, path, ANATOMY_PAIRS_FEATURES)
