"""Parquet files read by byte ranges: the footer once, then only the column chunks of the row groups asked for.

A remote parquet file (an ``hf://`` URL) is never fetched whole: :class:`RangedParquet` reads its 8-byte tail (which
also tells the file's size) and its footer (two ``Range`` GETs, :func:`radgenome_hf.io.hub.read_range`, once per
process and file), picks row
groups by their min/max statistics, and fetches just the byte spans of the wanted column chunks (neighbouring
chunks merged into one request). pyarrow then decodes those bytes with the cached footer, page checksums
verified. A local file is read the same way with ``pread`` (no whole-file parse per lookup).

>>> import os, tempfile, pyarrow as pa, pyarrow.parquet as pq
>>> path = os.path.join(tempfile.mkdtemp(), "t.parquet")
>>> pq.write_table(pa.table({"k": ["a", "a", "b", "c"], "v": [1, 2, 3, 4]}), path, row_group_size=2,
...                write_page_checksum=True)
>>> f = RangedParquet.open(path)
>>> f.row_groups("k", ["b"])
[1]
>>> f.read([1], ["v"]).column("v").to_pylist()
[3, 4]
"""

from __future__ import annotations

import os
import threading
from typing import Any, Callable, Iterable, Sequence

import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.spec import AbstractBufferedFile

from ..errors import MalformedFileError
from .lru import LRU
from .ranges import group_spans, read_local

__all__ = ["RangedParquet", "total_bytes_read"]

_MAGIC = b"PAR1"
_CACHE: "LRU[Any, RangedParquet]" = LRU(256)  # footers kept per process (a few KB to a few hundred KB each)
_LOCK = threading.Lock()
_READ = [0]  # bytes read by every RangedParquet of this process (see total_bytes_read)
#: neighbouring column chunks closer than this are fetched in one request (a gap costs less than a round trip)
MERGE_GAP = 8 << 10


