"""Chunked volumes of the packed release: zarr v3, one shard per volume, read locally or by HTTP range requests.

A volume ``<name>.zarr/`` is a standard zarr v3 array (so zarr-python, tensorstore, neuroglancer, napari… open
it), written with zarr-python:

* ``zarr.json``: shape ``(K, J, I)``, i.e. the volume's ``(i, j, k)`` transposed and stored C-ordered (the
  Fortran-ordered ``(i, j, k)`` array of nibabel, with no transposing copy); the HU data type (int16 where the
  rescaled values fit, else float32); the ``sharding_indexed`` codec with one shard holding the whole volume, cut
  into inner chunks of :data:`CHUNKS` (32³) voxels, each ``bytes`` (little endian) + ``blosc`` (zstd-5, byte
  shuffle); the shard index (offset, length of every inner chunk; crc32c) at the end of the shard; the fill
  value (every chunk is stored all the same; the reader also reads files whose constant chunks are absent, as other
  zarr writers make them); ``dimension_names`` ``["k", "j", "i"]``; and
  ``attributes["radgenome"]``: the ``affine`` (voxel ``(i, j, k)`` -> mm, nibabel's), ``spacing``,
  ``orientation``, the ``rescale`` already applied to the stored values (they are HU), ``source`` (the file it
  was converted from) and ``name``.
* ``c/0/0/0``: the shard.

:class:`ChunkedVolumeFile` reads it with the same narrow interface as :class:`~radgenome_hf.io.nifti.NiftiFile`
(``header``, ``shape``, ``affine``, ``read_raw``, ``read_raw_crop``…): ``zarr.json`` and the shard index once,
then only the inner chunks a crop touches, decoded with blosc2 (zarr's blosc codec writes blosc1 frames, which
blosc2 reads) straight into the output. A local folder is read with ``pread``; an ``hf://`` URL with range
requests on its pinned commit (:func:`radgenome_hf.io.hub.read_range`): adjacent chunks in one request, requests
in parallel, and a ``chunk_store`` (the local chunk cache of :mod:`radgenome_hf.access.chunkcache`) consulted
first and filled after. zarr-python reads these files too, but a local 96×96×64 crop of a 512×512×300 volume cost
it 51 ms warm against 10 ms here (``benchmarks/bench_remote.py --formats``), and over ``HfFileSystem`` it fetches a
5 MiB read-ahead block per chunk unless told ``block_size=1``.

>>> import numpy as np, tempfile, os
>>> vol = np.asfortranarray(np.arange(40 * 36 * 34, dtype=np.int16).reshape(40, 36, 34) % 2000 - 1000)
>>> path = write_chunked_volume(os.path.join(tempfile.mkdtemp(), "train_1_a_1.zarr"), vol,
...                             np.diag([0.7, 0.7, 1.5, 1.0]), name="train_1_a_1")
>>> f = ChunkedVolumeFile.open(path)
>>> f.shape, f.zooms, f.stored_dtype, f.slope_inter()
((40, 36, 34), (0.7, 0.7, 1.5), dtype('int16'), (1.0, 0.0))
>>> bool((f.read_raw() == vol).all()), bool((f.read_raw_crop((3, 30, 1, 38, 36, 33)) == vol[3:38, 30:36, 1:33]).all())
(True, True)
>>> import zarr   # any zarr v3 reader: the stored array is (k, j, i); .T is nibabel's (i, j, k)
>>> bool((zarr.open_array(str(path), mode="r")[:].T == vol).all())
True
"""

from __future__ import annotations

import json
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Protocol, Sequence

import numpy as np

from ..errors import CorruptVolumeError, MalformedFileError, MissingVolumeError
from .lru import LRU
from .ranges import group_spans, read_local

__all__ = ["CHUNKS", "SUFFIX", "ChunkStore", "ChunkedVolumeFile", "clear_header_memo", "is_chunked_volume",
           "write_chunked_volume"]

