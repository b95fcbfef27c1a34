"""SAT (zhaoziheng/SAT, "Segment Anything with Text") run as an external command, mapped back onto the input grid.

SAT reads a jsonl (one ``{"image", "label", "modality", "dataset"}`` object per volume), and writes one binary
``<rcd_dir>/<dataset>/seg_<id>/<label>.nii.gz`` per prompt, where ``<id>`` is the image file name without
``.nii.gz``. Those files carry an identity affine and lie on SAT's own grid: its ``data/inference_dataset.py``
loads the image with MONAI and applies ``Orientationd(RAS) -> Spacingd(1, 1, 3 mm, bilinear) ->
CropForegroundd(source_key="image")`` (foreground = voxels > 0 after resampling, margin 0). This backend runs
the same three MONAI transforms on the input to learn that grid (its real affine and shape), then maps every SAT
mask back: each input voxel takes the value of the nearest SAT voxel (voxels outside the cropped box are 0 —
the crop is padded back), which undoes the crop, the resampling and the reorientation at once.

The default command is the SAT README's::

    torchrun --nproc_per_node=1 --master_port 1234 inference.py --rcd_dir {rcd_dir} --datasets_jsonl {jsonl}
        --vision_backbone UNET-L --checkpoint {checkpoint} --text_encoder ours
        --text_encoder_checkpoint {text_encoder_checkpoint} --max_queries 256 --batchsize_3d {batchsize_3d}

run in ``sat_dir`` (the SAT checkout). Any command can be given; ``{rcd_dir}``, ``{jsonl}``, ``{checkpoint}``,
``{text_encoder_checkpoint}``, ``{vision_backbone}``, ``{batchsize_3d}``, ``{master_port}`` are filled in.
Prompts default to the ontology's anatomy mask names, which are SAT category names.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ...errors import MalformedFileError, RadGenomeError, ReleaseNotFoundError
from ...access.masks import PackedMasks
from ...io.nifti import NiftiFile, apply_rescale, write_nifti
from ...ontology import get_ontology, normalize_name
from ._common import masks_with_derived, ontology_name

DEFAULT_COMMAND: tuple[str, ...] = (
    "torchrun", "--nproc_per_node=1", "--master_port", "{master_port}", "inference.py",
    "--rcd_dir", "{rcd_dir}", "--datasets_jsonl", "{jsonl}",
    "--vision_backbone", "{vision_backbone}", "--checkpoint", "{checkpoint}",
    "--text_encoder", "ours", "--text_encoder_checkpoint", "{text_encoder_checkpoint}",
    "--max_queries", "256", "--batchsize_3d", "{batchsize_3d}",
)  # fmt: skip
#: SAT's inference geometry (data/inference_dataset.py)
SAT_SPACING = (1.0, 1.0, 3.0)
_RAS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))
_SAMPLE_ID = "ct"


def default_labels() -> list[str]:
    """SAT prompts: the ontology's anatomy mask names (RadGenome's anatomy masks are SAT categories)."""
    return list(get_ontology().anatomy_masks)


def sat_geometry(volume: np.ndarray, affine: np.ndarray):
    """SAT's forward geometry on an input, with MONAI as SAT does: returns ``(shape, affine)`` of SAT's grid.

    ``affine`` maps SAT's voxel indices (on the reoriented, 1x1x3 mm, foreground-cropped grid) to world
    coordinates; SAT itself writes ``np.eye(4)`` instead.
    """
    import torch
    from monai.data import MetaTensor
    from monai.transforms import Compose, CropForegroundd, Orientationd, Spacingd

    img = MetaTensor(
        torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None],
        affine=torch.as_tensor(np.asarray(affine, np.float64)),
    )
    fwd = Compose(
        [
            Orientationd("image", axcodes="RAS", labels=_RAS_LABELS),
            Spacingd("image", pixdim=SAT_SPACING, mode="bilinear"),
            CropForegroundd("image", source_key="image", allow_smaller=True),
        ]
    )
    out = fwd({"image": img})["image"]
    return tuple(int(s) for s in out.shape[1:]), np.asarray(out.affine, np.float64)


def resample_nearest(
    masks: Mapping[str, np.ndarray], src_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> dict[str, np.ndarray]:
    """Put masks from a source grid onto a target grid (shape, affine) by nearest neighbour; outside = False.

    Axis-aligned grids (any flips/permutations/scales/offsets, the usual case) use one separable index per axis;
    oblique ones fall back to ``scipy.ndimage.map_coordinates(order=0)``.
    """
    m = np.linalg.inv(np.asarray(src_affine, np.float64)) @ np.asarray(affine, np.float64)  # target vox -> src vox
    rot = m[:3, :3]
    nz = np.abs(rot) > 1e-6
    out: dict[str, np.ndarray] = {}
    if (nz.sum(axis=1) == 1).all() and (nz.sum(axis=0) == 1).all():
        axis_of = nz.argmax(axis=1)  # src axis s is driven by target axis axis_of[s]
        idx = []
        for s in range(3):
            a = int(axis_of[s])
            coord = rot[s, a] * np.arange(int(shape[a])) + m[s, 3]
            idx.append(np.floor(coord + 0.5).astype(np.int64))
        # after fancy indexing, result axes follow src axes; target axis order is axis_of
        order = np.argsort(axis_of)
        for name, src in masks.items():
            src = np.asarray(src, bool)
            padded = np.pad(src, 1)  # index -1 / n land on the zero border
            ii = [np.clip(idx[s], -1, src.shape[s]) + 1 for s in range(3)]
            out[name] = np.ascontiguousarray(padded[np.ix_(*ii)].transpose(order))
        return out
    from scipy.ndimage import map_coordinates

    grid = np.indices(tuple(int(s) for s in shape), dtype=np.float32).reshape(3, -1)
    coords = rot.astype(np.float32) @ grid + m[:3, 3:4].astype(np.float32)
    for name, src in masks.items():
        vals = map_coordinates(np.asarray(src, np.uint8), coords, order=0, mode="constant", cval=0)
        out[name] = vals.reshape(tuple(int(s) for s in shape)).astype(bool)
    return out


class SATBackend:
    """SAT as an external command (one run per volume). See the module docstring for the geometry.

    Args:
        command: the command (a list, or a string split with ``shlex``); ``None`` = SAT's README command, which
            needs ``sat_dir``, ``checkpoint`` and ``text_encoder_checkpoint``.
        sat_dir: working directory of the command (the SAT checkout).
        labels: prompts (default :func:`default_labels`); output names are mapped to ontology names.
        dataset: the jsonl ``dataset`` field (= the output sub-folder).
        work_dir: where temporary inputs/outputs go (default the system temp folder); ``keep_work`` keeps them.
        timeout: seconds before the command is killed.
        env: extra environment variables for the command.
    """

    name = "sat"

    def __init__(
        self,
        command: Sequence[str] | str | None = None,
        *,
        sat_dir: str | os.PathLike | None = None,
        labels: Sequence[str] | None = None,
        checkpoint: str | os.PathLike | None = None,
        text_encoder_checkpoint: str | os.PathLike | None = None,
        vision_backbone: str = "UNET-L",
        batchsize_3d: int = 1,
        master_port: int = 1234,
        dataset: str = "radgenome",
        modality: str = "ct",
        work_dir: str | os.PathLike | None = None,
        keep_work: bool = False,
        timeout: float | None = None,
        env: Mapping[str, str] | None = None,
        version: str = "sat",
    ) -> None:
        if command is None:
            missing = [n for n, v in (("sat_dir", sat_dir), ("checkpoint", checkpoint),
                                      ("text_encoder_checkpoint", text_encoder_checkpoint)) if v is None]
            if missing:
                raise RadGenomeError(
                    f"the sat backend runs SAT's inference.py and needs {', '.join(missing)} (a SAT checkout and its "
                    "checkpoints from https://huggingface.co/zzh99/SAT), or a custom command"
                )
            command = DEFAULT_COMMAND
        self.command = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
        self.sat_dir = None if sat_dir is None else str(sat_dir)
        if self.sat_dir is not None and not Path(self.sat_dir).is_dir():
            raise ReleaseNotFoundError(f"{self.sat_dir}: SAT checkout folder not found")
        self.labels = list(labels) if labels is not None else default_labels()
        self.fields = {
            "checkpoint": "" if checkpoint is None else str(checkpoint),
            "text_encoder_checkpoint": "" if text_encoder_checkpoint is None else str(text_encoder_checkpoint),
            "vision_backbone": vision_backbone,
            "batchsize_3d": str(int(batchsize_3d)),
            "master_port": str(int(master_port)),
        }
        self.dataset = dataset
        self.modality = modality
        self.work_dir = None if work_dir is None else str(work_dir)
        self.keep_work = keep_work
        self.timeout = timeout
        self.env = dict(env or {})
        self.version = version

    def params(self) -> dict[str, Any]:
        return {"command": self.command, "labels": self.labels, "fields": self.fields, "modality": self.modality}

    uses_gpu = True

    def _command(self, rcd_dir: Path, jsonl: Path) -> list[str]:
        values = {**self.fields, "rcd_dir": str(rcd_dir), "jsonl": str(jsonl)}
        try:
            return [part.format(**values) for part in self.command]
        except (KeyError, IndexError) as exc:
            raise RadGenomeError(f"sat command {self.command}: unknown placeholder {exc}") from exc

    def segment(self, volume: np.ndarray, affine: np.ndarray) -> PackedMasks:
        if self.work_dir:
            Path(self.work_dir).mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="radgenome-sat-", dir=self.work_dir))
        try:
            image = write_nifti(work / f"{_SAMPLE_ID}.nii.gz", volume, affine)
            # SAT reads the file back: use the affine as stored (float32 in the header) for its geometry
            stored_affine = NiftiFile.open(image).affine
            jsonl = work / "sat.jsonl"
            row = {"image": str(image), "label": self.labels, "modality": self.modality, "dataset": self.dataset}
            jsonl.write_text(json.dumps(row) + "\n", encoding="utf-8")
            rcd = work / "out"
            rcd.mkdir()
            cmd = self._command(rcd, jsonl)
            try:
                proc = subprocess.run(
                    cmd, cwd=self.sat_dir, env={**os.environ, **self.env}, capture_output=True, text=True,
                    timeout=self.timeout,
                )
            except FileNotFoundError as exc:
                raise RadGenomeError(f"sat: cannot run {cmd[0]!r} ({exc}); install SAT's requirements") from exc
            except subprocess.TimeoutExpired as exc:
                raise RadGenomeError(f"sat: command timed out after {self.timeout} s: {shlex.join(cmd)}") from exc
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout or "").strip()[-2000:]
                raise RadGenomeError(f"sat: command failed (exit {proc.returncode}): {shlex.join(cmd)}\n{tail}")
            return self._read_outputs(rcd / self.dataset / f"seg_{_SAMPLE_ID}", volume, stored_affine, affine)
        finally:
            if not self.keep_work:
                shutil.rmtree(work, ignore_errors=True)

    def _read_outputs(
        self, seg_dir: Path, volume: np.ndarray, stored_affine: np.ndarray, affine: np.ndarray
    ) -> PackedMasks:
        if not seg_dir.is_dir():
            raise MalformedFileError(seg_dir, "SAT wrote no seg_<id> folder here; check the command's output")
        sat_shape, sat_affine = sat_geometry(volume, stored_affine)
        raw: dict[str, np.ndarray] = {}
        for label in self.labels:
            f = seg_dir / f"{label}.nii.gz"
            if not f.is_file():
                raise MalformedFileError(f, f"SAT wrote no mask for prompt {label!r}")
            out = NiftiFile.open(f)
            arr = apply_rescale(out.read_raw(), *out.slope_inter())
            if tuple(arr.shape) != sat_shape:
                raise MalformedFileError(
                    f, f"mask shape {arr.shape} is not SAT's grid {sat_shape} for this input (RAS, 1x1x3 mm, "
                    "foreground crop); was it made from another image or another SAT/MONAI version?"
                )
            name = ontology_name(label) or normalize_name(label)
            raw[name] = (raw[name] | (arr > 0.5)) if name in raw else arr > 0.5
        back = resample_nearest(raw, sat_affine, volume.shape, affine)
        return masks_with_derived(back, affine, source=self.name)
