"""Byte ranges: read a range of a local file, and group the ranges a read needs into few requests.

Both range readers use these: chunked volumes (:mod:`~radgenome_hf.io.chunked`: a crop's inner chunks) and parquet
by byte ranges (:mod:`~radgenome_hf.io.ranged_parquet`: a row group's column chunks), locally or, through
:func:`radgenome_hf.io.hub.read_range`, on the Hub.

>>> group_spans([(0, 10, "a"), (12, 5, "b"), (100, 4, "c")], gap=8)
[[(0, 10, 'a'), (12, 5, 'b')], [(100, 4, 'c')]]
>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "f"); _ = open(p, "wb").write(b"0123456789")
>>> read_local(p, 2, 5), read_local(p, -3), read_local(p)
(b'234', b'789', b'0123456789')
"""

from __future__ import annotations

import os
from typing import Any, Sequence

__all__ = ["group_spans", "read_local"]


def read_local(path: str | os.PathLike, start: int | None = None, end: int | None = None) -> bytes:
    """Bytes ``[start, end)`` of a local file (``start < 0``: the last ``-start`` bytes; ``None``: all of it)."""
    with open(path, "rb") as f:
        if start is None:
            return f.read()
        if start < 0:
            f.seek(max(0, os.fstat(f.fileno()).st_size + start))
            return f.read()
        size = (os.fstat(f.fileno()).st_size if end is None else end) - start
        return os.pread(f.fileno(), size, start)


def group_spans(spans: Sequence[tuple[Any, ...]], gap: int, max_len: int | None = None) -> list[list[tuple[Any, ...]]]:
    """Group ``(offset, nbytes, …)`` spans, sorted by offset, into runs that one request reads: a span joins the
    run before it when it starts at most ``gap`` bytes after the run's end (the gap is transferred too: it costs
    less than a round trip) and the run stays within ``max_len`` bytes. Overlapping spans join."""
    runs: list[list[tuple[Any, ...]]] = []
    end = lo = 0
    for item in spans:
        start, stop = int(item[0]), int(item[0]) + int(item[1])
        if runs and start - end <= gap and (max_len is None or max(end, stop) - lo <= max_len):
            runs[-1].append(item)
            end = max(end, stop)
            continue
        runs.append([item])
        lo, end = start, stop
    return runs
