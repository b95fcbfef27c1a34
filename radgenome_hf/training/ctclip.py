"""The CT-CLIP preset: rescale, resample to 0.75×0.75×1.5 mm, clip [−1000, 1000], centre crop/pad 480×480×240.

Output ``(1, 240, 480, 480)``: CT-CLIP's own ``(D, H, W)`` = nibabel ``(k, i, j)``, C-contiguous, never float64.

Speed. Resampling uses ``torch.nn.functional.interpolate`` in float32 (never MONAI ``Spacing``, never float64).
The int16 F-ordered NIfTI array is viewed as ``(k, j, i)`` (zero-copy), converted to float32 in that same layout
and interpolated there; the single transposition to the output's axis order is folded into the final crop/pad
copy, which writes straight into the output tensor; when the grid already has the target spacing, no
interpolation (and, for ``output="int16"``, no float conversion) happens at all. A path is opened with
:class:`~radgenome_hf.access.volume.Volume` (isal inflate when installed).

>>> import numpy as np
>>> ct = np.full((40, 40, 20), -1024, np.int16)          # (i, j, k) HU, 1.5 x 1.5 x 3 mm
>>> ctclip_preprocess(ct, spacing=(1.5, 1.5, 3.0), target_shape=(64, 64, 32)).shape
torch.Size([1, 32, 64, 64])
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Hashable, Literal, Mapping, Sequence

import numpy as np

from .inputs import OutputEntry, PresetTransform, as_array, need_spacing, torch_kji

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["CTCLIP_HU", "CTCLIP_SHAPE", "CTCLIP_SPACING", "CTClipd", "ctclip_normalize", "ctclip_preprocess",
           "ctclip_preprocess_mask", "ctclip_target_size"]

CTCLIP_SPACING = (0.75, 0.75, 1.5)  # mm, (i, j, k) = (x, y, z); CT-CLIP writes it (z, x, y) = (1.5, 0.75, 0.75)
CTCLIP_SHAPE = (480, 480, 240)  # (H, W, D) = (i, j, k)
CTCLIP_HU = (-1000.0, 1000.0)


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
    out: "torch.Tensor | None" = None,
) -> "torch.Tensor":
    """CT-CLIP's preprocessing of one CT volume, exactly, in float32: a tensor ``(1, D, H, W)``.

    ``volume``: a path (``.nii[.gz]``, read by :class:`~radgenome_hf.access.volume.Volume`), a ``Volume``, a nibabel image,
    or an ``(i, j, k)`` array/tensor with ``spacing=``/``affine=``.

    Steps (CT-CLIP ``scripts/data.py``): optional rescale ``slope * x + intercept`` (only for raw CT-RATE v1 arrays:
    a :class:`~radgenome_hf.access.volume.Volume` already gives HU); trilinear resample (``align_corners=False``) to
    ``target_spacing`` (mm, (i, j, k); CT-CLIP's (z 1.5, xy 0.75)) with size ``int(shape * current / target)``;
    clip to ``hu_range`` and divide by 1000; centre crop/pad to ``target_shape`` (H, W, D) = (i, j, k) with pad value
    −1, padding split ``(t - n) // 2`` before and the rest after; output permuted to (D, H, W) = (k, i, j) with a
    channel axis.

    ``output="int16"`` gives HU rounded and clipped to ``hu_range`` (pad −1000) instead: 4x less memory through the
    loader; normalise on the GPU with :func:`ctclip_normalize` (values then differ from ``"float32"`` by at most
    0.5 HU / 1000 from the rounding).

    ``out``: a contiguous ``(1, D, H, W)`` tensor of the output's dtype to write into and return (a loader's reused
    buffer) instead of a new one.
    """
    import torch
    import torch.nn.functional as F

    arr, sp, _ = as_array(volume, spacing, affine, transient=True)
    sp = need_spacing(sp, "ctclip_preprocess")
    shape = tuple(int(s) for s in arr.shape)
    new_ijk = ctclip_target_size(shape, sp, target_spacing)
    lo, hi = float(hu_range[0]), float(hu_range[1])

    # Work in the (k, j, i) view, which is the F-ordered NIfTI array itself (contiguous, zero-copy). Resampling
    # is separable: per block of output slices, lerp the two source slices along k (float32, a few MB that stay
    # in cache), then bilinear in (j, i) with F.interpolate (same PyTorch weights as trilinear,
    # align_corners=False). No full-volume float32 copy is ever made (that alone cost 0.2 s of page faults
    # for a 512x512x300 volume), and the one transposition, to CT-CLIP's (D, H, W) = (k, i, j), is folded into
    # the final crop/pad copy, which writes only the voxels kept.
    src = torch_kji(arr)  # (k, j, i)
    tk, ti, tj = int(target_shape[2]), int(target_shape[0]), int(target_shape[1])
    if output not in ("float32", "int16"):
        raise ValueError(f"output must be 'float32' or 'int16', got {output!r}")
    new_kji = (new_ijk[2], new_ijk[1], new_ijk[0])
    sk, dk = _crop_pad_slices(new_kji[0], tk)
    sj, dj = _crop_pad_slices(new_kji[1], tj)
    si, di = _crop_pad_slices(new_kji[2], ti)
    out_dtype, pad = (torch.float32, -1.0) if output == "float32" else (torch.int16, int(lo))
    if out is None:
        out = torch.full((1, tk, ti, tj), pad, dtype=out_dtype)
    else:
        if tuple(out.shape) != (1, tk, ti, tj) or out.dtype != out_dtype or not out.is_contiguous():
            raise ValueError(f"out= must be a contiguous (1, {tk}, {ti}, {tj}) {out_dtype} tensor, got "
                             f"{tuple(out.shape)} {out.dtype}")
        out.fill_(pad)

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

    arr, sp, _ = as_array(mask, spacing, affine)
    sp = need_spacing(sp, "ctclip_preprocess_mask")
    shape = tuple(int(s) for s in arr.shape)
    new_ijk = ctclip_target_size(shape, sp, target_spacing)
    src = torch_kji(arr).permute(0, 2, 1)
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


class CTClipd(PresetTransform):
    """Dict transform of :func:`ctclip_preprocess` (``keys``) and :func:`ctclip_preprocess_mask` (``mask_keys``).

    Works on one sample or a datasets batch (``ds.with_transform(CTClipd("volume", output="int16"))``).
    ``cache=True`` (default): the output of a :class:`~radgenome_hf.access.volume.Volume` that has a prepared cache
    (every row of ``load_dataset`` has one unless ``volume_cache=False``) is stored there (and the raw volume is
    then not: ``Volume.retain``), keyed by the volume's identity and this preset's parameters
    (:class:`~radgenome_hf.training.inputs.OutputEntry`), as a one-shot frame: the next epoch decodes the finished
    480×480×240 grid (GIL-free, no resampling). :meth:`cached_readers` hands such hits to a loader that decodes
    them into reused buffers (:func:`~radgenome_hf.training.make_dataloader`). Masks (``mask_keys``) are not stored.

    >>> import numpy as np
    >>> t = CTClipd(keys="image", mask_keys="label", target_shape=(32, 32, 16), output="int16")
    >>> s = t({"image": np.zeros((20, 20, 10), np.int16), "label": np.ones((20, 20, 10), bool), "image_spacing": (1, 1, 2)})
    >>> s["image"].shape, s["image"].dtype, s["label"].dtype
    (torch.Size([1, 16, 32, 32]), torch.int16, torch.uint8)
    """

    cache_name = "ctclip"
    fills_buffers = True

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
        cache: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.cache = bool(cache)
        self.mask_keys = self._key_tuple(mask_keys)
        self.spacing = spacing
        self.spacing_key = spacing_key
        self.rescale = rescale
        self.target_spacing = tuple(target_spacing)
        self.target_shape = tuple(target_shape)
        self.output = output

    def _spacing_of(self, d: Mapping, key: Hashable) -> tuple[Any, Any]:
        return self._geometry(d, key, d.get(self.spacing_key, self.spacing) if self.spacing_key else self.spacing)

    def _entry(self, d: Mapping, key: Hashable) -> OutputEntry | None:
        """Where this preset's output for ``d[key]`` is stored: keyed by the volume's identity and every parameter
        (geometry or rescale given from outside the volume included)."""
        sp, aff = self._spacing_of(d, key)
        extra = self._geometry_params(sp, aff)
        if self.rescale is not None:
            extra["rescale"] = [float(v) for v in self.rescale]
        return self._volume_entry(d.get(key), {"": (key, "tensor")}, target_spacing=list(self.target_spacing),
                                  target_shape=list(self.target_shape), output=self.output, **extra)

    def _entries(self, data: Mapping) -> list[OutputEntry] | None:
        if self._present(data, self.mask_keys):  # masks are not stored: the transform runs
            return None
        entries = [self._entry(data, key) for key in self._present(data, self.keys)]
        return None if any(e is None for e in entries) else entries

    def _sample(self, d: dict, alloc: Callable[..., np.ndarray] | None = None) -> dict:
        import torch

        first = self.keys[0] if self.keys else None
        ts = self.target_shape
        for key in self._present(d, self.keys):
            entry = self._entry(d, key)
            if self._from_cache(entry, d):
                continue
            sp, aff = self._spacing_of(d, key)
            if entry is not None:
                d[key].retain = False  # this output is what later epochs read, not the raw volume
            buf = None if alloc is None else torch.from_numpy(
                alloc(key, (1, ts[2], ts[0], ts[1]), np.float32 if self.output == "float32" else np.int16))
            out = ctclip_preprocess(
                d[key], spacing=sp, affine=aff, rescale=self.rescale, target_spacing=self.target_spacing,
                target_shape=self.target_shape, output=self.output, out=buf,
            )
            if entry is not None:
                entry.store({"": out})
            d[key] = out
        for key in self._present(d, self.mask_keys):
            sp, aff = self._spacing_of(d, key)
            if sp is None and aff is None and first is not None:  # masks share the image's grid
                sp, aff = self._geometry(d, first, None)
            d[key] = ctclip_preprocess_mask(
                d[key], spacing=sp, affine=aff, target_spacing=self.target_spacing, target_shape=self.target_shape
            )
        return d


