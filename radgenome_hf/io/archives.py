"""Mask archives of the upstream release: folders, ``.tar.gz`` files and tar.gz files cut into parts.

RadGenome ships masks as ``<split>_<kind>_mask/seg_<volume>/<name>.nii.gz`` in one of three forms:

* a folder ``dataset/train_region_mask/`` (already extracted; preferred, random access);
* one archive ``dataset/valid_region_mask.tar.gz``;
* one tar.gz cut by ``split -b`` into ``dataset/train_anatomy_mask_aa``, ``_ab``, … (only ``_aa`` starts with a
  gzip header, the rest are raw continuation bytes), or the older ``train_anatomy_mask.tar.gz.part-00``, ….

A gzip stream cannot be seeked, so reading one member of an archive means inflating everything before it.
The intended use is **one streaming pass** (:func:`iter_members` / :func:`iter_masks`) at prepare time that
packs every mask; :func:`read_member` exists for inspection and tests, not for per-row access.

>>> import tempfile
>>> from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
>>> rel = write_release(tempfile.mkdtemp(), SyntheticConfig(n_train_patients=1, n_valid_patients=0, shape=(32, 32, 24)),
...                     progress=False)
>>> src = find_mask_sources(rel.radgenome_root / "dataset", "train", "region")
>>> src.form, [p.name for p in src.paths]
('tar.gz', ['train_region_mask.tar.gz'])
>>> volume, kind, structure, data = next(iter(iter_masks(src)))
>>> str(volume), kind, data[:2].hex()      # one member: a gzip'd NIfTI
('train_1_a_1', 'region', '1f8b')
"""

from __future__ import annotations

import bisect
import io
import os
import re
import tarfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterator, Literal, Sequence, Union

from ..errors import MalformedFileError, ReleaseNotFoundError, UnsafeArchiveError
from ..names import MaskKind, Split, VolumeName, parse_mask_member
from .atomic import atomic_path
from .compression import GZIP_ERRORS, open_gzip

__all__ = [
    "MaskSource",
    "SplitStream",
    "find_mask_sources",
    "iter_masks",
    "iter_members",
    "list_members",
    "open_split_stream",
    "read_member",
    "safe_extract",
    "split_parts",
]

SourceForm = Literal["folder", "tar.gz", "split"]
ArchiveLike = Union["MaskSource", str, "os.PathLike[str]", Sequence[Union[str, "os.PathLike[str]"]], BinaryIO]

_LETTER_PART = r"_([a-z]{2,})"
_NUMBER_PART = re.compile(r"^(.*)\.part-?([0-9]+)$")
_BUFFER = 1 << 20


# ---------------------------------------------------------------------------------------------------
# Split parts and a stream over them
# ---------------------------------------------------------------------------------------------------


def _letters(i: int, width: int) -> str:
    out = []
    for _ in range(width):
        i, r = divmod(i, 26)
        out.append(chr(ord("a") + r))
    return "".join(reversed(out))


def split_parts(base: str | os.PathLike) -> list[Path]:
    """The parts of a split archive, in order, or ``[]`` when there are none.

    ``base`` is the name the parts were cut from (``dataset/train_anatomy_mask`` -> ``train_anatomy_mask_aa``,
    ``_ab``, …; ``dataset/train_anatomy_mask.tar.gz`` -> ``….tar.gz.part-00``, ``.part-01``, …) or any one part.
    A gap in the sequence (a part missing, e.g. an interrupted download) raises :class:`MalformedFileError`.
    """
    base = Path(base)
    parent = base.parent if str(base.parent) else Path(".")
    if not parent.is_dir():
        return []
    names = os.listdir(parent)

    letter_re = re.compile("^" + re.escape(base.name) + _LETTER_PART + "$")
    letters = sorted((m.group(1), n) for n in names if (m := letter_re.match(n)))
    if letters:
        suffixes = [s for s, _ in letters]
        widths = {len(s) for s in suffixes}
        if len(widths) == 1:
            width = widths.pop()
            for i, s in enumerate(suffixes):
                if s != _letters(i, width):
                    raise MalformedFileError(
                        parent / f"{base.name}_{_letters(i, width)}",
                        f"part {i + 1} of the split archive {base.name}_* is missing (found "
                        f"{', '.join(suffixes)}); download every part",
                    )
        return [parent / n for _, n in letters]

    number_re = re.compile("^" + re.escape(base.name) + r"\.part-?([0-9]+)$")
    numbered = sorted((int(m.group(1)), n) for n in names if (m := number_re.match(n)))
    if numbered:
        first = numbered[0][0]
        for i, (k, n) in enumerate(numbered):
            if k != first + i:
                raise MalformedFileError(
                    parent / base.name,
                    f"part {first + i} of the split archive {base.name}.part-* is missing; download every part",
                )
        return [parent / n for _, n in numbered]

    # ``base`` may itself be one part.
    m = re.match("^(.*)" + _LETTER_PART + "$", base.name)
    if m and base.is_file():
        stem = parent / m.group(1)
        if (parent / f"{m.group(1)}_{'a' * len(m.group(2))}").is_file():
            return split_parts(stem)
    m = _NUMBER_PART.match(base.name)
    if m and base.is_file():
        return split_parts(parent / m.group(1))
    return []


