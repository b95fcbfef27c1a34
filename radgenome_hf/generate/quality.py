"""Generation stage "quality": per-volume checks a maintainer reads before publishing.

One row per volume (:func:`volume_quality`):

| column | what |
| --- | --- |
| ``nonfinite_voxels`` | NaN/inf voxels in the HU array |
| ``hu_min`` / ``hu_max`` | range of the finite HU values |
| ``intensity_source`` | ``header`` (the NIfTI's ``scl_slope``/``scl_inter``) or ``metadata`` (CT-RATE v1 blank header) |
| ``rescale_slope`` / ``rescale_intercept`` | the rescale that was applied |
| ``rescale_applied_twice`` | the stored values already looked like HU (minimum ≤ −900) and a negative intercept was added, or the HU minimum is far below air (≤ −1500): CT-CLIP issue #50 |
| ``lung_coverage`` | fraction of the ``slices`` axial slices (``k``) with lung in the volume's masks (a non-chest scan is ≈ 0) |
| ``spacing_ok`` | three finite spacings in ``(0, 10]`` mm |
| ``flags`` | the names of the failed checks (``[]`` for a clean volume): :data:`QUALITY_FLAGS` |
| ``label_checks`` | added by the rebuild after grounding (:mod:`~radgenome_hf.generate.label_checks`): the CT-RATE labels against the report's text |

>>> import numpy as np
>>> from radgenome_hf.access.masks import PackedMasks
>>> hu = np.full((8, 8, 4), -1000, np.int16); hu[2:6, 2:6, :] = 40
>>> lung = np.zeros(hu.shape, bool); lung[3:5, 3:5, :2] = True
>>> q = quality_of_array(hu, np.eye(4), PackedMasks.from_arrays({"left lung": lung}, np.eye(4)))
>>> q["hu_min"], q["hu_max"], q["lung_coverage"], q["flags"]
(-1000.0, 40.0, 0.5, [])
"""

from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..access.masks import PackedMasks

__all__ = ["volume_quality", "quality_of_array", "hu_quality", "hu_range", "with_masks", "lung_coverage", "QUALITY_COLUMNS",
           "QUALITY_FLAGS", "MIN_LUNG_COVERAGE"]

#: a chest CT has lung on far more of its axial slices than this; below it the scan is flagged ``non_chest``
MIN_LUNG_COVERAGE = 0.2
MAX_SPACING_MM = 10.0
_AIR_FLOOR_HU = -1500.0  # HU below air by this much only comes from a second rescale
_STORED_LOOKS_LIKE_HU = -900.0

#: the names a row's ``flags`` may hold (a failed check each)
QUALITY_FLAGS = ("nonfinite", "rescale_applied_twice", "spacing", "non_chest")

QUALITY_COLUMNS = ("volume_name", "nonfinite_voxels", "hu_min", "hu_max", "intensity_source", "rescale_slope",
                   "rescale_intercept", "rescale_applied_twice", "lung_coverage", "slices", "spacing", "spacing_ok",
                   "flags")


def lung_coverage(masks: "PackedMasks | None", n_slices: int) -> float:
    """Fraction of the ``n_slices`` axial slices on which any lung structure (a name containing ``lung``) is set.

    From the packed masks, never a full grid: the structures with the longest ``k`` extent of their bbox go first,
    and a structure is unpacked (inside its bbox) only when its bbox reaches a slice not yet hit, so the lobes of
    lungs already seen cost nothing.
    """
    if masks is None or n_slices <= 0:
        return 0.0
    hit = np.zeros(n_slices, bool)
    lungs = [(name, masks.bbox(name)) for name in masks.names if "lung" in name and masks.voxel_count(name)]
    for name, box in sorted(lungs, key=lambda nb: nb[1][2] - nb[1][5]):  # type: ignore[index]
        k0, k1 = box[2], box[5]  # type: ignore[index]
        if not hit[k0:k1].all():
            hit[k0:k1] |= masks.crop(name, box).any(axis=(0, 1))  # type: ignore[arg-type]
    return float(hit.mean())


#: HU values are scanned in blocks of this many bytes: a block's min and max (and, for float data, its
#: non-finite count) come from the cache, so the array is read from memory once, with no full-size temporary
_BLOCK_BYTES = 1 << 18


