"""The local chunk cache of remote chunked volumes: the bytes of their ``zarr.json``, shard index and inner chunks.

A crop of an ``hf://`` chunked volume (:class:`~radgenome_hf.io.chunked.ChunkedVolumeFile`) fetches only the
chunks it touches; they land here, so the same crop later (in this process or any other) costs no request.
Entries are keyed by the volume's URL pinned to a commit (immutable), one file per piece under
``<root>/<2 hex>/<key>-<piece>.rgchunk``, written atomically (:mod:`radgenome_hf.io.atomic`) and checksummed
(xxh3-64 in the first 8 bytes: a damaged entry is dropped and is a miss). The total size is bounded
(``$RADGENOME_CHUNK_CACHE_MAX_BYTES``, default 20 GiB), least recently used files evicted first, with the same
eviction as the prepared cache (:class:`~radgenome_hf.access.cache.BoundedFolder`). A cache never fails a
read: any problem writing or reading an entry is a miss.

>>> import tempfile
>>> cache = ChunkCache(tempfile.mkdtemp(), max_bytes=1 << 20)
>>> cache.put("0123456789abcdef", "17", b"compressed chunk")
>>> cache.get("0123456789abcdef", "17"), cache.get("0123456789abcdef", "18")
(b'compressed chunk', None)
"""

from __future__ import annotations

import os
import re
import threading
from pathlib import Path
from typing import Any

from ..config import chunk_cache_max_bytes, chunk_cache_root
from ..io.atomic import atomic_path
from .cache import BoundedFolder, _xxh3

__all__ = ["ChunkCache", "default_chunk_cache"]

_SUFFIX = ".rgchunk"
_NAME = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")


class ChunkCache(BoundedFolder):
    """Bytes of remote volumes by (volume key, piece name), bounded in size, shared by processes."""

    suffixes = (_SUFFIX,)

    def __init__(self, root: str | os.PathLike | None = None, max_bytes: int | None = None) -> None:
        super().__init__(Path(root).expanduser() if root is not None else chunk_cache_root(),
                         chunk_cache_max_bytes() if max_bytes is None else max_bytes)

    def __repr__(self) -> str:
        return f"ChunkCache(root={str(self.root)!r}, max_bytes={self.max_bytes})"

    def _path(self, key: str, name: str) -> Path:
        if not re.fullmatch(r"[0-9a-f]{16,64}", key) or not _NAME.match(name):
            raise ValueError(f"chunk cache key {key!r} / name {name!r}: a hex key and a short name are expected")
        return self.root / key[:2] / f"{key}-{name}{_SUFFIX}"

    def get(self, key: str, name: str) -> bytes | None:
        """The bytes stored for ``(key, name)``, or ``None`` (a miss, or a damaged entry: then deleted)."""
        path = self._path(key, name)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError:
            return None
        data = raw[8:]
        if len(raw) < 8 or _xxh3(data) != raw[:8]:
            path.unlink(missing_ok=True)
            return None
        self._touch(path)
        return data

    def put(self, key: str, name: str, data: Any) -> None:
        """Store ``data`` (bytes-like) for ``(key, name)``; a failed write is ignored (the next read fetches)."""
        path = self._path(key, name)
        try:
            with atomic_path(path, suffix=_SUFFIX) as tmp:
                with open(tmp, "xb") as f:
                    f.write(_xxh3(data))
                    f.write(data)
        except OSError:
            return
        self._added(len(data) + 8)


_default: dict[str, ChunkCache] = {}
_lock = threading.Lock()


def default_chunk_cache() -> ChunkCache:
    """The process's :class:`ChunkCache` at ``$RADGENOME_CACHE/chunks`` (one object per folder)."""
    root = str(chunk_cache_root())
    with _lock:
        cache = _default.get(root)
        if cache is None:
            cache = _default[root] = ChunkCache(root)
        return cache