class SplitStream(io.RawIOBase):
    """A read-only, seekable stream over files read one after another (nothing is concatenated on disk).

    Wrap it in :class:`io.BufferedReader` (as :func:`open_split_stream` does) for efficient small reads.
    """

    def __init__(self, parts: Sequence[str | os.PathLike]) -> None:
        super().__init__()
        if not parts:
            raise ValueError("SplitStream needs at least one part")
        self.parts = tuple(Path(p) for p in parts)
        for p in self.parts:
            if not p.is_file():
                raise ReleaseNotFoundError(f"{p}: archive part not found")
        sizes = [p.stat().st_size for p in self.parts]
        self._starts = [0]
        for s in sizes:
            self._starts.append(self._starts[-1] + s)
        self.size = self._starts[-1]
        self._pos = 0
        self._index = -1
        self._fh: io.FileIO | None = None
        self.name = str(self.parts[0]) if len(self.parts) == 1 else f"{self.parts[0]} (+{len(self.parts) - 1} parts)"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            pos = offset
        elif whence == io.SEEK_CUR:
            pos = self._pos + offset
        elif whence == io.SEEK_END:
            pos = self.size + offset
        else:
            raise ValueError(f"invalid whence {whence}")
        if pos < 0:
            raise ValueError("negative seek position")
        self._pos = pos
        return pos

    def _file_at(self, pos: int) -> tuple[io.FileIO, int]:
        index = bisect.bisect_right(self._starts, pos) - 1
        if index != self._index or self._fh is None:
            if self._fh is not None:
                self._fh.close()
            self._fh = open(self.parts[index], "rb", buffering=0)  # noqa: SIM115 - closed in close()
            self._index = index
        self._fh.seek(pos - self._starts[index])
        return self._fh, self._starts[index + 1] - pos

    def readinto(self, buffer) -> int:  # type: ignore[override]
        if self.closed:
            raise ValueError("I/O operation on closed stream")
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self.size:
            fh, left_in_part = self._file_at(self._pos)
            want = min(len(view) - done, left_in_part)
            got = fh.readinto(view[done : done + want])
            if not got:
                raise MalformedFileError(self.parts[self._index], "archive part is shorter than when it was opened")
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        super().close()


def open_split_stream(parts: str | os.PathLike | Sequence[str | os.PathLike]) -> io.BufferedReader:
    """A buffered read-only stream over the concatenated parts of a split archive.

    ``parts`` is a list of part files (sorted by suffix before reading), or a base path / one part from which the
    parts are found with :func:`split_parts` (sorted by suffix). A plain file is a one-part stream.

    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "x_aa").write_bytes(b"hello "), (d / "x_ab").write_bytes(b"world")
    >>> open_split_stream(d / "x").read()
    b'hello world'
    """
    if isinstance(parts, (str, os.PathLike)):
        p = Path(parts)
        found = split_parts(p)
        if not found:
            if p.is_file():
                found = [p]
            else:
                raise ReleaseNotFoundError(f"{p}: no such archive, and no parts {p.name}_aa… or {p.name}.part-00…")
        parts = found
    else:
        parts = _sort_parts(parts)
    return io.BufferedReader(SplitStream(parts), buffer_size=_BUFFER)