#: Inner chunk shape (k, j, i). A 96×96×64 crop touches at most 4×4×3 of them: 2.9 % of a 512×512×300
#: volume's bytes for a box on the heart or a lung (3.7 % on the wire, gaps of merged requests included), against
#: 8.7 % with 64³ chunks (benchmarks/bench_remote.py --gaps --formats).
CHUNKS = (32, 32, 32)
SUFFIX = ".zarr"
ATTRS = "radgenome"
FORMAT = "radgenome-volume/1"
_EMPTY = 2**64 - 1
# Chunks closer than this in the shard go in one request (the gap is transferred too). zarr-python stores inner
# chunks in Morton order, so a box's chunks are scattered: for a 96x96x64 crop 64 KiB means ~17 requests and 3.5 %
# of the volume's bytes, against ~26 requests and 2.9 % with no gap (benchmarks/bench_remote.py --gaps)
_MAX_GAP = 64 << 10
_MAX_REQUEST = 4 << 20  # a longer run is split, so that whole-volume reads run in parallel


def is_chunked_volume(path: str | os.PathLike) -> bool:
    """Whether a path or URL names a chunked volume (a ``.zarr`` folder).

    >>> is_chunked_volume("hf://datasets/org/r@main/volumes/a.zarr"), is_chunked_volume("a.nii.gz")
    (True, False)
    """
    return os.fspath(path).rstrip("/").endswith(SUFFIX)


class ChunkStore(Protocol):
    """Where fetched bytes of remote volumes are kept (:class:`radgenome_hf.access.chunkcache.ChunkCache`).
    ``key`` names a volume (a hash of its pinned URL), ``name`` a piece: ``"zarr.json"``, ``"index"`` or a chunk."""

    def get(self, key: str, name: str) -> bytes | None: ...

    def put(self, key: str, name: str, data: bytes) -> None: ...


