"""The prepared cache: decoded volumes (and preprocessed tensors) stored once as chunked blosc2 files.

One file per array, keyed by the *identity of its source* (resolved path + size + mtime_ns, the content hash
of raw bytes, or an immutable Hub revision + path) plus a preset name and its parameters, so a changed source
is never served stale. An ``(i, j, k)`` Fortran-ordered volume is stored as its C-ordered ``(k, j, i)``
transpose (zero-copy both ways). Two layouts:

* ``"chunked"`` (default, ``<key>.b2nd``): a blosc2 NDArray chunked 64³, so a region crop decompresses only
  the chunks it touches (perf-anchors §4).
* ``"frame"`` (``<key>.b2f``): the whole array as blosc2 chunks of 16 MiB of input each, one after the other behind a
  4 KiB header, for preprocessed tensors that are always read whole. :meth:`PreparedCache.get_array` memory-maps it
  and decodes it with ``blosc2.decompress2(dst=out)`` calls straight into the caller's buffer, **with the GIL
  released**, so
  several loader threads really decode in parallel (perf-anchors §7/§10: 1.4–1.6x faster than NDArray
  slicing, no allocation). A crop of a frame decodes the whole array: use "chunked" for crops.

``get_array(key, out=buf)`` / ``crop(key, bbox, out=buf)`` decode into a preallocated buffer (no per-sample
allocation); :meth:`PreparedCache.reader` makes an item for
:class:`~radgenome_hf.training.ThreadedVolumeLoader` that decodes into the loader's reused ring buffers.
Writes go to a unique temporary name and are published with ``os.replace`` (safe with many processes
writing the same key); the total size is bounded, evicting the least recently used files. Whole-array
readers memory-map the file, so an eviction racing with a reader does not break it; crops read the touched
chunks with plain reads (faster cold and warm), and a crop racing with an eviction is a miss (``None``).
What the cache writes is checksummed (xxh3-64 per chunk of a ``.b2nd``, over header + payload of a ``.b2f``) and
verified on every read: a damaged entry is dropped and is a miss. Any other problem reading an entry is a miss
too, and :meth:`PreparedCache.store` (what :class:`~radgenome_hf.access.volume.Volume` writes with) warns once
instead of failing: a cache never fails a read, the caller decodes the source.
blosc2's NDArray slicing holds the GIL, so chunked reads do not overlap across threads; frame reads do.

>>> import numpy as np, tempfile
>>> cache = PreparedCache(tempfile.mkdtemp(), max_bytes=1 << 30)
>>> a = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
>>> key = cache.key_for(b"some file bytes", "hu")
>>> _ = cache.put_array(key, a)
>>> bool((cache.get_array(key) == a).all()), cache.get_array(key).flags.f_contiguous
(True, True)
>>> cache.crop(key, (0, 1, 1, 2, 3, 3)).tolist() == a[0:2, 1:3, 1:3].tolist()
True
>>> buf = np.empty((2, 3, 4), np.int16, order="F")
>>> cache.get_array(key, out=buf) is buf
True
>>> fkey = cache.key_for(b"other bytes", "ctclip")
>>> _ = cache.put_array(fkey, a.T, layout="frame")   # C-ordered (k, j, i) tensor, one-shot frame
>>> bool((cache.get_array(fkey) == a.T).all())
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from ..config import cache_root, prepared_cache_max_bytes
from ..errors import CorruptVolumeError
from ..io.atomic import TMP_MARK, atomic_path

__all__ = ["BoundedFolder", "PreparedCache", "CacheReader", "source_identity", "read_file_into"]

_SUFFIX = ".b2nd"
_FRAME_SUFFIX = ".b2f"
_SUFFIXES = (_SUFFIX, _FRAME_SUFFIX)
_FRAME_MAGIC = b"RGHFB2F2"  # 2: the header carries a checksum (older frames read as corrupt: re-created)
_FRAME_HEADER = 4096  # the blosc2 chunk starts page-aligned
_FRAME_MAX = (1 << 31) - 1024  # frames are decoded whole; arrays of 2 GiB or more are stored "chunked" instead
# A frame's payload is blosc2 chunks of at most this many input bytes each. blosc2.compress2 returns a fresh bytes
# object sized for the whole input and then a copy cut to the compressed size: for a 110 MB preset output that is
# ~18k page faults per store in a loader thread. Pieces of 16 MiB come from the allocator's heap, reused store after
# store: epoch 1 of the README loop ran ~5 % faster (8 volumes, interleaved runs); reading takes one decompression
# context per piece, which cost epoch 2 ~3 % with 8 MiB pieces and ~1 % with 16 MiB.
_FRAME_PIECE = 16 << 20
_STALE_TMP_S = 3600.0
_WARNED: set[str] = set()  # cache folders whose read or write problems were already reported
_WARNED_LOCK = threading.Lock()
_HF_PINNED = re.compile(r"^hf://(datasets/|spaces/|models/)?[^/@]+/[^/@]+@[0-9a-f]{40}/")


def source_identity(source: str | os.PathLike | bytes) -> str:
    """A string that changes whenever the source's content may have changed.

    Local file: resolved path + size + mtime_ns + inode + ctime_ns (a rewrite that restores size and mtime still
    changes the ctime, which no user can set back; a replacement by rename changes the inode). Raw bytes: their
    BLAKE2 hash. ``hf://…@<40-hex sha>/path``: the URL itself (a pinned revision is immutable). Other URLs: the URL plus fsspec's ``ukey`` (a hash of the
    remote file's info: size, etag/blob id, …).
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        return "bytes:" + hashlib.blake2b(source, digest_size=20).hexdigest()
    text = os.fspath(source)
    if text.startswith("file://"):
        text = text[len("file://") :]
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", text):
        if _HF_PINNED.match(text):
            return "url:" + text
        import fsspec

        fs, path = fsspec.core.url_to_fs(text)
        return f"url:{text}:{fs.ukey(path)}"
    p = Path(text).expanduser().resolve()
    st = p.stat()
    return f"file:{p}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}"


