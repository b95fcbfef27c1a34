"""Packed masks of many volumes in a few parquet shards, read per volume or per structure by byte ranges.

The packed release keeps every volume's packed masks (the rows of :func:`~radgenome_hf.access.masks.masks_schema`)
in shard files per split and kind, ``masks/<split>_<kind>/<split>_<kind>-<digest>-0000i-of-0000N.parquet``:

* rows sorted by ``(volume_name, structure)``; a shard holds whole volumes, a contiguous range of them;
* a row group holds structures of one volume, about :data:`ROW_GROUP_BYTES` of them and at most
  :data:`ROWS_PER_GROUP`, so reading one structure reads one small row group (the footer, which every first
  read fetches, grows with the number of row groups: these bounds balance the two);
* min/max statistics only on ``volume_name`` and ``structure`` (never on ``bits``: parquet writes up to 4 KB of
  binary min/max per row group, which would bloat the footer every reader fetches first);
* zstd, no dictionary (the bits are unique; zstd takes the repeats of the short columns), page checksums.

A reader fetches the footer once per process and file, picks the row groups of a volume (and structure) by their
statistics, and reads just their bytes (:class:`~radgenome_hf.io.ranged_parquet.RangedParquet`): from the Hub that
is three ``Range`` GETs for a first structure, one for each later row group. Any parquet reader decodes the rows;
one volume's rows are exactly a per-volume packed-masks table.

>>> import numpy as np, tempfile
>>> from pathlib import Path
>>> from radgenome_hf.access.masks import PackedMasks
>>> m = np.zeros((8, 8, 4), bool); m[2:5, 2:6, 1:3] = True
>>> packs = {v: PackedMasks.from_arrays({"heart": m, "aorta": m[::-1]}) for v in ("train_1_a_1", "train_2_a_1")}
>>> folder = Path(tempfile.mkdtemp())
>>> files = write_mask_shards(sorted(packs), packs.__getitem__, folder, "train_anatomy", volumes_per_shard=1)
>>> files["train_2_a_1"]
'train_anatomy-...-00001-of-00002.parquet'
>>> pm = read_volume_masks(str(folder / files["train_2_a_1"]), "train_2_a_1", "heart")
>>> bool((pm.mask("heart") == m).all())
True
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path
from typing import Any, Callable, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..errors import MissingVolumeError
from ..io.hub import cached_file
from ..io.lru import LRU
from ..io.ranged_parquet import RangedParquet
from ..ontology import normalize_name
from .masks import PackedMasks, masks_schema

__all__ = ["MIN_SHARDS", "ROW_GROUP_BYTES", "ROWS_PER_GROUP", "SHARD_BYTES", "VOLUMES_PER_SHARD", "read_volume_masks",
           "write_mask_shards"]

#: compressed bytes per row group, about (a 512x512x300 phantom's structures are ~16 KB each: ~8 per row group)
ROW_GROUP_BYTES = 128 << 10
#: structures per row group at most (small masks: the row group's metadata in the footer stays a small part)
ROWS_PER_GROUP = 32
#: volumes per shard at most: a subset download fetches whole shards, so this bounds what it fetches beyond its
#: volumes; the real train anatomy masks (25,692 volumes) make ~1,600 files
VOLUMES_PER_SHARD = 16
#: compressed bytes per shard, about, at most (volumes with unusually large masks close a shard early)
SHARD_BYTES = 64 << 20
#: a split of many volumes is cut into at least this many shards (never below one volume each): parallel
#: downloads, and a small release's subsets and first reads stay small too
MIN_SHARDS = 16


def _shard_schema() -> pa.Schema:
    """:func:`masks_schema` with plain lists (what parquet gives back without the Arrow schema in the footer)."""
    return pa.schema([f.with_type(pa.list_(f.type.value_type)) if pa.types.is_fixed_size_list(f.type) else f
                      for f in masks_schema()])


def _writer(path: Path) -> pq.ParquetWriter:
    # store_schema=False: no base64 Arrow schema in every footer a reader fetches
    return pq.ParquetWriter(path, _shard_schema(), compression="zstd", use_dictionary=False, store_schema=False,
                            write_statistics=["volume_name", "structure"], write_page_checksum=True)


def _compressed_sizes(bits: list[bytes | None]) -> list[float]:
    """Each structure's bits' share of the volume's bits compressed with zstd (what a row group will hold, about)."""
    raw = [len(b or b"") for b in bits]
    if not sum(raw):
        return [0.0] * len(raw)
    packed = pa.compress(pa.py_buffer(b"".join(b or b"" for b in bits)), codec="zstd", asbytes=False).size
    return [r * packed / sum(raw) for r in raw]


