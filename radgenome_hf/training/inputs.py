"""What every preset accepts: a :class:`~radgenome_hf.access.volume.Volume`, a nibabel image, an array or a tensor.

Arrays and tensors are in nibabel voxel order ``(i, j, k)`` (a leading channel axis of size 1 is dropped); their
spacing comes from ``spacing=`` (mm, ``(i, j, k)``) or ``affine=``. Volumes and nibabel images carry their own. In
a dict transform, ``data[f"{key}_spacing"]`` / ``data[f"{key}_affine"]`` are used when present.

Dict presets are thin :class:`monai.transforms.MapTransform` subclasses (:class:`PresetTransform`) over the array
functions, like MONAI's own ``dictionary.py`` modules. With ``cache=True`` (their default) a preset stores what it
made from a :class:`~radgenome_hf.access.volume.Volume` that has a prepared cache (every ``load_dataset`` row has
one) and reads it back later: an :class:`OutputEntry` per output, keyed by the volume's identity, the mask's
identity (:func:`mask_identity`) and every parameter, so a changed source or parameter is never served stale.

>>> import numpy as np
>>> arr, spacing, affine = as_array(np.zeros((1, 4, 4, 2), np.float64), spacing=(1, 1, 2))
>>> arr.shape, arr.dtype, spacing
((4, 4, 2), dtype('float32'), (1.0, 1.0, 2.0))
"""

from __future__ import annotations

import contextlib
import os
import threading
import warnings
from typing import TYPE_CHECKING, Any, Hashable, Mapping, Sequence

import numpy as np
from monai.transforms import MapTransform
from monai.utils import ensure_tuple

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["OUTPUT_CODEC", "OutputEntry", "PresetTransform", "as_array", "mask_identity", "need_spacing", "reuse_buffers",
           "torch_kji"]

_local = threading.local()


