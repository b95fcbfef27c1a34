"""The per-volume stages of a rebuild: read -> (segment) -> pack -> quality -> write, in a process pool or on Ray Data.

Each volume is read once (:class:`~radgenome_hf.access.volume.Volume`, HU as rows read it); with a segmentation
backend it is segmented and its masks packed and written to ``<stem>.masks.parquet``, otherwise the masks already
packed from the release are read; then its quality row (:mod:`~radgenome_hf.generate.quality`) is computed.

- Locally (:func:`run_volume_stages` without ``ray``) the whole chain runs per volume in a spawn process pool
  (``workers``); each process keeps one backend (one model) for its lifetime.
- On Ray (``ray="local"`` or a cluster address) the chain is one Ray Data pipeline: ``read`` (CPU tasks) ->
  ``segment`` (an actor pool: one model per actor, one actor per GPU when the backend uses one, ``segment_batch``
  volumes per call) -> ``pack + quality`` (CPU tasks); Ray Data's streaming executor applies backpressure, so only
  a few volumes are in memory whatever the release size.

Resumable at volume granularity: ``volumes.manifest.sqlite`` keys each volume by the content hash of its volume
file (and packed-masks file), the backend name, version and parameters, and holds its quality row; a re-run after a
kill at any point redoes only the volumes not recorded, and gives the same files as an uninterrupted run. A volume
that fails (corrupt file, backend error) is recorded with its error and skipped.

>>> import os, tempfile
>>> from radgenome_hf.generate.backends import get_backend
>>> from radgenome_hf.io.nifti import write_nifti
>>> from radgenome_hf.testing.synthetic import make_phantom
>>> d = tempfile.mkdtemp(); ph = make_phantom((48, 48, 32), None, 0)
>>> _ = write_nifti(os.path.join(d, "train_1_a_1.nii.gz"), ph.ct, ph.affine)
>>> jobs = [VolumeJob("train_1_a_1", os.path.join(d, "train_1_a_1.nii.gz"), out=os.path.join(d, "m.parquet"))]
>>> rep = run_volume_stages(jobs, d, get_backend("threshold"), workers=1, progress=False)
>>> rep.done, rep.quality["train_1_a_1"]["flags"]
(['train_1_a_1'], [])
>>> run_volume_stages(jobs, d, get_backend("threshold"), workers=1, progress=False).skipped  # resumed: nothing to do
['train_1_a_1']
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .manifest import Manifest, ManifestKey, params_hash
from .quality import QUALITY_COLUMNS
from .segment import _error_text

STAGE = "volumes"
VERSION = "1"
MANIFEST_NAME = "volumes.manifest.sqlite"
STAGES = ("read", "segment", "pack", "quality")

__all__ = ["VolumeJob", "VolumeStageReport", "run_volume_stages", "STAGES"]


@dataclass(frozen=True)
class VolumeJob:
    """One volume: ``masks`` = its packed release masks (read), or ``out`` = where its segmentation is written."""

    item: str
    path: str
    masks: str | None = None
    out: str | None = None


@dataclass
class VolumeStageReport:
    """What :func:`run_volume_stages` did; ``stage_seconds`` sums the workers' time per stage."""

    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    quality: dict[str, dict] = field(default_factory=dict)
    masks: dict[str, Path] = field(default_factory=dict)
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    seconds: float = 0.0
    executor: str = ""
    gpu_utilisation: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        n = len(self.done)
        return {
            "executor": self.executor, "volumes": n, "unchanged": len(self.skipped), "seconds": round(self.seconds, 3),
            "volumes_per_s": round(n / self.seconds, 3) if self.seconds and n else None,
            "stage_seconds": {k: round(v, 3) for k, v in self.stage_seconds.items()},
            "stage_volumes_per_s_per_worker": {k: round(n / v, 3) if v else None for k, v in self.stage_seconds.items()},
            "gpu_utilisation_mean": round(float(np.mean(self.gpu_utilisation)), 1) if self.gpu_utilisation else None,
            "failures": [{"volume": k, "error": v.strip().splitlines()[0] if v.strip() else v}
                         for k, v in sorted(self.failed.items())],
        }


# -- the stage functions (module level: they run in workers) -----------------------------------------------
def _read(row: dict[str, Any]) -> dict[str, Any]:
    """Decode the volume; the HU-side quality fields are computed here, so the array travels no further than the
    segmenter."""
    from ..access.volume import Volume
    from ..io.nifti import NiftiFile
    from .quality import hu_quality

    t0 = time.perf_counter()
    try:
        vol = Volume.open(row["path"])
        hu = vol.array()
        q = hu_quality(hu, vol.affine, rescale=NiftiFile.open(row["path"]).slope_inter(), volume_name=row["item"])
        out = {"hu": hu, "affine": np.asarray(vol.affine, np.float64), "quality": json.dumps(q), "error": ""}
    except Exception as exc:  # recorded against the volume, never stops the run
        out = {"hu": np.zeros((0, 0, 0), np.int16), "affine": np.eye(4), "quality": "", "error": _error_text(exc)}
    return {**row, **out, "t_read": time.perf_counter() - t0}