class RangedParquet:
    """One parquet file (local path or ``hf://`` URL) whose footer is parsed once and whose row groups are read by
    byte ranges. Build with :meth:`open` (cached per process: per pinned URL, or per local file's identity)."""

    def __init__(self, source: str, size: int, read: Callable[[int, int], bytes], key: Any = None,
                 tail: bytes | None = None) -> None:
        self.source, self.size, self._read = source, size, read
        #: what identifies this file's bytes (a pinned URL, or a local file's size, mtime and inode)
        self.key = key if key is not None else (source, size)
        self.bytes_read = 0
        self.metadata = self._footer(tail)

    @classmethod
    def open(cls, source: str | os.PathLike) -> "RangedParquet":
        """The file at ``source``, its footer read once per process (a local file changed in place is read anew)."""
        source = os.fspath(source)
        if source.startswith("hf://"):
            from .hub import parse_hf_url, read_range, resolve_revision

            u = parse_hf_url(source)
            key: Any = (u.repo_id, resolve_revision(u.repo_id, u.revision), u.path)
        else:
            try:
                st = os.stat(source)
            except FileNotFoundError:
                raise MalformedFileError(source, "file not found (was the release moved or deleted?)") from None
            key = (source, st.st_size, st.st_mtime_ns, st.st_ino)
        hit = _CACHE.get(key)
        if hit is not None:
            return hit
        if source.startswith("hf://"):
            tail, size = read_range(source, -8)
            _count(len(tail))
            out = cls(source, size, lambda a, b: read_range(source, a, b)[0], key, tail)
        else:
            out = cls(source, key[1], lambda a, b: read_local(source, a, b), key)
        _CACHE.put(key, out)
        return out

    def _get(self, start: int, end: int) -> bytes:
        data = self._read(start, end)
        self.bytes_read += len(data)
        _count(len(data))
        if len(data) != end - start:
            raise MalformedFileError(self.source, f"asked for bytes {start}-{end}, got {len(data)} bytes; the file "
                                                  "is truncated or changed while being read")
        return data

    def _footer(self, tail: bytes | None) -> pq.FileMetaData:
        if self.size < 12:
            raise MalformedFileError(self.source, f"{self.size} bytes is too small for a parquet file")
        if tail is None:
            tail = self._get(self.size - 8, self.size)
        else:
            self.bytes_read += len(tail)
        n = int.from_bytes(tail[:4], "little")
        if tail[4:] != _MAGIC or n + 12 > self.size:
            raise MalformedFileError(self.source, "not a parquet file (no footer); download or build it again")
        footer = self._get(self.size - 8 - n, self.size - 8)
        try:
            return pq.read_metadata(pa.BufferReader(_MAGIC + footer + tail))
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several types for a bad footer
            raise MalformedFileError(self.source, f"unreadable parquet footer ({exc})") from exc

    @property
    def num_row_groups(self) -> int:
        return self.metadata.num_row_groups

    def _leaves(self, columns: Iterable[str] | None) -> list[int]:
        schema = self.metadata.schema
        names = [schema.column(i).path.split(".")[0] for i in range(len(schema))]
        if columns is None:
            return list(range(len(names)))
        wanted = set(columns)
        return [i for i, n in enumerate(names) if n in wanted]

    def row_groups(self, column: str, values: Iterable[Any]) -> list[int]:
        """Row groups whose min/max statistics of ``column`` (a top-level leaf) may hold one of ``values``; a row
        group without statistics is kept (never a silent drop)."""
        values = sorted(set(values))
        leaf = self._leaves([column])
        if len(leaf) != 1:
            raise KeyError(f"{self.source}: no flat column {column!r} to select row groups by")
        out = []
        for r in range(self.num_row_groups):
            st = self.metadata.row_group(r).column(leaf[0]).statistics
            if st is None or not st.has_min_max:
                out.append(r)
            elif any(st.min <= v <= st.max for v in values):
                out.append(r)
        return out

    def spans(self, row_groups: Sequence[int], columns: Iterable[str] | None = None) -> list[tuple[int, int]]:
        """The byte spans the column chunks of ``row_groups`` occupy, neighbours closer than
        :data:`MERGE_GAP` merged."""
        leaves = self._leaves(columns)
        ranges = []
        for r in row_groups:
            rg = self.metadata.row_group(r)
            for i in leaves:
                c = rg.column(i)
                start = min(o for o in (c.dictionary_page_offset, c.data_page_offset) if o is not None)
                ranges.append((start, start + c.total_compressed_size))
        runs = group_spans(sorted((a, b - a) for a, b in ranges), MERGE_GAP)
        return [(run[0][0], max(a + n for a, n in run)) for run in runs]

    def read(self, row_groups: Sequence[int], columns: Sequence[str] | None = None) -> pa.Table:
        """The rows of ``row_groups`` (in file order), only ``columns`` (top-level names; ``None``: all); only the
        bytes of those column chunks are read, and their page checksums are verified."""
        rgs = sorted(set(row_groups))
        if not rgs:
            empty = self.metadata.schema.to_arrow_schema().empty_table()
            return empty if columns is None else empty.select(list(columns))
        parts = {(a, b): self._get(a, b) for a, b in self.spans(rgs, columns)}
        try:
            f = _KnownParts(self.source, self.size, parts)
            pf = pq.ParquetFile(f, metadata=self.metadata, page_checksum_verification=True)
            return pf.read_row_groups(rgs, columns=list(columns) if columns is not None else None)
        except Exception as exc:  # noqa: BLE001 - a failed checksum or decompression: name the file
            raise MalformedFileError(self.source, f"row groups {rgs} do not read ({exc}); the file is damaged: "
                                                  "download or build it again") from exc

    def __repr__(self) -> str:
        return (f"RangedParquet({self.source!r}, size={self.size}, row_groups={self.num_row_groups}, "
                f"bytes_read={self.bytes_read})")


def _count(n: int) -> None:
    with _LOCK:
        _READ[0] += n


def total_bytes_read() -> int:
    """Bytes every :class:`RangedParquet` of this process has read so far (footers included)."""
    return _READ[0]


class _KnownParts(AbstractBufferedFile):
    """A read-only file of which only some byte spans are known (fsspec's strict ``parts`` cache): pyarrow reads the
    column chunks through it; a read outside them is a bug here, never a silent fetch."""

    def __init__(self, name: str, size: int, parts: dict[tuple[int, int], bytes]) -> None:
        super().__init__(fs=None, path=name, mode="rb", cache_type="parts",
                         cache_options={"data": dict(parts), "strict": True}, size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        raise RuntimeError(f"{self.path}: bytes {start}-{end} were not fetched (a bug in the range planner)")