def _sort_parts(parts: Sequence[str | os.PathLike]) -> list[Path]:
    """Order parts by suffix (``_aa`` < ``_ab`` …, ``.part-2`` < ``.part-10``); other names by name."""

    def key(p: Path) -> tuple:
        m = _NUMBER_PART.match(p.name)
        return (str(p.parent), m.group(1), int(m.group(2)), "") if m else (str(p.parent), p.name, -1, p.name)

    return sorted((Path(p) for p in parts), key=key)


# ---------------------------------------------------------------------------------------------------
# Where the masks are
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MaskSource:
    """Where the masks of one (split, kind) are: a folder, a tar.gz, or the parts of a split tar.gz."""

    form: SourceForm
    paths: tuple[Path, ...]
    split: Split | None = None
    kind: MaskKind | None = None

    @property
    def path(self) -> Path:
        return self.paths[0]

    @property
    def label(self) -> str:
        if self.form == "split" and len(self.paths) > 1:
            return f"{self.paths[0]} (+{len(self.paths) - 1} parts)"
        return str(self.paths[0])

    @property
    def nbytes(self) -> int:
        """Compressed size of an archive (sum of its parts); 0 for a folder."""
        return 0 if self.form == "folder" else sum(p.stat().st_size for p in self.paths if p.is_file())

    def open(self) -> io.BufferedReader:
        """A stream over the archive bytes (not for folders)."""
        if self.form == "folder":
            raise ValueError(f"{self.label} is a folder, not an archive")
        return open_split_stream(list(self.paths))


def find_mask_sources(dataset_dir: str | os.PathLike, split: Split, kind: MaskKind) -> MaskSource | None:
    """Find the masks of ``split`` (``train``/``valid``) and ``kind`` (``region``/``anatomy``).

    Looks in ``dataset_dir`` (the release's ``dataset/`` folder, or the repo root holding it) for, in order of
    preference: the folder ``<split>_<kind>_mask/`` with ``seg_*`` entries, ``<split>_<kind>_mask.tar.gz``,
    the parts ``<split>_<kind>_mask_aa``, … and ``<split>_<kind>_mask.tar.gz.part-00``, …. Returns ``None``
    when there is none of these (masks are optional for several configs).
    """
    if split not in ("train", "valid"):
        raise ValueError(f"split must be 'train' or 'valid', got {split!r}")
    if kind not in ("region", "anatomy"):
        raise ValueError(f"mask kind must be 'region' or 'anatomy', got {kind!r}")
    d = Path(dataset_dir)
    name = f"{split}_{kind}_mask"
    if not (d / name).exists() and not (d / f"{name}.tar.gz").exists() and (d / "dataset").is_dir():
        d = d / "dataset"
    folder = d / name
    if folder.is_dir():
        with os.scandir(folder) as entries:  # closed even when any() stops at the first match
            has_volumes = any(e.name.startswith("seg_") for e in entries)
        if has_volumes:
            return MaskSource("folder", (folder,), split, kind)
    archive = d / f"{name}.tar.gz"
    if archive.is_file():
        return MaskSource("tar.gz", (archive,), split, kind)
    for base in (d / name, d / f"{name}.tar.gz", d / f"{name}.tar"):
        parts = split_parts(base)
        if parts:
            return MaskSource("split", tuple(parts), split, kind)
    if folder.is_dir():
        return MaskSource("folder", (folder,), split, kind)
    return None


def _as_source(source: ArchiveLike) -> MaskSource | BinaryIO:
    if isinstance(source, MaskSource):
        return source
    if hasattr(source, "read"):
        return source  # type: ignore[return-value]
    if isinstance(source, (str, os.PathLike)):
        p = Path(source)
        if p.is_dir():
            return MaskSource("folder", (p,))
        parts = split_parts(p)
        if p.is_file() and p not in parts:  # a whole archive wins over parts cut from it
            return MaskSource("tar.gz", (p,))
        if parts:
            return MaskSource("split", tuple(parts))
        raise ReleaseNotFoundError(f"{p}: no such archive, folder, or split parts ({p.name}_aa…)")
    parts = tuple(_sort_parts(list(source)))  # type: ignore[arg-type]
    if not parts:
        raise ValueError("an empty list of archive parts")
    return MaskSource("split", parts)


def _label(source: MaskSource | BinaryIO) -> str:
    if isinstance(source, MaskSource):
        return source.label
    return str(getattr(source, "name", None) or "<archive stream>")


