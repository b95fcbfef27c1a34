"""Region crops: the bounding box of a named anatomy (mask, region mask or ontology path) and the crop of it.

The function returns numpy ``(i, j, k)``; the dict transform gives ``(1, k, j, i)`` zero-copy tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Hashable, Literal, Mapping, Sequence

import numpy as np

from .inputs import OutputEntry, PresetTransform, as_array, mask_identity

__all__ = ["RegionCrop", "RegionCropd", "region_bbox", "region_crop", "resolve_region_mask"]

@dataclass
class RegionCrop:
    """A region crop: ``image`` and ``mask`` in (i, j, k) order, the half-open ``bbox`` (i0, j0, k0, i1, j1, k1)
    in the volume's grid, and which mask grounded it (``source`` "anatomy" | "region" | "whole", ``mask_name``)."""

    image: np.ndarray
    mask: np.ndarray
    bbox: tuple[int, int, int, int, int, int]
    source: str
    mask_name: str | None


def resolve_region_mask(
    masks: Any,
    anatomy: str,
    *,
    anatomy_names: Sequence[str] | None = None,
    region_names: Sequence[str] | None = None,
) -> tuple[str, str | None]:
    """Which mask of ``masks`` grounds ``anatomy`` (a node name such as ``right lung upper lobe`` or an anatomy path):
    a mask of that exact (normalised) name, else the ontology's grounding rule (anatomy mask named by the path's last
    node, else region mask named by its first node, else the whole scan). Returns (source, mask name or None).
    ``masks`` may be ``None`` when ``anatomy_names``/``region_names`` (the mask names of each kind) are given."""
    from ..ontology import get_ontology, normalize_name, normalize_path

    path = normalize_path(anatomy)
    if not path:
        return "whole", None
    if anatomy_names is not None or region_names is not None:
        anat = [normalize_name(n) for n in anatomy_names or ()]
        regs = [normalize_name(n) for n in region_names or ()]
        names = anat + [n for n in regs if n not in anat]
        sources = {**{n: "region" for n in regs}, **{n: "anatomy" for n in anat}}
    else:
        names = list(masks.names) if hasattr(masks, "names") else [normalize_name(str(n)) for n in masks]
        sources = dict(getattr(masks, "sources", None) or {})
        if sources:
            anat = [n for n in names if sources.get(n) != "region"]
            regs = [n for n in names if sources.get(n) == "region"]
        else:
            anat, regs = names, names
    if "/" not in path and path in names:
        return sources.get(path, "anatomy"), path
    onto = get_ontology()
    if "/" not in path and path not in onto:
        candidates = onto.paths_ending_in(path)
        if not candidates:
            from ..errors import UnknownAnatomyError

            raise UnknownAnatomyError(
                f"anatomy {anatomy!r} is neither a mask of this volume ({', '.join(names[:8])}…) nor an ontology node"
            )
        path = candidates[0]
    return onto.grounding_mask(path, anat, regs)


def _get_mask(masks: Any, name: str) -> np.ndarray:
    if hasattr(masks, "mask") and hasattr(masks, "names"):
        return masks.mask(name)
    from ..ontology import normalize_name

    for k, v in masks.items():
        if normalize_name(str(k)) == name:
            return np.asarray(v, dtype=bool)
    raise KeyError(name)


def _np_bbox(mask: np.ndarray) -> tuple[int, int, int, int, int, int] | None:
    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(np.any(mask, axis=other))
        if nz.size == 0:
            return None
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]) + 1)
    return (*lo, *hi)  # type: ignore[return-value]


def region_bbox(
    mask: np.ndarray | None,
    shape: Sequence[int],
    margin: float | Sequence[float] = 0,
    *,
    margin_unit: Literal["mm", "voxel"] = "mm",
    spacing: Sequence[float] | None = None,
    bbox: Sequence[int] | None = None,
) -> tuple[int, int, int, int, int, int]:
    """Bounding box (i0, j0, k0, i1, j1, k1) of a mask (or ``bbox``) grown by ``margin`` and clamped to ``shape``.

    A margin in mm becomes ``ceil(margin / spacing)`` voxels per axis.

    >>> m = np.zeros((10, 10, 10), bool); m[4:6, 4:6, 4:6] = True
    >>> region_bbox(m, m.shape, 2, margin_unit="voxel")
    (2, 2, 2, 8, 8, 8)
    """
    if bbox is None:
        if mask is None:
            return (0, 0, 0, *[int(s) for s in shape])  # type: ignore[return-value]
        bbox = _np_bbox(mask)
        if bbox is None:
            raise ValueError("region_bbox: the mask is empty")
    m = np.broadcast_to(np.asarray(margin, dtype=np.float32), (3,))
    if margin_unit == "mm":
        if spacing is None:
            raise ValueError("a margin in mm needs the volume's spacing; pass spacing= or margin_unit='voxel'")
        vox = [int(np.ceil(float(m[a]) / float(spacing[a]) - 1e-6)) for a in range(3)]
    elif margin_unit == "voxel":
        vox = [int(round(float(v))) for v in m]
    else:
        raise ValueError(f"margin_unit must be 'mm' or 'voxel', got {margin_unit!r}")
    return tuple(  # type: ignore[return-value]
        [max(int(bbox[a]) - vox[a], 0) for a in range(3)] + [min(int(bbox[a + 3]) + vox[a], int(shape[a])) for a in range(3)]
    )


