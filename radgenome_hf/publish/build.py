"""Build the packed release: parquet per config and split, packed masks, volumes by path, the dataset card.

The packed release is what :mod:`radgenome_hf.publish` pushes to the Hub. Plain
``datasets.load_dataset(folder_or_repo, "vqa")`` loads it without this package: every column is a native type
(strings, numbers, lists, structs). Layout::

    README.md                         YAML ``configs:`` (one default) + card body from cards/README.template.md
    release_manifest.json             rows per config and split (publish verifies against it)
    <config>/<split>-<digest>-0000i-of-0000N.parquet   zstd, page checksums; N divides by 2, 4 and 8 where the
                                      rows allow; <digest> follows the split's content (see _write_shards)
    volumes/<upstream relative path without .nii.gz>.zarr/   chunked volumes (default, ``volumes="chunked"``): zarr v3,
                                      one shard of 32³ chunks per volume, HU with the rescale applied, geometry in
                                      its attributes (:mod:`radgenome_hf.io.chunked`); referenced from rows by
                                      relative path (``volume.path``), whose ``rescale`` is then null
    volumes/<upstream relative path>  or, with ``volumes="nifti"``, the NIfTI files themselves
    masks/<split>_<kind>/<split>_<kind>-<digest>-0000i-of-0000N.parquet   packed masks (bbox + numpy.packbits) of
                                      every volume of a split, kind ``region`` or ``anatomy``: a few shards of
                                      whole volumes, rows sorted by (volume_name, structure), small row groups
                                      (access/maskshards.py); rows reference them by path + ``volume_name``
    figures/*.png                     a slice with mask overlays and its grounded sentence; distributions

Decoding a packed mask with any parquet reader + numpy: take the row of the volume and structure
(``mask.volume_name``, ``mask.structure``), ``np.unpackbits(bits)[:prod(bbox extent)].reshape(extent,
order=bit_order)`` and place it at ``bbox`` in a zero grid of ``shape``.
A chunked volume reads with any zarr v3 reader (``zarr.open_array(path)[k0:k1, j0:j1, i0:i1].T``); over the Hub a
crop fetches only the chunks it touches, and one structure's mask only its shard's footer and row group.
The build is atomic: it writes ``<out>.tmp-<pid>`` and renames it, so a failure (a full disk) leaves no partial
release.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..access.maskshards import (MIN_SHARDS, ROW_GROUP_BYTES, ROWS_PER_GROUP, SHARD_BYTES, VOLUMES_PER_SHARD,
                                 write_mask_shards)
from ..errors import BuildError, RadGenomeError
from ..hf.schema import CONFIG_NAMES

MASK_COLUMNS = {"mask": ("path",), "masks": ("region", "anatomy")}
VOLUME_FORMATS = ("chunked", "nifti")
_POOL_MIN_VOLUMES = 8  # fewer volumes convert in this process: starting worker processes costs more


@dataclass(frozen=True)
class MaskSharding:
    """How the packed masks are cut into shards (see :mod:`radgenome_hf.access.maskshards`)."""

    volumes_per_shard: int = VOLUMES_PER_SHARD
    max_shard_bytes: int = SHARD_BYTES
    rows_per_group: int = ROWS_PER_GROUP
    row_group_bytes: int = ROW_GROUP_BYTES
    min_shards: int = MIN_SHARDS


@dataclass
class BuildReport:
    folder: Path
    rows: dict[str, dict[str, int]] = field(default_factory=dict)
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        rows = "; ".join(f"{c}: " + ", ".join(f"{s} {n}" for s, n in v.items()) for c, v in self.rows.items())
        skipped = f"; skipped {self.skipped}" if self.skipped else ""
        return f"built {self.folder} ({self.files} files, {self.bytes / 1e6:.1f} MB, {self.seconds:.1f} s): {rows}{skipped}"


def _num_shards(rows: int, requested: int | None) -> int:
    if requested:
        return max(1, min(requested, rows))
    for n in (64, 8, 4, 2):
        if rows >= n * (1000 if n == 64 else 1):
            return n
    return 1


def _convert_volume(job: tuple[str, str, list | None, list | None]) -> int:
    """Write one source volume as a chunked volume (HU, the row's spacing and rescale applied); its bytes."""
    from ..access.volume import Volume
    from ..io.chunked import write_chunked_volume

    src, dst, spacing, rescale = job
    v = Volume.open(src, spacing=spacing, rescale=rescale)
    write_chunked_volume(dst, v.array(), v.affine, name=v.name, source=Path(src).name, rescale=v.rescale)
    v.release()
    return sum(f.stat().st_size for f in Path(dst).rglob("*") if f.is_file())


class _Placer:
    """Copies (or hard-links) referenced files into the release once and rewrites paths to relative ones;
    volumes are converted to chunked volumes (``volumes="chunked"``) or placed as they are (``"nifti"``)."""

    def __init__(self, out: Path, roots: dict[str, str], link: str, volumes: str = "chunked",
                 workers: int | None = None, progress: bool = False) -> None:
        self.out, self.roots, self.link = out, roots, link
        self.volumes, self.workers, self.progress = volumes, workers, progress
        self.done: dict[str, str] = {}

    def _volume_rel(self, path: str) -> str:
        src = Path(path)
        rel = None
        for root in self.roots.values():
            if root and path.startswith(root.rstrip("/") + "/"):
                rel = "volumes/" + os.path.relpath(path, root).replace(os.sep, "/")
                break
        rel = rel or f"volumes/{src.name}"
        if self.volumes == "chunked":
            from ..io.chunked import SUFFIX

            for ext in (".nii.gz", ".nii"):
                if rel.endswith(ext):
                    rel = rel[: -len(ext)]
                    break
            rel += SUFFIX
        return rel

    def place_volumes(self, items: dict[str, tuple[list | None, list | None]]) -> dict[str, str]:
        """Relative paths of volumes ``{source path: (row spacing, row rescale)}``, placing each once. Chunked
        conversions run in a process pool (``workers``) when there are many, with a progress bar."""
        if self.volumes != "chunked":
            return {p: self.relative(p) for p in items}  # type: ignore[misc]
        jobs = []
        for path, (spacing, rescale) in items.items():
            if path in self.done:
                continue
            self._check_volume(Path(path))
            rel = self._volume_rel(path)
            self.done[path] = rel
            if not (self.out / rel).exists():
                jobs.append((path, str(self.out / rel), spacing, rescale))
        if jobs:
            from tqdm.auto import tqdm

            from ..generate.runner import bounded_map, make_executor

            workers = 1 if len(jobs) < _POOL_MIN_VOLUMES else self.workers
            with make_executor(workers=workers) as ex, tqdm(total=len(jobs), desc="chunking volumes", unit="vol",
                                                            disable=not self.progress) as bar:
                for job, res in bounded_map(ex, _convert_volume, jobs):
                    if isinstance(res, BaseException):
                        raise res
                    bar.update(1)
        return {p: self.done[p] for p in items}

    def relative(self, path: str | None) -> str | None:
        """The relative path of a NIfTI volume placed as it is (hard-linked or copied once)."""
        if path is None:
            return None
        if path in self.done:
            return self.done[path]
        src = Path(path)
        self._check_volume(src)
        rel = self._volume_rel(path)
        dst = self.out / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if not dst.exists():
            if self.link == "hardlink":
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
            else:
                shutil.copy2(src, dst)
        self.done[path] = rel
        return rel

    def _check_volume(self, src: Path) -> None:
        """Only NIfTI files of the source release go into a packed release (and so to the Hub): a link that leads
        out of it, or a file that is not NIfTI, is refused with an error naming it."""
        from ..errors import MalformedFileError
        from ..io.nifti import NiftiFile

        real = src.resolve()
        roots = [Path(r).resolve() for r in self.roots.values() if r]
        if not any(real.is_relative_to(r) for r in roots):
            raise MalformedFileError(src, f"is a link to {real}, outside the source release; refusing to copy it into "
                                          "the packed release (replace the link by the volume file itself)")
        NiftiFile.open(real).header  # noqa: B018 - CorruptVolumeError names a file that is not NIfTI


def _write_shards(table: pa.Table, folder: Path, split: str, size: int, n: int) -> str:
    """Write ``n`` zstd shards with page checksums, named ``<split>-<digest>-0000i-of-0000N.parquet`` where the
    digest is of the split's bytes; returns the card's glob for them. ``datasets`` keys its cache of a local
    folder by the card's patterns, not by the files: a pattern that follows the content means a release
    rebuilt in place is never served from the old Arrow files (unchanged shards keep their names, so a publish
    still uploads only what changed)."""
    import hashlib

    paths, h = [], hashlib.sha256()
    for i in range(n):
        p = folder / f".{split}-{i:05d}.parquet"
        pq.write_table(table.slice(i * size, size), p, compression="zstd", write_page_checksum=True)
        h.update(p.read_bytes())
        paths.append(p)
    digest = h.hexdigest()[:12]
    for i, p in enumerate(paths):
        p.rename(folder / f"{split}-{digest}-{i:05d}-of-{n:05d}.parquet")
    return f"{split}-{digest}-*.parquet"


def _mask_refs(table: pa.Table) -> list[tuple[str, str, str]]:
    """(kind, volume name, per-volume packed-mask file) of every mask reference of a config's rows."""
    out = []
    if "volume_name" not in table.column_names:
        return out
    volumes = table.column("volume_name").to_pylist()
    if "mask" in table.column_names:
        for v, m in zip(volumes, table.column("mask").to_pylist()):
            if m and m.get("path"):
                out.append((m["source"], v, m["path"]))
    if "masks" in table.column_names:
        for v, m in zip(volumes, table.column("masks").to_pylist()):
            out += [(kind, v, m[kind]) for kind in MASK_COLUMNS["masks"] if m and m.get(kind)]
    return out


def _write_masks(out: Path, tables: dict[str, dict[str, pa.Table]], sharding: MaskSharding,
                 progress: bool) -> dict[tuple[str, str], str]:
    """Write every referenced volume's packed masks into shards per (split, kind); returns
    ``{(split, per-volume file): shard path relative to the release}``."""
    from ..access.lazymasks import open_packed_masks

    wanted: dict[tuple[str, str], dict[str, str]] = {}
    for splits in tables.values():
        for split, table in splits.items():
            for kind, volume, path in _mask_refs(table):
                seen = wanted.setdefault((split, kind), {}).setdefault(volume, path)
                if seen != path:
                    raise BuildError(f"{split} {kind} masks of {volume} come from two files ({seen} and {path}); "
                                     "rebuild the mask cache (delete it) and build again")
    placed: dict[tuple[str, str], str] = {}
    for (split, kind), files in sorted(wanted.items()):
        name = f"{split}_{kind}"
        shard_of = write_mask_shards(files, lambda v: open_packed_masks(files[v]), out / "masks" / name, name,
                                     progress=progress, **dataclasses.asdict(sharding))
        placed.update(((split, files[v]), f"masks/{name}/{f}") for v, f in shard_of.items())
    return placed


def _rewrite_masks(table: pa.Table, split: str, placed: dict[tuple[str, str], str]) -> pa.Table:
    """Point the rows' mask references at the shards: the shard's relative path plus the row's volume name."""
    for col, fields in MASK_COLUMNS.items():
        if col not in table.column_names:
            continue
        arr = table.column(col).combine_chunks()
        children = {f.name: arr.field(f.name) for f in arr.type}
        for f in fields:
            children[f] = pa.array([None if p is None else placed[(split, p)] for p in children[f].to_pylist()],
                                   pa.string())
        has_ref = functools.reduce(pc.or_kleene, [pc.is_valid(children[f]) for f in fields])
        children["volume_name"] = pc.if_else(has_ref, table.column("volume_name").combine_chunks(), None)
        new = pa.StructArray.from_arrays(list(children.values()), names=list(children), mask=pc.is_null(arr))
        table = table.set_column(table.column_names.index(col), col, new)
    return table


def _rewrite(table: pa.Table, placer: _Placer) -> pa.Table:
    """The ``volume`` column with paths relative to the release (mask references: :func:`_rewrite_masks`)."""
    if "volume" not in table.column_names:
        return table
    arr = table.column("volume").combine_chunks()
    children = _rewrite_volumes({f.name: arr.field(f.name) for f in arr.type}, placer)
    new = pa.StructArray.from_arrays(list(children.values()), names=list(children), mask=pc.is_null(arr))
    return table.set_column(table.column_names.index("volume"), "volume", new)


def _rewrite_volumes(children: dict[str, pa.Array], placer: _Placer) -> dict[str, pa.Array]:
    """The ``volume`` struct's children with relative paths; a chunked volume's values are HU already, so the
    row's ``rescale`` becomes null (applying it again would be wrong)."""
    paths = children["path"].to_pylist()
    spacing = children["spacing"].to_pylist() if "spacing" in children else [None] * len(paths)
    rescale = children["rescale"].to_pylist() if "rescale" in children else [None] * len(paths)
    items: dict[str, tuple] = {}
    for p, sp, rs in zip(paths, spacing, rescale):
        if p is not None:
            items.setdefault(p, (sp, rs))
    rel = placer.place_volumes(items)
    out = dict(children)
    out["path"] = pa.array([rel.get(p) if p is not None else None for p in paths], pa.string())
    if placer.volumes == "chunked" and "rescale" in children:
        out["rescale"] = pa.nulls(len(paths), children["rescale"].type)
    return out


def _statistics(tables: dict[str, dict[str, pa.Table]]) -> dict:
    stats: dict = {"rows": {c: {s: t.num_rows for s, t in v.items()} for c, v in tables.items()}}
    if "vqa" in tables:
        stats["question_types"] = {
            s: dict(Counter(t.column("question_type").to_pylist())) for s, t in tables["vqa"].items()
        }
    if "segmentation" in tables:
        freq: Counter = Counter()
        for t in tables["segmentation"].values():
            for structures in t.column("structures").to_pylist():
                freq.update(s["name"] for s in structures if s["voxel_count"])
        stats["structure_frequency"] = dict(freq.most_common(25))
    if "reports" in tables:
        prevalence: dict[str, float] = {}
        labels = [r for t in tables["reports"].values() for r in t.column("labels").to_pylist()]
        for name in labels[0] if labels else ():
            vals = [r[name] for r in labels if r and r.get(name) is not None]
            prevalence[name] = round(sum(vals) / len(vals), 3) if vals else float("nan")
        stats["label_prevalence"] = prevalence
    stats.update(_quality_statistics(tables))
    return stats


def _quality_statistics(tables: dict[str, dict[str, pa.Table]]) -> dict:
    """Per split, the volumes carrying each quality flag and the reports whose CT-RATE labels disagree with their
    text (label by label, and any label); nothing when the release has no quality rows."""
    from ..generate.label_checks import label_disagreements
    from ..generate.quality import QUALITY_FLAGS

    import numpy as np

    flags: dict[str, dict[str, int]] = {}
    per_split: dict[str, dict[str, dict]] = {}  # split -> volume -> quality (every config joins the same rows)
    for config in tables.values():
        for split, t in config.items():
            if "quality" in t.column_names and t.num_rows:
                # one row per volume (a vqa split has millions of rows, a few thousand volumes)
                codes = t.column("volume_name").combine_chunks().dictionary_encode()
                _, first = np.unique(codes.indices.to_numpy(zero_copy_only=False), return_index=True)
                picked = t.select(["volume_name", "quality"]).take(pa.array(first))
                for name, q in zip(picked.column(0).to_pylist(), picked.column(1).to_pylist()):
                    if q is not None:
                        per_split.setdefault(split, {})[name] = q
    for split, volumes in per_split.items():
        seen = Counter(f for q in volumes.values() for f in q["flags"] or ())
        flags[split] = {"volumes checked": len(volumes), "any flag": sum(bool(q["flags"]) for q in volumes.values()),
                        **{f: seen[f] for f in (*QUALITY_FLAGS, *sorted(set(seen) - set(QUALITY_FLAGS)))}}
    out: dict = {"quality_flags": flags} if flags else {}
    checks = {split: [q.get("label_checks") for q in t.column("quality").to_pylist() if q]
              for split, t in tables.get("reports", {}).items() if "quality" in t.column_names}
    if any(any(c) for c in checks.values()):
        out["label_disagreements"] = label_disagreements(checks)
    return out


def _figures(out: Path, datasets_by_config: dict, stats: dict) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    figures = []
    (out / "figures").mkdir(exist_ok=True)
    if "question_types" in stats:
        fig, ax = plt.subplots(figsize=(6, 3))
        merged: Counter = Counter()
        for v in stats["question_types"].values():
            merged.update(v)
        ax.bar(list(merged), list(merged.values()), color="#4477aa")
        ax.set_title("VQA question types")
        fig.tight_layout()
        fig.savefig(out / "figures" / "question_types.png", dpi=80)
        plt.close(fig)
        figures.append("figures/question_types.png")
    grounded = datasets_by_config.get("grounded_reports")
    if grounded is not None:
        ds = grounded["train"] if "train" in grounded else next(iter(grounded.values()))
        for row in ds:
            mask, vol = row["mask"], row["volume"]
            if vol is None or mask is None or mask.source == "whole":
                continue
            m = mask.array()
            arr = vol.array()
            k = int(np.argmax(m.sum(axis=(0, 1))))
            fig, ax = plt.subplots(figsize=(4.5, 4.8))
            ax.imshow(np.clip(arr[:, :, k].T, -1000, 400), cmap="gray", origin="lower")
            ax.contour(m[:, :, k].T, levels=[0.5], colors="#ee6677", linewidths=1.2, origin="lower")
            ax.set_axis_off()
            ax.set_title(f"{row['volume_name']}: {row['anatomy']}", fontsize=8)
            fig.text(0.02, 0.02, row["sentence"][:110], fontsize=7, wrap=True)
            fig.savefig(out / "figures" / "grounded_example.png", dpi=80)
            plt.close(fig)
            figures.append("figures/grounded_example.png")
            break
    return figures


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_dead_temp_folders(out: Path) -> None:
    """Remove ``<out>.tmp-<pid>`` / ``<out>.old-<pid>`` folders left by builds that were killed."""
    for p in out.parent.glob(f"{out.name}.*-*"):
        kind, _, pid = p.name[len(out.name) + 1:].partition("-")
        if kind in ("tmp", "old") and pid.isdigit() and not _pid_alive(int(pid)) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _swap_in(tmp: Path, out: Path) -> None:
    """Put the finished release under its final name: the old one is renamed aside first, so at every instant
    ``out`` is either the complete old release or the complete new one (never a half-deleted folder)."""
    old = out.with_name(f"{out.name}.old-{os.getpid()}")
    moved = False
    try:
        if out.exists():
            os.replace(out, old)
            moved = True
        os.replace(tmp, out)  # fails (not empty) when a concurrent build swapped its release in meanwhile
    except OSError as exc:
        if moved and not out.exists():
            os.replace(old, out)
        raise BuildError(f"{out} was replaced by another build running at the same time ({exc.strerror}); "
                         "this build's output was discarded: run one build at a time") from exc
    shutil.rmtree(old, ignore_errors=True)


def build_release(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    configs: tuple[str, ...] = CONFIG_NAMES,
    num_shards: int | None = None,
    link: str = "hardlink",
    repo_id: str = "<org>/radgenome-chestct",
    progress: bool = False,
    overwrite: bool = False,
    volumes: str = "chunked",
    workers: int | None = None,
    mask_sharding: MaskSharding = MaskSharding(),
) -> BuildReport:
    """Build the packed release of an upstream-layout folder ``source`` into ``out`` (atomically).

    ``volumes``: ``"chunked"`` (default: zarr v3 chunked volumes, range-readable from the Hub) or ``"nifti"``
    (the NIfTI files as they are, hard-linked or copied per ``link``). ``workers``: processes converting volumes
    (default ``$RADGENOME_WORKERS`` / all cores). ``mask_sharding`` sets how the packed masks are cut into shards
    (the defaults suit the real release).
    """
    if volumes not in VOLUME_FORMATS:
        raise ValueError(f"volumes must be one of {VOLUME_FORMATS}, got {volumes!r}")
    import datasets

    from ..hf.loading import register
    from .card import ConfigSpec, render_card, volume_format_markdown
    from ..io.release import UpstreamRelease

    register()
    t0 = time.perf_counter()
    out = Path(out)
    if out.exists() and not overwrite:
        raise RadGenomeError(f"{out} exists; pass overwrite=True (or --overwrite) to replace it")
    _sweep_dead_temp_folders(out)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    release = UpstreamRelease.discover(source, need="any")
    placer = _Placer(tmp, {"rg": release.radgenome_root or "", "ct": release.ctrate_root or ""}, link, volumes,
                     workers, progress)
    report = BuildReport(out)
    tables: dict[str, dict[str, pa.Table]] = {}
    loaded: dict = {}
    descriptions: dict[str, str] = {}
    specs = []
    try:
        for config in configs:
            builder = datasets.load_dataset_builder(
                "radgenome", config, data_dir=str(source), cache_dir=str(tmp / ".build-cache"), progress=progress
            )
            try:
                builder.download_and_prepare()
            except RadGenomeError as exc:
                if isinstance(exc, OSError):  # a full disk is no reason to skip a config
                    raise
                report.skipped[config] = str(exc)
                continue
            dd = builder.as_dataset()
            loaded[config] = dd
            descriptions[config] = builder.info.description or ""
            # native types only: drop datasets' feature metadata (it names this package's feature types)
            tables[config] = {split: ds.data.table.replace_schema_metadata(None) for split, ds in dd.items()}
        placed = _write_masks(tmp, tables, mask_sharding, progress)
        for config, splits in tables.items():
            patterns = {}
            for split, table in splits.items():
                table = _rewrite(_rewrite_masks(table, split, placed), placer)
                splits[split] = table
                size = math.ceil(table.num_rows / _num_shards(table.num_rows, num_shards)) or 1
                n = max(1, math.ceil(table.num_rows / size))
                (tmp / config).mkdir(exist_ok=True)
                patterns[split] = _write_shards(table, tmp / config, split, size, n)
            specs.append(ConfigSpec(
                name=config,
                data_files={split: f"{config}/{pattern}" for split, pattern in patterns.items()},
                default=(config == "vqa"),
                description=descriptions[config],
            ))
        stats = _statistics(tables)
        figures = _figures(tmp, loaded, stats)
        report.rows = stats["rows"]
        (tmp / "release_manifest.json").write_text(json.dumps({"configs": report.rows}, indent=1))
        example = next((r for r in placer.done.values() if r.startswith("volumes/")), None)
        (tmp / "README.md").write_text(render_card(specs, stats, figures, repo_id=repo_id,
                                                   volume_format=volume_format_markdown(volumes, example, repo_id)))
        shutil.rmtree(tmp / ".build-cache", ignore_errors=True)
        _swap_in(tmp, out)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        from datasets.exceptions import DatasetGenerationError

        cause = exc if isinstance(exc, OSError) else exc.__cause__ if isinstance(exc, DatasetGenerationError) else None
        if isinstance(cause, OSError) and not isinstance(exc, BuildError):
            # a full disk, a lost permission: also when datasets wraps it in a DatasetGenerationError
            err = BuildError(f"building {out} failed writing {cause.filename or tmp}: {cause.strerror or cause}; "
                             f"{out} is unchanged (free space or fix permissions, then run build again)")
            err.errno = cause.errno
            raise err from exc
        raise
    files = [p for p in out.rglob("*") if p.is_file()]
    report.files = len(files)
    report.bytes = sum(p.stat().st_size for p in files)
    report.seconds = time.perf_counter() - t0
    return report
