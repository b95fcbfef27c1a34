"""Slice sequences for 2D-encoder models (MS-VLM style): any number of slices, axial / coronal / sagittal.

Output ``(N, H, W)``: axial ``(j, i)``, coronal ``(k, i)``, sagittal ``(k, j)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, Literal, Mapping, Sequence

import numpy as np

from .inputs import OutputEntry, PresetTransform, as_array, need_spacing, torch_kji

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["Plane", "SliceSequence", "SliceSequenced", "slice_indices", "slice_sequence"]

Plane = Literal["axial", "coronal", "sagittal"]

_PLANE_AXIS = {"axial": 2, "coronal": 1, "sagittal": 0}  # nibabel axis the slices are taken along


@dataclass
class SliceSequence:
    """Slices ``(N, H, W)`` and where they are: voxel ``indices`` along the plane's axis and ``positions_mm``
    (index × spacing, mm from the first voxel centre; ``world_mm`` gives the scanner coordinate along that axis of
    each slice centre when the affine is known)."""

    slices: "torch.Tensor"
    indices: np.ndarray
    positions_mm: np.ndarray
    plane: str
    world_mm: np.ndarray | None = None


def slice_indices(
    size: int,
    *,
    n_slices: int | None = None,
    stride: int | None = None,
    spacing_mm: float | None = None,
    voxel_mm: float | None = None,
) -> np.ndarray:
    """Indices of the slices to take along an axis of ``size`` voxels (exactly one rule must be given).

    ``n_slices``: the centres of ``n`` equal bins (any ``n``; repeats when ``n > size``); ``stride``: every
    ``stride``-th voxel from the centre of the first bin; ``spacing_mm``: one slice every ``spacing_mm`` (needs
    ``voxel_mm``).

    >>> slice_indices(10, n_slices=5).tolist()
    [1, 3, 5, 7, 9]
    >>> slice_indices(10, stride=4).tolist()
    [0, 4, 8]
    >>> slice_indices(10, spacing_mm=3.0, voxel_mm=1.5).tolist()
    [0, 2, 4, 6, 8]
    """
    given = [v is not None for v in (n_slices, stride, spacing_mm)]
    if sum(given) != 1:
        raise ValueError("give exactly one of n_slices, stride, spacing_mm")
    if n_slices is not None:
        if n_slices < 1:
            raise ValueError(f"n_slices must be >= 1, got {n_slices}")
        return np.minimum(((np.arange(n_slices) + 0.5) * size / n_slices).astype(np.int64), size - 1)
    if stride is not None:
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        return np.arange(0, size, stride, dtype=np.int64)
    if voxel_mm is None:
        raise ValueError("spacing_mm needs the voxel spacing (voxel_mm / the volume's spacing)")
    step = float(spacing_mm) / float(voxel_mm)
    if step <= 0:
        raise ValueError(f"spacing_mm must be > 0, got {spacing_mm}")
    idx = np.round(np.arange(0.0, size - 0.5, step)).astype(np.int64)
    return np.unique(np.minimum(idx, size - 1))


def _where_slices(shape: Sequence[int], sp: Sequence[float] | None, plane: str, n_slices: int | None,
                  stride: int | None, spacing_mm: float | None) -> tuple[int, np.ndarray, np.ndarray]:
    """(nibabel axis, slice indices, their positions in mm) of a plane's slices: from the grid alone."""
    if plane not in _PLANE_AXIS:
        raise ValueError(f"plane must be one of {sorted(_PLANE_AXIS)}, got {plane!r}")
    axis = _PLANE_AXIS[plane]
    voxel_mm = None if sp is None else float(sp[axis])
    if spacing_mm is not None:
        need_spacing(sp, "slice_sequence(spacing_mm=...)")
    idx = slice_indices(int(shape[axis]), n_slices=n_slices, stride=stride, spacing_mm=spacing_mm, voxel_mm=voxel_mm)
    pos = (idx.astype(np.float32) * np.float32(voxel_mm)) if voxel_mm is not None else np.full(len(idx), np.nan, np.float32)
    return axis, idx, pos


