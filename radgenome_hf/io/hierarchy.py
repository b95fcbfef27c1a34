"""The upstream ``report_hierarchy_tree.zip``: read only on explicit request, because it holds pickles.

RadGenome-ChestCT ships ``report_hierarchy_tree.zip`` (102 MB), which the Hub's scanner flags as *pickle*.
Unpickling runs whatever code the file names, so this package never opens it implicitly: nothing in the
builder, the generation stages or the training helpers reads it. :func:`read_report_hierarchy` refuses unless
called with ``allow_pickle=True``, and then warns before loading.

>>> import tempfile, os
>>> p = os.path.join(tempfile.mkdtemp(), "report_hierarchy_tree.zip")
>>> read_report_hierarchy(p)                          # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
radgenome_hf.errors.UnsafeFileError: ...
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

from ..errors import MalformedFileError, ReleaseNotFoundError, UnsafeFileError

__all__ = ["read_report_hierarchy"]

#: Largest member unpickled (bytes): a zip bomb is refused before it is inflated.
MAX_MEMBER_BYTES = 4 << 30


def read_report_hierarchy(path: str | os.PathLike, *, allow_pickle: bool = False) -> dict[str, Any]:
    """Unpickle the members of ``report_hierarchy_tree.zip`` (or one pickle file): ``{member name: object}``.

    Refuses with :class:`~radgenome_hf.errors.UnsafeFileError` unless ``allow_pickle=True``: unpickling
    executes code chosen by whoever wrote the file. Pass it only for a file you downloaded from the official
    repository at a pinned revision and trust. Folders and non-pickle members of the zip are skipped.
    """
    p = Path(path)
    if not allow_pickle:
        raise UnsafeFileError(
            f"{p}: refusing to read: this file holds Python pickles, and unpickling runs any code the file "
            "contains (the Hub flags report_hierarchy_tree.zip as 'pickle'). Nothing in radgenome_hf needs it. "
            "If you trust this copy (downloaded from the official repo at a pinned revision), call "
            "read_report_hierarchy(path, allow_pickle=True)."
        )
    if not p.is_file():
        raise ReleaseNotFoundError(f"{p}: no such file; download report_hierarchy_tree.zip from the RadGenome repo")
    warnings.warn(
        f"{p}: unpickling (allow_pickle=True): this executes code from the file; only do this for a trusted copy",
        UserWarning,
        stacklevel=2,
    )
    if not zipfile.is_zipfile(p):
        return {p.name: _unpickle(p, p.read_bytes())}
    out: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(p) as zf:
            for info in zf.infolist():
                if info.is_dir():
                    continue
                if info.file_size > MAX_MEMBER_BYTES:
                    raise MalformedFileError(p, f"member {info.filename!r} inflates to {info.file_size} bytes; refused")
                with zf.open(info) as f:
                    data = f.read()
                if data[:1] != b"\x80":  # every pickle protocol >= 2 starts with PROTO (0x80)
                    continue
                out[info.filename] = _unpickle(p, data, info.filename)
    except zipfile.BadZipFile as e:
        raise MalformedFileError(p, f"not a readable zip file ({e}); download it again") from e
    return out


def _unpickle(path: Path, data: bytes, member: str | None = None) -> Any:
    try:
        return pickle.load(io.BytesIO(data))  # noqa: S301 - the caller opted in with allow_pickle=True
    except Exception as e:  # noqa: BLE001 - pickle raises many types on bad input
        what = f"member {member!r}" if member else "the file"
        raise MalformedFileError(path, f"{what} is not a readable pickle ({type(e).__name__}: {e})") from e