def region_crop(
    volume: Any,
    masks: Any,
    anatomy: str,
    *,
    margin: float | Sequence[float] = 10.0,
    margin_unit: Literal["mm", "voxel"] = "mm",
    spacing: Sequence[float] | None = None,
    affine: Any = None,
) -> RegionCrop:
    """Crop a volume and its grounding mask around an anatomy (node name or path), with a margin.

    ``masks`` is a :class:`~radgenome_hf.access.masks.PackedMasks`, a row's ``MaskSet``, a ``{name: bool array}``
    dict (the mask is then chosen by :func:`resolve_region_mask`; the whole scan, ``""``/"whole scan" or no matching
    mask, gives the full volume), or a ``vqa``/``grounded_reports`` row's ``LazyMask``, the grounding mask itself
    (``anatomy`` is then not needed). With a lazy :class:`~radgenome_hf.access.volume.Volume` only the crop is read;
    packed masks decode only the box.
    """
    from ..access.lazymasks import LazyMask

    is_volume = hasattr(volume, "crop") and hasattr(volume, "spacing") and hasattr(volume, "array")
    if is_volume:
        shape = tuple(int(s) for s in volume.shape)
        sp = tuple(spacing) if spacing is not None else tuple(float(s) for s in volume.spacing)
        arr = None
    else:
        arr, sp, _ = as_array(volume, spacing, affine)
        shape = tuple(int(s) for s in arr.shape)
    lazy = isinstance(masks, LazyMask)  # one structure, already grounded: its bbox and crop are the mask's own
    if lazy:
        source, name = ("whole", None) if masks.source == "whole" or masks.structure is None else (masks.source,
                                                                                                  masks.structure)
    else:
        source, name = resolve_region_mask(masks, anatomy)
    packed = lazy or (hasattr(masks, "bbox") and hasattr(masks, "crop"))
    if name is None:
        bb = region_bbox(None, shape, 0, margin_unit="voxel")
        mask_crop = np.ones(shape, dtype=bool)
    else:
        if packed:
            mshape = tuple(int(s) for s in masks.shape)
            tight = masks.bbox if lazy else masks.bbox(name)
            full = None
        else:
            full = _get_mask(masks, name)
            mshape = tuple(full.shape)
            tight = _np_bbox(full)
        if mshape != shape:
            from ..errors import ShapeMismatchError

            raise ShapeMismatchError(f"region_crop: mask {name!r} has shape {mshape}, the volume {shape}")
        if tight is None:  # empty structure: the whole volume with an all-False mask (as Volume.region does)
            bb = region_bbox(None, shape)
            mask_crop = np.zeros(shape, dtype=bool, order="F")
        else:
            bb = region_bbox(None, shape, margin, margin_unit=margin_unit, spacing=sp, bbox=tight)
            if lazy:
                mask_crop = masks.crop(bb)
            else:
                mask_crop = masks.crop(name, bb) if packed else full[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]]
    if is_volume:
        img = volume.crop(bb)
    else:
        img = arr[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]]
        if not isinstance(img, np.ndarray):
            img = img.numpy()
    return RegionCrop(np.asarray(img), np.asarray(mask_crop, dtype=bool), bb, source, name)