_BACKENDS: dict[tuple, Any] = {}


def _resident(backend: Any) -> Any:
    """This process's copy of ``backend``, kept for every later volume (a model's weights load once per process)."""
    from .segment import backend_params

    return _BACKENDS.setdefault((backend.name, backend.version, params_hash(backend_params(backend))), backend)


def _splits_packing(backend: Any) -> bool:
    """Whether the backend predicts labels and packs them apart (packing then runs on CPU, off the model's actor)."""
    return (hasattr(backend, "predict_labels") and hasattr(backend, "pack_labels")
            and getattr(backend, "separates_packing", True))


def _segment(row: dict[str, Any], backend: Any) -> dict[str, Any]:
    """Labels (a backend that separates inference from packing: the packing runs on a CPU task) or packed
    masks as Arrow IPC bytes."""
    from .backends._common import check_grid
    from .segment import _masks_to_bytes

    t0 = time.perf_counter()
    hu = row.pop("hu")
    labels, blob = np.zeros((0, 0, 0), np.uint8), b""
    if not row["error"]:
        try:
            aff = np.asarray(row["affine"], np.float64)
            if _splits_packing(backend):
                labels = np.asarray(backend.predict_labels(hu, aff))
            else:
                masks = check_grid(backend.segment(hu, aff), hu.shape, aff, f"{row['path']} ({backend.name})")
                blob = _masks_to_bytes(masks, row["item"])
        except Exception as exc:
            row["error"] = _error_text(exc)
    return {**row, "labels": labels, "blob": blob, "t_segment": time.perf_counter() - t0}


def _pack_quality(row: dict[str, Any], backend: Any) -> dict[str, Any]:
    """Pack and write a segmentation (or read the release's packed masks), then finish the quality row."""
    from ..access.masks import PackedMasks
    from .quality import with_masks

    t0 = time.perf_counter()
    row.pop("hu", None)
    masks, t_pack, quality, n = None, 0.0, "", 0
    if not row["error"]:
        try:
            if row.get("masks"):
                masks = PackedMasks.load(row["masks"])
            elif backend is not None:
                aff = np.asarray(row["affine"], np.float64)
                if np.asarray(row["labels"]).size:
                    masks = backend.pack_labels(np.asarray(row["labels"]), aff)
                else:
                    import pyarrow as pa

                    masks = PackedMasks.from_arrow(pa.ipc.open_stream(pa.py_buffer(row["blob"])).read_all(), row["item"])
                masks.save(row["out"], volume_name=row["item"])
                n = len(masks)
            t_pack = time.perf_counter() - t0
            quality = json.dumps(with_masks(json.loads(row["quality"]), masks))
        except Exception as exc:
            row["error"] = _error_text(exc)
    return {"item": row["item"], "error": row["error"], "quality": quality, "n": n, "t_read": row["t_read"],
            "t_segment": row.get("t_segment", 0.0), "t_pack": t_pack,
            "t_quality": time.perf_counter() - t0 - t_pack}


def _chain(job: tuple[dict[str, Any], Any]) -> dict[str, Any]:
    """The local pool's unit of work: every stage of one volume in one process."""
    row, backend = job
    row = _read(row)
    if backend is not None and not row.get("masks"):
        backend = _resident(backend)
        row = _segment(row, backend)
    return _pack_quality(row, backend)