# ---------------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------------

# Read errors that mean "corrupt or truncated archive" (write errors such as a full disk are not among them).
_CORRUPT: tuple[type[BaseException], ...] = (tarfile.TarError, *GZIP_ERRORS)


@contextmanager
def _open_tar(source: MaskSource | BinaryIO) -> Iterator[tuple[tarfile.TarFile, Callable[[], int]]]:
    """Open an archive for one forward pass; yields the TarFile and a function giving compressed bytes read."""
    label = _label(source)
    if isinstance(source, MaskSource):
        raw: BinaryIO = source.open()
        close_raw = True
    else:
        raw, close_raw = source, False
    try:
        head = b""
        if hasattr(raw, "peek"):
            head = raw.peek(2)[:2]  # type: ignore[union-attr]
        elif getattr(raw, "seekable", lambda: False)():
            start = raw.tell()
            head = raw.read(2)
            raw.seek(start)
        gz: BinaryIO | None = None
        try:
            if head == b"\x1f\x8b":
                # ISA-L inflate behind a 1 MiB buffer: as fast as tarfile's own zlib path on near-incompressible
                # members (.nii.gz inside .tar.gz, as in the real archives), 3-5x faster on compressible ones.
                # tarfile's own bufsize stays at its default: a large one makes its buffer slicing quadratic
                # on small members (measured: 16 s instead of 0.6 s).
                gz = io.BufferedReader(open_gzip(raw), buffer_size=_BUFFER)  # type: ignore[arg-type]
                tf = tarfile.open(fileobj=gz, mode="r|")
            else:
                tf = tarfile.open(fileobj=raw, mode="r|*")
        except _CORRUPT as e:
            raise MalformedFileError(
                label, f"not a readable tar.gz archive ({e}); the file is corrupt or incomplete: download it again"
            ) from e

        def consumed() -> int:
            try:
                return raw.tell()
            except (OSError, ValueError, AttributeError):
                return 0

        with tf:
            yield tf, consumed
            # Reached only when the caller read to the end: tar stops at its end-of-archive blocks, before
            # the gzip trailer, so inflate the rest to make gzip verify its CRC and length.
            if gz is not None:
                try:
                    while gz.read(_BUFFER):
                        pass
                except _CORRUPT as e:
                    raise _corrupt(label, e) from e
    finally:
        if close_raw:
            raw.close()


def _stream_members(tf: tarfile.TarFile, label: str) -> Iterator[tarfile.TarInfo]:
    """Members in archive order. TarFile keeps every TarInfo it has read (millions in the real archives);
    the list is cleared as we go, which stream mode allows because links are never resolved here."""
    while True:
        try:
            member = tf.next()
        except _CORRUPT as e:
            raise _corrupt(label, e) from e
        if member is None:
            return
        tf.members.clear()
        yield member


def _corrupt(label: str, e: BaseException) -> MalformedFileError:
    return MalformedFileError(
        label,
        f"the archive is corrupt or truncated ({type(e).__name__}: {e}); download it (every part) again",
    )


