"""Into a PyTorch training loop: the presets (MONAI dict transforms over array functions), collate and loaders.

| module | what |
| --- | --- |
| :mod:`~radgenome_hf.training.inputs` | what every preset accepts; the MapTransform base of the dict presets |
| :mod:`~radgenome_hf.training.ctclip` | CT-CLIP: rescale, resample, clip, centre crop/pad 480×480×240 |
| :mod:`~radgenome_hf.training.fvlm` | fVLM: organ crop, window, pad |
| :mod:`~radgenome_hf.training.slices` | slice sequences of any length and plane (MS-VLM) |
| :mod:`~radgenome_hf.training.regions` | the box of a named anatomy and the crop of it |
| :mod:`~radgenome_hf.training.samplers` | patches by labels (uniform, foreground, label probabilities), rows by findings |
| :mod:`~radgenome_hf.training.collate` | batching volumes of different shapes |
| :mod:`~radgenome_hf.training.loaders` | ``make_dataloader`` and the threaded ring loader |

Every public name is importable from here (``from radgenome_hf.training import CTClipd``); the submodule is
imported on first use, so ``import radgenome_hf.training`` stays cheap.

>>> from radgenome_hf.training import CTCLIP_SHAPE
>>> CTCLIP_SHAPE
(480, 480, 240)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ctclip": ("CTCLIP_HU", "CTCLIP_SHAPE", "CTCLIP_SPACING", "CTClipd", "ctclip_normalize", "ctclip_preprocess",
               "ctclip_preprocess_mask", "ctclip_target_size"),
    "fvlm": ("FVLM_ORGANS", "FVLMSample", "FVLMd", "fvlm_preprocess"),
    "slices": ("Plane", "SliceSequence", "SliceSequenced", "slice_indices", "slice_sequence"),
    "regions": ("RegionCrop", "RegionCropd", "region_bbox", "region_crop", "resolve_region_mask"),
    "samplers": ("CentredPatches", "FindingAwareSampler", "ForegroundPatches", "LabelPatches", "Patch", "SamplePatchd",
                 "UniformPatches", "patch_box", "sample_rng"),
    "collate": ("collate_volumes",),
    "loaders": ("ThreadedDataLoader", "ThreadedVolumeLoader", "dist_info", "make_dataloader", "read_into"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
