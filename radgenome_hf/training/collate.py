"""Batching dict samples whose volumes and masks have different shapes.

:func:`collate_volumes` pads to the largest with a per-key pad value and records the original shapes (or returns
lists); everything that is not an array becomes a list. float64 arrays are cast to float32; int16/uint8 stay as
they are (normalise on the GPU).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["collate_volumes"]


def _is_array(v: Any) -> bool:
    import torch

    return (isinstance(v, np.ndarray) and v.dtype != object) or isinstance(v, torch.Tensor)


def _to_tensor(v: Any) -> "torch.Tensor":
    import torch

    if isinstance(v, np.ndarray):
        if v.dtype == np.float64:
            v = v.astype(np.float32)
        if any(s < 0 for s in v.strides):
            v = np.ascontiguousarray(v)
        t = torch.from_numpy(v) if v.flags.writeable else torch.from_numpy(v.copy())
    else:
        t = v
    if t.dtype == torch.float64:
        t = t.float()
    return t


def collate_volumes(
    batch: Sequence[Mapping[str, Any]],
    *,
    pad: bool = True,
    pad_values: Mapping[str, float] | None = None,
    default_pad_value: float = 0,
    shape_suffix: str = "_shape",
) -> dict[str, Any]:
    """Batch dict samples whose arrays may differ in shape.

    For every key whose values are all arrays/tensors of one rank: same shapes are stacked; different shapes are
    padded at the end of each axis to the largest shape with ``pad_values[key]`` (else ``default_pad_value``), or
    returned as a list when ``pad=False``. ``batch[f"{key}{shape_suffix}"]`` holds the original shapes, an int64
    ``(B, ndim)`` tensor. Any other field (strings, numbers, Volumes, None…) becomes a list.

    >>> import numpy as np
    >>> b = collate_volumes([{"ct": np.zeros((2, 3), np.int16), "id": "a"}, {"ct": np.ones((3, 1), np.int16), "id": "b"}],
    ...                     pad_values={"ct": -1000})
    >>> b["ct"].shape, b["ct_shape"].tolist(), b["id"], int(b["ct"][1, 2, 1])
    (torch.Size([2, 3, 3]), [[2, 3], [3, 1]], ['a', 'b'], -1000)
    """
    import torch

    if not batch:
        return {}
    if not all(isinstance(s, Mapping) for s in batch):
        from torch.utils.data import default_collate

        return default_collate(list(batch))
    keys: list[str] = []
    for s in batch:
        for k in s:
            if k not in keys:
                keys.append(k)
    pad_values = dict(pad_values or {})
    out: dict[str, Any] = {}
    for key in keys:
        values = [s.get(key) for s in batch]
        if all(_is_array(v) for v in values) and len({np.ndim(v) for v in values}) == 1:
            tensors = [_to_tensor(v) for v in values]
            ndim = tensors[0].dim()
            if ndim == 0:
                out[key] = torch.stack(tensors)
                continue
            shapes = [tuple(t.shape) for t in tensors]
            out[f"{key}{shape_suffix}"] = torch.tensor(shapes, dtype=torch.int64)
            dtype = tensors[0].dtype
            for t in tensors[1:]:
                dtype = torch.promote_types(dtype, t.dtype)
            if len(set(shapes)) == 1:
                if all(t.dtype == dtype for t in tensors):
                    out[key] = torch.stack(tensors)
                else:
                    out[key] = torch.stack([t.to(dtype) for t in tensors])
            elif not pad:
                out[key] = tensors
            else:
                big = tuple(max(s[a] for s in shapes) for a in range(ndim))
                fill = pad_values.get(key, default_pad_value)
                res = torch.full((len(tensors), *big), fill, dtype=dtype)
                for b, t in enumerate(tensors):
                    res[(b, *[slice(0, n) for n in t.shape])].copy_(t)
                out[key] = res
        else:
            out[key] = values
    return out


