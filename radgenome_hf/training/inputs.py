"""What every preset accepts: a :class:`~radgenome_hf.access.volume.Volume`, a nibabel image, an array or a tensor.

Arrays and tensors are in nibabel voxel order ``(i, j, k)`` (a leading channel axis of size 1 is dropped); their
spacing comes from ``spacing=`` (mm, ``(i, j, k)``) or ``affine=``. Volumes and nibabel images carry their own. In
a dict transform, ``data[f"{key}_spacing"]`` / ``data[f"{key}_affine"]`` are used when present.

Dict presets are thin :class:`monai.transforms.MapTransform` subclasses (:class:`PresetTransform`) over the array
functions, like MONAI's own ``dictionary.py`` modules.

>>> import numpy as np
>>> arr, spacing, affine = as_array(np.zeros((1, 4, 4, 2), np.float64), spacing=(1, 1, 2))
>>> arr.shape, arr.dtype, spacing
((4, 4, 2), dtype('float32'), (1.0, 1.0, 2.0))
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Sequence

import numpy as np
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["PresetTransform", "as_array", "need_spacing", "torch_kji"]


def _spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    a = np.asarray(affine, dtype=np.float64)[:3, :3]  # 4x4 header geometry, not volume data
    return tuple(float(v) for v in np.sqrt((a * a).sum(axis=0)))  # type: ignore[return-value]


def as_array(
    volume: Any, spacing: Sequence[float] | None = None, affine: Any = None
) -> tuple[Any, tuple[float, float, float] | None, np.ndarray | None]:
    """(array or tensor in (i, j, k), spacing (i, j, k) or None, affine or None) of any accepted volume type."""
    vol_spacing = None
    vol_affine = None
    if isinstance(volume, (str, os.PathLike)):  # a file: our Volume (isal inflate, no transposing copy)
        from ..access.volume import Volume

        volume = Volume.open(volume)
    if hasattr(volume, "array") and hasattr(volume, "spacing") and callable(volume.array):  # radgenome Volume
        arr = volume.array()
        vol_spacing = tuple(float(s) for s in volume.spacing)
        vol_affine = getattr(volume, "affine", None)
    elif hasattr(volume, "dataobj") and hasattr(volume, "header"):  # nibabel image
        dataobj = volume.dataobj
        slope = getattr(dataobj, "slope", 1.0)
        inter = getattr(dataobj, "inter", 0.0)
        if hasattr(dataobj, "get_unscaled"):
            raw = np.asanyarray(dataobj.get_unscaled())
        else:
            raw = np.asanyarray(dataobj)
        if (slope is not None and float(slope) != 1.0) or (inter is not None and float(inter) != 0.0):
            arr = raw.astype(np.float32)
            arr *= np.float32(slope)
            arr += np.float32(inter)
        else:
            arr = raw
        vol_spacing = tuple(float(z) for z in volume.header.get_zooms()[:3])
        vol_affine = volume.affine
    else:
        arr = volume
        if hasattr(volume, "affine") and affine is None and spacing is None:  # MONAI MetaTensor
            try:
                vol_affine = np.asarray(volume.affine)
            except Exception:  # noqa: BLE001 - not a usable affine
                vol_affine = None
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D volume (i, j, k), got shape {tuple(arr.shape)}")
    if isinstance(arr, np.ndarray) and arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if spacing is not None:
        sp = tuple(float(s) for s in spacing)
    elif affine is not None:
        sp = _spacing_from_affine(affine)
    elif vol_spacing is not None:
        sp = vol_spacing
    elif vol_affine is not None:
        sp = _spacing_from_affine(vol_affine)
    else:
        sp = None
    aff = affine if affine is not None else vol_affine
    return arr, sp, (None if aff is None else np.asarray(aff))


def torch_kji(arr: Any) -> "torch.Tensor":
    """A (k, j, i) tensor view of an (i, j, k) array, zero-copy when the array is F-ordered (NIfTI's layout)."""
    import torch

    if isinstance(arr, torch.Tensor):
        t = arr.permute(2, 1, 0)
    else:
        a = np.asarray(arr)
        if a.dtype == np.bool_:
            a = a.view(np.uint8)
        if any(s < 0 for s in a.strides):
            a = np.asfortranarray(a)
        with warnings.catch_warnings():  # read-only arrays (memory maps): we never write into the input
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(a).permute(2, 1, 0)  # contiguous when `a` is F-ordered
    if t.dtype == torch.float64:
        t = t.float()
    return t


def need_spacing(sp: Any, what: str) -> tuple[float, float, float]:
    if sp is None:
        raise ValueError(f"{what}: the volume's spacing is unknown; pass spacing=(si, sj, sk) in mm or affine=")
    return sp


class PresetTransform(MapTransform):
    """The dict-transform base of the presets: MONAI's key handling plus the geometry lookup they share.

    A preset takes one sample (a dict) or a datasets batch (a dict of lists, as ``ds.with_transform(preset)``
    passes), and gives back the same kind.
    """

    def __call__(self, data: Mapping) -> dict:
        if self._is_batch(data):  # a datasets batch (with_transform / set_transform / batched map)
            return self._per_row(data)
        return self._sample(dict(data))

    def _sample(self, d: dict) -> dict:
        """Transform one sample (a copy of the caller's dict, free to modify)."""
        raise NotImplementedError

    def _present(self, data: Mapping, keys: Sequence[Hashable]) -> list[Hashable]:
        out = []
        for k in keys:
            if k in data:
                out.append(k)
            elif not self.allow_missing_keys:
                raise KeyError(f"{type(self).__name__}: key {k!r} not in the sample (keys: {sorted(map(str, data))})")
        return out

    def _is_batch(self, data: Mapping) -> bool:
        """Whether ``data`` is a datasets batch (``with_transform`` / ``set_transform`` / batched ``map``: column ->
        list of values) rather than one sample."""
        for k in self.keys:
            if k in data:
                return isinstance(data[k], (list, tuple))
        return False

    def _per_row(self, data: Mapping) -> dict:
        """Apply this transform to every row of a batch and give the batch back (column -> list)."""
        cols = [k for k, v in data.items() if isinstance(v, (list, tuple))]
        n = len(data[cols[0]]) if cols else 0
        rows = [self({k: (v[i] if k in cols else v) for k, v in data.items()}) for i in range(n)]
        return {k: [r[k] for r in rows] for k in (rows[0] if rows else data)}

    @staticmethod
    def _key_tuple(keys: Hashable | Sequence[Hashable] | None) -> tuple[Hashable, ...]:
        return () if keys in ((), None) else ensure_tuple(keys)

    @staticmethod
    def _geometry(data: Mapping, key: Hashable, spacing: Any) -> tuple[Any, Any]:
        sp = data.get(f"{key}_spacing", spacing) if isinstance(key, str) else spacing
        aff = data.get(f"{key}_affine") if isinstance(key, str) else None
        if sp is not None:
            aff = None
        return sp, aff
