"""Lazy CT volumes: nothing is read until an array is asked for; ``.nii.gz`` inflates fast (isal) with no transpose.

A :class:`Volume` wraps a local path (``.nii``/``.nii.gz``), raw file bytes, an fsspec URL (``hf://…``,
``file://…``), or a chunked volume of a packed release (a ``.zarr`` folder or its ``hf://`` URL). Arrays are in
nibabel voxel order ``(i, j, k)`` and Fortran-ordered (a view of the decoded file buffer, as nibabel returns
them); :meth:`Volume.tensor` is the zero-copy ``(k, j, i)`` torch view.

The file is read through a reader with one narrow interface (``header``, ``shape``, ``affine``,
``slope_inter``, ``read_raw``, ``read_raw_crop``): :class:`~radgenome_hf.io.nifti.NiftiFile` (header checks
before any allocation, one decode buffer, crops of ``.nii`` that read only the crop) or
:class:`~radgenome_hf.io.chunked.ChunkedVolumeFile` (zarr v3, one shard: a crop reads only the inner chunks it
touches, from disk or, for an ``hf://`` URL, by range requests on the pinned commit through the local chunk
cache of :mod:`~radgenome_hf.access.chunkcache`; its values are HU already). HU rules (:func:`~radgenome_hf.io.nifti.apply_rescale`):
the rescale (``scl_slope``/``scl_inter`` from the header, or ``rescale=(slope, intercept)`` given explicitly, which
then replaces the header's) is applied exactly once; integer data stay integer where the result fits; never
float64. With a :class:`~radgenome_hf.access.cache.PreparedCache` the decoded HU array is stored once (written
behind, in a background thread, so a first touch costs no more than the decode) and later reads and crops come
from it.

Every file-backed volume of a process shares one LRU of decoded arrays, keyed by the file's identity (path, size,
mtime) and bounded by ``$RADGENOME_OPEN_VOLUMES_MAX_BYTES`` (:func:`radgenome_hf.config.open_volumes_max_bytes`):
the ~50 ``vqa`` rows of one volume inflate its ``.nii.gz`` once. Shared arrays are read-only.

>>> import numpy as np
>>> v = Volume.from_array(np.zeros((4, 4, 2), np.int16), np.diag([0.75, 0.75, 1.5, 1.0]), name="train_1_a_1")
>>> v
Volume(name='train_1_a_1', shape=(4, 4, 2), spacing=(0.75, 0.75, 1.5), orientation='RAS', dtype=int16, memory=64 B, loaded=True)
"""

from __future__ import annotations

import math
import os
import queue
import threading
from collections import OrderedDict
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from ..config import open_volumes_max_bytes
from ..errors import MalformedFileError, ShapeMismatchError, UnknownAnatomyError
from ..io.chunked import ChunkedVolumeFile, is_chunked_volume
from ..io.nifti import NiftiFile, apply_rescale, ctrate_geometry, predict_dtype
from ..ontology import get_ontology, normalize_name, normalize_path
from ._format import format_bytes

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .cache import PreparedCache
    from .masks import PackedMasks

__all__ = ["Volume", "write_behind", "wait_for_writes", "clear_open_volumes"]


class _OpenArrays:
    """The process's decoded arrays by source identity, least recently used dropped first, bounded in bytes."""

    def __init__(self) -> None:
        self._items: "OrderedDict[str, np.ndarray]" = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def get(self, key: str) -> np.ndarray | None:
        with self._lock:
            arr = self._items.get(key)
            if arr is not None:
                self._items.move_to_end(key)
            return arr

    def put(self, key: str, arr: np.ndarray) -> None:
        bound = open_volumes_max_bytes()
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._bytes -= old.nbytes
            if arr.nbytes > bound:
                return
            self._items[key] = arr
            self._bytes += arr.nbytes
            while self._bytes > bound:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= dropped.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0


_OPEN = _OpenArrays()


def clear_open_volumes() -> None:
    """Forget the decoded arrays this process keeps (the next read decodes or reads the prepared cache again)."""
    _OPEN.clear()