def hu_range(hu: np.ndarray) -> tuple[int, float, float]:
    """``(non-finite voxels, min, max)`` of the finite values of an HU array, in one pass over memory.

    No float64 copy and no full-size temporary (a boolean mask of a 512x512x300 volume is 79 MB, and indexing
    an F-ordered array with it takes seconds): each block's min and max are taken, and only a block whose min or
    max is not finite (NaN propagates, inf is extreme) is looked at voxel by voxel.

    >>> hu_range(np.array([[-1000, 40], [3, np.nan]], np.float32))
    (1, -1000.0, 40.0)
    """
    flat = hu.ravel(order="K")  # a view for a contiguous array (C or F): memory order
    step = max(1, _BLOCK_BYTES // max(1, flat.itemsize))
    floating = flat.dtype.kind == "f"
    lo = hi = None
    bad = 0
    for start in range(0, flat.size, step):
        block = flat[start:start + step]
        bmin, bmax = block.min(), block.max()
        if floating and not (np.isfinite(bmin) and np.isfinite(bmax)):
            finite = np.isfinite(block)
            bad += block.size - int(np.count_nonzero(finite))
            if not finite.any():
                continue
            bmin, bmax = block[finite].min(), block[finite].max()
        lo = bmin if lo is None or bmin < lo else lo
        hi = bmax if hi is None or bmax > hi else hi
    return bad, (math.nan if lo is None else float(lo)), (math.nan if hi is None else float(hi))


def hu_quality(hu: np.ndarray, affine: np.ndarray, *, rescale: tuple[float, float] = (1.0, 0.0),
               intensity_source: str = "header", volume_name: str = "") -> dict[str, Any]:
    """The checks that need only the HU array (``rescale`` = the slope/intercept that made it); finish the row
    with :func:`with_masks`."""
    nonfinite, hu_min, hu_max = hu_range(hu)
    slope, intercept = float(rescale[0]), float(rescale[1])
    stored_min = (hu_min - intercept) / slope
    twice = (intercept < 0 and stored_min <= _STORED_LOOKS_LIKE_HU) or hu_min <= _AIR_FLOOR_HU
    spacing = [float(s) for s in np.linalg.norm(np.asarray(affine, np.float64)[:3, :3], axis=0)]
    spacing_ok = all(math.isfinite(s) and 0 < s <= MAX_SPACING_MM for s in spacing)
    flags = [name for name, bad in (("nonfinite", nonfinite > 0), ("rescale_applied_twice", twice),
                                    ("spacing", not spacing_ok)) if bad]
    return {"volume_name": volume_name, "nonfinite_voxels": nonfinite, "hu_min": hu_min, "hu_max": hu_max,
            "intensity_source": intensity_source, "rescale_slope": slope, "rescale_intercept": intercept,
            "rescale_applied_twice": bool(twice), "lung_coverage": None, "slices": int(hu.shape[2]),
            "spacing": spacing, "spacing_ok": spacing_ok, "flags": flags}


def with_masks(row: dict[str, Any], masks: "PackedMasks | None") -> dict[str, Any]:
    """A :func:`hu_quality` row completed with the lung coverage of the volume's masks (and ``non_chest``);
    without masks the coverage is unknown (``None``) and not flagged."""
    if masks is None:
        return dict(row)
    coverage = lung_coverage(masks, int(row["slices"]))
    flags = list(row["flags"]) + (["non_chest"] if coverage < MIN_LUNG_COVERAGE else [])
    return {**row, "lung_coverage": round(coverage, 6), "flags": flags}


def quality_of_array(hu: np.ndarray, affine: np.ndarray, masks: "PackedMasks | None", **kwargs: Any) -> dict[str, Any]:
    """The quality row of an HU array and its masks (``kwargs`` as :func:`hu_quality`)."""
    return with_masks(hu_quality(hu, affine, **kwargs), masks)


def volume_quality(path: str | os.PathLike, masks: "PackedMasks | None", *,
                   metadata: Mapping[str, Any] | None = None, volume_name: str | None = None,
                   hu: np.ndarray | None = None) -> dict[str, Any]:
    """The quality row of a NIfTI volume, read as rows read it (:class:`~radgenome_hf.access.volume.Volume`).

    ``metadata``: the CT-RATE metadata row of a v1 (blank-header) file: the rescale then comes from it
    (``intensity_source="metadata"``). ``hu``: the already decoded HU array (the pipeline decodes once).
    """
    from ..access.volume import Volume
    from ..io.nifti import NiftiFile, ctrate_geometry

    vol = Volume.from_ctrate(path, metadata) if metadata is not None else Volume.open(path)
    uses_metadata = metadata is not None and not any(p.endswith("_fixed") for p in os.fspath(path).split(os.sep)[:-1])
    rescale = ctrate_geometry(metadata, os.fspath(path))[1] if uses_metadata else NiftiFile.open(path).slope_inter()
    arr = vol.array() if hu is None else hu
    return quality_of_array(arr, vol.affine, masks, rescale=rescale,
                            intensity_source="metadata" if uses_metadata else "header",
                            volume_name=volume_name or vol.name or "")
