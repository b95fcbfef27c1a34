"""Segmentation backends, by name.

==================  ============================================================================================
``threshold``       CPU, no weights: body, lungs (left/right), trachea and main bronchi, bone from HU values.
                    The default, and what the offline demo uses.
``monai``           a MONAI bundle folder (e.g. ``wholeBody_ct_segmentation``) or a checkpoint + network config;
                    sliding-window inference, AMP on CUDA.
``totalsegmentator`` the ``totalsegmentator`` package's Python API (``pip install radgenome-hf[totalsegmentator]``).
``sat``             SAT (zhaoziheng/SAT) run as an external command; its outputs are mapped back onto the input grid.
==================  ============================================================================================

>>> sorted(BACKENDS)
['monai', 'sat', 'threshold', 'totalsegmentator']
>>> get_backend("threshold").name
'threshold'
"""

from __future__ import annotations

import importlib
from typing import Any

from ...errors import RadGenomeError

#: backend name -> "module:ClassName" (imported only when asked for)
BACKENDS: dict[str, str] = {
    "threshold": "threshold:ThresholdBackend",
    "monai": "monai_bundle:MonaiBackend",
    "totalsegmentator": "totalseg:TotalSegmentatorBackend",
    "sat": "sat:SATBackend",
}


def backend_class(name: str) -> type:
    """The class of a backend, by registry name."""
    try:
        spec = BACKENDS[name]
    except KeyError:
        raise RadGenomeError(f"unknown segmentation backend {name!r}; choose one of {sorted(BACKENDS)}") from None
    module, cls = spec.split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


def get_backend(name: str, **options: Any):
    """Build a backend by registry name (``options`` go to its constructor).

    ``monai`` with a ``bundle`` option is built with ``MonaiBackend.from_bundle``, with ``checkpoint`` and
    ``network_config`` with ``MonaiBackend.from_checkpoint``.
    """
    cls = backend_class(name)
    if name == "monai":
        opts = {k: v for k, v in options.items() if v is not None}
        if opts.get("bundle") is not None:
            return cls.from_bundle(opts.pop("bundle"), **opts)
        if opts.get("checkpoint") is not None:
            return cls.from_checkpoint(opts.pop("checkpoint"), opts.pop("network_config", None), **opts)
        raise RadGenomeError("the monai backend needs a bundle folder (--bundle) or --checkpoint and --network-config")
    return cls(**options)


__all__ = ["BACKENDS", "backend_class", "get_backend"]
