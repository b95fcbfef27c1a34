"""gzip through ISA-L (``isal``) when it is importable, else the standard library: the one place that chooses.

ISA-L inflates ~1.6x faster than zlib on ``.nii.gz`` volumes and several times faster on compressible archive
members; output and errors are the same (:data:`GZIP_ERRORS` lists what a corrupt stream raises). ``rapidgzip``
(parallel inflation) was measured against it (``benchmarks/bench_gzip.py``: a mask archive's outer stream, its
per-structure members, a 512x512x300 volume) and was slower on every one, with 1 or 2 threads: not used.

>>> data = b"voxels" * 100
>>> import io
>>> with open_gzip(io.BytesIO(compress(data))) as f:
...     f.read() == data
True
"""

from __future__ import annotations

import gzip
import os
import zlib
from typing import IO, Any

try:  # ISA-L inflate; the stdlib is the fallback
    from isal import igzip as _igzip  # type: ignore
    from isal import isal_zlib as _isal_zlib  # type: ignore
except ImportError:  # pragma: no cover
    _igzip = _isal_zlib = None

__all__ = ["GZIP_ERRORS", "compress", "open_gzip"]

#: What reading a corrupt or truncated gzip stream raises (isal's inflate errors are not OSError subclasses).
GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile) + (
    (_isal_zlib.error,) if _isal_zlib is not None else ()
)


def open_gzip(source: str | os.PathLike | IO[bytes]) -> Any:
    """A gzip reader over a path or a binary file object (``readinto`` works; the CRC is checked at the end)."""
    mod = _igzip if _igzip is not None else gzip
    if isinstance(source, (str, os.PathLike)):
        return mod.GzipFile(os.fspath(source), "rb")
    return mod.GzipFile(fileobj=source, mode="rb")


def compress(data: bytes, level: int = 2) -> bytes:
    """gzip ``data`` with a zero mtime (byte-reproducible output); ISA-L levels stop at 3."""
    if _igzip is not None:
        return _igzip.compress(data, compresslevel=min(level, 3), mtime=0)
    return gzip.compress(data, compresslevel=level, mtime=0)  # pragma: no cover
