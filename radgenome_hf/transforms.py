"""Preprocessing presets for chest CT: CT-CLIP, fVLM, slice sequences (MS-VLM style) and region crops.

Each preset is a plain function on arrays and a MONAI-compatible dict transform (a class with ``keys`` and
``__call__(data: dict) -> dict``, usable inside ``monai.transforms.Compose``).

Inputs. A volume may be a :class:`radgenome_hf.volume.Volume`, a nibabel image, a numpy array or a torch tensor.
Arrays and tensors are in nibabel voxel order ``(i, j, k)`` (a leading channel axis of size 1 is dropped); their
spacing comes from ``spacing=`` (mm, ``(i, j, k)``) or ``affine=``. Volumes and nibabel images carry their own. In
a dict transform, ``data[f"{key}_spacing"]`` / ``data[f"{key}_affine"]`` are used when present.

Outputs (no float64 anywhere; tensors are C-contiguous):

=================  ================================  ==========================================================
preset             output                            layout
=================  ================================  ==========================================================
CT-CLIP            ``(1, 240, 480, 480)``            CT-CLIP's own ``(D, H, W)`` = nibabel ``(k, i, j)``
fVLM               ``(1, 112, 256, 352)`` (padded)   fVLM's ``(z, y, x)`` = nibabel ``(k, j, i)``
slice sequence     ``(N, H, W)``                     axial ``(j, i)``, coronal ``(k, i)``, sagittal ``(k, j)``
region crop        numpy ``(i, j, k)`` (function);    the dict transform gives ``(1, k, j, i)`` zero-copy tensors
=================  ================================  ==========================================================

Speed. Resampling uses ``torch.nn.functional.interpolate`` in float32 (never MONAI ``Spacing``, never float64).
The int16 F-ordered NIfTI array is viewed as ``(k, j, i)`` (zero-copy), converted to float32 in that same layout
and interpolated there; the single transposition to the output's axis order is folded into the final crop/pad
copy, which writes straight into the output tensor; when the grid already has the target spacing, no
interpolation (and, for ``output="int16"``, no float conversion) happens at all. A path is opened with
:class:`~radgenome_hf.volume.Volume` (isal inflate when installed).

>>> import numpy as np
>>> ct = np.full((40, 40, 20), -1024, np.int16)          # (i, j, k) HU, 1.5 x 1.5 x 3 mm
>>> ctclip_preprocess(ct, spacing=(1.5, 1.5, 3.0), target_shape=(64, 64, 32)).shape
torch.Size([1, 32, 64, 64])
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Hashable, Literal, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

Plane = Literal["axial", "coronal", "sagittal"]

CTCLIP_SPACING = (0.75, 0.75, 1.5)  # mm, (i, j, k) = (x, y, z); CT-CLIP writes it (z, x, y) = (1.5, 0.75, 0.75)
CTCLIP_SHAPE = (480, 480, 240)  # (H, W, D) = (i, j, k)
CTCLIP_HU = (-1000.0, 1000.0)
FVLM_SPACING = (1.0, 1.0, 3.0)  # mm, (i, j, k)
FVLM_WINDOW = (-1150.0, 350.0)
FVLM_MARGIN = (5, 20, 20)  # voxels after the resize, (z, y, x)
FVLM_PAD = (112, 256, 352)  # (z, y, x)
FVLM_ORGANS = ("lung", "heart", "esophagus", "aorta")  # fVLM label values 1..4


# ----------------------------------------------------------------------------------------------------------
# input handling
# ----------------------------------------------------------------------------------------------------------
def _spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    a = np.asarray(affine, dtype=np.float64)[:3, :3]  # 4x4 header geometry, not volume data
    return tuple(float(v) for v in np.sqrt((a * a).sum(axis=0)))  # type: ignore[return-value]


def _as_array(
    volume: Any, spacing: Sequence[float] | None = None, affine: Any = None
) -> tuple[Any, tuple[float, float, float] | None, np.ndarray | None]:
    """(array or tensor in (i, j, k), spacing (i, j, k) or None, affine or None) of any accepted volume type."""
    vol_spacing = None
    vol_affine = None
    if isinstance(volume, (str, os.PathLike)):  # a file: our Volume (isal inflate, no transposing copy)
        from .volume import Volume

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


def _torch_kji(arr: Any) -> "torch.Tensor":
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


def _need_spacing(sp: Any, what: str) -> tuple[float, float, float]:
    if sp is None:
        raise ValueError(f"{what}: the volume's spacing is unknown; pass spacing=(si, sj, sk) in mm or affine=")
    return sp


# ----------------------------------------------------------------------------------------------------------
# CT-CLIP
# ----------------------------------------------------------------------------------------------------------
def ctclip_target_size(
    shape: Sequence[int], spacing: Sequence[float], target_spacing: Sequence[float] = CTCLIP_SPACING
) -> tuple[int, int, int]:
    """CT-CLIP's resampled grid size ``int(shape_i * current_i / target_i)`` per axis, in (i, j, k) order.

    >>> ctclip_target_size((512, 512, 300), (0.73, 0.73, 1.0))
    (498, 498, 200)
    """
    return tuple(int(shape[a] * (float(spacing[a]) / float(target_spacing[a]))) for a in range(3))  # type: ignore[return-value]


def _crop_pad_slices(size: int, target: int) -> tuple[slice, slice]:
    """CT-CLIP's centre crop/pad along one axis: (source slice, destination slice)."""
    start = max((size - target) // 2, 0)
    end = min(start + target, size)
    n = end - start
    before = (target - n) // 2
    return slice(start, end), slice(before, before + n)


def _resample_dhw(x: "torch.Tensor", size: Sequence[int], mode: str) -> "torch.Tensor":
    import torch
    import torch.nn.functional as F

    if tuple(x.shape) == tuple(size):
        return x
    kwargs = {"align_corners": False} if mode in ("trilinear", "linear", "bilinear") else {}
    with torch.no_grad():
        return F.interpolate(x[None, None], size=tuple(size), mode=mode, **kwargs)[0, 0]


def ctclip_preprocess(
    volume: Any,
    *,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
    rescale: tuple[float, float] | None = None,
    target_spacing: Sequence[float] = CTCLIP_SPACING,
    target_shape: Sequence[int] = CTCLIP_SHAPE,
    output: Literal["float32", "int16"] = "float32",
    hu_range: tuple[float, float] = CTCLIP_HU,
) -> "torch.Tensor":
    """CT-CLIP's preprocessing of one CT volume, exactly, in float32: a tensor ``(1, D, H, W)``.

    ``volume``: a path (``.nii[.gz]``, read by :class:`~radgenome_hf.volume.Volume`), a ``Volume``, a nibabel image,
    or an ``(i, j, k)`` array/tensor with ``spacing=``/``affine=``.

    Steps (CT-CLIP ``scripts/data.py``): optional rescale ``slope * x + intercept`` (only for raw CT-RATE v1 arrays:
    a :class:`~radgenome_hf.volume.Volume` already gives HU); trilinear resample (``align_corners=False``) to
    ``target_spacing`` (mm, (i, j, k); CT-CLIP's (z 1.5, xy 0.75)) with size ``int(shape * current / target)``;
    clip to ``hu_range`` and divide by 1000; centre crop/pad to ``target_shape`` (H, W, D) = (i, j, k) with pad value
    −1, padding split ``(t - n) // 2`` before and the rest after; output permuted to (D, H, W) = (k, i, j) with a
    channel axis.

    ``output="int16"`` gives HU rounded and clipped to ``hu_range`` (pad −1000) instead: 4x less memory through the
    loader; normalise on the GPU with :func:`ctclip_normalize` (values then differ from ``"float32"`` by at most
    0.5 HU / 1000 from the rounding).
    """
    import torch
    import torch.nn.functional as F

    arr, sp, _ = _as_array(volume, spacing, affine)
    sp = _need_spacing(sp, "ctclip_preprocess")
    shape = tuple(int(s) for s in arr.shape)
    new_ijk = ctclip_target_size(shape, sp, target_spacing)
    lo, hi = float(hu_range[0]), float(hu_range[1])

    # Work in the (k, j, i) view, which is the F-ordered NIfTI array itself (contiguous, zero-copy). Resampling
    # is separable: per block of output slices, lerp the two source slices along k (float32, a few MB that stay
    # in cache), then bilinear in (j, i) with F.interpolate (same PyTorch weights as trilinear,
    # align_corners=False). No full-volume float32 copy is ever made (that alone cost 0.2 s of page faults
    # for a 512x512x300 volume), and the one transposition, to CT-CLIP's (D, H, W) = (k, i, j), is folded into
    # the final crop/pad copy, which writes only the voxels kept.
    src = _torch_kji(arr)  # (k, j, i)
    tk, ti, tj = int(target_shape[2]), int(target_shape[0]), int(target_shape[1])
    if output not in ("float32", "int16"):
        raise ValueError(f"output must be 'float32' or 'int16', got {output!r}")
    new_kji = (new_ijk[2], new_ijk[1], new_ijk[0])
    sk, dk = _crop_pad_slices(new_kji[0], tk)
    sj, dj = _crop_pad_slices(new_kji[1], tj)
    si, di = _crop_pad_slices(new_kji[2], ti)
    if output == "float32":
        out = torch.full((1, tk, ti, tj), -1.0, dtype=torch.float32)
    else:
        out = torch.full((1, tk, ti, tj), int(lo), dtype=torch.int16)

    def emit(part: "torch.Tensor", k_dst: slice) -> None:
        """Clip/scale (or round) a float32 block of kept voxels (k, j, i) in place and write it transposed."""
        dst = out[0, k_dst, di, dj]
        if output == "float32":
            dst.copy_(part.clamp_(lo, hi).div_(1000.0).permute(0, 2, 1))
        else:
            dst.copy_(part.clamp_(lo, hi).round_().permute(0, 2, 1))

    if new_kji == tuple(src.shape) and rescale is None and not src.is_floating_point() and output == "int16":
        dst = out[0, dk, di, dj]  # int16 at the target spacing: no float at all
        dst.copy_(src[sk, sj, si].permute(0, 2, 1))
        dst.clamp_(int(lo), int(hi))
        return out
    slope, inter = (1.0, 0.0) if rescale is None else (float(rescale[0]), float(rescale[1]))
    k0, k1, w1 = _linear_weights(src.shape[0], new_kji[0])
    block = 8
    K, J, I = (int(n) for n in src.shape)
    a = torch.empty((block, J, I), dtype=torch.float32)
    b = torch.empty((block, J, I), dtype=torch.float32)
    with torch.no_grad():
        for start in range(sk.start, sk.stop, block):
            stop = min(start + block, sk.stop)
            n = stop - start
            ia, ib = torch.from_numpy(k0[start:stop]), torch.from_numpy(k1[start:stop])
            sa, sb = a[:n], b[:n]
            sa.copy_(src.index_select(0, ia))
            sb.copy_(src.index_select(0, ib))
            sa.lerp_(sb, torch.from_numpy(w1[start:stop]).view(n, 1, 1))  # linear along k
            if slope != 1.0:
                sa.mul_(slope)
            if inter != 0.0:
                sa.add_(inter)
            if (J, I) != new_kji[1:]:
                plane = F.interpolate(sa[None], size=new_kji[1:], mode="bilinear", align_corners=False)[0]
            else:
                plane = sa
            k_dst = slice(dk.start + (start - sk.start), dk.start + (stop - sk.start))
            emit(plane[:, sj, si], k_dst)
    return out


def _linear_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """PyTorch's linear-interpolation taps along one axis (``align_corners=False``, size-derived scale):
    (index0, index1, weight of index1) per output position, computed in float32 like its CPU kernel.

    >>> i0, i1, w = _linear_weights(4, 2)
    >>> i0.tolist(), i1.tolist(), w.tolist()
    ([0, 2], [1, 3], [0.5, 0.5])
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = scale * (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    w = np.clip(src - i0.astype(np.float32), 0.0, 1.0).astype(np.float32)
    return i0, i1, w


def ctclip_preprocess_mask(
    mask: Any,
    *,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
    target_spacing: Sequence[float] = CTCLIP_SPACING,
    target_shape: Sequence[int] = CTCLIP_SHAPE,
    mode: str = "nearest",
) -> "torch.Tensor":
    """A mask or label map on the CT-CLIP grid: nearest resample, same crop/pad (pad 0), uint8 ``(1, D, H, W)``."""
    import torch

    arr, sp, _ = _as_array(mask, spacing, affine)
    sp = _need_spacing(sp, "ctclip_preprocess_mask")
    shape = tuple(int(s) for s in arr.shape)
    new_ijk = ctclip_target_size(shape, sp, target_spacing)
    src = _torch_kji(arr).permute(0, 2, 1)
    if src.dtype == torch.bool:
        src = src.to(torch.uint8)
    if new_ijk != shape:
        x = torch.empty(src.shape, dtype=torch.uint8)
        x.copy_(src)
        y = _resample_dhw(x, (new_ijk[2], new_ijk[0], new_ijk[1]), mode)
    else:
        y = src
    tk, ti, tj = int(target_shape[2]), int(target_shape[0]), int(target_shape[1])
    sk, dk = _crop_pad_slices(y.shape[0], tk)
    si, di = _crop_pad_slices(y.shape[1], ti)
    sj, dj = _crop_pad_slices(y.shape[2], tj)
    out = torch.zeros((1, tk, ti, tj), dtype=torch.uint8)
    out[0, dk, di, dj].copy_(y[sk, si, sj])
    return out


def ctclip_normalize(tensor: "torch.Tensor", hu_range: tuple[float, float] = CTCLIP_HU) -> "torch.Tensor":
    """int16 HU from ``ctclip_preprocess(..., output="int16")`` to CT-CLIP's float32 [−1, 1] (run it on the GPU).

    >>> import torch
    >>> ctclip_normalize(torch.tensor([-1024, 0, 500], dtype=torch.int16)).tolist()
    [-1.0, 0.0, 0.5]
    """
    import torch

    return tensor.to(dtype=torch.float32).clamp_(float(hu_range[0]), float(hu_range[1])).div_(1000.0)


# ----------------------------------------------------------------------------------------------------------
# dict-transform plumbing
# ----------------------------------------------------------------------------------------------------------
class _DictTransform:
    keys: tuple[Hashable, ...]

    def __init__(self, keys: Hashable | Sequence[Hashable], allow_missing_keys: bool = False) -> None:
        self.keys = (keys,) if isinstance(keys, (str, int)) or not isinstance(keys, Sequence) else tuple(keys)
        self.allow_missing_keys = allow_missing_keys

    def _present(self, data: Mapping, keys: Sequence[Hashable]) -> list[Hashable]:
        out = []
        for k in keys:
            if k in data:
                out.append(k)
            elif not self.allow_missing_keys:
                raise KeyError(f"{type(self).__name__}: key {k!r} not in the sample (keys: {sorted(map(str, data))})")
        return out

    @staticmethod
    def _geometry(data: Mapping, key: Hashable, spacing: Any) -> tuple[Any, Any]:
        sp = data.get(f"{key}_spacing", spacing) if isinstance(key, str) else spacing
        aff = data.get(f"{key}_affine") if isinstance(key, str) else None
        if sp is not None:
            aff = None
        return sp, aff


class CTClipd(_DictTransform):
    """Dict transform of :func:`ctclip_preprocess` (``keys``) and :func:`ctclip_preprocess_mask` (``mask_keys``).

    >>> import numpy as np
    >>> t = CTClipd(keys="image", mask_keys="label", target_shape=(32, 32, 16), output="int16")
    >>> s = t({"image": np.zeros((20, 20, 10), np.int16), "label": np.ones((20, 20, 10), bool), "image_spacing": (1, 1, 2)})
    >>> s["image"].shape, s["image"].dtype, s["label"].dtype
    (torch.Size([1, 16, 32, 32]), torch.int16, torch.uint8)
    """

    def __init__(
        self,
        keys: Hashable | Sequence[Hashable] = "image",
        mask_keys: Hashable | Sequence[Hashable] = (),
        *,
        spacing: Sequence[float] | None = None,
        spacing_key: Hashable | None = None,
        rescale: tuple[float, float] | None = None,
        target_spacing: Sequence[float] = CTCLIP_SPACING,
        target_shape: Sequence[int] = CTCLIP_SHAPE,
        output: Literal["float32", "int16"] = "float32",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = _DictTransform(mask_keys).keys if mask_keys not in ((), None) else ()
        self.spacing = spacing
        self.spacing_key = spacing_key
        self.rescale = rescale
        self.target_spacing = tuple(target_spacing)
        self.target_shape = tuple(target_shape)
        self.output = output

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        first = self.keys[0] if self.keys else None
        for key in self._present(d, self.keys):
            sp, aff = self._geometry(d, key, d.get(self.spacing_key, self.spacing) if self.spacing_key else self.spacing)
            d[key] = ctclip_preprocess(
                d[key], spacing=sp, affine=aff, rescale=self.rescale, target_spacing=self.target_spacing,
                target_shape=self.target_shape, output=self.output,
            )
        for key in self._present(d, self.mask_keys):
            sp, aff = self._geometry(d, key, d.get(self.spacing_key, self.spacing) if self.spacing_key else self.spacing)
            if sp is None and aff is None and first is not None:  # masks share the image's grid
                sp, aff = self._geometry(d, first, None)
            d[key] = ctclip_preprocess_mask(
                d[key], spacing=sp, affine=aff, target_spacing=self.target_spacing, target_shape=self.target_shape
            )
        return d


# ----------------------------------------------------------------------------------------------------------
# fVLM
# ----------------------------------------------------------------------------------------------------------
@dataclass
class FVLMSample:
    """fVLM preprocessing output: tensors in fVLM's ``(1, z, y, x)`` layout and the crop box (k0, j0, i0, k1, j1, i1)
    in the (resampled) ``(z, y, x)`` grid."""

    image: "torch.Tensor"
    mask: "torch.Tensor"
    bbox_zyx: tuple[int, int, int, int, int, int]


def _bbox_nonzero(t: "torch.Tensor") -> tuple[int, ...] | None:
    """Half-open bbox (a0, b0, c0, a1, b1, c1) of the nonzero voxels of a 3-D tensor; None when empty."""
    import torch

    lo, hi = [], []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        prof = torch.amax(t, dim=other) if t.dtype != torch.bool else t.any(dim=other[1]).any(dim=other[0])
        nz = torch.nonzero(prof).flatten()
        if nz.numel() == 0:
            return None
        lo.append(int(nz[0]))
        hi.append(int(nz[-1]) + 1)
    return (*lo, *hi)


def _mask_to_array(mask: Any, organs: Sequence[str] | None) -> Any:
    if hasattr(mask, "label_map") and hasattr(mask, "names"):  # PackedMasks
        names = [n for n in (organs or FVLM_ORGANS) if n in mask]
        if not names:
            raise ValueError(f"none of the organs {list(organs or FVLM_ORGANS)} is among the masks {mask.names}")
        return mask.label_map(names)
    if isinstance(mask, Mapping):
        names = [n for n in (organs or FVLM_ORGANS) if n in mask]
        if not names:
            raise ValueError(f"none of the organs {list(organs or FVLM_ORGANS)} is among the masks {sorted(mask)}")
        first = np.asarray(mask[names[0]])
        lab = np.zeros(first.shape, np.uint8, order="F")
        for v, n in enumerate(names, start=1):
            lab[np.asarray(mask[n], dtype=bool) & (lab == 0)] = v
        return lab
    return mask


def fvlm_preprocess(
    volume: Any,
    mask: Any,
    *,
    spacing: Sequence[float] | None = None,
    affine: Any = None,
    organs: Sequence[str] | None = None,
    resample: bool = True,
    target_spacing: Sequence[float] = FVLM_SPACING,
    window: tuple[float, float] = FVLM_WINDOW,
    margin_zyx: Sequence[int] = FVLM_MARGIN,
    pad_zyx: Sequence[int] | None = FVLM_PAD,
) -> FVLMSample:
    """fVLM's preprocessing (``data/resize.py`` + ``data/preprocess.py``): ``(1, z, y, x)`` float32 image + uint8 mask.

    Optional resample to ``target_spacing`` ((i, j, k) mm; fVLM's 1 x 1 x 3; trilinear image, nearest mask, size
    ``int(shape * current / target)``); window ``[-1150, 350]`` → ``[0, 1]`` with clipping (MONAI
    ``ScaleIntensityRanged``); crop to the mask's bounding box ± ``margin_zyx`` voxels (fVLM: 5 in z, 20 in y/x),
    clamped to the volume; symmetric zero pad up to ``pad_zyx`` (MONAI ``SpatialPadd``: never crops; ``None``: no
    pad). ``mask`` is a bool mask, a label map (fVLM: 1 lung, 2 heart, 3 esophagus, 4 aorta), a ``PackedMasks`` or
    a ``{name: mask}`` dict (then ``organs`` picks and numbers the structures, fVLM's four by default).
    """
    import torch

    arr, sp, _ = _as_array(volume, spacing, affine)
    m_arr, _, _ = _as_array(_mask_to_array(mask, organs), spacing=(1, 1, 1))
    if tuple(m_arr.shape) != tuple(arr.shape):
        from .errors import ShapeMismatchError

        raise ShapeMismatchError(f"fvlm_preprocess: mask shape {tuple(m_arr.shape)} != volume shape {tuple(arr.shape)}")
    img = _torch_kji(arr)  # (z, y, x) view
    lab = _torch_kji(m_arr)
    if lab.dtype == torch.bool:
        lab = lab.to(torch.uint8)
    if resample:
        sp = _need_spacing(sp, "fvlm_preprocess")
        new = ctclip_target_size(arr.shape, sp, target_spacing)
        size_zyx = (new[2], new[1], new[0])
        x = torch.empty(img.shape, dtype=torch.float32)
        x.copy_(img)
        img = _resample_dhw(x, size_zyx, "trilinear")
        if tuple(lab.shape) != size_zyx:
            lab = _resample_dhw(lab.contiguous(), size_zyx, "nearest")
    bbox = _bbox_nonzero(lab)
    if bbox is None:
        raise ValueError("fvlm_preprocess: the mask is empty; nothing to crop to")
    z0, y0, x0, z1, y1, x1 = bbox
    mz, my, mx = (int(v) for v in margin_zyx)
    Z, Y, X = img.shape
    z0, y0, x0 = max(z0 - mz, 0), max(y0 - my, 0), max(x0 - mx, 0)
    z1, y1, x1 = min(z1 + mz, Z), min(y1 + my, Y), min(x1 + mx, X)
    crop = img[z0:z1, y0:y1, x0:x1]
    lcrop = lab[z0:z1, y0:y1, x0:x1]
    shape = list(crop.shape)
    if pad_zyx is not None:
        shape = [max(s, int(p)) for s, p in zip(shape, pad_zyx)]
    out = torch.zeros((1, *shape), dtype=torch.float32)
    mout = torch.zeros((1, *shape), dtype=torch.uint8)
    before = [(t - s) // 2 for t, s in zip(shape, crop.shape)]
    dst = out[0, before[0] : before[0] + crop.shape[0], before[1] : before[1] + crop.shape[1], before[2] : before[2] + crop.shape[2]]
    lo, hi = float(window[0]), float(window[1])
    dst.copy_(crop)
    dst.sub_(lo).div_(hi - lo).clamp_(0.0, 1.0)
    mout[0, before[0] : before[0] + crop.shape[0], before[1] : before[1] + crop.shape[1], before[2] : before[2] + crop.shape[2]].copy_(lcrop)
    return FVLMSample(out, mout, (z0, y0, x0, z1, y1, x1))


class FVLMd(_DictTransform):
    """Dict transform of :func:`fvlm_preprocess`: ``data[image_key]`` and ``data[mask_key]`` replaced by tensors
    ``(1, z, y, x)``; the crop box is stored under ``f"{image_key}_bbox_zyx"``."""

    def __init__(
        self,
        image_key: Hashable = "image",
        mask_key: Hashable = "mask",
        *,
        spacing: Sequence[float] | None = None,
        organs: Sequence[str] | None = None,
        resample: bool = True,
        target_spacing: Sequence[float] = FVLM_SPACING,
        window: tuple[float, float] = FVLM_WINDOW,
        margin_zyx: Sequence[int] = FVLM_MARGIN,
        pad_zyx: Sequence[int] | None = FVLM_PAD,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__((image_key, mask_key), allow_missing_keys)
        self.image_key, self.mask_key = image_key, mask_key
        self.kw = dict(organs=organs, resample=resample, target_spacing=target_spacing, window=window,
                       margin_zyx=margin_zyx, pad_zyx=pad_zyx)
        self.spacing = spacing

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        if len(self._present(d, self.keys)) < 2:
            return d
        sp, aff = self._geometry(d, self.image_key, self.spacing)
        s = fvlm_preprocess(d[self.image_key], d[self.mask_key], spacing=sp, affine=aff, **self.kw)
        d[self.image_key], d[self.mask_key] = s.image, s.mask
        d[f"{self.image_key}_bbox_zyx"] = s.bbox_zyx
        return d


# ----------------------------------------------------------------------------------------------------------
# slice sequences (MS-VLM style)
# ----------------------------------------------------------------------------------------------------------
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

    if plane not in _PLANE_AXIS:
        raise ValueError(f"plane must be one of {sorted(_PLANE_AXIS)}, got {plane!r}")
    arr, sp, aff = _as_array(volume, spacing, affine)
    axis = _PLANE_AXIS[plane]
    voxel_mm = None if sp is None else float(sp[axis])
    if spacing_mm is not None:
        _need_spacing(sp, "slice_sequence(spacing_mm=...)")
    idx = slice_indices(int(arr.shape[axis]), n_slices=n_slices, stride=stride, spacing_mm=spacing_mm, voxel_mm=voxel_mm)
    t = _torch_kji(arr)  # (k, j, i)
    dim = 2 - axis  # axis in (k, j, i)
    sel = torch.index_select(t, dim, torch.from_numpy(idx))  # one gather copy, contiguous
    slices = sel.movedim(dim, 0).contiguous()
    if window is not None:
        lo, hi = float(window[0]), float(window[1])
        slices = slices.to(torch.float32).sub_(lo).div_(hi - lo).clamp_(0.0, 1.0)
    elif slices.dtype == torch.uint8 and arr.dtype == np.bool_:
        slices = slices.bool()
    pos = (idx.astype(np.float32) * np.float32(voxel_mm)) if voxel_mm is not None else np.full(len(idx), np.nan, np.float32)
    world = None
    if aff is not None:
        centre = (np.asarray(arr.shape, dtype=np.float64) - 1) / 2
        vox = np.tile(centre, (len(idx), 1))
        vox[:, axis] = idx
        world = (vox @ np.asarray(aff, np.float64)[:3, :3].T + np.asarray(aff, np.float64)[:3, 3]).astype(np.float32)
    return SliceSequence(slices, idx, pos, plane, world)


class SliceSequenced(_DictTransform):
    """Dict transform of :func:`slice_sequence`: ``data[key]`` becomes ``(N, H, W)``; indices and mm positions go to
    ``f"{key}_slice_indices"`` / ``f"{key}_slice_mm"``. Mask keys get the same slices (no window)."""

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
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.mask_keys = _DictTransform(mask_keys).keys if mask_keys not in ((), None) else ()
        self.kw = dict(plane=plane, n_slices=n_slices, stride=stride, spacing_mm=spacing_mm)
        self.spacing, self.window = spacing, window

    def __call__(self, data: Mapping) -> dict:
        d = dict(data)
        for key, win in [(k, self.window) for k in self._present(d, self.keys)] + [
            (k, None) for k in self._present(d, self.mask_keys)
        ]:
            sp, aff = self._geometry(d, key, self.spacing)
            if sp is None and aff is None and self.keys:
                sp, aff = self._geometry(d, self.keys[0], None)
            s = slice_sequence(d[key], spacing=sp, affine=aff, window=win, **self.kw)
            d[key] = s.slices
            if isinstance(key, str):
                d[f"{key}_slice_indices"] = s.indices
                d[f"{key}_slice_mm"] = s.positions_mm
        return d


# ----------------------------------------------------------------------------------------------------------
# region crops
# ----------------------------------------------------------------------------------------------------------
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
    from .ontology import get_ontology, normalize_name, normalize_path

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
            from .errors import UnknownAnatomyError

            raise UnknownAnatomyError(
                f"anatomy {anatomy!r} is neither a mask of this volume ({', '.join(names[:8])}…) nor an ontology node"
            )
        path = candidates[0]
    return onto.grounding_mask(path, anat, regs)


def _get_mask(masks: Any, name: str) -> np.ndarray:
    if hasattr(masks, "mask") and hasattr(masks, "names"):
        return masks.mask(name)
    from .ontology import normalize_name

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

    ``masks`` is a :class:`~radgenome_hf.masks.PackedMasks` or a ``{name: bool array}`` dict. The mask is chosen by
    :func:`resolve_region_mask`; the whole scan (``""``/"whole scan", or no matching mask) gives the full volume.
    With a lazy :class:`~radgenome_hf.volume.Volume` only the crop is read.
    """
    is_volume = hasattr(volume, "crop") and hasattr(volume, "spacing") and hasattr(volume, "array")
    if is_volume:
        shape = tuple(int(s) for s in volume.shape)
        sp = tuple(spacing) if spacing is not None else tuple(float(s) for s in volume.spacing)
        arr = None
    else:
        arr, sp, _ = _as_array(volume, spacing, affine)
        shape = tuple(int(s) for s in arr.shape)
    source, name = resolve_region_mask(masks, anatomy)
    packed = hasattr(masks, "bbox") and hasattr(masks, "crop")
    if name is None:
        bb = region_bbox(None, shape, 0, margin_unit="voxel")
        mask_crop = np.ones(shape, dtype=bool)
    else:
        if packed:
            mshape = tuple(int(s) for s in masks.shape)
            tight = masks.bbox(name)
            full = None
        else:
            full = _get_mask(masks, name)
            mshape = tuple(full.shape)
            tight = _np_bbox(full)
        if mshape != shape:
            from .errors import ShapeMismatchError

            raise ShapeMismatchError(f"region_crop: mask {name!r} has shape {mshape}, the volume {shape}")
        if tight is None:  # empty structure: the whole volume with an all-False mask (as Volume.region does)
            bb = region_bbox(None, shape)
            mask_crop = np.zeros(shape, dtype=bool, order="F")
        else:
            bb = region_bbox(None, shape, margin, margin_unit=margin_unit, spacing=sp, bbox=tight)
            mask_crop = masks.crop(name, bb) if packed else full[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]]
    if is_volume:
        img = volume.crop(bb)
    else:
        img = arr[bb[0] : bb[3], bb[1] : bb[4], bb[2] : bb[5]]
        if not isinstance(img, np.ndarray):
            img = img.numpy()
    return RegionCrop(np.asarray(img), np.asarray(mask_crop, dtype=bool), bb, source, name)


class RegionCropd(_DictTransform):
    """Dict transform of :func:`region_crop`: crops ``data[image_key]`` and writes the grounding mask crop to
    ``data[mask_out_key]``; both become zero-copy ``(1, k, j, i)`` tensors (int16 / uint8). The anatomy comes from
    ``data[anatomy_key]`` (a path such as a row's ``anatomy``) or the fixed ``anatomy=``; the masks from
    ``data[masks_key]``. The box goes to ``f"{image_key}_bbox"``."""

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
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__((image_key, masks_key), allow_missing_keys)
        self.image_key, self.masks_key, self.mask_out_key = image_key, masks_key, mask_out_key
        self.anatomy_key, self.anatomy = anatomy_key, anatomy
        self.margin, self.margin_unit, self.spacing, self.as_tensor = margin, margin_unit, spacing, as_tensor

    def __call__(self, data: Mapping) -> dict:
        import torch

        d = dict(data)
        if len(self._present(d, self.keys)) < 2:
            return d
        anatomy = self.anatomy if self.anatomy is not None else d.get(self.anatomy_key, "")
        sp, aff = self._geometry(d, self.image_key, self.spacing)
        c = region_crop(d[self.image_key], d[self.masks_key], anatomy or "", margin=self.margin,
                        margin_unit=self.margin_unit, spacing=sp, affine=aff)
        if self.as_tensor:
            img = np.asfortranarray(c.image)
            msk = np.asfortranarray(c.mask).view(np.uint8)
            d[self.image_key] = torch.from_numpy(img.T)[None]
            d[self.mask_out_key] = torch.from_numpy(msk.T)[None]
        else:
            d[self.image_key], d[self.mask_out_key] = c.image, c.mask
        if isinstance(self.image_key, str):
            d[f"{self.image_key}_bbox"] = c.bbox
        return d


def compose(*transforms: Callable[[dict], dict]) -> Callable[[dict], dict]:
    """Chain dict transforms without MONAI (``monai.transforms.Compose`` works too)."""

    def run(data: dict) -> dict:
        for t in transforms:
            data = t(data)
        return data

    return run


__all__ = [
    "CTCLIP_SHAPE", "CTCLIP_SPACING", "CTClipd", "FVLMSample", "FVLMd", "RegionCrop", "RegionCropd",
    "SliceSequence", "SliceSequenced", "compose", "ctclip_normalize", "ctclip_preprocess",
    "ctclip_preprocess_mask", "ctclip_target_size", "fvlm_preprocess", "region_bbox", "region_crop",
    "resolve_region_mask", "slice_indices", "slice_sequence",
]
