"""The prepared cache: decoded volumes (and preprocessed tensors) stored once as chunked blosc2 files.

One ``.b2nd`` file per array, keyed by the *identity of its source* (resolved path + size + mtime_ns, the
content hash of raw bytes, or an immutable Hub revision + path) plus a preset name and its parameters, so a
changed source is never served stale. An ``(i, j, k)`` Fortran-ordered volume is stored as its C-ordered
``(k, j, i)`` transpose (zero-copy both ways), chunked 64³, so a region crop decompresses only the chunks it
touches. Writes go to a unique temporary name and are published with ``os.replace`` (safe with many
processes writing the same key); the total size is bounded, evicting the least recently used files.
Readers memory-map the file, so an eviction racing with a reader does not break it.

>>> import numpy as np, tempfile
>>> cache = PreparedCache(tempfile.mkdtemp(), max_bytes=1 << 30)
>>> a = np.asfortranarray(np.arange(24, dtype=np.int16).reshape(2, 3, 4))
>>> key = cache.key_for(b"some file bytes", "hu")
>>> _ = cache.put_array(key, a)
>>> bool((cache.get_array(key) == a).all()), cache.get_array(key).flags.f_contiguous
(True, True)
>>> cache.crop(key, (0, 1, 1, 2, 3, 3)).tolist() == a[0:2, 1:3, 1:3].tolist()
True
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["PreparedCache", "source_identity", "default_cache_root", "DEFAULT_MAX_BYTES"]

#: Default size bound of the prepared cache (override with ``max_bytes=`` or ``$RADGENOME_CACHE_MAX_BYTES``).
DEFAULT_MAX_BYTES = int(os.environ.get("RADGENOME_CACHE_MAX_BYTES", 200 << 30))
_SUFFIX = ".b2nd"
_TMP_MARK = ".tmp-"
_STALE_TMP_S = 3600.0
_HF_PINNED = re.compile(r"^hf://(datasets/|spaces/|models/)?[^/@]+/[^/@]+@[0-9a-f]{40}/")


def default_cache_root() -> Path:
    """``$RADGENOME_CACHE`` or ``~/.cache/radgenome_hf/prepared``."""
    env = os.environ.get("RADGENOME_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "radgenome_hf" / "prepared"


def source_identity(source: str | os.PathLike | bytes) -> str:
    """A string that changes whenever the source's content may have changed.

    Local file: resolved path + size + mtime_ns. Raw bytes: their BLAKE2 hash. ``hf://…@<40-hex sha>/path``: the
    URL itself (a pinned revision is immutable). Other URLs: the URL plus fsspec's ``ukey`` (a hash of the
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
    return f"file:{p}:{st.st_size}:{st.st_mtime_ns}"


