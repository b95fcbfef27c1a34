"""TotalSegmentator backend, through its Python API (``pip install radgenome-hf[totalsegmentator]``).

``totalsegmentator.python_api.totalsegmentator(nifti_image, ml=True, task=..., ...)`` returns one multilabel
NIfTI image; its class names come from the image's extended header (the XML label table TotalSegmentator writes,
the one ``totalsegmentator.nifti_ext_header.load_multilabel_nifti`` reads) or, when absent, from
``totalsegmentator.map_to_binary.class_map[task]``. Names are mapped to the ontology
(``get_ontology().from_totalsegmentator``); classes with no ontology node are not stored (see ``unmapped``).
The label image is put back on the input grid (nearest neighbour) if TotalSegmentator returns another one.
TotalSegmentator downloads its weights on first use (internet needed, once).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import xml.etree.ElementTree as ET
from typing import Any, Sequence

import numpy as np

from ...errors import RadGenomeError
from ...access.masks import PackedMasks
from ._common import label_map_to_masks, ontology_name

_INSTALL = "pip install 'radgenome-hf[totalsegmentator]'"


def _require() -> None:
    if sys.modules.get("totalsegmentator") is not None:
        return
    try:
        spec = importlib.util.find_spec("totalsegmentator")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise RadGenomeError(f"the totalsegmentator backend needs the TotalSegmentator package: {_INSTALL}")


def label_table_from_header(img: Any) -> dict[int, str]:
    """Class names from a TotalSegmentator multilabel image's extended header (``{}`` if it has none)."""
    out: dict[int, str] = {}
    for ext in getattr(img.header, "extensions", []):
        try:
            raw = ext.get_content()
            text = raw.decode("utf-8", "replace") if isinstance(raw, (bytes, bytearray)) else str(raw)
            root = ET.fromstring(text.strip().rstrip("\x00"))
        except (ET.ParseError, AttributeError, ValueError):
            continue
        for label in root.iter("Label"):
            key = label.get("Key")
            if key is not None and label.text:
                out[int(key)] = label.text.strip()
    return out


class TotalSegmentatorBackend:
    """TotalSegmentator on one volume; ``options`` go to ``totalsegmentator(...)`` (e.g. ``roi_subset``).

    Args:
        task: TotalSegmentator task (``"total"``; chest subtasks like ``"lung_vessels"`` work too).
        fast: the 3 mm model.
        device: ``"gpu"``, ``"cpu"``, ``"mps"``, or ``"auto"`` (gpu when torch sees CUDA).
    """

    name = "totalsegmentator"

    def __init__(
        self,
        task: str = "total",
        *,
        fast: bool = False,
        device: str = "auto",
        roi_subset: Sequence[str] | None = None,
        **options: Any,
    ) -> None:
        _require()
        self.task = task
        self.fast = bool(fast)
        self.device = device
        self.roi_subset = None if roi_subset is None else list(roi_subset)
        self.options = dict(options)
        try:
            from importlib.metadata import version

            self.version = version("totalsegmentator")
        except Exception:
            self.version = str(getattr(importlib.import_module("totalsegmentator"), "__version__", "unknown"))
        self.unmapped: set[str] = set()

    def params(self) -> dict[str, Any]:
        return {"task": self.task, "fast": self.fast, "roi_subset": self.roi_subset, "options": self.options}

    def _device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import torch

            return "gpu" if torch.cuda.is_available() else "cpu"
        except ImportError:  # pragma: no cover
            return "cpu"

    @property
    def uses_gpu(self) -> bool:
        return self._device().startswith("gpu") or self._device().startswith("cuda")

    def _class_map(self) -> dict[int, str]:
        try:
            m = importlib.import_module("totalsegmentator.map_to_binary").class_map[self.task]
        except (ImportError, AttributeError, KeyError):
            return {}
        return {int(k): str(v) for k, v in m.items()}

    def segment(self, volume: np.ndarray, affine: np.ndarray) -> PackedMasks:
        import nibabel as nib

        _require()
        api = importlib.import_module("totalsegmentator.python_api")
        img = nib.Nifti1Image(np.asarray(volume), np.asarray(affine, np.float64))
        img.header.set_xyzt_units("mm")
        seg = api.totalsegmentator(
            img,
            None,
            ml=True,
            task=self.task,
            fast=self.fast,
            device=self._device(),
            roi_subset=self.roi_subset,
            quiet=True,
            **self.options,
        )
        if seg is None:
            raise RadGenomeError("totalsegmentator returned no image (is this TotalSegmentator >= 2.0?)")
        names = label_table_from_header(seg) or self._class_map()
        if not names:
            raise RadGenomeError(
                f"totalsegmentator: no class names for task {self.task!r} (no label table in the output header "
                "and no class_map entry); upgrade TotalSegmentator"
            )
        seg = self._on_input_grid(seg, volume.shape, affine)
        labels = np.asarray(seg.dataobj)
        if not np.issubdtype(labels.dtype, np.integer):
            labels = np.rint(labels).astype(np.int16)
        self.unmapped |= {n for n in names.values() if ontology_name(n) is None}
        return label_map_to_masks(labels, names, affine, source=self.name)

    @staticmethod
    def _on_input_grid(seg: Any, shape: Sequence[int], affine: np.ndarray):
        """The label image on the input grid: as is when it already is, else resampled (nearest)."""
        import nibabel as nib

        if tuple(seg.shape[:3]) == tuple(shape) and np.allclose(seg.affine, affine, atol=1e-3):
            return seg
        from nibabel.processing import resample_from_to

        data = np.asarray(seg.dataobj)
        if data.ndim == 4:
            data = data[..., 0]
        src = nib.Nifti1Image(data.astype(np.int16), seg.affine)
        return resample_from_to(src, (tuple(shape), np.asarray(affine, np.float64)), order=0, mode="constant", cval=0)