def slice_sequence(
    volume: Any,
    *,
    plane: Plane = "axial",
    n_slices: int | None = None,
    stride: int | None = None,
    spacing_mm: float | None = None,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
    window: tuple[float, float] | None = None,
) -> SliceSequence:
    """Slices of a volume along a plane, for 2-D encoders (MS-VLM style): ``(N, H, W)`` tensor + positions.

    Axial slices are ``(j, i)`` images (rows y, columns x), coronal ``(k, i)``, sagittal ``(k, j)``; no flips.
    Without ``window`` the slices keep the volume's dtype (int16 HU); with ``window=(lo, hi)`` they are float32
    ``(x - lo) / (hi - lo)`` clipped to [0, 1].

    >>> import numpy as np
    >>> s = slice_sequence(np.zeros((8, 6, 10), np.int16), plane="coronal", n_slices=3, spacing=(1, 2, 3))
    >>> tuple(s.slices.shape), s.indices.tolist(), s.positions_mm.tolist()
    ((3, 10, 8), [1, 3, 5], [2.0, 6.0, 10.0])
    """
    import torch

    arr, sp, aff = as_array(volume, spacing, affine)
    axis, idx, pos = _where_slices(arr.shape, sp, plane, n_slices, stride, spacing_mm)
    t = torch_kji(arr)  # (k, j, i)
    dim = 2 - axis  # axis in (k, j, i)
    sel = torch.index_select(t, dim, torch.from_numpy(idx))  # one gather copy, contiguous
    slices = sel.movedim(dim, 0).contiguous()
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        slices = slices.to(torch.float32).sub_(lo).div_(hi - lo).clamp_(0.0, 1.0)
    elif slices.dtype == torch.uint8 and arr.dtype == np.bool_:
        slices = slices.bool()
    world = None
    if aff is not None:
        centre = (np.asarray(arr.shape, dtype=np.float64) - 1) / 2
        vox = np.tile(centre, (len(idx), 1))
        vox[:, axis] = idx
        world = (vox @ np.asarray(aff, np.float64)[:3, :3].T + np.asarray(aff, np.float64)[:3, 3]).astype(np.float32)
    return SliceSequence(slices, idx, pos, plane, world)


class SliceSequenced(PresetTransform):
    """Dict transform of :func:`slice_sequence`: ``data[key]`` becomes ``(N, H, W)``; indices and mm positions go to
    ``f"{key}_slice_indices"`` / ``f"{key}_slice_mm"``. Mask keys get the same slices (no window).

    ``cache=True`` (default): the slices of a :class:`~radgenome_hf.access.volume.Volume` with a prepared cache are
    stored, keyed by the volume and every parameter (plane, count/stride/spacing, window, geometry), and read back in
    later epochs. Masks (``mask_keys``) are not stored."""

    cache_name = "slices"

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "image",
        mask_keys: Hashable | Sequence[Hashable] = (),
        *,
        plane: Plane = "axial",
        n_slices: int | None = None,
        stride: int | None = None,
        spacing_mm: float | None = None,
        spacing: Sequence[float] | None = None,
        window: tuple[float, float] | None = None,
        cache: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = self._key_tuple(mask_keys)
        self.kw = dict(plane=plane, n_slices=n_slices, stride=stride, spacing_mm=spacing_mm)
        self.spacing, self.window = spacing, window
        self.cache = bool(cache)

    def _spacing_of(self, d: Mapping, key: Hashable) -> tuple[Any, Any]:
        sp, aff = self._geometry(d, key, self.spacing)
        if sp is None and aff is None and self.keys:
            sp, aff = self._geometry(d, self.keys[0], None)
        return sp, aff

    def _entry(self, d: Mapping, key: Hashable) -> OutputEntry | None:
        fills = {"": (key, "tensor")}
        if isinstance(key, str):
            fills.update({"idx": (f"{key}_slice_indices", "array"), "mm": (f"{key}_slice_mm", "array")})
        window = None if self.window is None else [float(v) for v in self.window]
        return self._volume_entry(d.get(key), fills, window=window, **self.kw,
                                  **self._geometry_params(*self._spacing_of(d, key)))

    def _entries(self, data: Mapping) -> list[OutputEntry] | None:
        if self._present(data, self.mask_keys):  # masks are not stored: the transform runs
            return None
        entries = [self._entry(data, key) for key in self._present(data, self.keys)]
        return None if any(e is None for e in entries) else entries

    def _sample(self, d: dict) -> dict:
        for key, win, image in [(k, self.window, True) for k in self._present(d, self.keys)] + [
            (k, None, False) for k in self._present(d, self.mask_keys)
        ]:
            entry = self._entry(d, key) if image else None
            if self._from_cache(entry, d):
                continue
            if entry is not None:
                d[key].retain = False  # later epochs read these slices, not the raw volume
            sp, aff = self._spacing_of(d, key)
            s = slice_sequence(d[key], spacing=sp, affine=aff, window=win, **self.kw)
            if entry is not None:
                entry.store({"": s.slices, "idx": s.indices, "mm": s.positions_mm})
            d[key] = s.slices
            if isinstance(key, str):
                d[f"{key}_slice_indices"] = s.indices
                d[f"{key}_slice_mm"] = s.positions_mm
        return d