def write_mask_shards(
    volumes: Iterable[str],
    load: Callable[[str], PackedMasks],
    folder: str | os.PathLike,
    prefix: str,
    *,
    volumes_per_shard: int = VOLUMES_PER_SHARD,
    max_shard_bytes: int = SHARD_BYTES,
    rows_per_group: int = ROWS_PER_GROUP,
    row_group_bytes: int = ROW_GROUP_BYTES,
    min_shards: int = MIN_SHARDS,
    progress: bool = False,
) -> dict[str, str]:
    """Write the packed masks of ``volumes`` (``load(name)`` gives each one's :class:`PackedMasks`) into shards
    ``<folder>/<prefix>-<digest>-0000i-of-0000N.parquet`` laid out as the module says; returns ``{volume name:
    shard file name}``.

    A shard holds at most ``volumes_per_shard`` volumes (fewer when that would make fewer than ``min_shards``
    shards) and closes early past about ``max_shard_bytes``; a row group closes at ``rows_per_group`` structures or
    about ``row_group_bytes`` (sizes estimated from each volume's bits compressed with zstd). The digest follows the
    bytes written, so unchanged masks keep their names (a publish uploads only what changed) and changed ones
    never reuse a name. Nothing is left under a final name on failure.
    """
    from tqdm.auto import tqdm

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    names = sorted(set(volumes))  # byte order, the order parquet statistics compare in
    schema = _shard_schema()
    volumes_per_shard = max(1, min(volumes_per_shard, math.ceil(len(names) / max(1, min_shards))))
    shards: list[list[str]] = []
    tmp: list[Path] = []
    writer: pq.ParquetWriter | None = None
    in_shard = 0.0
    try:
        for name in tqdm(names, desc=f"masks {prefix}", unit="volume", disable=not progress):
            table = load(name).to_arrow(name).cast(schema).sort_by("structure")
            sizes = _compressed_sizes(table.column("bits").to_pylist())
            if writer is None or len(shards[-1]) >= volumes_per_shard or (
                    in_shard and in_shard + sum(sizes) > max_shard_bytes):
                if writer is not None:
                    writer.close()
                tmp.append(folder / f".{prefix}-{len(tmp):05d}.parquet.tmp")
                writer = _writer(tmp[-1])
                shards.append([])
                in_shard = 0.0
            start, acc = 0, 0.0
            for i, size in enumerate(sizes):
                if i > start and (i - start >= rows_per_group or acc + size > row_group_bytes):
                    writer.write_table(table.slice(start, i - start))
                    start, acc = i, 0.0
                acc += size
            if table.num_rows > start:
                writer.write_table(table.slice(start))
            shards[-1].append(name)
            in_shard += sum(sizes)
        if writer is not None:
            writer.close()
            writer = None
        h = hashlib.sha256()
        for p in tmp:
            with open(p, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        digest = h.hexdigest()[:12]
        out: dict[str, str] = {}
        for i, (p, members) in enumerate(zip(tmp, shards)):
            final = f"{prefix}-{digest}-{i:05d}-of-{len(tmp):05d}.parquet"
            os.replace(p, folder / final)
            out.update((m, final) for m in members)
        return out
    finally:
        if writer is not None:
            writer.close()
        for p in tmp:
            p.unlink(missing_ok=True)


# -- reading ----------------------------------------------------------------------------------------------------
_ROWS: "LRU[tuple[Any, int], pa.Table]" = LRU(256)  # row groups kept per process (up to ROWS_PER_GROUP structures each)


def _row_groups(f: RangedParquet, groups: list[int]) -> pa.Table:
    """The rows of ``groups``, each row group read once per process (the missing ones in one call)."""
    have = {g: t for g in groups if (t := _ROWS.get((f.key, g))) is not None}
    missing = [g for g in groups if g not in have]
    if missing:
        table = f.read(missing)
        offset = 0
        for g in missing:
            n = f.metadata.row_group(g).num_rows
            have[g] = table.slice(offset, n)
            _ROWS.put((f.key, g), have[g])
            offset += n
    return pa.concat_tables([have[g] for g in groups])


def read_volume_masks(source: str, volume_name: str, structure: str | None = None) -> PackedMasks:
    """One volume's packed masks from a masks shard (a local path or an ``hf://`` URL; a Hub file already in the
    Hugging Face cache is read there, offline too). With ``structure``, only the row group(s) that may hold it are
    read: the result then holds that structure and its row-group neighbours.
    """
    local = cached_file(source) if source.startswith("hf://") else source
    f = RangedParquet.open(local or source)
    groups = f.row_groups("volume_name", [volume_name])
    if structure is not None:
        narrowed = sorted(set(groups) & set(f.row_groups("structure", [normalize_name(structure)])))
        groups = narrowed or groups  # absent: read the volume, so the KeyError lists its structures
    table = _row_groups(f, groups) if groups else None
    if table is not None:
        table = table.filter(pc.equal(table["volume_name"], volume_name))
    if table is None or table.num_rows == 0:
        raise MissingVolumeError(f"{source}: holds no masks of volume {volume_name!r}; the row and the masks shard "
                                 "disagree (download or build the release again)")
    return PackedMasks.from_arrow(table, volume_name)
