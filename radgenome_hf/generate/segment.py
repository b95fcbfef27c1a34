"""Generation stage 1: segment CT volumes into ontology-named packed masks, with pluggable backends.

One interface (:class:`SegmentationBackend`: HU array + affine in, :class:`~radgenome_hf.access.masks.PackedMasks` on the
same grid out) and four backends in :mod:`radgenome_hf.generate.backends` (``threshold``, ``monai``,
``totalsegmentator``, ``sat``). :func:`run_segmentation` runs a backend over many volumes — in this process, in a
local process pool, or on Ray Data — writing ``<out_dir>/<volume_name>.masks.parquet`` per volume, resumably
(a :class:`~radgenome_hf.generate.manifest.Manifest` keyed by input content hash, backend name, version and
parameters), recording every failure.

>>> import numpy as np
>>> from radgenome_hf.generate.backends import get_backend
>>> from radgenome_hf.testing.synthetic import make_phantom
>>> ph = make_phantom((48, 48, 32), None, 0)
>>> masks = segment_volume(ph.ct, get_backend("threshold"), affine=ph.affine)
>>> masks.shape == ph.ct.shape, "left lung" in masks
(True, True)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Protocol, Sequence, runtime_checkable

import numpy as np

from ..errors import CorruptVolumeError, RadGenomeError, ReleaseNotFoundError
from ..access.masks import PackedMasks
from ..names import VolumeName
from .manifest import Manifest, ManifestKey, params_hash

STAGE = "segment"
MANIFEST_NAME = "segment.manifest.sqlite"
MASKS_SUFFIX = ".masks.parquet"


@runtime_checkable
class SegmentationBackend(Protocol):
    """What every segmentation backend provides.

    ``segment`` takes Hounsfield units in nibabel voxel order ``(i, j, k)`` and the 4x4 voxel-to-world affine,
    and returns packed masks **on that same grid** (shape and affine), named with ontology mask names
    (``"left lung"``, ``"trachea"``, ``"bone"``...). ``name`` and ``version`` key the resumable manifest;
    a backend may also define ``params() -> dict`` (everything else that changes its output).
    """

    name: str
    version: str

    def segment(self, volume: np.ndarray, affine: np.ndarray) -> PackedMasks: ...


def backend_params(backend: SegmentationBackend) -> dict[str, Any]:
    """The backend's ``params()`` (``{}`` if it has none): part of the manifest key."""
    p = getattr(backend, "params", None)
    if p is None:
        return {}
    return dict(p() if callable(p) else p)


