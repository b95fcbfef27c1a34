"""Pack a release's masks once, then serve them per volume and structure.

Upstream masks are one binary ``.nii.gz`` per structure, in folders or inside ``.tar.gz`` archives (sometimes one
tar.gz cut into ``_aa``, ``_ab``… parts). An archive cannot be seeked, so it is read in ONE streaming pass and every
structure goes into the packed form (:class:`~radgenome_hf.access.masks.PackedMasks`: bbox + packed bits), one parquet file
per (volume, kind) under the cache. Rows then decode masks from those files, never from the archive.

The store is keyed by the source's fingerprint (file sizes, mtimes, inodes and ctimes), so a changed source is
packed again. Each mask's header is checked against its volume's grid (when the volume is there) before its voxels
are inflated.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Iterable, Iterator

import hashlib

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
    ) -> "MaskStore | None":
        """Pack the split's masks of a kind (once; later calls reuse the packed files). ``None`` if there are none."""
        source = release.mask_source(split, kind)
        if source is None:
            return None
        masks_root = Path(cache_root) / "masks" if cache_root else masks_cache_root()
        root = masks_root / f"{split}_{kind}_{source_identity(source)}"
        index_file = root / "index.json"
        if index_file.is_file():
            return cls(root, json.loads(index_file.read_text()))
        root.mkdir(parents=True, exist_ok=True)
        index: dict[str, dict] = {}
        for stem, files in _iter_volumes(source, progress=progress):
            index[stem] = _pack_one(root, stem, kind, files, _volume_grid(release, stem))
        write_text(index_file, json.dumps(index))
        return cls(root, index)


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
              grid: tuple[int, int, int] | None = None) -> dict:
    from .masks import PackedMasks

    from ..ontology import normalize_name

    # structure order is by name, whatever order the folder listing or archive had
    ordered = dict(sorted(files.items(), key=lambda kv: normalize_name(kv[0])))
    packed = PackedMasks.from_nifti_files(ordered, source=kind, shape=grid)
    out = root / f"{stem}.masks.parquet"
    packed.save(out)
    return {"names": list(packed.names), "shape": list(packed.shape)}


def source_identity(source: MaskSource) -> str:
    """A fingerprint of a mask source that changes when its files change (names, sizes, mtimes, inodes, ctimes:
    an archive replaced by one with the same size and mtime still changes its inode or ctime)."""
    from .masks import BIT_ORDER

    # the bit order is part of the key, so packs written in an older, slower order are packed again
    h = hashlib.sha1(f"{source.form}|{source.split}|{source.kind}|bits={BIT_ORDER}".encode())
    for p in source.paths:
        if source.form == "folder":
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


def _iter_volumes(source: MaskSource, progress: bool) -> Iterator[tuple[str, dict[str, object]]]:
    """Yield (volume stem, {structure name: path or bytes}) for every volume of a mask source."""
    from tqdm.auto import tqdm

    if source.form == "folder":
        folder = source.paths[0]
        entries = sorted(e for e in os.listdir(folder) if e.startswith("seg_"))
        for entry in tqdm(entries, desc=f"packing {source.split} {source.kind} masks", disable=not progress or None):
            try:
                stem = VolumeName.parse(entry[4:]).stem
            except VolumeNameError:
                continue  # not a volume folder
            d = os.path.join(folder, entry)
            files = {
                f[: -len(".nii.gz")] if f.endswith(".nii.gz") else f[: -len(".nii")]: os.path.join(d, f)
                for f in sorted(os.listdir(d))
                if f.endswith((".nii.gz", ".nii"))
            }
            if files:
                yield stem, files
        return

    from ..io.archives import iter_masks

    # One streaming pass. Members of one volume are contiguous in the upstream archives, but do not rely on it:
    # buffer per volume and flush a volume when the stream moves on (memory bounded by one volume's masks).
    pending: dict[str, dict[str, object]] = {}
    current: str | None = None
    for volume, _kind, structure, data in iter_masks(source, progress=progress or None):
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