def _clean(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def _folder_files(folder: Path) -> Iterator[tuple[str, Path]]:
    """(member-style name relative to the folder's parent, path) of regular files, sorted, links skipped."""
    root = folder.parent
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for f in sorted(filenames):
            p = Path(dirpath) / f
            if p.is_symlink() or not p.is_file():
                continue
            yield p.relative_to(root).as_posix(), p


def _iter_folder(folder: Path, select: Callable[[str], bool] | None) -> Iterator[tuple[str, bytes]]:
    for name, p in _folder_files(folder):
        if select is None or select(name):
            yield name, p.read_bytes()


def iter_members(
    source: ArchiveLike,
    select: Callable[[str], bool] | None = None,
    *,
    progress: bool | None = False,
) -> Iterator[tuple[str, bytes]]:
    """Yield ``(member name, bytes)`` for the regular files of an archive in ONE streaming pass.

    ``source``: a :class:`MaskSource`, a ``.tar.gz`` path, a split base path / part / list of parts, a folder
    (names relative to the folder's parent, like archive members), or a binary stream. ``select(name)``
    decides before anything is read: a skipped member is inflated (gzip cannot seek) but never held in
    memory. Links, devices and folders are not yielded; an absolute or ``..`` member name raises
    :class:`~radgenome_hf.errors.UnsafeArchiveError`. Use :func:`names.parse_mask_member` (or
    :func:`iter_masks`) to interpret names. A corrupt or truncated archive raises :class:`MalformedFileError`
    naming it; gzip detects some corruption only at the end (CRC), so treat the whole pass as failed then.
    ``progress``: show a tqdm bar of compressed bytes (``None`` = only on a TTY).
    """
    src = _as_source(source)
    if isinstance(src, MaskSource) and src.form == "folder":
        yield from _iter_folder(src.path, select)
        return
    label = _label(src)
    from tqdm.auto import tqdm

    total = src.nbytes if isinstance(src, MaskSource) else None
    with _open_tar(src) as (tf, consumed), tqdm(
        total=total, unit="B", unit_scale=True, desc=Path(label.split(" (+")[0]).name,
        disable=None if progress is None else not progress,
    ) as bar:
        for member in _stream_members(tf, label):
            if not member.isreg():
                continue
            _check_name(label, member.name)
            name = _clean(member.name)
            if select is not None and not select(name):
                continue
            try:
                fh = tf.extractfile(member)
                data = fh.read() if fh is not None else b""
                if len(data) != member.size:
                    raise tarfile.ReadError(f"member {name!r} is truncated")
            except _CORRUPT as e:
                raise _corrupt(label, e) from e
            bar.update(max(0, consumed() - bar.n))
            yield name, data


def iter_masks(
    source: ArchiveLike,
    select: Callable[[VolumeName, str, str], bool] | None = None,
    *,
    progress: bool | None = False,
) -> Iterator[tuple[VolumeName, MaskKind, str, bytes]]:
    """Yield ``(volume, kind, structure name as written, NIfTI bytes)`` for every mask file, in one pass.

    Members that are not ``…/<split>_<kind>_mask/seg_<volume>/<name>.nii.gz`` (e.g. SAT's aggregated
    ``seg_<volume>.nii.gz``) are skipped without being held in memory, as are masks ``select`` rejects.
    """
    parsed: dict[str, tuple[VolumeName, MaskKind, str]] = {}

    def want(name: str) -> bool:
        info = parse_mask_member(name)
        if info is None or (select is not None and not select(*info)):
            return False
        parsed[name] = info
        return True

    for name, data in iter_members(source, want, progress=progress):
        volume, kind, structure = parsed.pop(name)
        yield volume, kind, structure, data


def list_members(source: ArchiveLike) -> list[str]:
    """Names of the regular files in an archive or folder (one pass; archive data is inflated, not kept)."""
    src = _as_source(source)
    if isinstance(src, MaskSource) and src.form == "folder":
        return [name for name, _ in _folder_files(src.path)]
    label = _label(src)
    with _open_tar(src) as (tf, _):
        out = [_clean(m.name) for m in _stream_members(tf, label) if m.isreg()]
    return out


def read_member(source: ArchiveLike, name: str) -> bytes:
    """The bytes of one member, without extracting anything to disk.

    For a folder this reads one file. For a ``.tar.gz`` (or split parts) it inflates the archive up to that
    member and stops: cost grows with the member's position, so never call it per row; use
    :func:`iter_members` once instead. A missing member raises :class:`ReleaseNotFoundError`.
    """
    src = _as_source(source)
    want = _clean(name)
    if isinstance(src, MaskSource) and src.form == "folder":
        root = src.path.parent.resolve()
        p = (root / want).resolve()
        if p.is_relative_to(root) and p.is_file():
            return p.read_bytes()
        raise ReleaseNotFoundError(f"{src.label}: no member {name!r}")
    for member_name, data in iter_members(src, lambda n: n == want):
        return data
    raise ReleaseNotFoundError(f"{_label(src)}: no member {name!r} in the archive")


# ---------------------------------------------------------------------------------------------------
# Safe extraction
# ---------------------------------------------------------------------------------------------------

_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_name(label: str, raw: str) -> None:
    """Raise UnsafeArchiveError for a member name that is empty, absolute or climbs with ``..`` (extracted or
    not: such a member is never a mask either)."""
    if not raw or "\x00" in raw:
        raise UnsafeArchiveError(label, raw, "empty or NUL in the name")
    if raw.startswith(("/", "\\")) or _DRIVE.match(raw):
        raise UnsafeArchiveError(label, raw, "absolute path")
    if ".." in re.split(r"[/\\]", raw):
        raise UnsafeArchiveError(label, raw, "'..' in the path")


def _check_member(label: str, member: tarfile.TarInfo, target: Path) -> Path:
    """Raise UnsafeArchiveError unless ``member`` is a regular file or folder that stays inside ``target``."""
    raw = member.name
    _check_name(label, raw)
    if member.issym() or member.islnk():
        raise UnsafeArchiveError(label, raw, f"link to {member.linkname!r} (links are never extracted)")
    if member.ischr() or member.isblk():
        raise UnsafeArchiveError(label, raw, "device file")
    if member.isfifo():
        raise UnsafeArchiveError(label, raw, "FIFO")
    if not (member.isreg() or member.isdir()):
        raise UnsafeArchiveError(label, raw, f"unsupported member type {member.type!r}")
    if hasattr(tarfile, "data_filter"):
        try:
            tarfile.data_filter(member, str(target))
        except tarfile.FilterError as e:
            raise UnsafeArchiveError(label, raw, f"rejected by tarfile's 'data' filter: {e}") from e
    dest = (target / _clean(raw)).resolve()
    if not dest.is_relative_to(target) or (dest == target and not member.isdir()):
        raise UnsafeArchiveError(label, raw, f"resolves to {dest}, outside {target}")
    return dest


def safe_extract(
    source: ArchiveLike,
    target: str | os.PathLike,
    select: Callable[[str], bool] | None = None,
    *,
    progress: bool | None = False,
) -> list[Path]:
    """Extract an archive (tar.gz, split parts or stream) under ``target`` in one pass; returns the files.

    Refuses with :class:`UnsafeArchiveError` absolute names, ``..`` components, symlinks and hardlinks, devices
    and FIFOs, and any member whose resolved path (following links already in ``target``) leaves ``target``;
    tarfile's ``"data"`` filter is applied as well. The pass stops at the first refused member; members
    before it stay extracted (all inside ``target``). Each file is written under a temporary name and renamed
    when complete, so a member is never left half-written under its final name. File modes from the archive
    are ignored (files are created with the default mode); modification times are kept.
    """
    src = _as_source(source)
    if isinstance(src, MaskSource) and src.form == "folder":
        raise ValueError(f"{src.label} is a folder; there is nothing to extract")
    label = _label(src)
    root = Path(target)
    root.mkdir(parents=True, exist_ok=True)
    root = root.resolve()
    written: list[Path] = []
    from tqdm.auto import tqdm

    total = src.nbytes if isinstance(src, MaskSource) else None
    with _open_tar(src) as (tf, consumed), tqdm(
        total=total, unit="B", unit_scale=True, desc="extract", disable=None if progress is None else not progress
    ) as bar:
        for member in _stream_members(tf, label):
            dest = _check_member(label, member, root)
            if select is not None and not select(_clean(member.name)):
                continue
            try:
                if member.isdir():
                    dest.mkdir(parents=True, exist_ok=True)
                    continue
                if dest.is_dir():
                    raise IsADirectoryError(f"{dest} is a folder")
                dest.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, IsADirectoryError, NotADirectoryError) as e:
                # e.g. a file member "a" then "a/b", or a folder member and a file member of the same name
                raise MalformedFileError(
                    label, f"member {member.name!r} clashes with a file or folder already extracted ({e}); the "
                    "archive is malformed"
                ) from e
            if not dest.parent.resolve().is_relative_to(root):  # a link created between check and write
                raise UnsafeArchiveError(label, member.name, "parent folder resolves outside the target")
            try:
                with atomic_path(dest) as tmp:
                    fh = tf.extractfile(member)
                    with open(tmp, "xb") as out:
                        copied = 0
                        while fh is not None:
                            chunk = fh.read(_BUFFER)
                            if not chunk:
                                break
                            out.write(chunk)
                            copied += len(chunk)
                    if copied != member.size:
                        raise tarfile.ReadError(f"member {member.name!r} is truncated")
                    os.utime(tmp, (member.mtime, member.mtime))
            except _CORRUPT as e:
                raise _corrupt(label, e) from e
            written.append(dest)
            bar.update(max(0, consumed() - bar.n))
    return written
