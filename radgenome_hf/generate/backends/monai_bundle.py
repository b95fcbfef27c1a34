"""MONAI segmentation backend: a bundle folder (e.g. ``wholeBody_ct_segmentation``) or a checkpoint + network config.

Inference follows the wholeBody bundle's ``configs/inference.json``: ``Orientation(RAS)`` -> ``Spacing(1.5 mm, or
3 mm for the low-res model, bilinear)`` -> ``NormalizeIntensity(nonzero)`` -> ``ScaleIntensity(-1, 1)`` ->
``sliding_window_inference`` (roi 96³, overlap 0.25, gaussian, replicate padding; AMP on CUDA) -> argmax ->
``Invertd`` (nearest) back onto the input grid, all of it on the device (the int16 volume is uploaded as stored;
only the uint8 label map comes back, no float64 anywhere). The bundle applies softmax before argmax; argmax of the logits is
the same label (softmax is monotonic) without a 105-channel softmax tensor, so it is skipped.

Channel names (TotalSegmentator v1 names in the wholeBody ``channel_def``) are mapped to ontology names; coarser
names (``lung``, ``left lung``, ``bone``, ``heart``...) are added as unions. Weights are read with
``torch.load(..., weights_only=True)`` only.

A bundle folder holds ``configs/inference.json`` (``network_def``, optional ``pixdim``/``modelname``/``inferer``),
``configs/metadata.json`` (``network_data_format.outputs.pred.channel_def``) and ``models/model.pt``.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import MalformedFileError, RadGenomeError, ReleaseNotFoundError
from ...access.masks import PackedMasks
from ..manifest import file_hash, params_hash
from ._common import label_map_to_masks


#: nibabel world axes (RAS+), given explicitly so the orientation does not depend on MONAI's default
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))


def _read_config(path: Path) -> dict:
    from monai.bundle import ConfigParser

    try:
        return dict(ConfigParser.load_config_file(str(path)))
    except Exception as exc:
        raise MalformedFileError(path, f"not a readable MONAI config ({exc})") from exc


def _channel_def(value: Mapping | str | os.PathLike | None, where: str) -> dict[int, str]:
    if value is None:
        raise RadGenomeError(f"{where}: no channel_def (output channel -> class name); pass channel_def=")
    if isinstance(value, (str, os.PathLike)):
        p = Path(value)
        raw = _read_config(p)
        value = raw.get("channel_def") or raw.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get(
            "channel_def"
        ) or raw
    try:
        return {int(k): str(v) for k, v in dict(value).items()}
    except (TypeError, ValueError) as exc:
        raise MalformedFileError(where, f"channel_def must map channel numbers to names ({exc})") from exc


def _load_state_dict(path: Path) -> dict:
    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise MalformedFileError(
            path, f"cannot load the checkpoint with torch.load(weights_only=True) ({exc}); it must hold tensors only"
        ) from exc
    if isinstance(obj, Mapping):
        for k in ("model", "state_dict", "network", "net"):
            if k in obj and isinstance(obj[k], Mapping):
                obj = obj[k]
                break
    if not isinstance(obj, Mapping):
        raise MalformedFileError(path, "checkpoint is not a state dict")
    return {(k[7:] if k.startswith("module.") else k): v for k, v in obj.items()}


class MonaiBackend:
    """Sliding-window MONAI network on CT, mapped to ontology names. Build with :meth:`from_bundle` or
    :meth:`from_checkpoint`; the model is loaded lazily, once per process.

    Args:
        network_config: a MONAI config of the network (``{"_target_": "SegResNet", ...}``), or ``None`` with
            ``bundle_dir`` (its ``network_def``).
        checkpoint: the state dict file.
        channel_def: output channel -> class name (TotalSegmentator v1 names or ontology names).
        pixdim: resampling spacing in mm (1.5 for ``model.pt``, 3.0 for ``model_lowres.pt``).
        roi_size, overlap, mode, padding_mode: sliding-window settings (wholeBody defaults).
        sw_batch_size: windows per forward pass (memory vs speed).
        device: ``"auto"`` (CUDA if available), ``"cuda"``, ``"cuda:1"``, ``"cpu"``.
        amp: ``torch.autocast`` on CUDA; ``amp_dtype``: ``"auto"`` (bf16 where supported, else fp16),
            ``"bfloat16"`` or ``"float16"``.
    """

    name = "monai"

    def __init__(
        self,
        network_config: Mapping[str, Any] | None,
        checkpoint: str | os.PathLike,
        channel_def: Mapping[int, str],
        *,
        bundle_dir: str | os.PathLike | None = None,
        pixdim: float | Sequence[float] = 1.5,
        roi_size: Sequence[int] = (96, 96, 96),
        overlap: float = 0.25,
        mode: str = "gaussian",
        padding_mode: str = "replicate",
        sw_batch_size: int = 1,
        device: str = "auto",
        amp: bool = True,
        amp_dtype: str = "auto",
        version: str | None = None,
    ) -> None:
        self.network_config = None if network_config is None else json.loads(json.dumps(dict(network_config)))
        self.bundle_dir = None if bundle_dir is None else str(Path(bundle_dir).resolve())
        if self.network_config is None and self.bundle_dir is None:
            raise RadGenomeError("MonaiBackend needs a network config or a bundle folder")
        self.checkpoint = Path(checkpoint)
        if not self.checkpoint.is_file():
            raise ReleaseNotFoundError(f"{self.checkpoint}: checkpoint not found (download the bundle's weights)")
        self.channel_def = {int(k): str(v) for k, v in channel_def.items()}
        p = [float(pixdim)] * 3 if np.isscalar(pixdim) else [float(x) for x in pixdim]  # type: ignore[arg-type]
        self.pixdim = tuple(p)
        self.roi_size = tuple(int(r) for r in roi_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.padding_mode = padding_mode
        self.sw_batch_size = int(sw_batch_size)
        self.device = device
        self.amp = bool(amp)
        if amp_dtype not in ("auto", "bfloat16", "float16"):
            raise ValueError(f"amp_dtype must be 'auto', 'bfloat16' or 'float16', got {amp_dtype!r}")
        self.amp_dtype = amp_dtype
        self._checkpoint_hash = file_hash(self.checkpoint)
        self.version = version or "custom"
        self._model = None

    # -- construction -------------------------------------------------------------------------------
    @classmethod
    def from_bundle(
        cls,
        bundle_dir: str | os.PathLike,
        *,
        highres: bool | None = None,
        checkpoint: str | os.PathLike | None = None,
        channel_def: Mapping[int, str] | str | os.PathLike | None = None,
        **options: Any,
    ) -> "MonaiBackend":
        """From a MONAI bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/``)."""
        root = Path(bundle_dir)
        cfg_path = next((root / "configs" / f"inference{e}" for e in (".json", ".yaml", ".yml")
                         if (root / "configs" / f"inference{e}").is_file()), None)
        if cfg_path is None:
            raise ReleaseNotFoundError(f"{root}: not a MONAI bundle (no configs/inference.json)")
        meta_path = root / "configs" / "metadata.json"
        meta = _read_config(meta_path) if meta_path.is_file() else {}
        parser = cls._parser(root, highres)
        if channel_def is None:
            channel_def = meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("channel_def")
        cdef = _channel_def(channel_def, str(meta_path))
        if "pixdim" in parser.config:
            options.setdefault("pixdim", [float(x) for x in parser.get_parsed_content("pixdim")])
        inferer = parser.config.get("inferer", {}) if isinstance(parser.config, dict) else {}
        for key in ("roi_size", "overlap", "mode", "padding_mode"):
            if key in inferer:
                try:
                    options.setdefault(key, parser.get_parsed_content(f"inferer#{key}"))
                except Exception:  # pragma: no cover - an expression that needs the full bundle runtime
                    pass
        if checkpoint is None:
            name = "model.pt"
            if "modelname" in parser.config:
                name = str(parser.get_parsed_content("modelname"))
            checkpoint = root / "models" / name
        version = options.pop("version", None) or f"bundle-{meta.get('name', root.name)}-{meta.get('version', '0')}"
        return cls(None, checkpoint, cdef, bundle_dir=root, version=version, **options)

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | os.PathLike,
        network_config: Mapping[str, Any] | str | os.PathLike | None,
        *,
        channel_def: Mapping[int, str] | str | os.PathLike | None = None,
        **options: Any,
    ) -> "MonaiBackend":
        """From a state dict and a network config (a dict or a JSON/YAML file; a file may also hold ``channel_def``).

        >>> # MonaiBackend.from_checkpoint("model.pt", {"_target_": "SegResNet", "spatial_dims": 3,
        >>> #     "in_channels": 1, "out_channels": 105, "init_filters": 32, "blocks_down": [1, 2, 2, 4],
        >>> #     "blocks_up": [1, 1, 1]}, channel_def="metadata.json")
        """
        where = "network config"
        if network_config is None:
            raise RadGenomeError("from_checkpoint needs a network config (e.g. {'_target_': 'SegResNet', ...})")
        if isinstance(network_config, (str, os.PathLike)):
            where = str(network_config)
            raw = _read_config(Path(network_config))
            if channel_def is None and "channel_def" in raw:
                channel_def = raw["channel_def"]
            network_config = raw.get("network_def") or raw.get("network") or raw
        net = dict(network_config)
        if "_target_" not in net:
            raise MalformedFileError(where, "network config needs a '_target_' (e.g. 'SegResNet')")
        return cls(net, checkpoint, _channel_def(channel_def, where), **options)

    @staticmethod
    def _parser(root: Path, highres: bool | None = None):
        from monai.bundle import ConfigParser

        parser = ConfigParser()
        cfg = next(root / "configs" / f"inference{e}" for e in (".json", ".yaml", ".yml")
                   if (root / "configs" / f"inference{e}").is_file())
        parser.read_config(str(cfg))
        meta = root / "configs" / "metadata.json"
        if meta.is_file():
            parser.read_meta(str(meta))
        parser["bundle_root"] = str(root)
        if highres is not None and isinstance(parser.config.get("displayable_configs"), dict):
            parser["displayable_configs"]["highres"] = bool(highres)
        return parser

    # -- identity -----------------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        return {
            "checkpoint": self._checkpoint_hash,
            "network": params_hash(self.network_config) if self.network_config else f"bundle:{self.bundle_dir}",
            "channel_def": self.channel_def,
            "pixdim": self.pixdim,
            "roi_size": self.roi_size,
            "overlap": self.overlap,
            "mode": self.mode,
            "amp": [self.amp, self.amp_dtype],
        }

    def _torch_device(self):
        import torch

        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    @property
    def uses_gpu(self) -> bool:
        return self._torch_device().type == "cuda"

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_model"] = None  # each process loads its own copy
        return state

    def __repr__(self) -> str:
        return (f"MonaiBackend(checkpoint={str(self.checkpoint)!r}, classes={len(self.channel_def)}, "
                f"pixdim={self.pixdim}, sw_batch_size={self.sw_batch_size}, device={self.device!r})")

    # -- model --------------------------------------------------------------------------------------
    def model(self):
        """The network with its weights, in eval mode on the device (built once)."""
        if self._model is None:
            from monai.bundle import ConfigParser

            if self.network_config is not None:
                net = ConfigParser({"network": self.network_config}).get_parsed_content("network")
            else:
                parser = self._parser(Path(self.bundle_dir))  # type: ignore[arg-type]
                key = "network_def" if "network_def" in parser.config else "network"
                net = parser.get_parsed_content(key)
            state = _load_state_dict(self.checkpoint)
            try:
                net.load_state_dict(state, strict=True)
            except RuntimeError as exc:
                raise MalformedFileError(
                    self.checkpoint, f"weights do not fit the network config ({str(exc).splitlines()[0]})"
                ) from exc
            out_ch = getattr(net, "out_channels", None)
            if out_ch is not None and max(self.channel_def, default=0) >= int(out_ch):
                raise MalformedFileError(
                    self.checkpoint, f"channel_def names channel {max(self.channel_def)} but the network has {out_ch}"
                )
            self._model = net.to(self._torch_device()).eval()
        return self._model

    # -- inference ----------------------------------------------------------------------------------
    def _amp_dtype(self, device):
        import torch

        if not self.amp or device.type != "cuda":
            return None
        if self.amp_dtype == "auto":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return getattr(torch, self.amp_dtype)

    def predict_labels(self, volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Argmax class map on the input grid (uint8; int16 past 255 classes), shape = ``volume.shape``.

        The volume goes to the device as stored (int16 HU: half the bytes of float32) and stays there: resampling,
        normalisation, sliding-window inference (autocast in bf16 where the GPU has it, else fp16), argmax and the
        inverse resampling all run on the device; only the uint8 label map comes back.
        """
        import torch
        from monai.data import MetaTensor
        from monai.inferers import sliding_window_inference
        from monai.transforms import (
            Compose,
            Invertd,
            NormalizeIntensityd,
            Orientationd,
            ScaleIntensityd,
            Spacingd,
        )

        model = self.model()
        device = self._torch_device()
        arr = np.asarray(volume)
        if arr.dtype not in (np.int16, np.uint8, np.int32, np.float32):
            arr = arr.astype(np.float32)
        out_dtype = torch.uint8 if max(self.channel_def, default=0) < 256 else torch.int16
        with torch.inference_mode():
            if not arr.flags.writeable and arr.dtype == np.float32:
                arr = arr.copy()  # float32 would stay aliased to a read-only buffer (a Ray zero-copy batch)
            with warnings.catch_warnings():  # any other dtype is converted below: a new tensor, never written back
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                src = torch.from_numpy(arr)
            img = MetaTensor(src.to(device).to(torch.float32)[None],
                             affine=torch.as_tensor(np.asarray(affine, np.float64)))
            pre = Compose(
                [
                    Orientationd("image", axcodes="RAS", labels=_RAS_LABELS),
                    Spacingd("image", pixdim=self.pixdim, mode="bilinear"),
                    NormalizeIntensityd("image", nonzero=True),
                    ScaleIntensityd("image", minv=-1.0, maxv=1.0),
                ]
            )
            data = pre({"image": img})
            x = data["image"].as_tensor()[None]
            amp = self._amp_dtype(device)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                logits = sliding_window_inference(
                    x,
                    roi_size=self.roi_size,
                    sw_batch_size=self.sw_batch_size,
                    predictor=model,
                    overlap=self.overlap,
                    mode=self.mode,
                    padding_mode=self.padding_mode,
                    sw_device=device,
                    device=device,
                )
            # float32 for the nearest-neighbour inverse resampling (grid_sample); labels are small integers
            labels = torch.argmax(logits, dim=1).to(torch.float32)
            del logits, x
            pred = MetaTensor(labels, meta=dict(data["image"].meta))
            pred.applied_operations = list(data["image"].applied_operations)
            data["pred"] = pred
            inv = Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=True, to_tensor=True)
            out = inv(data)["pred"]
            lab = torch.round(out.as_tensor()[0]).to(out_dtype).cpu().numpy()
        if lab.shape != tuple(volume.shape):
            raise RadGenomeError(f"monai: inverted prediction has shape {lab.shape}, input {tuple(volume.shape)}")
        inv_aff = np.asarray(out.affine, np.float64)
        if not np.allclose(inv_aff, affine, atol=1e-3):
            raise RadGenomeError(f"monai: inverted prediction affine\n{inv_aff}\ndiffers from the input's\n{affine}")
        return lab

    def pack_labels(self, labels: np.ndarray, affine: np.ndarray) -> PackedMasks:
        """Ontology-named packed masks of a :meth:`predict_labels` map (CPU work: a pipeline runs it off the GPU)."""
        return label_map_to_masks(labels, self.channel_def, affine, source=self.name)

    def segment(self, volume: np.ndarray, affine: np.ndarray) -> PackedMasks:
        return self.pack_labels(self.predict_labels(volume, affine), affine)