class _Segmenter:
    """Ray actor: one backend (one model) for the actor's lifetime; a batch of volumes per call."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [{k: batch[k][i] for k in batch} for i in range(len(batch["item"]))]
        out = [_segment(r, self.backend) for r in rows]
        return {k: [r[k] for r in out] for k in out[0]}


def _gpu_sample() -> float | None:
    try:
        import torch

        return float(torch.cuda.utilization()) if torch.cuda.is_available() else None
    except Exception:  # no NVML: utilisation unknown
        return None


# -- the runner ---------------------------------------------------------------------------------------------
def run_volume_stages(jobs: Iterable[VolumeJob], out_dir: str | os.PathLike, backend: Any = None, *,
                      ray: str | None = None, workers: int | None = None, segment_batch: int = 2,
                      executor: "cf.Executor | None" = None, progress: bool = True) -> VolumeStageReport:
    """Run read -> (segment) -> pack -> quality over ``jobs``; ``out_dir`` holds the manifest.

    Args:
        backend: a segmentation backend for the jobs without ``masks`` (``None``: quality only).
        ray: ``"local"`` (a local Ray instance) or a cluster address: one Ray Data pipeline; else a process pool.
        workers: pool processes (default all cores); on Ray, the local instance's CPUs.
        segment_batch: volumes per segmentation actor call (Ray).
        executor: the process pool to use (else one of ``workers`` is started); not used with ``ray``.
    """
    from tqdm.auto import tqdm

    from .segment import backend_params

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = VolumeStageReport(executor="ray" if ray else f"pool({workers or 'all cores'})")
    name = backend.name if backend is not None else "release"
    version = f"{VERSION}+{backend.version}" if backend is not None else VERSION
    phash = params_hash(backend_params(backend) if backend is not None else {})
    todo: list[dict[str, Any]] = []
    keys: dict[str, ManifestKey] = {}
    with Manifest(out / MANIFEST_NAME, STAGE) as manifest:
        for job in jobs:
            try:
                ihash = manifest.input_hash(job.path) + (f"+{manifest.input_hash(job.masks)}" if job.masks else "")
            except OSError as exc:
                report.failed[job.item] = f"MissingVolumeError: {job.path}: cannot read the input ({exc})"
                continue
            key = keys[job.item] = ManifestKey(job.item, ihash, name, version, phash)
            entry = manifest.get(job.item)
            if entry is not None and entry.key == key and entry.status == "done" and (
                    job.out is None or Path(job.out).is_file()):
                report.skipped.append(job.item)
                report.quality[job.item] = {k: entry.outputs["quality"][k] for k in QUALITY_COLUMNS}  # stored sorted
                if job.out:
                    report.masks[job.item] = Path(job.out)
                continue
            todo.append({**asdict(job), "masks": job.masks or "", "out": job.out or ""})  # no None: Ray makes it NaN
        outs = {r["item"]: r["out"] for r in todo}

        def record(res: dict[str, Any]) -> None:
            item = res["item"]
            for stage in STAGES:
                report.stage_seconds[stage] += float(res[f"t_{stage}"])
            seconds = sum(float(res[f"t_{s}"]) for s in STAGES)
            if res["error"]:
                manifest.mark_failed(keys[item], res["error"], seconds)
                report.failed[item] = res["error"]
                return
            q = json.loads(res["quality"])
            outputs = {"quality": q, "structures": int(res["n"])}
            if outs[item]:
                outputs["masks"] = Path(outs[item]).name
                report.masks[item] = Path(outs[item])
            manifest.mark_done(keys[item], outputs, seconds)
            report.quality[item] = q
            report.done.append(item)

        bar = tqdm(total=len(todo), desc="volumes [read > segment > pack > quality]", unit="vol",
                   disable=None if progress else True)
        try:
            results = _ray_stream(todo, backend, ray, workers, segment_batch, progress) if ray and todo else \
                _pool_stream(todo, backend, workers, executor)
            for res in results:
                record(res)
                if (u := _gpu_sample()) is not None:
                    report.gpu_utilisation.append(u)
                bar.update()
        finally:
            bar.close()
    report.done.sort()
    report.skipped.sort()
    report.seconds = time.perf_counter() - t0
    return report


def _pool_stream(todo: Sequence[dict[str, Any]], backend: Any, workers: int | None, executor: Any):
    import contextlib

    from .runner import bounded_map, make_executor

    with contextlib.nullcontext(executor) if executor is not None else make_executor(workers=workers) as ex:
        for (row, _), res in bounded_map(ex, _chain, ((r, backend) for r in todo)):
            if isinstance(res, BaseException):  # a worker died (e.g. out of memory): recorded, never dropped
                res = {"item": row["item"], "error": _error_text(res), "quality": "", "n": 0,
                       **{f"t_{s}": 0.0 for s in STAGES}}
            yield res


def _ray_stream(todo: Sequence[dict[str, Any]], backend: Any, address: str, workers: int | None,
                segment_batch: int, progress: bool):
    import ray
    import ray.data

    from .runner import init_ray, ray_data_context

    init_ray(address, num_cpus=workers)
    ray_data_context(progress)
    cpus = max(1, int(ray.cluster_resources().get("CPU", 1)))
    gpus = int(ray.cluster_resources().get("GPU", 0))
    # one volume per block: a read task holds one decoded volume, and backpressure counts volumes
    ds = ray.data.from_items(list(todo), override_num_blocks=len(todo)).map(_read)
    segmenting = backend is not None and any(not r["masks"] for r in todo)
    if segmenting:
        on_gpu = bool(getattr(backend, "uses_gpu", False)) and gpus > 0
        # a fixed pool: one actor (one model) per GPU, else per CPU; Ray >= 2.51 takes the pool as ``compute``
        pool = ray.data.ActorPoolStrategy(size=gpus if on_gpu else max(1, min(cpus, len(todo))))
        ds = ds.map_batches(_Segmenter, fn_constructor_kwargs={"backend": backend}, batch_size=segment_batch,
                            compute=pool, num_gpus=1 if on_gpu else 0, batch_format="numpy", zero_copy_batch=True)
    ds = ds.map(_pack_quality, fn_kwargs={"backend": backend})
    yield from ds.iter_rows()
