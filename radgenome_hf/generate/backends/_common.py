"""Helpers shared by the segmentation backends: class names -> ontology names, derived unions, grids."""

from __future__ import annotations

from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np

from ...errors import ShapeMismatchError
from ...access.masks import PackedMasks
from ...ontology import get_ontology, normalize_name

#: Ontology mask names a backend output gets as the union of its finer structures, when the backend does not
#: produce them itself (``lung`` = every lobe, ``bone`` = every bone, ...). Only names whose union is a faithful
#: stand-in are listed: ``mediastinum`` or ``abdomen`` are spaces, not the union of the organs in them.
DERIVED_NAMES: tuple[str, ...] = (
    "left lung",
    "right lung",
    "lung",
    "trachea and bronchie",
    "heart",
    "thyroid gland",
    "thyroid",
    "breast",
    "bone",
)
#: Structures under a derived name in the ontology that are not part of it as a volume.
_EXCLUDED = {"bone": frozenset({"spinal canal"})}
#: Structures that belong to a derived name but have no path in the ontology.
_EXTRA = {"heart": frozenset({"myocardium"})}


def ontology_name(class_name: str) -> str | None:
    """Ontology mask name of a backend class (TotalSegmentator v1/v2 name, or already an ontology name).

    >>> ontology_name("lung_upper_lobe_left"), ontology_name("Left Lung"), ontology_name("kidney_cyst_left")
    ('left lung upper lobe', 'left lung', None)
    """
    onto = get_ontology()
    mapped = onto.from_totalsegmentator(class_name)
    if mapped:
        return normalize_name(mapped)
    name = normalize_name(class_name)
    if name in _known_names():
        return name
    return None


@lru_cache(maxsize=1)
def _known_names() -> frozenset[str]:
    onto = get_ontology()
    return frozenset(onto.anatomy_masks) | frozenset(onto.region_masks)


def derived_members(present: Sequence[str]) -> dict[str, list[str]]:
    """For each :data:`DERIVED_NAMES` entry absent from ``present``: the present names that make it up."""
    onto = get_ontology()
    have = set(present)
    out: dict[str, list[str]] = {}
    for d in DERIVED_NAMES:
        if d in have:
            continue
        members = []
        for n in present:
            if n in _EXCLUDED.get(d, ()):
                continue
            inside = any(d in p.split("/")[:-1] for p in onto.paths_ending_in(n)) or n in _EXTRA.get(d, ())
            if inside:
                members.append(n)
        if members:
            out[d] = members
    return out


def label_map_to_masks(
    label_map: np.ndarray,
    class_names: Mapping[int, str],
    affine: np.ndarray,
    *,
    source: str,
    derive: bool = True,
) -> PackedMasks:
    """Pack a label map whose values are backend classes into ontology-named masks.

    Classes mapping to the same ontology name are merged (``iliac_artery_left`` + ``_right`` -> ``iliac artery``);
    classes with no ontology name (and 0, background) are not stored. With ``derive``, the coarser names of
    :data:`DERIVED_NAMES` are added as unions (``lung`` from the lobes, ``bone`` from the bones...).
    """
    lm = np.asarray(label_map)
    if lm.ndim != 3:
        raise ShapeMismatchError(f"label map must be 3D, got shape {lm.shape}")
    groups: dict[str, list[int]] = {}
    for cid, cname in sorted(class_names.items()):
        if int(cid) <= 0:
            continue
        name = ontology_name(str(cname))
        if name is not None:
            groups.setdefault(name, []).append(int(cid))
    names = list(groups)
    top = max((int(c) for c in class_names), default=0)
    dtype = np.uint8 if len(names) < 255 else np.uint16
    lut = np.zeros(top + 1, dtype)
    for idx, name in enumerate(names, start=1):
        lut[groups[name]] = idx
    if not np.issubdtype(lm.dtype, np.integer):
        lm = np.rint(lm).astype(np.int32)
    inside = (lm >= 0) & (lm <= top)
    compact = lut[np.where(inside, lm, 0)]
    out = PackedMasks.from_label_map(compact, {i: n for i, n in enumerate(names, start=1)}, affine, source=source)
    if derive:
        index = {n: i for i, n in enumerate(names, start=1)}
        for dname, members in derived_members(names).items():
            sel = np.zeros(len(names) + 1, bool)
            sel[[index[m] for m in members]] = True
            out.add(dname, sel[compact], source=source)
    return out


def masks_with_derived(masks: Mapping[str, np.ndarray], affine: np.ndarray, *, source: str) -> PackedMasks:
    """Pack ontology-named full-grid masks and add the :data:`DERIVED_NAMES` unions."""
    items = {normalize_name(k): np.asarray(v, bool) for k, v in masks.items()}
    out = PackedMasks.from_arrays(items, affine, source=source)
    for dname, members in derived_members(list(items)).items():
        u = np.zeros(out.shape, bool)
        for m in members:
            u |= items[m]
        out.add(dname, u, source=source)
    return out


def check_grid(masks: PackedMasks, shape: Sequence[int], affine: np.ndarray, where: str) -> PackedMasks:
    """Raise :class:`ShapeMismatchError` unless ``masks`` lies on the grid (shape, affine) of the input."""
    if tuple(masks.shape) != tuple(int(s) for s in shape):
        raise ShapeMismatchError(
            f"{where}: segmentation grid {tuple(masks.shape)} differs from the input grid {tuple(shape)}; "
            "the backend must resample its output back onto the input"
        )
    if not np.allclose(masks.affine, np.asarray(affine, np.float64), atol=1e-3):
        raise ShapeMismatchError(
            f"{where}: segmentation affine differs from the input affine:\n{masks.affine}\nvs\n{affine}"
        )
    return masks