class RegionCropd(PresetTransform):
    """Dict transform of :func:`region_crop`: crops ``data[image_key]`` and writes the grounding mask crop to
    ``data[mask_out_key]``; both become zero-copy ``(1, k, j, i)`` tensors (int16 / uint8). The masks come from
    ``data[masks_key]``: a ``segmentation`` row's ``MaskSet`` (``"masks"``), the anatomy then from
    ``data[anatomy_key]`` (a path such as a row's ``anatomy``) or the fixed ``anatomy=``; or a ``vqa`` /
    ``grounded_reports`` row's grounding ``LazyMask`` (``masks_key="mask"``), cropped at its own box. The box goes to
    ``f"{image_key}_bbox"``.

    ``cache=True`` (default): crops of a :class:`~radgenome_hf.access.volume.Volume` with a prepared cache are
    stored, keyed by the volume, the mask files, the mask chosen and every parameter, and read back later (the
    raw volume stays cached too: other rows of the volume crop other boxes).

    A ``vqa`` row, cropped around its grounding mask (1 voxel around it here):

    >>> import numpy as np, tempfile, os
    >>> from radgenome_hf.access.lazymasks import LazyMask
    >>> from radgenome_hf.access.masks import PackedMasks
    >>> from radgenome_hf.access.volume import Volume
    >>> m = np.zeros((20, 20, 10), bool); m[5:9, 6:12, 2:5] = True
    >>> path = os.path.join(tempfile.mkdtemp(), "train_1_a_1.masks.parquet")
    >>> _ = PackedMasks.from_arrays({"heart": m}, np.eye(4)).save(path)
    >>> row = {"volume": Volume.from_array(np.ones((20, 20, 10), np.int16)),
    ...        "mask": LazyMask(path, "heart", "anatomy", (20, 20, 10))}
    >>> out = RegionCropd("volume", masks_key="mask", margin=1, margin_unit="voxel")(row)
    >>> tuple(out["volume"].shape), out["volume_bbox"], int(out["mask"].sum())
    ((1, 5, 8, 6), (4, 5, 1, 10, 13, 6), 72)
    """

    cache_name = "region"

    def __init__(
        self,
        image_key: Hashable = "image",
        masks_key: Hashable = "masks",
        *,
        anatomy_key: Hashable | None = "anatomy",
        anatomy: str | None = None,
        mask_out_key: Hashable = "mask",
        margin: float | Sequence[float] = 10.0,
        margin_unit: Literal["mm", "voxel"] = "mm",
        spacing: Sequence[float] | None = None,
        as_tensor: bool = True,
        cache: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__((image_key, masks_key), allow_missing_keys)
        self.image_key, self.masks_key, self.mask_out_key = image_key, masks_key, mask_out_key
        self.anatomy_key, self.anatomy = anatomy_key, anatomy
        self.margin, self.margin_unit, self.spacing, self.as_tensor = margin, margin_unit, spacing, as_tensor
        self.cache = bool(cache)

    def _anatomy_of(self, d: Mapping) -> str:
        return (self.anatomy if self.anatomy is not None else d.get(self.anatomy_key, "")) or ""

    def _entry(self, d: Mapping) -> OutputEntry | None:
        from ..access.lazymasks import LazyMask

        masks = d.get(self.masks_key)
        if not self._cacheable(d.get(self.image_key)):
            return None
        # a LazyMask's identity names its structure; a mask set's, only its files: then the mask the anatomy picks
        which = None if isinstance(masks, LazyMask) else list(resolve_region_mask(masks, self._anatomy_of(d)))
        tensor = self.as_tensor
        fills = {"": (self.image_key, "tensor" if tensor else "ijk"),
                 "mask": (self.mask_out_key, "tensor" if tensor else "ijk_bool")}
        if isinstance(self.image_key, str):
            fills["bbox"] = (f"{self.image_key}_bbox", "tuple")
        margin = np.broadcast_to(np.asarray(self.margin, dtype=np.float64), (3,)).tolist()
        return self._volume_entry(d.get(self.image_key), fills, mask=mask_identity(masks), which=which,
                                  margin=margin, margin_unit=self.margin_unit,
                                  **self._geometry_params(*self._geometry(d, self.image_key, self.spacing)))

    def _entries(self, data: Mapping) -> list[OutputEntry] | None:
        if len(self._present(data, self.keys)) < 2 or not self.as_tensor:
            return None
        entry = self._entry(data)
        return None if entry is None else [entry]

    def _sample(self, d: dict) -> dict:
        import torch

        if len(self._present(d, self.keys)) < 2:
            return d
        entry = self._entry(d)
        if self._from_cache(entry, d):
            return d
        sp, aff = self._geometry(d, self.image_key, self.spacing)
        c = region_crop(d[self.image_key], d[self.masks_key], self._anatomy_of(d), margin=self.margin,
                        margin_unit=self.margin_unit, spacing=sp, affine=aff)
        img = torch.from_numpy(np.asfortranarray(c.image).T)[None]  # zero-copy (1, k, j, i)
        msk = torch.from_numpy(np.asfortranarray(c.mask).view(np.uint8).T)[None]
        entry = entry or self._entry(d)  # a folder release's masks are packed on first use: their identity is known now
        if entry is not None:
            entry.store({"": img, "mask": msk, "bbox": np.asarray(c.bbox, np.int64)})
        if self.as_tensor:
            d[self.image_key], d[self.mask_out_key] = img, msk
        else:
            d[self.image_key], d[self.mask_out_key] = c.image, c.mask
        if isinstance(self.image_key, str):
            d[f"{self.image_key}_bbox"] = c.bbox
        return d