class _Scratch:
    """One growable byte buffer a thread decodes volumes into, one volume at a time."""

    def __init__(self) -> None:
        self.buf: np.ndarray | None = None
        self.allocations = 0

    def array(self, shape: Sequence[int], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self.buf is None or self.buf.nbytes < nbytes:
            import torch

            self.buf = None  # drop the old one before mapping the new
            # through torch, not numpy: numpy asks for transparent huge pages on large arrays, and where the kernel
            # compacts memory to find them (THP defrag "madvise", the default) that cost epoch 1 10-15 % here
            self.buf = torch.empty(max(nbytes, 1), dtype=torch.uint8).numpy()
            self.allocations += 1
        return self.buf[:nbytes].view(dtype).reshape(tuple(shape), order="F")


@contextlib.contextmanager
def reuse_buffers():
    """Within the block, presets decode a :class:`~radgenome_hf.access.volume.Volume` that nothing keeps (a preset
    caching its output sets ``Volume.retain = False``) into this thread's one reusable buffer instead of a fresh
    array per volume (a fresh 157 MB array per 512x512x300 volume costs ~40k page faults). The buffer lives as long
    as the thread; the loaders' threads and worker processes use it (:func:`~radgenome_hf.training.make_dataloader`).
    Yields the scratch object.

    >>> import numpy as np
    >>> from radgenome_hf.access.volume import Volume
    >>> with reuse_buffers() as scratch:
    ...     _ = as_array(Volume.from_array(np.zeros((4, 4, 2), np.int16)))   # held in memory: not copied
    ...     scratch.allocations
    0
    """
    scratch = getattr(_local, "scratch", None)
    if scratch is None:
        scratch = _local.scratch = _Scratch()
    before = getattr(_local, "active", False)
    _local.active = True
    try:
        yield scratch
    finally:
        _local.active = before


def _into_scratch(volume: Any) -> np.ndarray | None:
    """The volume decoded into this thread's scratch buffer, when :func:`reuse_buffers` is active and nothing keeps
    the decode (``retain`` off, not loaded); else ``None``. Only for callers that make a new output from it and keep
    no view of it (the next volume overwrites it)."""
    if not getattr(_local, "active", False) or getattr(volume, "retain", True) or getattr(volume, "loaded", True):
        return None
    return volume.array(out=_local.scratch.array(volume.shape, volume.dtype))


def _spacing_from_affine(affine: Any) -> tuple[float, float, float]:
    a = np.asarray(affine, dtype=np.float64)[:3, :3]  # 4x4 header geometry, not volume data
    return tuple(float(v) for v in np.sqrt((a * a).sum(axis=0)))  # type: ignore[return-value]


def as_array(
    volume: Any, spacing: Sequence[float] | None = None, affine: Any = None, *, transient: bool = False
) -> tuple[Any, tuple[float, float, float] | None, np.ndarray | None]:
    """(array or tensor in (i, j, k), spacing (i, j, k) or None, affine or None) of any accepted volume type.

    ``transient=True``: the caller keeps no view of the array past its own call, so inside :func:`reuse_buffers` a
    volume nothing else keeps may be decoded into the thread's reused buffer."""
    vol_spacing = None
    vol_affine = None
    if isinstance(volume, (str, os.PathLike)):  # a file: our Volume (isal inflate, no transposing copy)
        from ..access.volume import Volume

        volume = Volume.open(volume)
    if hasattr(volume, "array") and hasattr(volume, "spacing") and callable(volume.array):  # radgenome Volume
        arr = _into_scratch(volume) if transient else None
        if arr is None:
            arr = volume.array()
        vol_spacing = tuple(float(s) for s in volume.spacing)
        vol_affine = getattr(volume, "affine", None)
    elif hasattr(volume, "dataobj") and hasattr(volume, "header"):  # nibabel image
        dataobj = volume.dataobj
        slope = getattr(dataobj, "slope", 1.0)
        inter = getattr(dataobj, "inter", 0.0)
        if hasattr(dataobj, "get_unscaled"):
            raw = np.asanyarray(dataobj.get_unscaled())
        else:
            raw = np.asanyarray(dataobj)
        if (slope is not None and float(slope) != 1.0) or (inter is not None and float(inter) != 0.0):
            arr = raw.astype(np.float32)
            arr *= np.float32(slope)
            arr += np.float32(inter)
        else:
            arr = raw
        vol_spacing = tuple(float(z) for z in volume.header.get_zooms()[:3])
        vol_affine = volume.affine
    else:
        arr = volume
        if hasattr(volume, "affine") and affine is None and spacing is None:  # MONAI MetaTensor
            try:
                vol_affine = np.asarray(volume.affine)
            except Exception:  # noqa: BLE001 - not a usable affine
                vol_affine = None
    if arr.ndim == 4 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 3:
        raise ValueError(f"expected a 3-D volume (i, j, k), got shape {tuple(arr.shape)}")
    if isinstance(arr, np.ndarray) and arr.dtype == np.float64:
        arr = arr.astype(np.float32)
    if spacing is not None:
        sp = tuple(float(s) for s in spacing)
    elif affine is not None:
        sp = _spacing_from_affine(affine)
    elif vol_spacing is not None:
        sp = vol_spacing
    elif vol_affine is not None:
        sp = _spacing_from_affine(vol_affine)
    else:
        sp = None
    aff = affine if affine is not None else vol_affine
    return arr, sp, (None if aff is None else np.asarray(aff))


def torch_kji(arr: Any) -> "torch.Tensor":
    """A (k, j, i) tensor view of an (i, j, k) array, zero-copy when the array is F-ordered (NIfTI's layout)."""
    import torch

    if isinstance(arr, torch.Tensor):
        t = arr.permute(2, 1, 0)
    else:
        a = np.asarray(arr)
        if a.dtype == np.bool_:
            a = a.view(np.uint8)
        if any(s < 0 for s in a.strides):
            a = np.asfortranarray(a)
        with warnings.catch_warnings():  # read-only arrays (memory maps): we never write into the input
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(a).permute(2, 1, 0)  # contiguous when `a` is F-ordered
    if t.dtype == torch.float64:
        t = t.float()
    return t


def need_spacing(sp: Any, what: str) -> tuple[float, float, float]:
    if sp is None:
        raise ValueError(f"{what}: the volume's spacing is unknown; pass spacing=(si, sj, sk) in mm or affine=")
    return sp


def mask_identity(mask: Any) -> str | None:
    """A string that changes whenever a mask's voxels may (for cache keys): a
    :class:`~radgenome_hf.access.lazymasks.LazyMask`'s file identity, structure and source, a
    :class:`~radgenome_hf.access.lazymasks.MaskSet`'s two files. ``None`` for anything else (an array or an in-memory
    ``PackedMasks`` has no identity short of hashing its voxels) and for a packed file not written yet (a folder
    release packs a volume's masks on first use).

    >>> from radgenome_hf.access.lazymasks import LazyMask
    >>> mask_identity(LazyMask(None, None, "whole", (4, 4, 2))), mask_identity(None)
    ('whole:(4, 4, 2)', None)
    """
    from ..access.cache import source_identity
    from ..access.lazymasks import LazyMask, MaskSet

    try:
        if isinstance(mask, LazyMask):
            if mask.source == "whole" or mask.structure is None or mask.path is None:
                return f"whole:{mask.shape}"
            return f"mask:{source_identity(mask.path)}:{mask.source}:{mask.structure}"
        if isinstance(mask, MaskSet):
            return "masks:" + ":".join("-" if p is None else source_identity(p)
                                       for p in (mask.region_path, mask.anatomy_path))
    except OSError:
        return None
    return None


#: How preset outputs are compressed. They are read whole every epoch, so decode speed matters most: on a
#: 480x480x240 int16 CT-CLIP output LZ4 (clevel 9, shuffle) decodes in 75 ms against 227 ms for the prepared cache's
#: ZSTD-1 (one thread, load ~6), for 35 MB against 30 MB, and compresses in 0.47 s against 0.85 s.
OUTPUT_CODEC = ("LZ4", 9)


class OutputEntry:
    """Where a preset's output for one sample lives in the prepared cache: the main array under ``key`` (a one-shot
    frame, so a loader can decode it into its own buffers), small side arrays under ``f"{key}-{part}"``.

    ``fills`` maps each part (``""`` the main one) to the sample key it fills and how it comes back: ``"tensor"``
    (as stored), ``"array"`` (numpy), ``"tuple"`` (ints, e.g. a box), ``"ijk"`` / ``"ijk_bool"`` (a stored
    ``(1, k, j, i)`` tensor as the ``(i, j, k)`` array it was made from).
    """

    def __init__(self, cache: Any, key: str, fills: Mapping[str, tuple[Hashable, str]]) -> None:
        self.cache, self.key, self.fills = cache, key, dict(fills)

    def __repr__(self) -> str:
        return f"OutputEntry(key={self.key!r}, parts={sorted(self.fills)})"

    def _key(self, part: str) -> str:
        return f"{self.key}-{part}" if part else self.key

    @staticmethod
    def _restore(arr: np.ndarray, how: str) -> Any:
        import torch

        if how == "tuple":
            return tuple(int(v) for v in arr.reshape(-1))
        if how == "array":
            return arr
        if how in ("ijk", "ijk_bool"):
            a = arr[0].T
            return a.view(np.bool_) if how == "ijk_bool" else a
        return torch.from_numpy(arr)

    def load(self) -> dict | None:
        """The sample values of every part, or ``None`` unless every part is stored (a partial entry is a miss)."""
        out = {}
        for part, (key, how) in self.fills.items():
            arr = self.cache.get_array(self._key(part))
            if arr is None:
                return None
            out[key] = self._restore(arr, how)
        return out

    def readers(self) -> dict | None:
        """Like :meth:`load`, with the main part as a :class:`~radgenome_hf.access.cache.CacheReader` that a loader
        decodes into its own (reused) buffer; side parts are read now (a few bytes). ``None`` on a miss."""
        out = {}
        for part, (key, how) in self.fills.items():
            if not part and how == "tensor":
                if self.key not in self.cache:
                    return None
                out[key] = self.cache.reader(self.key)
                continue
            arr = self.cache.get_array(self._key(part))
            if arr is None:
                return None
            out[key] = self._restore(arr, how)
        return out

    def store(self, parts: Mapping[str, Any]) -> None:
        """Store the parts (arrays or tensors; :data:`OUTPUT_CODEC` frames), side parts first: a main part on disk
        means a complete entry. Written now, in the caller's (a loader thread's) time, so the next epoch finds every
        output (the volume's background writer drops a write while busy); a failed write warns once and is a later
        miss (:meth:`~radgenome_hf.access.cache.PreparedCache.store`). Compressed on the caller's thread alone: a
        loader's threads or workers are the parallelism (blosc2's own threads would only oversubscribe the cores)."""
        for part in sorted(parts, key=lambda p: p == ""):
            value = parts[part]
            arr = value.numpy() if hasattr(value, "numpy") else np.asarray(value)
            self.cache.store(self._key(part), np.ascontiguousarray(arr), layout="frame", codec=OUTPUT_CODEC, nthreads=1)


class PresetTransform(MapTransform):
    """The dict-transform base of the presets: MONAI's key handling plus the geometry lookup and the output cache
    they share.

    A preset takes one sample (a dict) or a datasets batch (a dict of lists, as ``ds.with_transform(preset)``
    passes), and gives back the same kind. A preset that caches its output names it ``cache_name`` and gives the
    entries of a sample (:meth:`_entries`); :meth:`cached_readers` then hands a loader the hits.
    """

    #: the name this preset's outputs are stored under (part of every key)
    cache_name = ""
    #: whether outputs are stored and read back (presets take ``cache=``)
    cache = False

    def _entries(self, data: Mapping) -> list[OutputEntry] | None:
        """The cache entries that hold every output of this sample, or ``None`` when some output cannot be cached
        (then a loader calls the transform)."""
        return None

    def cached_readers(self, data: Mapping) -> dict | None:
        """``{key: CacheReader or value}`` of a sample whose every output is already in the prepared cache (a loader
        then decodes the arrays into its own buffers instead of calling the transform), else ``None``."""
        entries = self._entries(data) if self.cache else None
        if not entries:
            return None
        out: dict = {}
        for entry in entries:
            got = entry.readers()
            if got is None:
                return None
            out.update(got)
        return out

    def _volume_entry(self, volume: Any, fills: Mapping[str, tuple[Hashable, str]], **params: Any) -> OutputEntry | None:
        """The entry of an output made from ``volume`` with ``params`` (every parameter the output depends on, the
        mask's identity included), or ``None`` when it cannot be cached (caching off, no prepared cache, an array)."""
        if not self._cacheable(volume) or ("mask" in params and params["mask"] is None):
            return None
        key = volume.derived_key(self.cache_name, **params)
        return None if key is None else OutputEntry(volume.prepared_cache, key, fills)

    def _cacheable(self, volume: Any) -> bool:
        """Whether outputs made from ``volume`` can be stored: caching on, a file-backed volume with a prepared cache."""
        return self.cache and callable(getattr(volume, "derived_key", None)) and \
            getattr(volume, "prepared_cache", None) is not None

    @staticmethod
    def _from_cache(entry: OutputEntry | None, d: dict) -> bool:
        """Fill ``d`` from ``entry`` when it is complete (True), else leave ``d`` alone (False)."""
        got = entry.load() if entry is not None else None
        if got is None:
            return False
        d.update(got)
        return True

    @staticmethod
    def _geometry_params(sp: Any, aff: Any) -> dict:
        """Geometry given from outside the volume (``spacing=``, ``<key>_spacing``/``_affine``), for a cache key."""
        if sp is not None:
            return {"spacing": [float(v) for v in sp]}
        if aff is not None:
            return {"affine": np.asarray(aff, np.float64).round(9).tolist()}
        return {}

    def __call__(self, data: Mapping) -> dict:
        if self._is_batch(data):  # a datasets batch (with_transform / set_transform / batched map)
            return self._per_row(data)
        return self._sample(dict(data))

    #: whether :meth:`_sample` takes ``alloc`` (writes its main outputs into buffers a loader hands it)
    fills_buffers = False

    def fill(self, data: Mapping, alloc: Any) -> dict:
        """Transform one sample like ``self(data)``, writing the outputs this preset can into buffers from
        ``alloc(key, shape, dtype)`` (a loader's reused ring, e.g. :class:`~radgenome_hf.training.CTClipd`'s images)
        instead of new tensors."""
        if self.fills_buffers and not self._is_batch(data):
            return self._sample(dict(data), alloc)  # type: ignore[call-arg]
        return self(data)

    def _sample(self, d: dict) -> dict:
        """Transform one sample (a copy of the caller's dict, free to modify)."""
        raise NotImplementedError

    def _present(self, data: Mapping, keys: Sequence[Hashable]) -> list[Hashable]:
        out = []
        for k in keys:
            if k in data:
                out.append(k)
            elif not self.allow_missing_keys:
                raise KeyError(f"{type(self).__name__}: key {k!r} not in the sample (keys: {sorted(map(str, data))})")
        return out

    def _is_batch(self, data: Mapping) -> bool:
        """Whether ``data`` is a datasets batch (``with_transform`` / ``set_transform`` / batched ``map``: column ->
        list of values) rather than one sample."""
        for k in self.keys:
            if k in data:
                return isinstance(data[k], (list, tuple))
        return False

    def _per_row(self, data: Mapping) -> dict:
        """Apply this transform to every row of a batch and give the batch back (column -> list)."""
        cols = [k for k, v in data.items() if isinstance(v, (list, tuple))]
        n = len(data[cols[0]]) if cols else 0
        rows = [self({k: (v[i] if k in cols else v) for k, v in data.items()}) for i in range(n)]
        return {k: [r[k] for r in rows] for k in (rows[0] if rows else data)}

    @staticmethod
    def _key_tuple(keys: Hashable | Sequence[Hashable] | None) -> tuple[Hashable, ...]:
        return () if keys in ((), None) else ensure_tuple(keys)

    @staticmethod
    def _geometry(data: Mapping, key: Hashable, spacing: Any) -> tuple[Any, Any]:
        sp = data.get(f"{key}_spacing", spacing) if isinstance(key, str) else spacing
        aff = data.get(f"{key}_affine") if isinstance(key, str) else None
        if sp is not None:
            aff = None
        return sp, aff
