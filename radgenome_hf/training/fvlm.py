"""The fVLM preset: organ crop with a margin, resample to 1×1×3 mm, window [−1150, 350], pad to 112×256×352.

Output ``(1, 112, 256, 352)`` (padded): fVLM's ``(z, y, x)`` = nibabel ``(k, j, i)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Sequence

import numpy as np

from .ctclip import _resample_dhw, ctclip_target_size
from .inputs import OutputEntry, PresetTransform, as_array, mask_identity, need_spacing, torch_kji

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["FVLM_ORGANS", "FVLMSample", "FVLMd", "fvlm_preprocess"]

FVLM_SPACING = (1.0, 1.0, 3.0)  # mm, (i, j, k)
FVLM_WINDOW = (-1150.0, 350.0)
FVLM_MARGIN = (5, 20, 20)  # voxels after the resize, (z, y, x)
FVLM_PAD = (112, 256, 352)  # (z, y, x)
FVLM_ORGANS = ("lung", "heart", "esophagus", "aorta")  # fVLM label values 1..4


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
    if hasattr(mask, "structure") and callable(getattr(mask, "array", None)):  # a row's LazyMask: one organ
        return mask.array()
    if hasattr(mask, "label_map") and hasattr(mask, "names"):  # PackedMasks, MaskSet
        from ..ontology import normalize_name

        have = set(mask.names)
        names = [n for n in (organs or FVLM_ORGANS) if normalize_name(n) in have]
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

    arr, sp, _ = as_array(volume, spacing, affine)
    m_arr, _, _ = as_array(_mask_to_array(mask, organs), spacing=(1, 1, 1))
    if tuple(m_arr.shape) != tuple(arr.shape):
        from ..errors import ShapeMismatchError

        raise ShapeMismatchError(f"fvlm_preprocess: mask shape {tuple(m_arr.shape)} != volume shape {tuple(arr.shape)}")
    img = torch_kji(arr)  # (z, y, x) view
    lab = torch_kji(m_arr)
    if lab.dtype == torch.bool:
        lab = lab.to(torch.uint8)
    if resample:
        sp = need_spacing(sp, "fvlm_preprocess")
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


class FVLMd(PresetTransform):
    """Dict transform of :func:`fvlm_preprocess`: ``data[image_key]`` and ``data[mask_key]`` replaced by tensors
    ``(1, z, y, x)``; the crop box is stored under ``f"{image_key}_bbox_zyx"``.

    ``cache=True`` (default): for a :class:`~radgenome_hf.access.volume.Volume` with a prepared cache and a row's
    mask (a ``MaskSet`` or ``LazyMask``: their files have an identity), the outputs are stored, keyed by the volume,
    the mask files and every parameter, and later epochs read them instead of resampling (as
    :class:`~radgenome_hf.training.CTClipd` does)."""

    cache_name = "fvlm"

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
        cache: bool = True,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__((image_key, mask_key), allow_missing_keys)
        self.image_key, self.mask_key = image_key, mask_key
        self.kw = dict(organs=organs, resample=resample, target_spacing=target_spacing, window=window,
                       margin_zyx=margin_zyx, pad_zyx=pad_zyx)
        self.spacing = spacing
        self.cache = bool(cache)

    def _entry(self, d: Mapping) -> OutputEntry | None:
        if not self._cacheable(d.get(self.image_key)):
            return None
        sp, aff = self._geometry(d, self.image_key, self.spacing)
        params = {k: (list(v) if isinstance(v, (tuple, list)) else v) for k, v in self.kw.items()}
        return self._volume_entry(
            d.get(self.image_key),
            {"": (self.image_key, "tensor"), "mask": (self.mask_key, "tensor"),
             "bbox": (f"{self.image_key}_bbox_zyx", "tuple")},
            mask=mask_identity(d.get(self.mask_key)), **params, **self._geometry_params(sp, aff),
        )

    def _entries(self, data: Mapping) -> list[OutputEntry] | None:
        if len(self._present(data, self.keys)) < 2:
            return None
        entry = self._entry(data)
        return None if entry is None else [entry]

    def _sample(self, d: dict) -> dict:
        if len(self._present(d, self.keys)) < 2:
            return d
        entry = self._entry(d)
        if self._from_cache(entry, d):
            return d
        if entry is not None:
            d[self.image_key].retain = False  # later epochs read this output, not the raw volume
        sp, aff = self._geometry(d, self.image_key, self.spacing)
        s = fvlm_preprocess(d[self.image_key], d[self.mask_key], spacing=sp, affine=aff, **self.kw)
        entry = entry or self._entry(d)  # a folder release's masks are packed on first use: their identity is known now
        if entry is not None:
            entry.store({"": s.image, "mask": s.mask, "bbox": np.asarray(s.bbox_zyx, np.int64)})
        d[self.image_key], d[self.mask_key] = s.image, s.mask
        d[f"{self.image_key}_bbox_zyx"] = s.bbox_zyx
        return d