class PreparedCache:
    """A bounded, process-safe store of decoded arrays (one blosc2 NDArray file per array).

    Args:
        root: folder (default :func:`default_cache_root`).
        max_bytes: size bound; least recently used files are evicted after a write exceeds it.
        codec / clevel / chunks / blocks: blosc2 settings. Default zstd-1 + shuffle, 64³ chunks, 32³ blocks:
            in ``benchmarks/bench_access.py --realistic`` it wrote 3x faster than zstd-5 for 1% more bytes with
            the same read and crop times; LZ4 reads the full volume faster but is 28% larger.
    """

    def __init__(
        self,
        root: str | os.PathLike | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        *,
        codec: str = "ZSTD",
        clevel: int = 1,
        chunks: Sequence[int] = (64, 64, 64),
        blocks: Sequence[int] = (32, 32, 32),
        nthreads: int | None = None,
    ) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.max_bytes = int(max_bytes)
        self.codec = codec.upper()
        self.clevel = int(clevel)
        self.chunks = tuple(int(c) for c in chunks)
        self.blocks = tuple(int(b) for b in blocks)
        self.nthreads = nthreads
        self._lock = threading.Lock()
        self._approx_total: int | None = None
        self._last_scan = 0.0

    def __repr__(self) -> str:
        return f"PreparedCache(root={str(self.root)!r}, max_bytes={self.max_bytes}, codec={self.codec}-{self.clevel})"

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

    def __contains__(self, key: str) -> bool:
        return self.path_for(key).is_file()

    # -- read -------------------------------------------------------------------------------------
    def _open(self, key: str):
        import blosc2

        path = self.path_for(key)
        try:
            arr = blosc2.open(str(path), mode="r", mmap_mode="r")
        except FileNotFoundError:
            return None, path
        except Exception:  # unreadable (should not happen with atomic writes): drop it, treat as a miss
            path.unlink(missing_ok=True)
            return None, path
        try:
            os.utime(path)  # access time for LRU eviction (atime is often disabled by mount options)
        except OSError:
            pass
        return arr, path

    @staticmethod
    def _reversed(b2) -> bool:
        try:
            return bool(b2.schunk.meta["radgenome"]["reversed"])
        except Exception:
            return False

    def get_array(self, key: str) -> np.ndarray | None:
        """The stored array (same shape and memory order as put), or ``None`` on a miss."""
        b2, path = self._open(key)
        if b2 is None:
            return None
        try:
            out = b2[()]
        except Exception:
            return None
        return out.T if self._reversed(b2) else out

    def crop(self, key: str, bbox: Sequence[int]) -> np.ndarray | None:
        """``array[bbox]`` (half-open ``(start..., stop...)`` in the put array's axes); reads only touched chunks."""
        b2, path = self._open(key)
        if b2 is None:
            return None
        nd = len(b2.shape)
        b = [int(x) for x in bbox]
        if len(b) != 2 * nd:
            raise ValueError(f"bbox {bbox!r} needs {2 * nd} numbers for a {nd}-D array")
        sl = [slice(b[a], b[a + nd]) for a in range(nd)]
        try:
            if self._reversed(b2):
                return b2[tuple(sl[::-1])].T
            return b2[tuple(sl)]
        except Exception:
            return None

    # -- write ------------------------------------------------------------------------------------
    def put_array(self, key: str, array: np.ndarray) -> Path:
        """Store an array atomically. A Fortran-ordered array is stored as its C-ordered transpose (no copy)."""
        import blosc2

        arr = np.asanyarray(array)
        reverse = arr.ndim > 1 and arr.flags.f_contiguous and not arr.flags.c_contiguous
        data = arr.T if reverse else np.ascontiguousarray(arr)
        final = self.path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(f"{final.name}{_TMP_MARK}{os.getpid()}-{uuid.uuid4().hex[:8]}{_SUFFIX}")
        kwargs: dict[str, Any] = {}
        if data.ndim == len(self.chunks):
            kwargs["chunks"] = tuple(min(c, s) or 1 for c, s in zip(self.chunks, data.shape))
            kwargs["blocks"] = tuple(min(b, c) for b, c in zip(self.blocks, kwargs["chunks"]))
        cparams = blosc2.CParams(
            codec=getattr(blosc2.Codec, self.codec),
            clevel=self.clevel,
            filters=[blosc2.Filter.SHUFFLE],
            typesize=data.dtype.itemsize,
            **({"nthreads": self.nthreads} if self.nthreads else {}),
        )
        try:
            b2 = blosc2.asarray(
                data, urlpath=str(tmp), mode="w", cparams=cparams,
                meta={"radgenome": {"reversed": bool(reverse)}}, **kwargs,
            )
            del b2
            os.replace(tmp, final)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        size = final.stat().st_size
        with self._lock:
            if self._approx_total is not None:
                self._approx_total += size
        self._maybe_evict()
        return final

    def get_or_create(
        self, source: str | os.PathLike | bytes, producer: Callable[[], np.ndarray], preset: str = "array", **params: Any
    ) -> np.ndarray:
        """Read ``(source, preset, params)`` from the cache, or call ``producer()`` once and store its result."""
        key = self.key_for(source, preset, **params)
        got = self.get_array(key)
        if got is not None:
            return got
        arr = producer()
        self.put_array(key, arr)
        return arr

    # -- size bound -------------------------------------------------------------------------------
    def _files(self) -> list[tuple[float, int, Path]]:
        out = []
        if not self.root.is_dir():
            return out
        now = time.time()
        for sub in os.scandir(self.root):
            if not sub.is_dir():
                continue
            for e in os.scandir(sub.path):
                try:
                    st = e.stat()
                except FileNotFoundError:
                    continue
                if _TMP_MARK in e.name:
                    if now - st.st_mtime > _STALE_TMP_S:  # left by a crashed writer
                        Path(e.path).unlink(missing_ok=True)
                    continue
                if e.name.endswith(_SUFFIX):
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
        """Delete every cached array."""
        self.evict(0)
