"""radgenome_hf: RadGenome-Chest CT and related chest-CT vision-language data for Hugging Face datasets and PyTorch.

``import radgenome_hf`` registers the ``radgenome`` builder with datasets, so that
``datasets.load_dataset("radgenome", "vqa", data_dir=…)`` works; ``radgenome_hf.load_dataset("vqa", …)`` is the
stable entry point with the same arguments. The names below are imported on first use, so ``import radgenome_hf``
stays cheap (datasets, torch and pyarrow load when something needs them).

>>> import radgenome_hf
>>> radgenome_hf.Volume.__module__, radgenome_hf.MaskGrid.__module__
('radgenome_hf.access.volume', 'radgenome_hf.access.masks')
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__
from .hf.loading import register

_EXPORTS = {
    "radgenome_hf.access.volume": ("Volume",),
    "radgenome_hf.access.masks": ("PackedMasks", "MaskGrid"),
    "radgenome_hf.access.lazymasks": ("LazyMask", "MaskSet"),
    "radgenome_hf.access.cache": ("PreparedCache",),
    "radgenome_hf.hf.loading": ("lazy", "load_dataset", "load_dataset_builder", "load_packed"),
    "radgenome_hf.hf.subset": ("download", "plan_download"),
    "radgenome_hf.errors": (
        "RadGenomeError", "CorruptVolumeError", "HubAccessError", "MalformedFileError", "MissingVolumeError",
        "ManifestError", "PublishTargetError", "PublishVerificationError", "ReleaseNotFoundError", "ShapeMismatchError",
        "UnknownAnatomyError", "UnsafeArchiveError", "UnsafeFileError", "VolumeNameError",
    ),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = ["__version__", "register", *sorted(_WHERE)]

register()


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
