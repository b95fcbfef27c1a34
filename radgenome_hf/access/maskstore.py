"""Pack a release's masks once, then serve them per volume and structure.

Upstream masks are one binary ``.nii.gz`` per structure, in folders or inside ``.tar.gz`` archives (sometimes one
tar.gz cut into ``_aa``, ``_ab``… parts). An archive cannot be seeked, so it is read in ONE streaming pass and every
structure goes into the packed form (:class:`~radgenome_hf.access.masks.PackedMasks`: bbox + packed bits), one parquet file
per (volume, kind) under the cache. Rows then decode masks from those files, never from the archive.

The store is keyed by the source's fingerprint (every file's size, mtime, inode and ctime), so a changed source
is packed again. Each mask's header is checked against its volume's grid (when the volume is there) before its
voxels are inflated.

* **Folders** (``seg_<volume>/``) are not packed at prepare time: the index (structure names from the listing, the
  grid from one header) is written at once, and a volume's masks are packed on first use
  (:func:`pack_on_demand`, called by :func:`~radgenome_hf.access.lazymasks.open_packed_masks`), so the first row
  never waits for the release. :meth:`MaskStore.pack_all` packs every volume in parallel where all are needed.
* **Archives** are streamed once; the member decodes and packing of each volume run in a process pool on all
  cores while the stream goes on, with a progress bar (bytes, ETA). Each volume is written atomically with its
  index entry beside it, so an interrupted pass resumes without packing finished volumes again.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from ..config import masks_cache_root
from ..errors import VolumeNameError
from ..io.atomic import write_text
from ..names import MaskKind, Split, VolumeName
from ..io.archives import MaskSource
from ..io.release import UpstreamRelease


class MaskStore:
    """Packed masks of one (split, kind) mask source.

    >>> # store = MaskStore.prepare(release, "train", "anatomy")
    >>> # store.names("train_1_a_1"), store.path("train_1_a_1")
    """

    def __init__(self, root: Path, index: dict[str, dict]) -> None:
        self.root = root
        self.index = index

    def __contains__(self, stem: str) -> bool:
        return stem in self.index

    def __len__(self) -> int:
        return len(self.index)

    def names(self, stem: str) -> list[str]:
        return list(self.index.get(stem, {}).get("names", ()))

    def shape(self, stem: str) -> tuple[int, ...] | None:
        entry = self.index.get(stem)
        return tuple(entry["shape"]) if entry and entry.get("shape") else None

    def path(self, stem: str) -> str | None:
        return str(self.root / f"{stem}.masks.parquet") if stem in self.index else None

    def __repr__(self) -> str:
        return f"MaskStore(volumes={len(self)}, root='{self.root}')"

    def pack_all(self, *, progress: bool = True, workers: int | None = None) -> None:
        """Pack every volume not packed yet, in parallel (folder sources; archive stores are packed already)."""
        todo = [stem for stem in self.index if not (self.root / f"{stem}.masks.parquet").is_file()]
        _parallel(((_pack_entry, self.root, stem, self.index[stem]) for stem in todo), len(todo),
                  f"packing {len(todo)} volumes' masks", progress, workers)

    # -- building --------------------------------------------------------------------------------------
    @classmethod
    def prepare(
        cls,
        release: UpstreamRelease,
        split: Split,
        kind: MaskKind,
        *,
        cache_root: str | os.PathLike | None = None,
        progress: bool = True,
        workers: int | None = None,
    ) -> "MaskStore | None":
        """The split's mask store of a kind (``None`` if there are none): a folder source is indexed (packed per
        volume on first use), an archive source is packed in one parallel, resumable pass."""
        source = release.mask_source(split, kind)
        if source is None:
            return None
        masks_root = Path(cache_root) / "masks" if cache_root else masks_cache_root()
        root = masks_root / f"{split}_{kind}_{source_identity(source)}"
        index_file = root / "index.json"
        if index_file.is_file():
            return cls(root, json.loads(index_file.read_text()))
        root.mkdir(parents=True, exist_ok=True)
        if source.form == "folder":
            index = _folder_index(source, kind, progress, release)
        else:
            index = _pack_archive(source, root, kind, progress, workers, release)
        write_text(index_file, json.dumps(index))
        return cls(root, index)


def _ordered(files: dict[str, object]) -> dict[str, object]:
    from ..ontology import normalize_name

    # structure order is by name, whatever order the folder listing or archive had
    return dict(sorted(files.items(), key=lambda kv: normalize_name(kv[0])))


def _volume_grid(release: UpstreamRelease, stem: str) -> tuple[int, int, int] | None:
    """The grid of a local volume from its header alone (``None`` when the volume is not here: the masks' own
    majority grid is used then)."""
    from ..io.nifti import NiftiFile

    try:
        path = release.radgenome_volume(stem)
    except Exception:  # noqa: BLE001 - a name this release cannot place
        return None
    if path is None or "://" in path or not os.path.isfile(path):
        return None
    return NiftiFile.open(path).shape  # CorruptVolumeError names the volume


def _pack_one(root: Path, stem: str, kind: MaskKind, files: dict[str, object],
              grid: Sequence[int] | None = None) -> dict:
    """Pack one volume's mask files; every header is checked against ``grid`` (the volume's) before inflating."""
    from .masks import PackedMasks

    packed = PackedMasks.from_nifti_files(_ordered(files), source=kind, shape=grid)
    out = root / f"{stem}.masks.parquet"
    packed.save(out)
    return {"names": list(packed.names), "shape": list(packed.shape)}


def _pack_entry(root: Path, stem: str, entry: dict) -> dict:
    """Pack one volume of a folder index from its ``seg_<volume>/`` files."""
    return _pack_one(root, stem, entry["kind"], _folder_files(entry["folder"]), entry.get("grid"))


def _folder_files(d: str) -> dict[str, str]:
    return {
        f[: -len(".nii.gz")] if f.endswith(".nii.gz") else f[: -len(".nii")]: os.path.join(d, f)
        for f in sorted(os.listdir(d))
        if f.endswith((".nii.gz", ".nii"))
    }


def _folder_index(source: MaskSource, kind: MaskKind, progress: bool, release: UpstreamRelease) -> dict[str, dict]:
    """Names (from the listing) and grid (the volume's header, else one mask header) of every volume of a folder
    source; nothing packed. ``grid`` is kept only when it is the volume's: packing checks every mask against it."""
    from tqdm.auto import tqdm

    from ..io.nifti import NiftiFile
    from ..ontology import normalize_name

    folder = source.paths[0]
    entries = sorted(e for e in os.listdir(folder) if e.startswith("seg_"))
    index: dict[str, dict] = {}
    for entry in tqdm(entries, desc=f"indexing {source.split} {kind} masks", disable=not progress or None):
        try:
            stem = VolumeName.parse(entry[4:]).stem
        except VolumeNameError:
            continue  # not a volume folder
        d = os.path.join(folder, entry)
        files = _ordered(_folder_files(d))
        if not files:
            continue
        names = list(dict.fromkeys(normalize_name(k) for k in files))
        grid = _volume_grid(release, stem)
        shape = grid or NiftiFile.open(next(iter(files.values()))).shape  # type: ignore[arg-type]
        index[stem] = {"names": names, "shape": list(shape), "folder": d, "kind": kind,
                       **({"grid": list(grid)} if grid else {})}
    return index


_INDEXES: dict[str, dict] = {}


def pack_on_demand(path: str | os.PathLike) -> bool:
    """Pack ``<root>/<stem>.masks.parquet`` from the folder its store's index names, if it is a folder store's
    volume not packed yet (returns whether it packed). Safe with many processes: writes are atomic."""
    p = Path(path)
    if p.is_file() or not p.name.endswith(".masks.parquet"):
        return False
    index_file = p.parent / "index.json"
    index = _INDEXES.get(str(index_file))
    if index is None:
        if not index_file.is_file():
            return False
        index = _INDEXES[str(index_file)] = json.loads(index_file.read_text())
    entry = index.get(p.name[: -len(".masks.parquet")])
    if entry is None or "folder" not in entry:
        return False
    _pack_entry(p.parent, p.name[: -len(".masks.parquet")], entry)
    return True


def _call(job: tuple) -> object:
    fn, *args = job
    return fn(*args)


def _parallel(jobs: Iterator[tuple], total: int | None, desc: str, progress: bool, workers: int | None,
              on_done=None) -> None:
    """Run ``(fn, *args)`` jobs in a process pool on all cores (at most ``2 * workers`` in flight, so memory stays
    bounded while a stream feeds them), with a progress bar; ``on_done(job, result)`` in this process."""
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    from tqdm.auto import tqdm

    n = workers or os.cpu_count() or 1
    bar = tqdm(total=total, desc=desc, unit="vol", disable=not progress or None)
    if n == 1:
        for job in jobs:
            res = _call(job)
            if on_done:
                on_done(job, res)
            bar.update()
        bar.close()
        return
    pending: dict = {}
    with ProcessPoolExecutor(max_workers=n) as pool:
        def drain(block_until: int) -> None:
            while len(pending) > block_until:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    job = pending.pop(fut)
                    res = fut.result()  # a packing error names its file: let it through
                    if on_done:
                        on_done(job, res)
                    bar.update()

        for job in jobs:
            pending[pool.submit(_call, job)] = job
            drain(2 * n)
        drain(0)
    bar.close()


def _pack_and_record(root: Path, stem: str, kind: MaskKind, files: dict[str, object],
                     grid: Sequence[int] | None) -> dict:
    """Pack one volume of an archive, then write its index entry beside it (the resume marker)."""
    entry = _pack_one(root, stem, kind, files, grid)
    write_text(root / f"{stem}.entry.json", json.dumps(entry))
    return entry


def _pack_archive(source: MaskSource, root: Path, kind: MaskKind, progress: bool, workers: int | None,
                  release: UpstreamRelease) -> dict:
    """One streaming pass over an archive source; volumes packed in parallel; volumes already packed by an
    interrupted pass (``<stem>.entry.json`` present) are skipped without decoding their members."""
    index: dict[str, dict] = {}
    for f in root.glob("*.entry.json"):
        index[f.name[: -len(".entry.json")]] = json.loads(f.read_text())
    done = set(index)

    def jobs() -> Iterator[tuple]:
        for stem, files in _iter_volumes(source, progress=progress, skip=done):
            yield (_pack_and_record, root, stem, kind, files, _volume_grid(release, stem))

    _parallel(jobs(), None, f"packing {source.split} {kind} masks", progress, workers,
              on_done=lambda job, entry: index.__setitem__(job[2], entry))
    return dict(sorted(index.items()))


def source_identity(source: MaskSource) -> str:
    """A fingerprint of a mask source that changes when its files change (names, sizes, mtimes, inodes, ctimes:
    an archive replaced by one with the same size and mtime still changes its inode or ctime)."""
    from .masks import BIT_ORDER

    # the bit order is part of the key, so packs written in an older, slower order are packed again
    h = hashlib.sha1(f"{source.form}|{source.split}|{source.kind}|bits={BIT_ORDER}".encode())
    for p in source.paths:
        if source.form == "folder":
            # every file (a mask rewritten in place changes its ctime); a volume's pack is made on first use, so
            # this walk, a stat per file, is the whole cost of preparing a folder source
            for root, _dirs, files in os.walk(p):
                for f in sorted(files):
                    st = os.stat(os.path.join(root, f))
                    h.update(f"{os.path.relpath(os.path.join(root, f), p)}|{st.st_size}|{st.st_mtime_ns}|"
                             f"{st.st_ino}|{st.st_ctime_ns}".encode())
        else:
            st = os.stat(p)
            h.update(f"{os.path.abspath(p)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}|{st.st_ctime_ns}".encode())
    return h.hexdigest()[:16]


def cache_token(cache_root: str | os.PathLike | None = None) -> str:
    """A random token kept in the mask cache folder, made on first use: it changes when the folder is deleted, so
    rows prepared against packs that are gone are prepared (and packed) again. ``""`` when the folder cannot be
    written (nothing is packed there either).

    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> cache_token(root) == cache_token(root) != ""
    True
    """
    folder = Path(cache_root) / "masks" if cache_root else masks_cache_root()
    path = folder / ".token"
    try:
        return path.read_text(encoding="ascii").strip()
    except FileNotFoundError:
        pass
    except OSError:
        return ""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".token.tmp-{os.getpid()}-{secrets.token_hex(4)}"
        tmp.write_text(secrets.token_hex(8), encoding="ascii")
        try:
            os.link(tmp, path)  # fails if another process made it first: its token is the one
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
        return path.read_text(encoding="ascii").strip()
    except OSError:
        return ""


def _iter_volumes(source: MaskSource, progress: bool, skip: set[str] = frozenset()) -> Iterator[tuple[str, dict[str, object]]]:
    """Yield (volume stem, {structure name: NIfTI bytes}) for every volume of an archive source, in one streaming
    pass; members of volumes in ``skip`` are not kept."""
    from ..io.archives import iter_masks

    # Members of one volume are contiguous in the upstream archives, but do not rely on it: buffer per volume
    # and flush a volume when the stream moves on (memory bounded by one volume's masks).
    pending: dict[str, dict[str, object]] = {}
    current: str | None = None
    select = (lambda volume, _kind, _name: volume.stem not in skip) if skip else None
    for volume, _kind, structure, data in iter_masks(source, select, progress=progress or None):
        if current is not None and volume.stem != current and current in pending:
            yield current, pending.pop(current)
        current = volume.stem
        pending.setdefault(volume.stem, {})[structure] = data
    yield from pending.items()


def prepare_mask_stores(
    release: UpstreamRelease, split: Split, kinds: Iterable[MaskKind] = ("region", "anatomy"), **kwargs
) -> dict[str, MaskStore]:
    """Mask stores of a split, by kind (kinds without masks are left out)."""
    stores = {}
    for kind in kinds:
        store = MaskStore.prepare(release, split, kind, **kwargs)
        if store is not None:
            stores[kind] = store
    return stores