def load_volume(path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume as HU and its affine, read as every row reads it (:class:`~radgenome_hf.access.volume.Volume`).

    The header's rescale is applied once, integer data stay integer where the result fits; a CT-RATE v1 file
    (blank header) takes its spacing and rescale from ``metadata``. Raises :class:`MissingVolumeError` /
    :class:`CorruptVolumeError` naming the file.
    """
    from ..access.volume import Volume

    vol = Volume.from_ctrate(path, metadata) if metadata is not None else Volume.open(path)
    try:
        arr = vol.array()
    except RadGenomeError:
        raise
    except Exception as exc:  # noqa: BLE001 - an unexpected decoder failure still names the file
        raise CorruptVolumeError(path, f"cannot read the NIfTI volume ({type(exc).__name__}: {exc}); re-download it") from exc
    return arr, vol.affine


def segment_volume(
    path_or_array: str | os.PathLike | np.ndarray | Any,
    backend: SegmentationBackend,
    affine: np.ndarray | None = None,
) -> PackedMasks:
    """Segment one volume: a NIfTI path, an HU array (with ``affine``), or an object with ``array()`` and ``affine``.

    The result is checked to lie on the input grid (same shape and affine).
    """
    from .backends._common import check_grid

    if isinstance(path_or_array, (str, os.PathLike)):
        arr, aff = load_volume(path_or_array)
        where = str(path_or_array)
    elif isinstance(path_or_array, np.ndarray):
        arr = path_or_array
        aff = np.eye(4) if affine is None else np.asarray(affine, np.float64)
        where = "<array>"
    elif hasattr(path_or_array, "array") and hasattr(path_or_array, "affine"):
        arr = path_or_array.array()
        aff = np.asarray(path_or_array.affine if affine is None else affine, np.float64)
        where = str(getattr(path_or_array, "path", None) or getattr(path_or_array, "name", "<volume>"))
    else:
        raise TypeError(f"segment_volume needs a path, an array or a Volume, got {type(path_or_array).__name__}")
    if arr.ndim != 3:
        raise CorruptVolumeError(None, f"{where}: expected a 3D volume, got shape {arr.shape}")
    masks = backend.segment(arr, aff)
    return check_grid(masks, arr.shape, aff, f"{where} ({backend.name})")


# -- finding inputs -----------------------------------------------------------------------------------
def discover_volumes(data_dir: str | os.PathLike) -> list[tuple[str, Path]]:
    """Volumes of an upstream-layout folder, as ``(volume_name, path)`` sorted by name.

    Looks for RadGenome's ``dataset/{train,valid}_preprocessed/**.nii.gz`` (the grid the released masks live on)
    under ``data_dir``, ``data_dir/RadGenome-ChestCT``; if there are none, CT-RATE's
    ``dataset/{train,valid}_fixed/**.nii.gz`` under ``data_dir`` or ``data_dir/CT-RATE``. Files whose names are not
    volume names raise :class:`~radgenome_hf.errors.VolumeNameError` (never skipped silently).
    """
    root = Path(data_dir)
    if not root.is_dir():
        raise ReleaseNotFoundError(f"{root}: folder not found; give the folder of an upstream release")

    def collect(bases: Iterable[Path], folders: Sequence[str]) -> list[tuple[str, Path]]:
        found: dict[str, Path] = {}
        for base in bases:
            for folder in folders:
                d = base / "dataset" / folder
                if d.is_dir():
                    for p in sorted(d.rglob("*.nii.gz")):
                        name = VolumeName.parse(p.name).stem
                        found.setdefault(name, p)
        return sorted(found.items(), key=lambda kv: VolumeName.parse(kv[0]))

    vols = collect([root, root / "RadGenome-ChestCT"], ["train_preprocessed", "valid_preprocessed"])
    if not vols:
        vols = collect([root, root / "CT-RATE"], ["train_fixed", "valid_fixed"])
    if not vols:
        raise ReleaseNotFoundError(
            f"{root}: no volumes found in dataset/{{train,valid}}_preprocessed (RadGenome-ChestCT) nor "
            "dataset/{train,valid}_fixed (CT-RATE); point DATA_DIR at the release root"
        )
    return vols


# -- the runner ---------------------------------------------------------------------------------------
@dataclass
class SegmentationReport:
    """What :func:`run_segmentation` did. ``failed`` maps volume name -> error text."""

    out_dir: Path
    backend: str
    version: str
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    outputs: dict[str, Path] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [
            f"segment [{self.backend} {self.version}] -> {self.out_dir}: {len(self.done)} done, "
            f"{len(self.skipped)} unchanged (skipped), {len(self.failed)} failed in {self.seconds:.1f} s"
        ]
        for name, err in sorted(self.failed.items()):
            lines.append(f"  FAILED {name}: {err.strip().splitlines()[-1] if err.strip() else err}")
        return "\n".join(lines)


@dataclass
class _Task:
    item: str
    path: str
    out: str


@dataclass
class _Result:
    item: str
    out: str
    error: str | None
    n_structures: int
    seconds: float


def _error_text(exc: BaseException) -> str:
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, limit=-3))
    return f"{type(exc).__name__}: {exc}\n{tb}"


def _run_task(task: _Task, backend: SegmentationBackend) -> _Result:
    t0 = time.perf_counter()
    try:
        masks = segment_volume(task.path, backend)
        masks.save(task.out, volume_name=task.item)
        return _Result(task.item, task.out, None, len(masks), time.perf_counter() - t0)
    except Exception as exc:
        return _Result(task.item, task.out, _error_text(exc), 0, time.perf_counter() - t0)


_WORKER_BACKEND: SegmentationBackend | None = None


def _init_worker(backend: SegmentationBackend) -> None:
    global _WORKER_BACKEND
    _WORKER_BACKEND = backend  # one backend (one model) per worker process, reused across volumes


def _worker_task(task: _Task) -> _Result:
    assert _WORKER_BACKEND is not None
    return _run_task(task, _WORKER_BACKEND)


def _default_workers(backend: SegmentationBackend) -> int:
    if getattr(backend, "uses_gpu", False):
        return 1
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def run_segmentation(
    inputs: Iterable[tuple[str, str | os.PathLike]],
    out_dir: str | os.PathLike,
    backend: SegmentationBackend,
    *,
    workers: int | None = None,
    ray: bool | str = False,
    progress: bool = True,
    redo_failed: bool = True,
    batch_size: int = 1,
) -> SegmentationReport:
    """Segment ``inputs`` (``(volume_name, path)`` pairs) into ``<out_dir>/<volume_name>.masks.parquet``.

    Resumable: ``<out_dir>/segment.manifest.sqlite`` records each volume's key (input content hash, backend
    name, version, params hash); a re-run skips volumes whose key is unchanged and whose output exists, and redoes
    the others. Per-volume failures are recorded (with the error text) and listed in the report; a re-run retries
    them (``redo_failed=False`` leaves unchanged failures alone).

    Args:
        workers: processes (``1`` = in this process; more = a spawn-context process pool, one backend per
            process). Default: 1 for GPU backends, else up to 4.
        ray: run on Ray Data instead (loading and writing as tasks, segmentation as an actor pool with one model
            per GPU); ``True`` uses the running Ray instance or starts a local one, a string is a cluster address.
        batch_size: volumes per segmentation actor call (Ray).
        progress: tqdm progress bar.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name, version = str(backend.name), str(backend.version)
    phash = params_hash(backend_params(backend))
    report = SegmentationReport(out, name, version)
    todo: list[tuple[_Task, ManifestKey]] = []
    seen: set[str] = set()
    with Manifest(out / MANIFEST_NAME, STAGE) as manifest:
        for item, path in inputs:
            item = str(item)
            if item in seen:
                raise RadGenomeError(f"volume {item!r} is listed twice in the inputs ({path}); give each volume once")
            seen.add(item)
            target = out / f"{item}{MASKS_SUFFIX}"
            try:
                ihash = manifest.input_hash(path)
            except OSError as exc:
                key = ManifestKey(item, "unreadable", name, version, phash)
                err = f"MissingVolumeError: {path}: cannot read the input ({exc})"
                manifest.mark_failed(key, err)
                report.failed[item] = err
                continue
            key = ManifestKey(item, ihash, name, version, phash)
            status = manifest.status(key)
            if status == "done" and target.is_file():
                report.skipped.append(item)
                report.outputs[item] = target
                continue
            if status == "failed" and not redo_failed:
                report.failed[item] = manifest.get(item).error or "failed"  # type: ignore[union-attr]
                continue
            todo.append((_Task(item, str(path), str(target)), key))

        keys = {t.item: k for t, k in todo}

        def record(res: _Result) -> None:
            key = keys[res.item]
            if res.error is None:
                manifest.mark_done(key, {"masks": Path(res.out).name, "structures": res.n_structures}, res.seconds)
                report.done.append(res.item)
                report.outputs[res.item] = Path(res.out)
            else:
                manifest.mark_failed(key, res.error, res.seconds)
                report.failed[res.item] = res.error

        tasks = [t for t, _ in todo]
        bar = tqdm(total=len(tasks), desc=f"segment [{name}]", unit="vol", disable=None if progress else True)
        try:
            if not tasks:
                pass
            elif ray:
                stream = _run_ray(tasks, backend, workers, progress, None if ray is True else str(ray), batch_size)
                try:
                    for res in stream:
                        record(res)
                        bar.update()
                except RadGenomeError:
                    raise
                except Exception as exc:  # the Ray job itself failed: every volume not reported is a failure
                    err = f"Ray job failed before this volume was reported: {_error_text(exc)}"
                    for t in tasks:
                        if t.item not in report.done and t.item not in report.failed:
                            record(_Result(t.item, t.out, err, 0, 0.0))
            else:
                n = workers if workers is not None else _default_workers(backend)
                n = max(1, min(int(n), len(tasks)))
                if n == 1:
                    for task in tasks:
                        record(_run_task(task, backend))
                        bar.update()
                else:
                    ctx = multiprocessing.get_context("spawn")
                    with cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_init_worker, initargs=(backend,)) as pool:
                        futures = {pool.submit(_worker_task, t): t for t in tasks}
                        for fut in cf.as_completed(futures):
                            task = futures[fut]
                            try:
                                res = fut.result()
                            except Exception as exc:  # a worker died (e.g. out of memory): record, never drop
                                res = _Result(task.item, task.out, _error_text(exc), 0, 0.0)
                            record(res)
                            bar.update()
        finally:
            bar.close()
    report.done.sort()
    report.skipped.sort()
    report.seconds = time.perf_counter() - t0
    return report


# -- Ray Data -----------------------------------------------------------------------------------------
def _ray_load(row: dict[str, Any]) -> dict[str, Any]:
    """CPU task: decode the NIfTI volume (gzip is the CPU-heavy part)."""
    try:
        arr, aff = load_volume(row["path"])
        return {**row, "volume": np.asarray(arr, np.float32), "affine": aff, "error": ""}
    except Exception as exc:
        return {**row, "volume": np.zeros((1, 1, 1), np.float32), "affine": np.eye(4), "error": _error_text(exc)}


class _RaySegmenter:
    """GPU (or CPU) stage: an actor holding one backend (one model) for its lifetime."""

    def __init__(self, backend: SegmentationBackend) -> None:
        self.backend = backend

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        from .backends._common import check_grid

        out: dict[str, list] = {"item": [], "out": [], "masks": [], "error": [], "n": [], "seconds": []}
        for i in range(len(batch["item"])):
            t0 = time.perf_counter()
            item, err, blob, n = str(batch["item"][i]), str(batch["error"][i]), b"", 0
            if not err:
                try:
                    vol = np.asarray(batch["volume"][i])
                    aff = np.asarray(batch["affine"][i], np.float64)
                    masks = check_grid(self.backend.segment(vol, aff), vol.shape, aff, f"{batch['path'][i]}")
                    blob, n = _masks_to_bytes(masks, item), len(masks)
                except Exception as exc:
                    err = _error_text(exc)
            out["item"].append(item)
            out["out"].append(str(batch["out"][i]))
            out["masks"].append(blob)
            out["error"].append(err)
            out["n"].append(n)
            out["seconds"].append(time.perf_counter() - t0)
        return out


def _masks_to_bytes(masks: PackedMasks, item: str) -> bytes:
    import pyarrow as pa

    table = masks.to_arrow(item)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


def _ray_write(row: dict[str, Any]) -> dict[str, Any]:
    """CPU task: write the packed masks (atomic)."""
    err = str(row["error"])
    if not err:
        try:
            import pyarrow as pa

            table = pa.ipc.open_stream(pa.py_buffer(row["masks"])).read_all()
            PackedMasks.from_arrow(table, row["item"]).save(row["out"], volume_name=row["item"])
        except Exception as exc:
            err = _error_text(exc)
    return {"item": row["item"], "out": row["out"], "error": err, "n": int(row["n"]), "seconds": float(row["seconds"])}


def _run_ray(tasks: Sequence[_Task], backend: SegmentationBackend, workers: int | None, progress: bool,
             address: str | None, batch_size: int):
    from .runner import init_ray, ray_data_context

    init_ray(address)
    import ray
    import ray.data

    ray_data_context(progress)
    gpus = int(ray.cluster_resources().get("GPU", 0))
    wants_gpu = bool(getattr(backend, "uses_gpu", False)) and gpus > 0
    n = workers or (gpus if wants_gpu else 1)
    n = max(1, min(n, len(tasks)))
    ds = ray.data.from_items([{"item": t.item, "path": t.path, "out": t.out} for t in tasks])
    ds = ds.map(_ray_load)
    ds = ds.map_batches(
        _RaySegmenter,
        fn_constructor_kwargs={"backend": backend},
        batch_size=batch_size,
        compute=ray.data.ActorPoolStrategy(size=n),  # Ray >= 2.51 takes the pool as ``compute``
        num_gpus=1 if wants_gpu else 0,
        batch_format="numpy",
    )
    ds = ds.map(_ray_write)
    for row in ds.iter_rows():
        yield _Result(str(row["item"]), str(row["out"]), str(row["error"]) or None, int(row["n"]), float(row["seconds"]))
