"""Atomic writes: a file appears under its final name only once complete (temporary name + ``os.replace``).

Every file the package writes goes through :func:`atomic_path` (or :func:`write_bytes` / :func:`write_text`):
the temporary file is created in the destination folder (same file system, so the rename is atomic), named
``.<name>.tmp-<pid>-<random><suffix>`` (:data:`TMP_MARK` lets caches recognise leftovers of killed writers), and
removed when the writer fails. Readers in other processes see the old file or the new one, never half of one.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> write_text(d / "a.txt", "hello")
PosixPath('...a.txt')
>>> with atomic_path(d / "b.bin") as tmp:
...     _ = tmp.write_bytes(b"x")
>>> sorted(p.name for p in d.iterdir())
['a.txt', 'b.bin']
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

__all__ = ["TMP_MARK", "atomic_path", "write_bytes", "write_text"]

#: Part of every temporary name (``.<name>.tmp-<pid>-…``): caches sweep old files carrying it.
TMP_MARK = ".tmp-"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, suffix: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed onto ``path`` when the block ends without error.

    ``suffix`` (default: ``path``'s own suffixes) keeps writers that choose a format by extension (nibabel,
    savefig) working. The parent folder is created. On any exception the temporary file is removed and the
    exception propagates; ``path`` is untouched.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    ext = "".join(final.suffixes) if suffix is None else suffix
    tmp = final.with_name(f".{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}{ext}")
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        with contextlib.suppress(OSError):
            if tmp.is_dir() and not tmp.is_symlink():
                import shutil

                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the final path."""
    with atomic_path(path) as tmp:
        with open(tmp, "xb") as f:
            f.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 ``text`` (``\\n`` line ends) to ``path`` atomically; returns the final path."""
    with atomic_path(path) as tmp:
        with open(tmp, "x", encoding="utf-8", newline="\n") as f:
            f.write(text)
    return Path(path)