# ----------------------------------------------------------------------------------------------------------
# decoding into a caller's buffer (shared by PreparedCache and ThreadedVolumeLoader)
# ----------------------------------------------------------------------------------------------------------
Alloc = Callable[[Sequence[int], Any, str], np.ndarray]  # alloc(shape, dtype, order) -> a (reused) buffer

_gil_released = False


def _release_gil() -> None:
    """Let blosc2 release the GIL in ``compress2``/``decompress2`` (a process-wide blosc2 switch, off by default):
    without it, decoding threads run one at a time."""
    global _gil_released
    if not _gil_released:
        import blosc2

        blosc2.set_releasegil(True)
        _gil_released = True


def _stored_view(out: np.ndarray, reverse: bool) -> np.ndarray | None:
    """The C-contiguous view of ``out`` in the stored (C) order, or None when ``out`` is not laid out that way."""
    v = out.T if reverse else out
    return v if v.flags.c_contiguous and v.flags.writeable else None


class _OutMismatch(ValueError):
    """The caller's ``out=`` buffer does not fit: the caller's error, never a cache problem."""


def _check_out(out: np.ndarray, shape: Sequence[int], dtype: np.dtype, where: str) -> None:
    if tuple(out.shape) != tuple(shape) or out.dtype != dtype:
        raise _OutMismatch(
            f"{where}: out= has shape {tuple(out.shape)} {out.dtype}, the array is {tuple(shape)} {dtype}; "
            f"pass a buffer of that shape and dtype (or out=None)"
        )


# Checksums: xxh3-64 (``xxhash`` comes with ``datasets``) over what the cache writes. It hashes ~14 GB/s here
# against ~2 GB/s for zlib.crc32, and only the compressed bytes a read decodes are hashed, so verifying costs
# a fraction of decoding them. A mismatch is a CorruptVolumeError: the cache drops the entry (a miss).
def _xxh3(*parts: Any) -> bytes:
    import xxhash

    h = xxhash.xxh3_64()
    for part in parts:
        h.update(part)
    return h.digest()


def _frame_prefix(head: bytes, *payload: Any) -> bytes:
    """magic | len(json) (4 bytes) | xxh3 of json + payload (8 bytes) | json: every byte that matters is hashed."""
    return _FRAME_MAGIC + len(head).to_bytes(4, "little") + _xxh3(head, *payload) + head


def _frame_header(path: Path, f) -> tuple[dict, bytes, bytes]:
    """(meta, its JSON bytes, the stored checksum) of a frame file."""
    head = f.read(_FRAME_HEADER)
    m = len(_FRAME_MAGIC)
    if len(head) < _FRAME_HEADER or not head.startswith(_FRAME_MAGIC):
        raise CorruptVolumeError(path, "not a radgenome blosc2 frame (bad header); delete it, the cache re-creates it")
    n = int.from_bytes(head[m : m + 4], "little")
    digest, text = head[m + 4 : m + 12], head[m + 12 : m + 12 + n]
    try:
        meta = json.loads(text)
        if n > _FRAME_HEADER - m - 12 or not isinstance(meta, dict):
            raise ValueError(f"header length {n}")
    except ValueError as exc:
        raise CorruptVolumeError(path, f"blosc2 frame header is unreadable ({exc}); the cache re-creates it") from exc
    return meta, text, digest