# ---------------------------------------------------------------------------------------------------- writing
def write_chunked_volume(
    path: str | os.PathLike,
    array: np.ndarray,
    affine: np.ndarray,
    *,
    name: str | None = None,
    source: str | None = None,
    rescale: tuple[float, float] = (1.0, 0.0),
    chunks: Sequence[int] = CHUNKS,
    clevel: int = 5,
) -> Path:
    """Write an ``(i, j, k)`` HU array as a chunked volume folder (atomically: complete, or not there).

    ``rescale``: the (slope, intercept) already applied to ``array`` (recorded, never applied again).
    """
    import zarr
    from zarr.codecs import BloscCodec

    from .atomic import atomic_path

    arr = np.asanyarray(array)
    if arr.ndim != 3:
        raise ValueError(f"a volume must be 3D, got shape {arr.shape}")
    data = arr.T if arr.flags.f_contiguous else np.ascontiguousarray(arr.T)  # (k, j, i), C order
    inner = tuple(int(c) for c in chunks)
    shard = tuple(max(c, -(-s // c) * c) for s, c in zip(data.shape, inner))
    fill = data.min().item() if data.size else 0
    A = np.asarray(affine, np.float64).reshape(4, 4)
    import nibabel as nib

    attrs = {
        "format": FORMAT,
        "axes": "stored (k, j, i); array.T is (i, j, k), nibabel's voxel order",
        "affine": A.tolist(),
        "spacing": [float(round(np.linalg.norm(A[:3, c]), 6)) for c in range(3)],
        "orientation": "".join(str(c) for c in nib.aff2axcodes(A)),
        "rescale": [float(rescale[0]), float(rescale[1])],
        "units": "HU",
        "source": source,
        "name": name,
    }
    final = Path(path)
    with atomic_path(final, suffix=SUFFIX) as tmp:
        z = zarr.create_array(
            store=str(tmp), shape=data.shape, dtype=data.dtype, chunks=inner, shards=shard,
            compressors=BloscCodec(cname="zstd", clevel=int(clevel), shuffle="shuffle"), fill_value=fill,
            dimension_names=("k", "j", "i"), attributes={ATTRS: attrs}, zarr_format=3,
            # every inner chunk is stored (a constant one costs ~50 bytes), so the shard always exists: a missing
            # shard then means an incomplete copy, never "all fill value"
            config={"write_empty_chunks": True},
        )
        z[...] = data
    return final


# ---------------------------------------------------------------------------------------------------- reading
def _bad(where: str, what: str) -> MalformedFileError:
    return MalformedFileError(f"{where}/zarr.json", f"{what}; this reader handles the chunked volumes that "
                                                     "radgenome-hf build writes (open others with zarr.open_array)")


class _Layout:
    """What the reader needs from ``zarr.json``, checked."""

    def __init__(self, meta: dict, where: str) -> None:
        try:
            if meta.get("zarr_format") != 3 or meta.get("node_type") != "array":
                raise _bad(where, "not a zarr v3 array")
            self.stored_shape = tuple(int(s) for s in meta["shape"])  # (K, J, I)
            if len(self.stored_shape) != 3 or min(self.stored_shape) <= 0:
                raise _bad(where, f"shape {self.stored_shape} is not a 3D volume")
            self.dtype = np.dtype(meta["data_type"]).newbyteorder("<")
            if self.dtype.kind not in "iuf":
                raise _bad(where, f"data type {meta['data_type']} is not a CT volume's")
            grid = meta["chunk_grid"]["configuration"]["chunk_shape"]
            if any(int(g) < s for g, s in zip(grid, self.stored_shape)):
                raise _bad(where, f"the array is cut into several shards ({grid})")
            enc = meta.get("chunk_key_encoding", {"name": "default"})
            sep = enc.get("configuration", {}).get("separator", "/" if enc.get("name") == "default" else ".")
            self.shard_key = ("c" + sep if enc.get("name") == "default" else "") + sep.join(["0"] * 3)
            codecs = meta["codecs"]
            if len(codecs) != 1 or codecs[0]["name"] != "sharding_indexed":
                raise _bad(where, f"codecs {[c['name'] for c in codecs]} (expected one sharding_indexed)")
            conf = codecs[0]["configuration"]
            self.chunks = tuple(int(c) for c in conf["chunk_shape"])
            inner = [c["name"] for c in conf["codecs"]]
            if inner not in (["bytes", "blosc"], ["bytes"]):
                raise _bad(where, f"inner codecs {inner} (expected bytes + blosc)")
            endian = conf["codecs"][0].get("configuration", {}).get("endian", "little")
            if self.dtype.itemsize > 1 and endian != "little":
                raise _bad(where, "big-endian chunks")
            self.compressed = inner == ["bytes", "blosc"]
            index = [c["name"] for c in conf.get("index_codecs", [])]
            if index not in (["bytes", "crc32c"], ["bytes"]):
                raise _bad(where, f"index codecs {index}")
            self.index_crc = index == ["bytes", "crc32c"]
            self.index_at_end = conf.get("index_location", "end") == "end"
            self.fill = np.array(meta.get("fill_value", 0)).astype(self.dtype).item()
            self.attrs = dict(meta.get("attributes", {}).get(ATTRS) or {})
        except MalformedFileError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise _bad(where, f"unreadable metadata ({type(exc).__name__}: {exc})") from exc
        self.grid = tuple(-(-s // c) for s, c in zip(grid, self.chunks))  # chunks per shard, (k, j, i)
        self.n = int(np.prod(self.grid))
        self.index_nbytes = 16 * self.n + (4 if self.index_crc else 0)
        self.chunk_nbytes = int(np.prod(self.chunks)) * self.dtype.itemsize

    def parse_index(self, raw: bytes, where: str) -> np.ndarray:
        """``(n, 2)`` uint64 (offset, nbytes) per inner chunk, C order over the chunk grid; crc32c checked."""
        if len(raw) != self.index_nbytes:
            raise CorruptVolumeError(where, f"shard index has {len(raw)} bytes, expected {self.index_nbytes}: the "
                                            "shard is truncated; re-download it")
        body = raw[: 16 * self.n]
        if self.index_crc:
            import google_crc32c

            if google_crc32c.value(body).to_bytes(4, "little") != raw[16 * self.n :]:
                raise CorruptVolumeError(where, "shard index fails its crc32c: the shard is damaged; re-download it")
        return np.frombuffer(body, "<u8").reshape(self.n, 2)

    def touched(self, start: Sequence[int], stop: Sequence[int]) -> np.ndarray:
        """Ids (C order over the chunk grid) of the inner chunks the stored-order box ``start..stop`` touches."""
        axes = [np.arange(lo // c, (hi - 1) // c + 1) for lo, hi, c in zip(start, stop, self.chunks)]
        return np.ravel_multi_index(np.meshgrid(*axes, indexing="ij"), self.grid).ravel()


_memo: LRU[str, tuple[_Layout, np.ndarray | None]] = LRU(256)  # pinned URL -> (layout, index): rows share volumes
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_pid = -1


def _after_fork() -> None:  # a lock held by another thread at fork time would never be released in the child
    global _memo, _pool, _pool_lock
    _memo, _pool, _pool_lock = LRU(_memo.maxsize), None, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _threads() -> ThreadPoolExecutor:
    """The process's pool for range requests and chunk decoding (a forked child makes its own)."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(max_workers=max(4, min(16, 2 * (os.cpu_count() or 1))),
                                       thread_name_prefix="radgenome-chunks")
            _pool_pid = os.getpid()
        return _pool


def _release_gil() -> None:
    import blosc2

    blosc2.set_releasegil(True)  # decoding threads run in parallel (the prepared cache sets the same switch)


class ChunkedVolumeFile:
    """One chunked volume: a local ``.zarr`` folder or an ``hf://`` URL of one. Build with :meth:`open`.

    ``chunk_store``: where chunks fetched from the Hub are kept (``None``: nothing is kept between reads).
    ``token``: for a gated or private repo.
    """

    chunked = True  # crops read only what they touch: no prepared cache needed for them

    def __init__(self, source: str, kind: str, token: Any = None, chunk_store: ChunkStore | None = None) -> None:
        self.source = source
        self.kind = kind  # "path" | "url"
        self.token = token
        self.store = chunk_store
        self._layout: _Layout | None = None
        self._index: np.ndarray | None = None
        self._pinned: str | None = None
        self._key: str | None = None
        self._local: dict[str, str | None] = {}  # remote files found in the Hugging Face cache
        self._lock = threading.Lock()

    @classmethod
    def open(cls, source: str | os.PathLike, *, token: Any = None,
             chunk_store: ChunkStore | None = None) -> "ChunkedVolumeFile":
        """Resolve ``source`` (nothing is read; a missing local folder raises :class:`MissingVolumeError`)."""
        text = os.fspath(source).rstrip("/")
        if text.startswith("file://"):
            text = text[len("file://"):]
        if text.startswith("hf://"):
            return cls(text, "url", token, chunk_store)
        if "://" in text:
            raise MalformedFileError(text, "chunked volumes are read from a local folder or an hf:// URL")
        p = Path(text).expanduser()
        if not (p / "zarr.json").is_file():
            raise MissingVolumeError(f"{p}: no such chunked volume (no zarr.json); check the path")
        return cls(str(p), "path", None, None)

    # -- where the bytes are ------------------------------------------------------------------------
    @property
    def where(self) -> str:
        return self.source

    @property
    def identity_source(self) -> str:
        """What identifies the content for caches: the shard file (local) or the URL pinned to a commit."""
        if self.kind == "path":
            return os.path.join(self.source, self.layout.shard_key)
        return self._pin()

    def _pin(self) -> str:
        if self._pinned is None:
            from .hub import pin_url

            self._pinned = pin_url(self.source, self.token)
        return self._pinned

    def _store_key(self) -> str | None:
        """The chunk store's name for this volume, only when its URL is pinned to a commit (immutable)."""
        from .hub import parse_hf_url

        if self.store is None:
            return None
        if self._key is None:
            rev = parse_hf_url(self._pin()).revision or ""
            if len(rev) != 40:
                return None
            import hashlib

            self._key = hashlib.sha1(self._pin().encode()).hexdigest()
        return self._key

    def _get(self, name: str, start: int | None = None, end: int | None = None) -> bytes:
        """Bytes ``start:end`` of a file of the volume (``zarr.json`` or the shard; negative ``start``: from the
        end; ``None``: all of it): a local read (a local volume, or a file already in the Hugging Face cache, e.g.
        after ``radgenome-hf download``: offline too), else one range request on the pinned commit."""
        if self.kind == "path":
            return read_local(os.path.join(self.source, name), start, end)
        local = self._cached(name)
        if local is not None:
            return read_local(local, start, end)
        from .hub import read_range

        return read_range(f"{self._pin()}/{name}", start, end, token=self.token)[0]

    def _cached(self, name: str) -> str | None:
        """The local copy of a file of a remote volume in the Hugging Face cache (looked up once per file; no lock:
        the layout is loaded under ``_lock``, and a race only repeats a lookup)."""
        if name not in self._local:
            from .hub import cached_file

            self._local[name] = cached_file(f"{self._pin()}/{name}")
        return self._local[name]

    # -- header -------------------------------------------------------------------------------------
    @property
    def layout(self) -> _Layout:
        if self._layout is None:
            with self._lock:
                if self._layout is None:
                    self._load_layout()
        return self._layout  # type: ignore[return-value]

    def _load_layout(self) -> None:
        memo_key = None
        if self.kind == "url":
            memo_key = self._pin()
            hit = _memo.get(memo_key)
            if hit is not None:
                self._layout, self._index = hit
                return
        key = self._store_key() if self.kind == "url" else None
        raw = self.store.get(key, "zarr.json") if key else None  # type: ignore[union-attr]
        fetched = raw is None
        if raw is None:
            try:
                raw = self._get("zarr.json")
            except FileNotFoundError:
                raise MissingVolumeError(f"{self.where}: no zarr.json; the chunked volume is incomplete") from None
        try:
            meta = json.loads(raw)
        except ValueError as exc:
            raise _bad(self.where, f"zarr.json is not JSON ({exc})") from exc
        layout = _Layout(meta, self.where)
        if key and fetched:
            self.store.put(key, "zarr.json", raw)  # type: ignore[union-attr]
        self._layout = layout
        if memo_key is not None:
            self._remember()

    def _remember(self) -> None:
        _memo.put(self._pin(), (self._layout, self._index))  # type: ignore[arg-type]

    @property
    def header(self) -> dict:
        """The checked ``attributes["radgenome"]`` of ``zarr.json`` (read once)."""
        return self.layout.attrs

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(reversed(self.layout.stored_shape))  # type: ignore[return-value]

    @property
    def stored_dtype(self) -> np.dtype:
        return self.layout.dtype.newbyteorder("=")

    @property
    def affine(self) -> np.ndarray:
        """The affine the volume was converted with (voxel ``(i, j, k)`` -> mm), else ``diag(1, 1, 1)``."""
        a = self.layout.attrs.get("affine")
        try:
            return np.asarray(a, np.float64).reshape(4, 4) if a is not None else np.eye(4)
        except (TypeError, ValueError) as exc:
            raise _bad(self.where, f"attributes.{ATTRS}.affine is not a 4x4 matrix ({exc})") from exc

    @property
    def zooms(self) -> tuple[float, float, float]:
        a = self.affine
        return tuple(round(float(np.linalg.norm(a[:3, c])), 6) for c in range(3))  # type: ignore[return-value]

    def check_zooms(self) -> None:
        if not all(math.isfinite(z) and z > 0 for z in self.zooms):
            raise CorruptVolumeError(self.where, f"affine spacing {self.zooms} is zero/NaN; pass spacing=")

    def slope_inter(self) -> tuple[float, float]:
        """``(1, 0)``: the stored values are HU (the rescale was applied when the volume was converted)."""
        return 1.0, 0.0

    @property
    def applied_rescale(self) -> tuple[float, float]:
        """The rescale that was applied at conversion (recorded in the attributes)."""
        r = self.layout.attrs.get("rescale") or (1.0, 0.0)
        return float(r[0]), float(r[1])

    # -- chunks -------------------------------------------------------------------------------------
    def _index_array(self) -> np.ndarray:
        lay = self.layout
        if self._index is None:
            with self._lock:
                if self._index is None:
                    key = self._store_key() if self.kind == "url" else None
                    raw = self.store.get(key, "index") if key else None  # type: ignore[union-attr]
                    fetched = raw is None
                    if raw is None:
                        try:
                            raw = (self._get(lay.shard_key, -lay.index_nbytes) if lay.index_at_end
                                   else self._get(lay.shard_key, 0, lay.index_nbytes))
                        except FileNotFoundError:
                            raise MissingVolumeError(f"{self.where}: no shard {lay.shard_key}; the chunked volume "
                                                     "is incomplete") from None
                    index = lay.parse_index(raw, f"{self.where}/{lay.shard_key}")
                    if key and fetched:
                        self.store.put(key, "index", raw)  # type: ignore[union-attr]
                    self._index = index
                    if self.kind == "url":
                        self._remember()
        return self._index

    def _chunk_bytes(self, ids: Iterable[int], index: np.ndarray, keep: bool = True) -> dict[int, Any]:
        """Compressed bytes of the stored chunks ``ids`` (missing ones -> None = fill value). ``keep``: look them
        up in the chunk store and put the fetched ones there (a whole-volume read does neither: thousands of
        small files would cost more than the fetch; the prepared cache keeps whole arrays)."""
        out: dict[int, Any] = {}
        want = []
        for i in ids:
            off, nb = index[i]
            if off == _EMPTY and nb == _EMPTY:
                out[int(i)] = None
            else:
                want.append((int(off), int(nb), int(i)))
        key = self._store_key() if self.kind == "url" and keep else None
        if key:
            rest = []
            for off, nb, i in want:
                got = self.store.get(key, str(i))  # type: ignore[union-attr]
                if got is not None and len(got) == nb:
                    out[i] = got
                else:
                    rest.append((off, nb, i))
            want = rest
        if not want:
            return out
        runs = group_spans(sorted(want), _MAX_GAP, _MAX_REQUEST)
        shard = self.layout.shard_key

        def fetch(run: list[tuple[int, int, int]]) -> list[tuple[int, memoryview]]:
            lo, hi = run[0][0], run[-1][0] + run[-1][1]
            data = self._get(shard, lo, hi)
            if len(data) != hi - lo:
                raise CorruptVolumeError(f"{self.where}/{shard}", f"bytes {lo}:{hi} read {len(data)} bytes: the "
                                                                 "shard is truncated; re-download it")
            view = memoryview(data)
            return [(i, view[off - lo : off - lo + nb]) for off, nb, i in run]

        if len(runs) == 1 or self.kind == "path":  # local reads take microseconds: threads would cost more
            results = [fetch(run) for run in runs]
        else:
            results = list(_threads().map(fetch, runs))
        for res in results:
            for i, view in res:
                out[i] = view
                if key:
                    self.store.put(key, str(i), view)  # type: ignore[union-attr, arg-type]
        return out

    def _decode(self, out: np.ndarray, start: Sequence[int], ids: np.ndarray, data: dict[int, Any]) -> None:
        """Decode the chunks ``ids`` into ``out`` (stored order, C), the box that starts at ``start``."""
        lay = self.layout
        stop = [s + n for s, n in zip(start, out.shape)]
        where = f"{self.where}/{lay.shard_key}"

        def one(group: Sequence[int]) -> None:
            import blosc2

            buf = np.empty(lay.chunks, lay.dtype)
            for i in group:
                c = np.unravel_index(int(i), lay.grid)
                lo = [int(ci) * n for ci, n in zip(c, lay.chunks)]
                a = [max(l, s) for l, s in zip(lo, start)]
                b = [min(l + n, e) for l, n, e in zip(lo, lay.chunks, stop)]
                dst = out[tuple(slice(x - s, y - s) for x, y, s in zip(a, b, start))]
                src = data[int(i)]
                if src is None:
                    dst[...] = lay.fill
                    continue
                try:
                    if lay.compressed:
                        if blosc2.get_cbuffer_sizes(src)[0] != lay.chunk_nbytes:
                            raise ValueError("wrong decoded size")
                        blosc2.decompress(src, dst=buf)
                    else:
                        buf.reshape(-1).view(np.uint8)[:] = np.frombuffer(src, np.uint8)
                except (RuntimeError, ValueError) as exc:
                    raise CorruptVolumeError(where, f"inner chunk {int(i)} does not decode ({exc}): the shard is "
                                                    "damaged; re-download it") from exc
                dst[...] = buf[tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))]

        if len(ids) <= 64:
            one(ids)
            return
        _release_gil()
        n = max(1, min(os.cpu_count() or 1, 8))
        list(_threads().map(one, np.array_split(ids, n * 4)))

    def _read_box(self, start: Sequence[int], stop: Sequence[int], out: np.ndarray | None = None) -> np.ndarray:
        lay = self.layout
        shape = tuple(b - a for a, b in zip(start, stop))
        if out is None:
            out = np.empty(shape, lay.dtype.newbyteorder("="))
        index = self._index_array()
        ids = lay.touched(start, stop)
        whole = len(ids) == lay.n
        if self.kind == "path" and whole:  # the whole volume: one sequential read of the shard
            data = self._whole_shard(index, ids)
        else:
            data = self._chunk_bytes(ids, index, keep=not whole)
        self._decode(out, start, ids, data)
        return out

    def _whole_shard(self, index: np.ndarray, ids: np.ndarray) -> dict[int, Any]:
        present = index[:, 0] != _EMPTY
        end = int((index[present, 0] + index[present, 1]).max()) if present.any() else 0
        buf = np.empty(end, np.uint8)
        path = os.path.join(self.source, self.layout.shard_key)
        with open(path, "rb") as f:
            got = f.readinto(memoryview(buf))
        if got != end:
            raise CorruptVolumeError(path, f"shard has {got} bytes of chunks, the index needs {end}; re-download it")
        view = memoryview(buf)
        return {int(i): (view[int(index[i, 0]) : int(index[i, 0] + index[i, 1])] if present[i] else None)
                for i in ids}

    def read_raw(self, out: np.ndarray | None = None) -> np.ndarray:
        """The whole volume, ``(i, j, k)`` Fortran-ordered (a transposed view of the C-ordered stored array).
        ``out``: an ``(i, j, k)`` F-ordered buffer to decode into (returned)."""
        lay = self.layout
        dst = None
        if out is not None:
            if tuple(out.shape) != self.shape or out.dtype != self.stored_dtype or not out.T.flags.c_contiguous:
                raise ValueError(f"out= must be an F-ordered {self.shape} {self.stored_dtype} array, got "
                                 f"{tuple(out.shape)} {out.dtype}")
            dst = out.T
        got = self._read_box((0, 0, 0), lay.stored_shape, dst)
        return got.T if out is None else out

    def read_raw_crop(self, bbox: Sequence[int]) -> np.ndarray:
        """Voxels inside the half-open ``(i0, j0, k0, i1, j1, k1)``, ``(i, j, k)`` F order; reads only the
        inner chunks the box touches."""
        b = [int(x) for x in bbox]
        return self._read_box((b[2], b[1], b[0]), (b[5], b[4], b[3])).T


def clear_header_memo() -> None:
    """Forget the ``zarr.json`` and shard indexes of remote volumes this process has read (benchmarks: a cold read)."""
    _memo.clear()