class _Writer:
    """One background thread per process that stores arrays into prepared caches, so a read never waits for a
    compression. At most one array waits (memory stays bounded); a write offered while one waits is dropped,
    and the entry is written at a later touch."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.jobs: "queue.Queue[tuple[Any, str, np.ndarray, str | None]]" = queue.Queue(maxsize=1)
        threading.Thread(target=self._run, name="radgenome-cache-writer", daemon=True).start()

    def _run(self) -> None:
        while True:
            cache, key, arr, layout = self.jobs.get()
            try:
                if key not in cache:
                    cache.store(key, arr, layout=layout)  # a failed write warns once and is a later miss
            finally:
                self.jobs.task_done()


_writer: _Writer | None = None
_WRITE_BEHIND_MIN = 16 << 20
_writer_lock = threading.Lock()


def _after_fork() -> None:  # a lock held by another thread at fork time would never be released in the child
    global _writer, _writer_lock
    _writer, _writer_lock = None, threading.Lock()
    _OPEN._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def write_behind(
    cache: "PreparedCache", key: str, arr: np.ndarray, *, layout: str | None = None, copy: bool = False
) -> bool:
    """Store ``arr`` under ``key`` in a background thread (returns at once; arrays under 16 MiB are written at
    once). ``False`` when the writer is busy and the write was dropped. ``arr`` must not change until written:
    pass ``copy=True`` for an array the caller may modify (copied only when the write is accepted)."""
    global _writer
    if arr.nbytes < _WRITE_BEHIND_MIN:  # small arrays compress in a few ms: write now, the entry is there at once
        return key in cache or cache.store(key, arr, layout=layout) is not None
    with _writer_lock:
        if _writer is None or _writer.pid != os.getpid():  # a forked DataLoader worker starts its own thread
            _writer = _Writer()
        w = _writer
    if w.jobs.full():
        return False
    try:
        w.jobs.put_nowait((cache, key, arr.copy(order="K") if copy else arr, layout))
        return True
    except queue.Full:
        return False


def wait_for_writes() -> None:
    """Block until the background writes of this process are on disk (tests, benchmarks, before exiting)."""
    w = _writer
    if w is not None and w.pid == os.getpid():
        w.jobs.join()


class Volume:
    """A lazily decoded CT volume. Build with :meth:`open`, :meth:`from_ctrate` or :meth:`from_array`."""

    def __init__(self) -> None:  # use the classmethods
        self._file: NiftiFile | ChunkedVolumeFile | None = None  # the reader; None: an in-memory array
        self._checked = False
        self._name: str | None = None
        self._spacing_override: tuple[float, float, float] | None = None
        self._rescale_override: tuple[float, float] | None = None
        self._affine: np.ndarray | None = None
        self._array: np.ndarray | None = None
        self._cache: "PreparedCache | None" = None
        self._cache_key: str | None = None
        self._open_key: str | None = None
        #: whether a decode of the file is kept for later rows (the process LRU) and written to the prepared
        #: cache; a preset that caches its own output turns it off (later epochs read that output instead, so
        #: storing the raw volume too would only cost the first epoch a compression)
        self.retain = True

    # -- construction -----------------------------------------------------------------------------
    @classmethod
    def open(
        cls,
        source: str | os.PathLike | bytes,
        *,
        spacing: Sequence[float] | None = None,
        rescale: tuple[float, float] | None = None,
        name: str | None = None,
        cache: "PreparedCache | bool | None" = None,
        token: Any = None,
    ) -> "Volume":
        """Open lazily (not even the header is read yet).

        ``spacing`` (mm, i/j/k) replaces the header geometry: the affine becomes ``diag(spacing)``.
        ``rescale=(slope, intercept)`` replaces the header's ``scl_slope``/``scl_inter`` (a chunked volume stores
        HU with its rescale already applied: passing another one is an error).
        ``cache=True`` (or a :class:`~radgenome_hf.access.cache.PreparedCache`) stores the decoded array once and serves
        later ``array()``/``crop()`` calls from it (for a ``.nii.gz``, or a whole remote chunked volume; crops
        of a chunked volume read its chunks instead). ``token``: for an ``hf://`` chunked volume of a gated or
        private repo.
        """
        v = cls()
        if not isinstance(source, (bytes, bytearray, memoryview)) and is_chunked_volume(source):
            from .chunkcache import default_chunk_cache

            v._file = ChunkedVolumeFile.open(source, token=token, chunk_store=default_chunk_cache())
        else:
            v._file = NiftiFile.open(source)
        if v._file.kind != "bytes":
            stem = PurePosixPath(str(v._file.source)).name
            for suffix in (".nii.gz", ".nii", ".zarr"):
                if stem.endswith(suffix):
                    stem = stem[: -len(suffix)]
            v._name = stem
        if name is not None:
            v._name = name
        if spacing is not None:
            sp = tuple(float(s) for s in spacing)
            if len(sp) != 3 or not all(math.isfinite(s) and s > 0 for s in sp):
                raise ValueError(f"spacing must be three positive finite numbers (mm), got {spacing!r}")
            v._spacing_override = sp  # type: ignore[assignment]
        if rescale is not None:
            v._rescale_override = (float(rescale[0]), float(rescale[1]))
        if cache is True:
            from .cache import PreparedCache

            cache = PreparedCache()
        v._cache = cache or None
        return v

    @classmethod
    def from_ctrate(
        cls,
        path: str | os.PathLike,
        metadata: Mapping[str, Any] | None = None,
        *,
        cache: "PreparedCache | bool | None" = None,
    ) -> "Volume":
        """A CT-RATE volume with the right geometry and HU.

        Under a ``*_fixed/`` folder the header is complete and used as is (``metadata`` is ignored, so the rescale
        is never applied twice). A v1 file (``train/``, ``valid/``) has a blank header: spacing comes from
        ``metadata`` (``xy_spacing`` list + ``z_spacing``) and the rescale from ``rescale_slope``/
        ``rescale_intercept`` (the CSV's ``XYSpacing``/``ZSpacing``/``RescaleSlope``/``RescaleIntercept`` work
        too); the affine is then ``diag(spacing)``.
        """
        text = os.fspath(path)
        parts = PurePosixPath(text.replace("\\", "/")).parts[:-1]
        if any(p.endswith("_fixed") for p in parts):
            return cls.open(path, cache=cache)
        if metadata is None:
            raise MalformedFileError(
                text,
                "a CT-RATE v1 volume has a blank header; pass its metadata row (xy_spacing, z_spacing, "
                "rescale_slope, rescale_intercept) or open the *_fixed copy",
            )
        spacing, rescale = ctrate_geometry(metadata, text)
        return cls.open(path, spacing=spacing, rescale=rescale, cache=cache)

    @classmethod
    def from_array(cls, array: np.ndarray, affine: np.ndarray | None = None, name: str | None = None) -> "Volume":
        """Wrap an in-memory ``(i, j, k)`` array (float64 is stored as float32)."""
        arr = np.asanyarray(array)
        if arr.ndim != 3:
            raise ShapeMismatchError(f"a volume must be 3D, got shape {arr.shape}")
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        v = cls()
        v._array = arr
        v._affine = np.eye(4) if affine is None else np.asarray(affine, np.float64).reshape(4, 4)
        v._name = name
        return v

    # -- header -----------------------------------------------------------------------------------
    def _where(self) -> str:
        return "<array>" if self._file is None else self._file.where

    def _nifti(self) -> NiftiFile | ChunkedVolumeFile:
        """The reader, its header read and checked once (spacing too, unless ``spacing=`` replaces it)."""
        f = self._file
        assert f is not None
        if not self._checked:
            f.header  # noqa: B018 - reads and checks the header
            if self._spacing_override is None:
                f.check_zooms()
            if self._rescale_override is not None and isinstance(f, ChunkedVolumeFile):
                if not np.allclose(self._rescale_override, f.applied_rescale):
                    raise ValueError(
                        f"{f.where} stores HU with the rescale {f.applied_rescale} already applied; do not pass "
                        f"rescale={self._rescale_override} (it would be applied twice)")
                self._rescale_override = None
            self._checked = True
        return f

    @property
    def _chunked(self) -> bool:
        """Whether the source is a chunked volume (crops read their chunks, never the prepared cache)."""
        return isinstance(self._file, ChunkedVolumeFile)

    def _raw_shape(self) -> tuple[int, int, int]:
        return self._nifti().shape

    def _rescale(self) -> tuple[float, float]:
        if self._chunked:
            self._nifti()  # checks (and drops) a rescale= that matches the one already applied
        if self._rescale_override is not None:
            return self._rescale_override
        return self._nifti().slope_inter()

    # -- properties -------------------------------------------------------------------------------
    @property
    def name(self) -> str | None:
        return self._name

    @property
    def path(self) -> str | None:
        """Local path or URL of the source (``None`` for bytes or arrays)."""
        f = self._file
        return None if f is None or f.kind == "bytes" else f.source  # type: ignore[return-value]

    @property
    def prepared_cache(self) -> "PreparedCache | None":
        """The prepared cache this volume reads and fills (``None``: none)."""
        return self._cache

    def derived_key(self, preset: str, **params: Any) -> str | None:
        """The prepared-cache key of something computed from this volume (a preset's output, with its
        parameters), or ``None`` without a cache or a file. Changes whenever the file or its rescale changes."""
        if self._cache is None or self._file is None or self._file.kind == "bytes":
            return None
        return self._cache.key_for(self._cache_key_for().encode(), preset, **params)

    @property
    def loaded(self) -> bool:
        """Whether the voxel data are in memory."""
        return self._array is not None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self._array.shape) if self._array is not None else self._raw_shape()  # type: ignore[return-value]

    @property
    def affine(self) -> np.ndarray:
        if self._affine is None:
            if self._spacing_override is not None:
                self._affine = np.diag([*self._spacing_override, 1.0])
            else:
                self._affine = self._nifti().affine
        return self._affine.copy()

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along i, j, k."""
        if self._spacing_override is not None:
            return self._spacing_override
        a = self.affine
        return tuple(float(round(np.linalg.norm(a[:3, c]), 6)) for c in range(3))  # type: ignore[return-value]

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"LPS"`` or ``"RAS"`` (``nibabel.aff2axcodes``)."""
        import nibabel as nib

        return "".join(str(c) for c in nib.aff2axcodes(self.affine))

    @property
    def rescale(self) -> tuple[float, float]:
        """The ``(slope, intercept)`` that turns the stored values into HU (``(1, 0)`` for a chunked volume, whose
        values are HU already, and for an in-memory array)."""
        return (1.0, 0.0) if self._file is None else self._rescale()

    @property
    def dtype(self) -> np.dtype:
        """Dtype of :meth:`array` (predicted from the header until loaded)."""
        if self._array is not None:
            return self._array.dtype
        return predict_dtype(self._nifti().stored_dtype, *self._rescale())

    @property
    def nbytes(self) -> int:
        s = self.shape
        return int(s[0] * s[1] * s[2] * self.dtype.itemsize)

    def __repr__(self) -> str:
        try:
            sp = tuple(round(x, 4) for x in self.spacing)
            return (
                f"Volume(name={self._name!r}, shape={self.shape}, spacing={sp}, orientation={self.orientation!r}, "
                f"dtype={self.dtype}, memory={format_bytes(self.nbytes)}, loaded={self.loaded})"
            )
        except Exception as exc:  # repr must not raise
            return f"Volume(name={self._name!r}, source={self._where()!r}, unreadable={exc!s:.120})"

    # -- decoding ---------------------------------------------------------------------------------
    def _cache_key_for(self) -> str:
        if self._cache_key is None:
            assert self._cache is not None
            slope, inter = self._rescale()
            extra = {} if self._spacing_override is None else {"spacing": list(self._spacing_override)}
            self._cache_key = self._cache.key_for(self._identity_source(), "hu", slope=slope, intercept=inter, **extra)
        return self._cache_key

    def _identity_source(self) -> str | bytes:
        """What identifies the source's content for caches (a chunked volume: its shard, or its pinned URL)."""
        f = self._file
        assert f is not None
        return f.identity_source if isinstance(f, ChunkedVolumeFile) else f.source

    def _shared_key(self) -> str | None:
        """Key of this volume's decoded array in the process LRU (file-backed volumes only)."""
        if self._open_key is None and self._file is not None and self._file.kind != "bytes":
            from .cache import source_identity

            try:
                ident = source_identity(self._identity_source())
            except OSError:
                return None
            self._open_key = f"{ident}|{self._rescale_override}"
        return self._open_key

    def _decode(self) -> np.ndarray:
        """The HU array: from the process LRU, else the prepared cache, else the file (then stored in both)."""
        shared = self._shared_key()
        arr = _OPEN.get(shared) if shared is not None else None
        if arr is not None:
            return arr
        cache = self._whole_cache()
        if cache is not None:
            arr = cache.get_array(self._cache_key_for())
        if arr is None:
            arr = apply_rescale(self._nifti().read_raw(), *self._rescale())
            arr.flags.writeable = False  # shared by every row of this volume, and queued for the cache writer
            if cache is not None and self.retain:
                write_behind(cache, self._cache_key_for(), arr)
        else:
            arr.flags.writeable = False
        if shared is not None and self.retain:
            _OPEN.put(shared, arr)
        return arr

    def _whole_cache(self) -> "PreparedCache | None":
        """The prepared cache for whole decoded arrays: not for a local chunked volume (already chunked and local:
        reading it is as fast as the cache, and a copy would double the disk)."""
        f = self._file
        if isinstance(f, ChunkedVolumeFile) and f.kind == "path":
            return None
        return self._cache

    def array(self, dtype: Any = None, out: np.ndarray | None = None) -> np.ndarray:
        """The whole volume in HU, ``(i, j, k)``, Fortran order (kept in memory; ``release()`` drops it).

        File-backed volumes share a read-only array with the other rows of the same file (copy it to write).
        ``out``: a buffer of the volume's shape and HU dtype to fill and return instead, kept by the caller and
        not by this object. From a prepared cache the volume decodes straight into it, which spares the kernel
        mapping and zeroing a fresh array per call (the loop-over-volumes pattern).
        """
        if out is not None:
            if dtype is not None:
                raise ValueError("pass either dtype= or out= (out's dtype is the volume's HU dtype)")
            arr = self._array
            if arr is None:
                shared = self._shared_key()
                arr = _OPEN.get(shared) if shared is not None else None
            if arr is None:
                cache = self._whole_cache()
                got = cache.get_array(self._cache_key_for(), out=out) if cache is not None else None
                if got is not None:
                    return got
                if not self.retain or (self._chunked and cache is None):
                    return self._read_into(out)  # nothing keeps this decode: straight into the buffer
                arr = self._decode()
            self._check_out(out, arr.shape, arr.dtype)
            np.copyto(out, arr)
            return out
        if self._array is None:
            self._array = self._decode()
        return self._array if dtype is None else self._array.astype(dtype, copy=False)

    def _check_out(self, out: np.ndarray, shape: Sequence[int], dtype: Any) -> None:
        if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
            raise ValueError(
                f"{self._where()}: out= has shape {tuple(out.shape)} {out.dtype}, the volume is {tuple(shape)} "
                f"{np.dtype(dtype)}; pass a buffer of that shape and dtype (or out=None)"
            )

    def _read_into(self, out: np.ndarray) -> np.ndarray:
        """Decode the file into ``out`` (HU), kept nowhere else: no fresh array when the stored dtype is the HU
        dtype and ``out`` is F-contiguous (the usual CT case: int16 with an integral intercept)."""
        f = self._nifti()
        self._check_out(out, f.shape, self.dtype)
        if out.flags.f_contiguous and out.flags.writeable and f.stored_dtype.newbyteorder("=") == out.dtype:
            raw = f.read_raw(out=out)
            if self._chunked:
                return raw
            hu = apply_rescale(raw, *self._rescale())  # in place when the dtype is kept
            if hu is raw:
                return out
        else:
            hu = apply_rescale(f.read_raw(), *self._rescale())
        self._check_out(out, hu.shape, hu.dtype)  # the values needed a wider dtype than the header predicts
        np.copyto(out, hu)
        return out

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(volume)``: the HU array (what ``ds.with_format("numpy" | "torch")`` convert)."""
        arr = self.array()
        if dtype is not None and np.dtype(dtype) != arr.dtype:
            return arr.astype(dtype)
        return arr.copy(order="K") if copy else arr

    def release(self) -> None:
        """Drop the decoded array (a file-backed volume can decode again later)."""
        if self._file is not None:
            self._array = None

    def _check_bbox(self, bbox: Sequence[int]) -> tuple[int, ...]:
        b = tuple(int(x) for x in bbox)
        shape = self.shape
        if len(b) != 6 or any(b[a] < 0 or b[a + 3] > shape[a] or b[a + 3] <= b[a] for a in range(3)):
            raise ValueError(f"bbox {bbox!r} is not a non-empty (i0, j0, k0, i1, j1, k1) inside shape {shape}")
        return b

    def crop(self, bbox: Sequence[int]) -> np.ndarray:
        """Voxels inside the half-open ``bbox`` (HU, F order). Reads only what it needs from a cache or ``.nii``."""
        b = self._check_bbox(bbox)
        sl = (slice(b[0], b[3]), slice(b[1], b[4]), slice(b[2], b[5]))
        held = self._array
        if held is None:
            shared = self._shared_key()
            held = _OPEN.get(shared) if shared is not None else None
        if held is not None:
            return held[sl].copy(order="K")
        if self._chunked:  # only the chunks the box touches (a remote whole array is never fetched for a crop)
            cache = self._whole_cache()
            got = cache.crop(self._cache_key_for(), b) if cache is not None else None
            return got if got is not None else apply_rescale(self._nifti().read_raw_crop(b), *self._rescale())
        if self._cache is not None:
            got = self._cache.crop(self._cache_key_for(), b)
            if got is not None:
                return got
        else:
            raw = self._nifti().read_raw_crop(b)  # a .nii reads only the crop's bytes; gzip data cannot
            if raw is not None:
                return apply_rescale(raw, *self._rescale())
        return self.array()[sl].copy(order="K")

    def tensor(self) -> "torch.Tensor":
        """``torch.from_numpy(array().T)``: a zero-copy ``(k, j, i)`` tensor sharing memory with :meth:`array`."""
        import warnings

        import torch

        with warnings.catch_warnings():  # a shared read-only array: torch warns that writes would be undefined
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(self.array().T)

    def region(
        self,
        masks: "PackedMasks",
        anatomy: str,
        margin: int | Sequence[int] = (8, 8, 4),
    ) -> tuple[np.ndarray, np.ndarray]:
        """Crop the volume and the grounding mask around an anatomy path or bare node name (e.g. ``"heart"``).

        The mask is chosen by the official rule (``Ontology.grounding_mask`` over ``masks.names``): the anatomy
        mask of the path's last node, else the region mask of its first node, else the whole scan (all-True mask).
        ``margin`` (voxels, per axis) widens the tight bbox, clipped to the grid. An empty mask gives the whole
        volume with an all-False mask.
        """
        if tuple(masks.shape) != self.shape:
            raise ShapeMismatchError(
                f"{self._where()}: masks are on grid {masks.shape} but the volume is {self.shape}"
            )
        m = (margin,) * 3 if isinstance(margin, int) else tuple(int(x) for x in margin)
        key = normalize_name(anatomy) if "/" not in anatomy else None
        if key is not None and key in masks:
            name: str | None = key
        else:
            onto = get_ontology()
            path = normalize_path(anatomy)
            if path and path not in onto and not onto.paths_ending_in(path.rsplit("/", 1)[-1]):
                raise UnknownAnatomyError(
                    f"{anatomy!r} is neither a mask of this volume ({', '.join(masks.names[:5])}...) nor an "
                    "anatomy path of the RadGenome ontology"
                )
            _, name = onto.grounding_mask(path, available_anatomy=masks.names, available_regions=masks.names)
        shape = self.shape
        bb = None if name is None else masks.bbox(name)
        if bb is None:
            full = (0, 0, 0, *shape)
            mask = np.ones(shape, bool, order="F") if name is None else np.zeros(shape, bool, order="F")
            return self.crop(full), mask
        box = tuple(max(0, bb[a] - m[a]) for a in range(3)) + tuple(min(shape[a], bb[a + 3] + m[a]) for a in range(3))
        return self.crop(box), masks.crop(name, box)  # type: ignore[arg-type]