def _read_frame(path: Path, alloc: Alloc, nthreads: int | None) -> np.ndarray:
    """Decode a frame file into ``alloc(shape, dtype, order)``: one GIL-free ``blosc2.decompress2`` per piece."""
    import mmap

    import blosc2

    _release_gil()
    with open(path, "rb") as f:
        meta, text, digest = _frame_header(path, f)
        offset = _FRAME_HEADER
        try:
            stored = tuple(int(x) for x in meta["shape"])
            reverse = bool(meta["reversed"])
            dtype = np.dtype(meta["dtype"])
        except (KeyError, TypeError, ValueError) as exc:
            raise CorruptVolumeError(path, f"blosc2 frame header lacks {exc}; the cache re-creates it") from exc
        if os.fstat(f.fileno()).st_size <= offset:
            raise CorruptVolumeError(path, "blosc2 frame has no data (truncated); the cache re-creates it")
        out = alloc(stored[::-1] if reverse else stored, dtype, "F" if reverse else "C")
        dst = _stored_view(out, reverse)
        tmp = None
        if dst is None:  # caller's buffer has another layout: decode aside, then one copy
            tmp = np.empty(stored, dtype)
            dst = tmp
        if dst.nbytes == 0:
            return out
        flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
        mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        try:
            src = memoryview(mm)[offset:]
            try:
                if _xxh3(text, src) != digest:
                    raise CorruptVolumeError(path, "checksum mismatch (the file changed on disk); the cache drops "
                                                   "it and decodes the source again")
                dparams = blosc2.DParams(nthreads=nthreads) if nthreads else None
                flat = dst.reshape(-1).view(np.uint8)
                sizes = [int(n) for n in meta.get("pieces", [len(src)])]  # frames before pieces: one chunk
                step = int(meta.get("piece_nbytes", flat.nbytes))
                if sum(sizes) != len(src) or step <= 0 or len(sizes) != max(1, -(-flat.nbytes // step)):
                    raise ValueError(f"{len(sizes)} pieces of {sum(sizes)} bytes for {len(src)} bytes of payload")
                at = 0
                for i, size in enumerate(sizes):
                    blosc2.decompress2(src[at : at + size], dst=flat[i * step : (i + 1) * step],
                                       **({"dparams": dparams} if dparams else {}))
                    at += size
            finally:
                src.release()
        except (ValueError, RuntimeError) as exc:
            if isinstance(exc, CorruptVolumeError):
                raise
            raise CorruptVolumeError(path, f"blosc2 frame does not decode ({exc}); delete it, the cache re-creates it") from exc
        finally:
            mm.close()
    if tmp is not None:
        np.copyto(out, tmp.T if reverse else tmp)
    return out


def _b2nd_meta(b2) -> dict:
    try:
        meta = b2.schunk.meta["radgenome"]
    except Exception:  # noqa: BLE001 - no such meta (a plain blosc2 file)
        return {}
    return meta if isinstance(meta, dict) else {}


def _b2nd_reversed(b2) -> bool:
    return bool(_b2nd_meta(b2).get("reversed", False))


def _n_chunks(shape: Sequence[int], chunks: Sequence[int]) -> int:
    return int(np.prod([-(-int(s) // int(c)) for s, c in zip(shape, chunks)])) if len(shape) else 1


def _chunk_index(b2, path: Path) -> bytes | None:
    """Where each chunk of a just-written ``.b2nd`` file lies: int64 offsets then int32 sizes. Chunks of a blosc2
    frame are stored one after another; each is checked against the file's bytes at the expected place, so a layout
    this does not expect gives ``None`` (no index), never a wrong crop: the index only drives read-ahead hints
    (:func:`_prefetch_chunks`)."""
    import mmap

    n = b2.schunk.nchunks
    offsets = np.empty(n, np.int64)
    sizes = np.empty(n, np.int32)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
        view = memoryview(data)
        try:
            pos = 0
            for i in range(n):
                chunk = b2.schunk.get_chunk(i)
                if i == 0:  # the frame header's length is blosc2's business: find the first chunk
                    pos = data.find(chunk)
                if pos < 0 or view[pos : pos + len(chunk)] != chunk:
                    return None
                offsets[i], sizes[i], pos = pos, len(chunk), pos + len(chunk)
        finally:
            view.release()
    return offsets.tobytes() + sizes.tobytes()


def _touched_chunks(shape: Sequence[int], chunks: Sequence[int], start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
    """Sorted ids (C order over the chunk grid) of the chunks that the box ``start..stop`` touches."""
    grid = [-(-int(s) // int(c)) for s, c in zip(shape, chunks)]
    axes = [range(lo // int(c), (hi - 1) // int(c) + 1) for lo, hi, c in zip(start, stop, chunks)]
    return np.sort(np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), grid).ravel())


_B2ND_SUM = "radgenome_xxh3"  # vlmeta key: xxh3 of the layout, then one xxh3 per chunk


def _b2nd_layout(b2, meta: dict) -> bytes:
    """What a read's result relies on besides the chunks: shape, chunk and block shape, dtype, axis order. (The
    chunk index is left out: it only steers read-ahead hints, never which bytes are decoded.)"""
    return json.dumps([list(b2.shape), list(b2.chunks), list(b2.blocks), np.dtype(b2.dtype).str,
                       bool(meta.get("reversed", False))]).encode()


def _b2nd_sums(b2, meta: dict) -> bytes:
    return _xxh3(_b2nd_layout(b2, meta)) + b"".join(_xxh3(b2.schunk.get_chunk(i)) for i in range(b2.schunk.nchunks))


def _verify_b2nd(b2, meta: dict, where: str, start: Sequence[int], stop: Sequence[int]) -> None:
    """Check the layout and every chunk the box touches against the checksums written with them. The chunks are
    taken as blosc2 locates them (its own offsets), so a flipped offset is caught too."""
    try:
        sums = bytes(b2.schunk.vlmeta[_B2ND_SUM])
    except Exception:  # noqa: BLE001 - blosc2 raises several types for a missing or unreadable vlmeta
        raise CorruptVolumeError(where, "no checksums (written by an older version, or damaged); the cache "
                                        "re-creates it") from None
    n = b2.schunk.nchunks
    if len(sums) != 8 * (n + 1) or _xxh3(_b2nd_layout(b2, meta)) != sums[:8]:
        raise CorruptVolumeError(where, "layout checksum mismatch (the file changed on disk); the cache drops it")
    ids = _touched_chunks(b2.shape, b2.chunks, start, stop) if len(start) else np.arange(n)
    for i in ids:
        i = int(i)
        if i >= n or _xxh3(b2.schunk.get_chunk(i)) != sums[8 * (i + 1) : 8 * (i + 2)]:
            raise CorruptVolumeError(where, f"checksum mismatch in chunk {i} (the file changed on disk); the "
                                            "cache drops it and decodes the source again")


def _prefetch_chunks(b2, meta: dict, path: str, start: Sequence[int], stop: Sequence[int]) -> None:
    """Ask the kernel (``POSIX_FADV_WILLNEED``) for exactly the chunks a crop touches, all at once, before blosc2
    reads them one block at a time. Cold crops then read ~2.3 MB instead of the ~9.4 MB the kernel's sequential
    read-ahead pulled in for blosc2's small reads, in about half the time; warm, it costs ~0.05 ms."""
    index = meta.get("chunk_index")
    if not index or not hasattr(os, "posix_fadvise"):
        return
    n = _n_chunks(b2.shape, b2.chunks)
    if len(index) != 12 * n:
        return
    offsets = np.frombuffer(index, np.int64, n)
    sizes = np.frombuffer(index, np.int32, n, offset=8 * n)
    spans: list[list[int]] = []
    for i in _touched_chunks(b2.shape, b2.chunks, start, stop):
        off, size = int(offsets[i]), int(sizes[i])
        if off < 0 or size <= 0:  # an unfilled entry (size 0 would mean "to the end of the file")
            continue
        if spans and spans[-1][0] + spans[-1][1] == off:
            spans[-1][1] += size
        else:
            spans.append([off, size])
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        for off, size in spans:
            os.posix_fadvise(fd, off, size, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def _clip_bbox(bbox: Sequence[int], shape: Sequence[int], where: str) -> tuple[list[int], list[int]]:
    nd = len(shape)
    b = [int(x) for x in bbox]
    if len(b) != 2 * nd:
        raise ValueError(f"{where}: bbox {tuple(bbox)!r} needs {2 * nd} numbers for a {nd}-D array")
    lo = [min(max(b[a], 0), shape[a]) for a in range(nd)]
    hi = [min(max(b[a + nd], lo[a]), shape[a]) for a in range(nd)]
    return lo, hi


def _read_b2nd(b2, alloc: Alloc, bbox: Sequence[int] | None, where: str, verify: bool | None = None) -> np.ndarray:
    """``b2[bbox]`` (bbox in the put array's axes) decoded by blosc2 straight into ``alloc(...)``: only the
    chunks (and blocks) the box touches are decompressed, after their checksums are verified (``verify=None``:
    when the file has this cache's metalayer; ``True``: always, a file without checksums is corrupt)."""
    meta = _b2nd_meta(b2)
    reverse = bool(meta.get("reversed", False))
    stored = tuple(int(s) for s in b2.shape)
    put_shape = stored[::-1] if reverse else stored
    if bbox is None:
        lo, hi = [0] * len(stored), list(put_shape)
    else:
        lo, hi = _clip_bbox(bbox, put_shape, where)
    shape = tuple(h - l for l, h in zip(lo, hi))
    dtype = np.dtype(b2.dtype)
    out = alloc(shape, dtype, "F" if reverse else "C")
    if out.size == 0:
        return out
    start, stop = (tuple(lo[::-1]), tuple(hi[::-1])) if reverse else (tuple(lo), tuple(hi))
    if bbox is not None:
        _prefetch_chunks(b2, meta, where, start, stop)
    if verify or (verify is None and meta):  # plain blosc2 files have no checksums to verify
        _verify_b2nd(b2, meta, where, start, stop)
    dst = _stored_view(out, reverse)
    if dst is None:
        tmp = np.empty(tuple(h - l for l, h in zip(start, stop)), dtype)
        b2.get_slice_numpy(tmp, (start, stop))
        np.copyto(out, tmp.T if reverse else tmp)
    else:
        b2.get_slice_numpy(dst, (start, stop))
    return out


def _fresh(shape: Sequence[int], dtype: Any, order: str = "C") -> np.ndarray:
    return np.empty(tuple(shape), np.dtype(dtype), order="F" if order == "F" else "C")


def _into(out: np.ndarray | None, where: str) -> Alloc:
    if out is None:
        return _fresh

    def alloc(shape: Sequence[int], dtype: Any, order: str = "C") -> np.ndarray:
        _check_out(out, shape, np.dtype(dtype), where)
        return out

    return alloc


def read_file_into(
    path: str | os.PathLike,
    alloc: Alloc = _fresh,
    bbox: Sequence[int] | None = None,
    *,
    nthreads: int | None = 1,
    verify: bool | None = None,
) -> np.ndarray:
    """Decode a cache file (``.b2f`` frame or ``.b2nd`` NDArray; any blosc2 NDArray file) or a box of it into
    ``alloc(shape, dtype, order)`` and return that buffer. ``bbox`` = half-open ``(start..., stop...)`` in the
    put array's axes, clipped to the array. ``nthreads``: blosc2 decode threads (1 inside loader threads).
    Checksums are verified (frames always; ``.b2nd`` files when they carry this cache's metalayer, or always with
    ``verify=True``): a mismatch raises :class:`~radgenome_hf.errors.CorruptVolumeError` naming the file.

    >>> import numpy as np, tempfile
    >>> c = PreparedCache(tempfile.mkdtemp())
    >>> p = c.put_array(c.key_for(b"x"), np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> read_file_into(p, bbox=(0, 1, 2, 3)).tolist()
    [[1, 2], [4, 5]]
    """
    p = Path(path)
    if p.name.endswith(_FRAME_SUFFIX):
        if bbox is None:
            return _read_frame(p, alloc, nthreads)
        full = _read_frame(p, _fresh, nthreads)
        lo, hi = _clip_bbox(bbox, full.shape, str(p))
        part = full[tuple(slice(l, h) for l, h in zip(lo, hi))]
        out = alloc(part.shape, part.dtype, "F" if (part.flags.f_contiguous and not part.flags.c_contiguous) else "C")
        np.copyto(out, part)
        return out
    import blosc2

    dparams = blosc2.DParams(nthreads=nthreads) if nthreads else None
    # whole arrays: memory-mapped; crops: plain reads of the touched chunks (one pread each), which measured
    # 1.2-1.5x faster than page-faulting them in through a map, cold or warm
    kw: dict[str, Any] = {"mmap_mode": "r"} if bbox is None else {}
    b2 = blosc2.open(str(p), mode="r", **kw, **({"dparams": dparams} if dparams else {}))
    return _read_b2nd(b2, alloc, bbox, str(p), verify)


class CacheReader:
    """One cached array, or a box of it, to be decoded into a caller's buffer: an item (or a dict value) for
    :class:`~radgenome_hf.training.ThreadedVolumeLoader`, which calls ``read_into(alloc, name)`` with its ring's
    allocator, so every sample lands in a reused buffer. Made by :meth:`PreparedCache.reader`.

    >>> import numpy as np, tempfile
    >>> c = PreparedCache(tempfile.mkdtemp())
    >>> key = c.key_for(b"x")
    >>> _ = c.put_array(key, np.arange(6, dtype=np.uint8).reshape(2, 3))
    >>> c.reader(key, bbox=(1, 0, 2, 2))().tolist()
    [[3, 4]]
    """

    def __init__(self, cache: "PreparedCache", key: str, bbox: Sequence[int] | None = None, nthreads: int | None = 1):
        self.cache, self.key, self.nthreads = cache, key, nthreads
        self.bbox = None if bbox is None else tuple(int(x) for x in bbox)

    def __repr__(self) -> str:
        return f"CacheReader(key={self.key!r}, bbox={self.bbox})"

    def read_into(self, alloc: Callable[..., np.ndarray], name: str = "image") -> np.ndarray:
        """Decode into ``alloc(name, shape, dtype, order)`` (the loader's signature); raises on a cache miss."""
        path = self.cache.file_for(self.key)
        if path is None:
            from ..errors import MissingVolumeError

            raise MissingVolumeError(
                f"{self.cache.path_for(self.key)}: key {self.key} is not in the prepared cache (evicted?); "
                "re-create it with put_array"
            )
        self.cache._touch(path)
        return read_file_into(path, lambda shape, dtype, order="C": alloc(name, shape, dtype, order), self.bbox,
                              nthreads=self.nthreads, verify=True)

    def __call__(self) -> np.ndarray:
        return self.read_into(lambda name, shape, dtype, order="C": _fresh(shape, dtype, order))



class BoundedFolder:
    """Files under ``root/<2 characters>/`` kept under ``max_bytes``, the least recently used deleted first: the
    size bound shared by :class:`PreparedCache` and :class:`~radgenome_hf.access.chunkcache.ChunkCache`.

    Subclasses name their files' ``suffixes``; every write calls :meth:`_added` with the bytes it added, and
    every read :meth:`_touch` on the file it used (the mtime is the LRU clock: atime is often disabled).
    Temporary files of writers that were killed (:data:`~radgenome_hf.io.atomic.TMP_MARK`, older than an
    hour) are swept by the scan. Safe with many processes: a file deleted by another one is skipped.
    """

    suffixes: tuple[str, ...] = ()

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._approx_total: int | None = None
        self._last_scan = 0.0

    @staticmethod
    def _touch(path: Path) -> None:
        try:
            os.utime(path)  # access time for LRU eviction (atime is often disabled by mount options)
        except OSError:
            pass

    def _added(self, size: int) -> None:
        """Count ``size`` new bytes and evict when the bound may be exceeded."""
        with self._lock:
            if self._approx_total is not None:
                self._approx_total += size
        self._maybe_evict()

    # -- size bound -------------------------------------------------------------------------------
    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        now = time.time()
        for sub in os.scandir(self.root):
            if not sub.is_dir():
                continue
            try:
                entries = list(os.scandir(sub.path))
            except FileNotFoundError:  # removed meanwhile
                continue
            for e in entries:
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if TMP_MARK in e.name:
                    if now - st.st_mtime > _STALE_TMP_S:  # left by a crashed writer
                        Path(e.path).unlink(missing_ok=True)
                    continue
                if e.name.endswith(self.suffixes):
                    out.append((st.st_mtime, st.st_size, Path(e.path)))
        return out

    def size_bytes(self) -> int:
        """Bytes currently held (scans the folder)."""
        return sum(s for _, s, _ in self._files())

    def _maybe_evict(self) -> None:
        with self._lock:
            stale = self._approx_total is None or time.monotonic() - self._last_scan > 30
            if not stale and self._approx_total <= self.max_bytes:  # type: ignore[operator]
                return
        self.evict()

    def evict(self, target_bytes: int | None = None) -> int:
        """Delete least recently used files until at most ``target_bytes`` (default ``max_bytes``) remain.

        Returns the bytes freed. Safe with concurrent readers: a reader that opened (mapped) a file keeps it.
        """
        target = self.max_bytes if target_bytes is None else int(target_bytes)
        files = sorted(self._files())
        total = sum(s for _, s, _ in files)
        freed = 0
        for _, size, path in files:
            if total <= target:
                break
            try:
                path.unlink()
                freed += size
            except FileNotFoundError:  # another process evicted it first
                pass
            total -= size
        with self._lock:
            self._approx_total = total
            self._last_scan = time.monotonic()
        return freed

    def clear(self) -> None:
        """Delete every file."""
        self.evict(0)


class PreparedCache(BoundedFolder):
    """A bounded, process-safe store of decoded arrays (one blosc2 NDArray file per array).

    Args:
        root: folder (default :func:`radgenome_hf.config.cache_root`, i.e. ``$RADGENOME_CACHE``).
        max_bytes: size bound (default ``$RADGENOME_CACHE_MAX_BYTES`` or 200 GiB); least recently used files are
                evicted after a write exceeds it.
        codec / clevel / chunks / blocks: blosc2 settings. Default zstd-1 + shuffle (no shuffle for 1-byte types:
            it makes uint8 label maps decode 3.5x slower for no size gain), 64³ chunks, 16×32×32 blocks (in the
            stored (k, j, i) order): in ``benchmarks/bench_access.py --realistic`` zstd-1 wrote 2-3x faster than
            zstd-5 for 1% more bytes; 16-slice blocks decode less of each touched chunk for a 64-slice crop
            (CT+label crop 3.8 vs 6.2 ms warm in one run, CT crop 3.80 vs 3.87 ms in another: within noise) for
            0.4% more bytes; LZ4 reads faster but is 28% larger.
        layout: ``"chunked"`` (default; crops read only the chunks they touch) or ``"frame"`` (one-shot, GIL-free
            decode of whole preprocessed tensors into a reused buffer); ``put_array(..., layout=)`` overrides it.
        nthreads: blosc2 threads for writes and whole-array reads (default: blosc2's, all cores); crops and
            :meth:`reader` items decode with 1 thread.
    """

    suffixes = _SUFFIXES

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_bytes: int | None = None,
        *,
        codec: str = "ZSTD",
        clevel: int = 1,
        chunks: Sequence[int] = (64, 64, 64),
        blocks: Sequence[int] = (16, 32, 32),
        nthreads: int | None = None,
        layout: str = "chunked",
    ) -> None:
        if layout not in ("chunked", "frame"):
            raise ValueError(f"layout must be 'chunked' or 'frame', got {layout!r}")
        self.layout = layout
        super().__init__(Path(root).expanduser() if root is not None else cache_root(),
                         prepared_cache_max_bytes() if max_bytes is None else max_bytes)
        self.codec = codec.upper()
        self.clevel = int(clevel)
        self.chunks = tuple(int(c) for c in chunks)
        self.blocks = tuple(int(b) for b in blocks)
        self.nthreads = nthreads

    def __repr__(self) -> str:
        return f"PreparedCache(root={str(self.root)!r}, max_bytes={self.max_bytes}, codec={self.codec}-{self.clevel}, layout={self.layout!r})"

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def key_for(source: str | os.PathLike | bytes, preset: str = "array", **params: Any) -> str:
        """Cache key of ``(source identity, preset name, params)``: a 40-hex string."""
        ident = source_identity(source)
        blob = json.dumps([ident, preset, params], sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()

    def path_for(self, key: str) -> Path:
        if not re.fullmatch(r"[0-9A-Za-z_-]{8,128}", key):
            raise ValueError(f"cache key {key!r} must be 8-128 characters of [0-9A-Za-z_-] (use key_for)")
        return self.root / key[:2] / f"{key}{_SUFFIX}"

    def _frame_path(self, key: str) -> Path:
        return self.path_for(key).with_suffix(_FRAME_SUFFIX)

    def file_for(self, key: str) -> Path | None:
        """The file holding ``key`` (``.b2f`` frame or ``.b2nd`` chunked), or ``None`` on a miss."""
        for p in (self._frame_path(key), self.path_for(key)):
            if p.is_file():
                return p
        return None

    def __contains__(self, key: str) -> bool:
        return self.file_for(key) is not None

    # -- read -------------------------------------------------------------------------------------
    def _open(self, key: str, nthreads: int | None = None, mmap: bool = True):
        """(blosc2 NDArray opened read-only, memory-mapped unless ``mmap=False``, path) of a chunked entry;
        (None, path) on a miss."""
        import blosc2

        path = self.path_for(key)
        nt = nthreads if nthreads is not None else self.nthreads
        try:
            arr = blosc2.open(str(path), mode="r", **({"mmap_mode": "r"} if mmap else {}),
                              **({"dparams": blosc2.DParams(nthreads=nt)} if nt else {}))
        except FileNotFoundError:
            return None, path
        except Exception:  # noqa: BLE001 - unreadable (damaged on disk): drop it, treat as a miss
            path.unlink(missing_ok=True)
            return None, path
        self._touch(path)
        return arr, path

    def _read(self, key: str, out: np.ndarray | None, bbox: Sequence[int] | None, nthreads: int | None):
        fpath = self._frame_path(key)
        where = str(fpath)
        try:
            got = read_file_into(fpath, _into(out, where), bbox, nthreads=nthreads)
        except FileNotFoundError:
            pass
        except CorruptVolumeError:  # unreadable (should not happen with atomic writes): drop it, a miss
            fpath.unlink(missing_ok=True)
            return None
        else:
            self._touch(fpath)
            return got
        b2, path = self._open(key, nthreads, mmap=bbox is None)
        if b2 is None:
            return None
        try:
            return _read_b2nd(b2, _into(out, str(path)), bbox, str(path), verify=True)
        except CorruptVolumeError:
            path.unlink(missing_ok=True)
            return None

    def _read_or_miss(self, key: str, out: np.ndarray | None, bbox: Sequence[int] | None,
                      nthreads: int | None) -> np.ndarray | None:
        """A cache problem of any kind (a racing eviction, a damaged file, an I/O error) is a miss, so the caller
        decodes the source; only a caller's wrong ``out=`` propagates."""
        try:
            return self._read(key, out, bbox, nthreads)
        except _OutMismatch:
            raise
        except Exception as exc:  # noqa: BLE001 - the rule: a cache never fails a read
            self._warn_once(f"reading {key}", exc)
            return None

    def _warn_once(self, what: str, exc: BaseException) -> None:
        import warnings

        where = str(self.root)
        with _WARNED_LOCK:
            if where in _WARNED:
                return
            _WARNED.add(where)
        warnings.warn(f"prepared cache {where}: {what} failed ({type(exc).__name__}: {exc}); the volume is decoded "
                      "from its source instead (warned once per cache folder)", RuntimeWarning, stacklevel=4)

    def get_array(self, key: str, out: np.ndarray | None = None) -> np.ndarray | None:
        """The stored array (same shape and memory order as put), or ``None`` on a miss.

        ``out``: a preallocated buffer of the array's shape and dtype to decode into (returned). Decoding is
        copy-free when its memory order is the put array's (F for a put F-ordered volume, else C); any other
        layout costs one extra copy. A frame entry decodes with the GIL released.
        """
        return self._read_or_miss(key, out, None, self.nthreads)

    def crop(self, key: str, bbox: Sequence[int], out: np.ndarray | None = None) -> np.ndarray | None:
        """``array[bbox]`` (half-open ``(start..., stop...)`` in the put array's axes, clipped to the array like
        numpy slicing); a chunked entry decodes only the chunks it touches, single-threaded. ``out``: a buffer of
        the crop's shape and dtype to decode into (returned). ``None`` on a miss."""
        return self._read_or_miss(key, out, tuple(bbox), 1)

    def reader(self, key: str, bbox: Sequence[int] | None = None, nthreads: int | None = 1) -> CacheReader:
        """An item for :class:`~radgenome_hf.training.ThreadedVolumeLoader` that decodes ``key`` (or ``bbox`` of it)
        straight into the loader's reused ring buffers, e.g.
        ``ThreadedVolumeLoader([{"image": cache.reader(k_ct), "label": cache.reader(k_seg)}, ...])``."""
        return CacheReader(self, key, bbox, nthreads)

    # -- write ------------------------------------------------------------------------------------
    def put_array(self, key: str, array: np.ndarray, *, layout: str | None = None,
                  codec: tuple[str, int] | None = None, nthreads: int | None = None) -> Path:
        """Store an array atomically; returns its file. A Fortran-ordered array is stored as its C-ordered
        transpose (no copy). ``layout`` (default: the cache's) is ``"chunked"`` (``.b2nd``) or ``"frame"``
        (``.b2f``; arrays of 2 GiB or more fall back to chunked). ``codec``: ``(name, clevel)`` for this entry
        instead of the cache's (e.g. ``("LZ4", 9)`` for what is decoded whole every epoch; any entry reads back
        whatever its codec). ``nthreads``: blosc2 threads for this write instead of the cache's (1 in a loader's
        threads or workers, which are the parallelism already). Any older entry of the other layout is removed."""
        import blosc2

        codec_name, clevel = (self.codec, self.clevel) if codec is None else (codec[0].upper(), int(codec[1]))
        layout = layout or self.layout
        if layout not in ("chunked", "frame"):
            raise ValueError(f"layout must be 'chunked' or 'frame', got {layout!r}")
        arr = np.asanyarray(array)
        reverse = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
        data = arr.T if reverse else np.ascontiguousarray(arr)
        if layout == "frame" and data.nbytes >= _FRAME_MAX:
            layout = "chunked"
        final = self._frame_path(key) if layout == "frame" else self.path_for(key)
        other = self.path_for(key) if layout == "frame" else self._frame_path(key)
        cparams = blosc2.CParams(
            codec=getattr(blosc2.Codec, codec_name),
            clevel=clevel,
            # byte shuffle only helps multi-byte types; on uint8 label maps it costs 3.5x in decode time
            filters=[blosc2.Filter.SHUFFLE if data.dtype.itemsize > 1 else blosc2.Filter.NOFILTER],
            typesize=data.dtype.itemsize,
            **({"nthreads": nthreads or self.nthreads} if nthreads or self.nthreads else {}),
        )
        with atomic_path(final) as tmp:
            if layout == "frame":
                _release_gil()
                flat = data.reshape(-1) if data.size else np.zeros(1, data.dtype)
                step = max(1, _FRAME_PIECE // flat.itemsize)
                pieces = [blosc2.compress2(flat[i : i + step], cparams=cparams) for i in range(0, flat.size, step)]
                head = json.dumps({"shape": list(data.shape), "dtype": data.dtype.str, "reversed": bool(reverse),
                                   "codec": codec_name, "clevel": clevel, "piece_nbytes": step * flat.itemsize,
                                   "pieces": [len(p) for p in pieces]}).encode()
                prefix = _frame_prefix(head, *pieces)
                if len(prefix) > _FRAME_HEADER:
                    raise ValueError(f"array of {data.ndim} dimensions does not fit the frame header; use layout='chunked'")
                with open(tmp, "wb") as f:
                    f.write(prefix.ljust(_FRAME_HEADER, b"\0"))
                    for piece in pieces:
                        f.write(piece)
            else:
                kwargs: dict[str, Any] = {}
                meta: dict[str, Any] = {"reversed": bool(reverse), "chunk_index": b""}
                if data.ndim == len(self.chunks):
                    kwargs["chunks"] = tuple(min(c, s) or 1 for c, s in zip(self.chunks, data.shape))
                    kwargs["blocks"] = tuple(min(b, c) for b, c in zip(self.blocks, kwargs["chunks"]))
                    # fixed-size placeholder: a metalayer can be rewritten in place only at its original size
                    meta["chunk_index"] = bytes(12 * _n_chunks(data.shape, kwargs["chunks"]))
                b2 = blosc2.asarray(data, urlpath=str(tmp), mode="w", cparams=cparams, meta={"radgenome": meta}, **kwargs)
                if meta["chunk_index"] and b2.schunk.nchunks * 12 == len(meta["chunk_index"]):
                    index = _chunk_index(b2, tmp)
                    if index is not None:  # else the placeholder of zeros stays: no hints for this file
                        meta = {**meta, "chunk_index": index}
                        b2.schunk.meta["radgenome"] = meta
                b2.schunk.vlmeta[_B2ND_SUM] = _b2nd_sums(b2, meta)
                del b2
            size = tmp.stat().st_size  # before the rename: another process may evict the file right after it
        other.unlink(missing_ok=True)  # a key lives in one layout
        self._added(size)
        return final

    def store(self, key: str, array: np.ndarray, *, layout: str | None = None,
              codec: tuple[str, int] | None = None, nthreads: int | None = None) -> Path | None:
        """:meth:`put_array` for readers: a failed write (disk full, no permission, the folder deleted meanwhile,
        an eviction racing it) is not the reader's problem. It warns once per cache folder and returns ``None``.

        >>> import numpy as np, tempfile, pathlib
        >>> root = pathlib.Path(tempfile.mkdtemp()) / "ro"
        >>> _ = root.write_text("a file where the cache folder should be")
        >>> PreparedCache(root).store(PreparedCache.key_for(b"x"), np.zeros(3)) is None
        True
        """
        try:
            return self.put_array(key, array, layout=layout, codec=codec, nthreads=nthreads)
        except Exception as exc:  # noqa: BLE001 - the rule: a cache never fails a read
            self._warn_once(f"storing {key}", exc)
            return None

    def get_or_create(
        self, source: str | os.PathLike | bytes, producer: Callable[[], np.ndarray], preset: str = "array", **params: Any
    ) -> np.ndarray:
        """Read ``(source, preset, params)`` from the cache, or call ``producer()`` once and store its result."""
        key = self.key_for(source, preset, **params)
        got = self.get_array(key)
        if got is not None:
            return got
        arr = producer()
        self.store(key, arr)
        return arr
