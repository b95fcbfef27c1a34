"""TotalSegmentator backend (``pip install radgenome-hf[totalsegmentator]``), two engines.

``engine="nnunet"`` (the default) keeps the model loaded across volumes: TotalSegmentator runs nnU-Net, so each
process (a pool worker, a Ray actor) builds one ``nnunetv2`` ``nnUNetPredictor`` per model folder once
(``initialize_from_trained_model_folder``) and predicts every volume from its array, as TotalSegmentator's own
``nnUNet_predict_image`` does per call: the volume is reoriented to the closest canonical (RAS) grid, resampled
(linear) to the models' spacing (their ``plans.json``), each model predicts its classes (named in its
``dataset.json``; the five ``total`` models are merged in order, a later one winning on a shared voxel), and the
label map goes back (nearest) to the input grid. ``model_folders`` names nnU-Net trained-model folders
(``plans.json``, ``dataset.json``, ``fold_0/checkpoint_final.pth``; nnU-Net unpickles the checkpoint, so use
trusted folders only); by default they are TotalSegmentator's own for ``task`` (``total``: datasets 291-295 at
1.5 mm, ``fast``: 297 at 3 mm), downloaded by TotalSegmentator on first use (internet needed, once). Inference and
packing are separate (:meth:`~TotalSegmentatorBackend.predict_labels`, :meth:`~TotalSegmentatorBackend.pack_labels`),
so on Ray the GPU actors only predict.

``engine="api"`` calls ``totalsegmentator.python_api.totalsegmentator(nifti_image, ml=True, task=..., ...)`` per
volume (the model is loaded again each time); its class names come from the image's extended header (the XML label
table TotalSegmentator writes) or, when absent, from ``totalsegmentator.map_to_binary.class_map[task]``, and the
label image is put back on the input grid (nearest neighbour) if TotalSegmentator returns another one.

Either way names are mapped to the ontology (``get_ontology().from_totalsegmentator``); classes with no ontology
node are not stored (see ``unmapped``).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
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


def _require_nnunet() -> None:
    try:
        spec = importlib.util.find_spec("nnunetv2")
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise RadGenomeError("the totalsegmentator backend's nnunet engine (the model kept loaded) needs nnunetv2 "
                             f"(TotalSegmentator installs it: {_INSTALL}); or use engine='api'")


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


#: TotalSegmentator 2.x's nnU-Net models per (task, fast): dataset ids and trainer (its ``python_api`` / task config)
_TS_MODELS: dict[tuple[str, bool], tuple[tuple[int, ...], str]] = {
    ("total", False): ((291, 292, 293, 294, 295), "nnUNetTrainerNoMirroring"),
    ("total", True): ((297,), "nnUNetTrainer_4000epochs_NoMirroring"),
}
ENGINES = ("nnunet", "api")


def _nnunet_folder_classes(folder: Path) -> dict[int, str]:
    """``{label: class name}`` of an nnU-Net trained-model folder (its ``dataset.json``), background left out."""
    import json

    from ...errors import MalformedFileError

    path = folder / "dataset.json"
    try:
        labels = json.loads(path.read_text())["labels"]
        return {int(v): str(k) for k, v in labels.items() if int(v) > 0}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MalformedFileError(path, f"not an nnU-Net dataset.json with 'labels' ({exc}); give a trained-model "
                                       "folder (plans.json, dataset.json, fold_0/checkpoint_final.pth)") from exc


def _nnunet_spacing(folder: Path) -> tuple[float, float, float]:
    """The ``3d_fullres`` spacing of a model folder's ``plans.json``, in nibabel's (x, y, z) order (nnU-Net keeps
    (z, y, x): the arrays it reads through SimpleITK are transposed)."""
    import json

    from ...errors import MalformedFileError

    path = folder / "plans.json"
    try:
        z, y, x = json.loads(path.read_text())["configurations"]["3d_fullres"]["spacing"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise MalformedFileError(path, f"no 3d_fullres spacing in the nnU-Net plans ({exc})") from exc
    return float(x), float(y), float(z)


def _resize(arr: np.ndarray, shape: Sequence[int], order: int) -> np.ndarray:
    """``arr`` zoomed to ``shape`` (scipy, corners aligned, as TotalSegmentator's ``change_spacing``)."""
    from scipy import ndimage

    if tuple(arr.shape) == tuple(shape):
        return arr
    return ndimage.zoom(arr, [t / s for t, s in zip(shape, arr.shape)], order=order, mode="nearest")


def to_canonical(volume: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, tuple[float, ...], Any]:
    """``(voxels on the closest canonical (RAS) grid, their spacing, a function taking such an array back to the
    input's axes)``: what TotalSegmentator does to a volume before nnU-Net, and undoes after.

    >>> a = np.arange(24).reshape(2, 3, 4)
    >>> data, zooms, back = to_canonical(a, np.diag([-2.0, 1.0, -3.0, 1.0]))
    >>> data.shape, zooms, bool((back(data) == a).all())
    ((2, 3, 4), (2.0, 1.0, 3.0), True)
    """
    from nibabel import orientations as ornt

    aff = np.asarray(affine, np.float64)
    to_ras = ornt.io_orientation(aff)  # what nibabel.as_closest_canonical applies
    data = ornt.apply_orientation(np.asarray(volume), to_ras)
    canon_affine = aff @ ornt.inv_ornt_aff(to_ras, np.asarray(volume).shape)
    zooms = tuple(float(z) for z in np.sqrt((canon_affine[:3, :3] ** 2).sum(axis=0)))
    inverse = ornt.ornt_transform(ornt.axcodes2ornt("RAS"), to_ras)

    def back(arr: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(ornt.apply_orientation(arr, inverse))

    return data, zooms, back


class TotalSegmentatorBackend:
    """TotalSegmentator on one volume (see the module docs for the two engines).

    Args:
        task: TotalSegmentator task (``"total"``; with ``engine="api"`` chest subtasks like ``"lung_vessels"`` too).
        fast: the 3 mm model.
        device: ``"gpu"``/``"cuda"``, ``"cpu"``, ``"mps"``, or ``"auto"`` (gpu when torch sees CUDA).
        roi_subset: keep only these TotalSegmentator classes.
        engine: ``"nnunet"`` (predictors kept loaded, the default) or ``"api"`` (TotalSegmentator's API per volume).
        model_folders: nnU-Net trained-model folders for the ``nnunet`` engine (default: TotalSegmentator's own
            for ``task``/``fast``; then the ``totalsegmentator`` package is needed).
        options: more keyword arguments for ``totalsegmentator(...)`` (``api`` engine).
    """

    name = "totalsegmentator"

    def __init__(
        self,
        task: str = "total",
        *,
        fast: bool = False,
        device: str = "auto",
        roi_subset: Sequence[str] | None = None,
        engine: str = "nnunet",
        model_folders: Sequence[str | Path] | None = None,
        **options: Any,
    ) -> None:
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
        self.task = task
        self.fast = bool(fast)
        self.device = device
        self.roi_subset = None if roi_subset is None else list(roi_subset)
        self.engine = engine
        self.options = dict(options)
        self.unmapped: set[str] = set()
        self._predictors: list[tuple[Any, dict[int, int]]] | None = None  # built once per process
        self._names: dict[int, str] | None = None
        self.model_folders = None if model_folders is None else [Path(f).resolve() for f in model_folders]
        if engine == "api" or self.model_folders is None:
            _require()
            try:
                from importlib.metadata import version

                self.version = version("totalsegmentator")
            except Exception:
                self.version = str(getattr(importlib.import_module("totalsegmentator"), "__version__", "unknown"))
        if engine == "nnunet":
            _require_nnunet()
            if self.model_folders is not None:
                from ..manifest import file_hash

                self._weights = [file_hash(f / "fold_0" / "checkpoint_final.pth") for f in self.model_folders]
                self.version = f"nnunet-{len(self._weights)}-models"
            elif (task, self.fast) not in _TS_MODELS:
                raise RadGenomeError(f"totalsegmentator: no built-in nnU-Net models for task {task!r} (fast={fast}); "
                                     "give model_folders=, or use engine='api'")

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"task": self.task, "fast": self.fast, "roi_subset": self.roi_subset,
                               "options": self.options}
        if self.engine == "nnunet":
            out["engine"] = "nnunet"
            if self.model_folders is not None:
                out["weights"] = self._weights
        return out

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_predictors"] = None  # each process builds its own
        return state

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

    @property
    def separates_packing(self) -> bool:
        """Whether :meth:`predict_labels` and :meth:`pack_labels` split the work (the nnunet engine): a pipeline
        then packs on CPU tasks, off the GPU actors."""
        return self.engine == "nnunet"

    # -- the nnunet engine --------------------------------------------------------------------------
    def _folders(self) -> list[Path]:
        """The trained-model folders: the given ones, else TotalSegmentator's (downloaded on first use)."""
        if self.model_folders is None:
            self.model_folders = self._totalsegmentator_folders()
        return self.model_folders

    def _totalsegmentator_folders(self) -> list[Path]:
        ids, trainer = _TS_MODELS[(self.task, self.fast)]
        config = importlib.import_module("totalsegmentator.config")
        libs = importlib.import_module("totalsegmentator.libs")
        config.setup_nnunet()
        weights = Path(config.get_weights_dir())
        folders = []
        for tid in ids:
            libs.download_pretrained_weights(tid)
            found = sorted(weights.glob(f"Dataset{tid:03d}_*"))
            if not found:
                raise RadGenomeError(f"totalsegmentator: weights of dataset {tid} not found under {weights} after "
                                     "the download; run `totalseg_download_weights -t total` and retry")
            folders.append(found[0] / f"{trainer}__nnUNetPlans__3d_fullres")
        return folders

    def class_names(self) -> dict[int, str]:
        """``{label: TotalSegmentator class}`` of :meth:`predict_labels`' output (the models' classes, in order)."""
        if self._names is None:
            names: dict[int, str] = {}
            for folder in self._folders():
                for _, cname in sorted(_nnunet_folder_classes(folder).items()):
                    if cname not in names.values() and (self.roi_subset is None or cname in self.roi_subset):
                        names[len(names) + 1] = cname
            self._names = names
        return self._names

    def spacing(self) -> tuple[float, float, float]:
        """The spacing (mm, x y z) the models predict at (their plans; every folder must agree)."""
        spacings = {_nnunet_spacing(f) for f in self._folders()}
        if len(spacings) != 1:
            raise RadGenomeError(f"totalsegmentator: the model folders predict at different spacings {spacings}")
        return spacings.pop()

    def predictors(self) -> list[tuple[Any, dict[int, int]]]:
        """This process's ``(nnUNetPredictor, {model label: output label})`` per model folder, built once."""
        if self._predictors is None:
            import torch
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

            dev = self._device()
            device = torch.device("cuda" if dev in ("gpu", "cuda") else dev)
            out_label = {n: i for i, n in self.class_names().items()}
            built = []
            for folder in self._folders():
                predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                            perform_everything_on_device=device.type == "cuda", device=device,
                                            verbose=False, verbose_preprocessing=False, allow_tqdm=False)
                predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,),
                                                               checkpoint_name="checkpoint_final.pth")
                mapping = {lab: out_label[n] for lab, n in _nnunet_folder_classes(folder).items() if n in out_label}
                built.append((predictor, mapping))
            self._predictors = built
        return self._predictors

    def predict_labels(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Label map on the input grid (uint8; labels of :meth:`class_names`) from the resident predictors."""
        if self.engine != "nnunet":
            raise RadGenomeError("predict_labels is the nnunet engine's; the api engine segments whole volumes")
        predictors = self.predictors()
        data, zooms, back_to_input = to_canonical(volume, affine)
        spacing = self.spacing()
        grid = [max(1, int(round(n * z / t))) for n, z, t in zip(data.shape, zooms, spacing)]
        x = _resize(data.astype(np.float32, copy=False), grid, order=1)
        labels = np.zeros(grid, np.uint8 if len(self.class_names()) < 256 else np.uint16)
        for predictor, mapping in predictors:  # (z, y, x) arrays and spacing, as nnU-Net reads NIfTI through ITK
            seg = np.asarray(predictor.predict_single_npy_array(
                np.ascontiguousarray(x.transpose(2, 1, 0))[None], {"spacing": list(spacing[::-1])}, None, None,
                False)).transpose(2, 1, 0)
            for lab, out in mapping.items():
                labels[seg == lab] = out
        return back_to_input(_resize(labels, data.shape, order=0))

    def pack_labels(self, labels: np.ndarray, affine: np.ndarray) -> PackedMasks:
        """Ontology-named packed masks of a :meth:`predict_labels` map (CPU work)."""
        names = self.class_names()
        self.unmapped |= {n for n in names.values() if ontology_name(n) is None}
        return label_map_to_masks(labels, names, affine, source=self.name)

    def _class_map(self) -> dict[int, str]:
        try:
            m = importlib.import_module("totalsegmentator.map_to_binary").class_map[self.task]
        except (ImportError, AttributeError, KeyError):
            return {}
        return {int(k): str(v) for k, v in m.items()}

    def segment(self, volume: np.ndarray, affine: np.ndarray) -> PackedMasks:
        if self.engine == "nnunet":
            return self.pack_labels(self.predict_labels(volume, affine), affine)
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

