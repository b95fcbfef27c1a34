"""End-to-end rebuild of a release: ingest → (segment) → ground → vqa → scene graph → anatomy pairs → split.

Reads an upstream-layout folder (CT-RATE reports/labels/metadata + RadGenome volumes and masks) and writes a NEW
release folder in the same upstream layout, so the datasets builder loads it like the original:

```
<out>/RadGenome-ChestCT/dataset/radgenome_files/{train,validation}_{region_report,case_disorders,vqa_*}.csv
<out>/RadGenome-ChestCT/dataset/{train,valid}_preprocessed/<patient>/<patient><scan>/<stem>.nii.gz  (hard links)
<out>/RadGenome-ChestCT/dataset/{train,valid}_{anatomy,region}_mask/seg_<stem>/<name>.nii.gz     (folders)
<out>/RadGenome-ChestCT/dataset/scene_graph/{train,validation}.jsonl    (rows of the scene_graph config)
<out>/RadGenome-ChestCT/dataset/scene_graph/json/<stem>_SceneGraph.json  (one Chest ImaGenome-style file each)
<out>/RadGenome-ChestCT/dataset/anatomy_pairs/{train,validation}.jsonl  (rows of the anatomy_pairs config)
<out>/RadGenome-ChestCT/dataset/splits.csv                              (volume -> split assignment)
<out>/CT-RATE/dataset/...                                               (the upstream CT-RATE files, hard links)
```

Splits: by default each volume stays in the split its name says (``train_``/``valid_``); with ``validation=<f>``
patients are re-split (:mod:`~radgenome_hf.generate.splits`) and the CSVs follow the new assignment, while volume
names, and therefore folders, never change. Masks come from the release itself (``masks_from="release"``: its
folders or archives, packed once in one streaming pass), from a segmentation output folder of
``<stem>.masks.parquet`` (``masks_dir``), or from running a segmentation backend (``masks_from="segment"``).

Where it runs: mask archives are packed in one streaming pass feeding every worker
(:mod:`~radgenome_hf.generate.packing`); the per-volume stages read -> (segment) -> pack -> quality run in a
process pool or as one Ray Data pipeline (:mod:`~radgenome_hf.generate.volumes`); grounding runs over shards of
the reports on the same workers, the split as one task (it ranks every patient, and is cheap), and region_report
rows, VQA, scene graphs and anatomy pairs as tasks over shards of whole patients
(:mod:`~radgenome_hf.generate.text`), byte-identical to one serial pass. ``ray="local"`` (or a cluster address)
puts all of it on Ray; otherwise ``workers`` processes (default all cores). Every stage is
resumable per volume, so a killed rebuild run again finishes with the same files as an uninterrupted one. The
quality rows go to ``dataset/quality/{train,validation}.jsonl``; ``<work>/run_report.json`` holds volumes/s per
stage, GPU utilisation (when there is a GPU) and each failure with its volume (a failed volume is left out of
the release, never stops the run).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import ReleaseNotFoundError
from ..io.atomic import atomic_path, write_text
from ..names import VolumeName, mask_dir, radgenome_csv_name, radgenome_volume_path
from ..io.tables import RADGENOME_HEADERS, write_csv
from .ground import GroundedReport, ground_reports
from .label_checks import add_label_checks
from .splits import assign_splits, split_report, write_splits
from .text import run_text_stages
from .vqa import VQATables, check_invariants

if TYPE_CHECKING:  # pragma: no cover
    from ..access.masks import PackedMasks
    from .ground import GroundingBackend

__all__ = ["PipelineConfig", "PipelineReport", "rebuild_release", "MASKS_FROM"]

MASKS_FROM = ("release", "segment", "none")
_SPLITS = ("train", "valid")


@dataclass
class PipelineConfig:
    """Options of :func:`rebuild_release`."""

    seed: int = 0
    validation: float | None = None  # None: keep the upstream split of each volume; else patient re-split
    masks_from: str = "release"  # release | segment | none
    masks_dir: str | os.PathLike | None = None  # folder of <stem>.masks.parquet (overrides masks_from)
    segment_backend: "str | Any" = "threshold"  # a backend name, or a backend object (e.g. a configured MonaiBackend)
    link: str = "hardlink"  # hardlink | copy | symlink
    include_ctrate: bool = True
    scene_graph_json: bool = True
    grounding: "GroundingBackend | None" = None
    work_dir: str | os.PathLike | None = None  # packed masks etc. (default <out>/.work)
    progress: bool | None = None
    ray: str | None = None  # None: a local process pool; "local": a local Ray instance; else a cluster address
    workers: int | None = None  # pool processes / local Ray CPUs (default all cores)
    segment_batch: int = 2  # volumes per segmentation actor call (Ray)


@dataclass
class PipelineReport:
    """What :func:`rebuild_release` wrote."""

    out: Path
    volumes: int = 0
    splits: str = ""
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # volume -> why
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    run: dict[str, Any] = field(default_factory=dict)  # the run report (also <work>/run_report.json)

    def summary(self) -> str:
        lines = [f"rebuilt {self.volumes} volumes into {self.out} in {self.seconds:.1f} s", f"splits: {self.splits}"]
        for split, c in self.counts.items():
            lines.append(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in c.items()))
        for name, why in sorted(self.skipped.items()):
            lines.append(f"  skipped {name}: {why}")
        for p in self.problems:
            lines.append(f"  PROBLEM: {p}")
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------------
# file helpers
# ------------------------------------------------------------------------------------------------


def _place(src: Path, dst: Path, how: str) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists() or dst.is_symlink():
        dst.unlink()
    if how == "symlink":
        os.symlink(os.path.abspath(src), dst)
        return
    if how == "hardlink":
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system: copy
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    return write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


# ------------------------------------------------------------------------------------------------
# masks
# ------------------------------------------------------------------------------------------------


class _Masks:
    """Per-volume packed-mask files, anatomy and region kinds kept apart (written apart; merged by the text stages)."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, Path]] = {}  # stem -> kind -> parquet

    def add(self, stem: str, kind: str, path: Path) -> None:
        self.files.setdefault(stem, {})[kind] = path


def _collect_masks(release: Any, stems: list[str], cfg: PipelineConfig, work: Path,
                   volume_paths: dict[str, Path], executor: Any, run: dict[str, Any]) -> tuple[_Masks, Any]:
    """The masks of every volume and the per-volume stages' report (quality rows, failures)."""
    from .volumes import VolumeJob, run_volume_stages

    out = _Masks()
    backend = None
    if cfg.masks_dir is not None:
        d = Path(cfg.masks_dir)
        if not d.is_dir():
            raise ReleaseNotFoundError(f"{d}: masks folder not found; give the segmentation stage's output folder "
                                       "(<stem>.masks.parquet files)")
        for s in stems:
            p = d / f"{s}.masks.parquet"
            if p.is_file():
                out.add(s, "anatomy", p)
    elif cfg.masks_from == "segment":
        from .backends import get_backend

        backend = get_backend(cfg.segment_backend) if isinstance(cfg.segment_backend, str) else cfg.segment_backend
    elif cfg.masks_from == "release":
        from .packing import pack_mask_sources

        t0 = time.perf_counter()
        sources = [(src, work / "masks" / f"{split}_{kind}") for split in _SPLITS for kind in ("anatomy", "region")
                   if (src := release.mask_source(split, kind)) is not None]
        reps = pack_mask_sources(sources, executor, progress=bool(cfg.progress))
        packed = sum(r.done for r in reps)
        failed = {f"{s} ({src.kind} masks)": e for (src, _), r in zip(sources, reps) for s, e in r.failed.items()}
        for (src, _), rep in zip(sources, reps):
            for s in stems:
                if s in rep.outputs:
                    out.add(s, src.kind, rep.outputs[s])
        sec = time.perf_counter() - t0
        run["pack"] = {"volumes": packed, "seconds": round(sec, 3),
                       "volumes_per_s": round(packed / sec, 3) if packed and sec else None,
                       "failures": [{"volume": k, "error": v} for k, v in sorted(failed.items())]}
    elif cfg.masks_from != "none":
        raise ValueError(f"masks_from must be one of {MASKS_FROM}, got {cfg.masks_from!r}")

    def masks_of(s: str) -> str | None:
        files = out.files.get(s, {})
        p = files.get("anatomy") or files.get("region")
        return None if p is None else str(p)

    seg_dir = work / "segment"
    jobs = [VolumeJob(s, str(volume_paths[s]), masks_of(s),
                      str(seg_dir / f"{s}.masks.parquet") if backend is not None else None) for s in stems]
    if backend is not None:
        seg_dir.mkdir(parents=True, exist_ok=True)
    vrep = run_volume_stages(jobs, work / "volumes", backend, ray=cfg.ray, workers=cfg.workers,
                             segment_batch=cfg.segment_batch, executor=None if cfg.ray else executor,
                             progress=bool(cfg.progress))
    for s, p in vrep.masks.items():
        out.add(s, "anatomy", p)
    run["volumes"] = vrep.as_dict()
    return out, vrep


def _ground_sharded(reports: Any, cfg: PipelineConfig, executor: Any, run: dict[str, Any]) -> dict[str, Any]:
    """Ground the reports over shards on the executor's workers (same result as one call: reports are independent)."""
    from .runner import bounded_map, executor_width

    t0 = time.perf_counter()
    n = len(reports)
    shards = max(1, min(n, 2 * executor_width(executor)))
    size = -(-n // shards)
    parts = [reports.slice(i, size) for i in range(0, n, size)]
    got: dict[int, dict] = {}
    for part, res in bounded_map(executor, _ground_shard, ((i, p, cfg.grounding) for i, p in enumerate(parts))):
        if isinstance(res, BaseException):
            raise res
        got[part[0]] = res
    grounded = {k: v for i in range(len(parts)) for k, v in got[i].items()}
    sec = time.perf_counter() - t0
    run["ground"] = {"volumes": n, "shards": len(parts), "seconds": round(sec, 3),
                     "volumes_per_s": round(n / sec, 3) if sec else None}
    return grounded


def _ground_shard(job: tuple[int, Any, Any]) -> dict[str, GroundedReport]:
    return ground_reports(job[1], backend=job[2], progress=False)


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------


def _reports(release: Any) -> tuple[Any, Any]:
    import pyarrow as pa

    from ..io.tables import read_ctrate_labels, read_ctrate_reports

    reports, labels = [], []
    for split in _SPLITS:
        p = release.ctrate_reports(split)
        if p is not None:
            reports.append(read_ctrate_reports(p))
        q = release.ctrate_labels(split)
        if q is not None:
            labels.append(read_ctrate_labels(q))
    if not reports:
        raise ReleaseNotFoundError(
            f"{release.ctrate_root}: no CT-RATE reports (dataset/radiology_text_reports/*_reports.csv); the rebuild "
            "grounds report sentences, so it needs them")
    rep = pa.concat_tables(reports, promote_options="default")
    lab = pa.concat_tables(labels, promote_options="default") if labels else None
    return rep, lab


def rebuild_release(upstream: str | os.PathLike, out: str | os.PathLike,
                    config: PipelineConfig | None = None) -> PipelineReport:
    """Rebuild every derived table of ``upstream`` into a new release folder ``out`` (see the module docs)."""
    from .runner import make_executor

    cfg = config or PipelineConfig()
    with make_executor(ray=cfg.ray, workers=cfg.workers) as executor:
        return _rebuild(upstream, Path(out), cfg, executor)


def _rebuild(upstream: str | os.PathLike, out: Path, cfg: PipelineConfig, executor: Any) -> PipelineReport:
    from ..io.release import UpstreamRelease
    from .segment import discover_volumes

    t0 = time.perf_counter()
    rg_out = out / "RadGenome-ChestCT"
    ds_out = rg_out / "dataset"
    work = Path(cfg.work_dir) if cfg.work_dir else out / ".work"
    work.mkdir(parents=True, exist_ok=True)
    report = PipelineReport(out)

    release = UpstreamRelease.discover(upstream, need="ctrate")
    if release.radgenome_root is not None and "://" in release.radgenome_root:
        raise ReleaseNotFoundError("rebuild reads a local upstream folder; download the release first")

    # -- ingest -----------------------------------------------------------------------------------
    reports, labels = _reports(release)
    volume_paths = dict(discover_volumes(upstream))
    report_stems = set(reports["volume_name"].to_pylist())
    stems = sorted((s for s in volume_paths if s in report_stems), key=VolumeName.parse)
    for s in volume_paths:
        if s not in report_stems:
            report.skipped[s] = "no CT-RATE report row"
    if not stems:
        raise ReleaseNotFoundError(f"{upstream}: no volume has a report row; nothing to rebuild")
    from ..io.tables import filter_volumes

    reports = filter_volumes(reports, stems)

    run: dict[str, Any] = {"executor": f"ray ({cfg.ray})" if cfg.ray else f"process pool ({cfg.workers or 'all cores'})"}
    # -- masks (release / segmentation) and the per-volume stages --------------------------------
    masks, vrep = _collect_masks(release, stems, cfg, work, volume_paths, executor, run)
    for s, err in vrep.failed.items():
        report.skipped[s] = err.strip().splitlines()[0] if err.strip() else err
    stems = [s for s in stems if s not in vrep.failed]
    if not stems:
        raise ReleaseNotFoundError(f"{upstream}: every volume failed its per-volume stages; see "
                                   f"{work / 'volumes'} and the errors: " + "; ".join(sorted(report.skipped.values()))[:2000])
    reports = filter_volumes(reports, stems)

    # -- ground ---------------------------------------------------------------------------------
    grounded_all = _ground_sharded(reports, cfg, executor, run)
    grounded = {s: grounded_all[s] for s in stems}

    # -- split: one task (it ranks every patient; cheap) -------------------------------------------
    split_table = executor.submit(assign_splits, stems, validation=cfg.validation, seed=cfg.seed).result()
    report.splits = str(split_report(split_table))
    write_splits(ds_out / "splits.csv", split_table)
    split_of = dict(zip(split_table["volume_name"].to_pylist(), split_table["split"].to_pylist()))

    # -- region_report, vqa, scene graphs, anatomy pairs: tasks over shards of patients -------------------
    text = run_text_stages(grounded, split_of, executor, labels=labels, mask_files=masks.files, seed=cfg.seed,
                           json_dir=ds_out / "scene_graph" / "json" if cfg.scene_graph_json else None,
                           progress=cfg.progress)
    run["text"] = {"volumes": len(stems), "shards": text.shards,
                   **{f"{k}_seconds": round(v, 3) for k, v in text.seconds.items()}}
    files = ds_out / "radgenome_files"
    file_split = {"train": "train", "validation": "valid"}  # radgenome_csv_name takes the name-prefix form
    quality = add_label_checks(vrep.quality, grounded, labels)  # quality rows + CT-RATE labels vs the grounded text
    for split in ("train", "validation"):
        sel = [s for s in stems if split_of[s] == split]
        fs = file_split[split]
        rr = [row for s in sel for row in text.region_report[s]]
        write_csv(files / radgenome_csv_name(fs, "region_report"), RADGENOME_HEADERS["region_report"], rr)
        tables = text.vqa.get(split) or VQATables()
        for kind, rows in tables.items():
            write_csv(files / radgenome_csv_name(fs, kind), RADGENOME_HEADERS[kind], rows)
        report.problems += [f"{split}: {p}" for p in check_invariants(tables)]
        pairs = [r for s in sel for r in text.pairs[s]]
        _write_jsonl(ds_out / "scene_graph" / f"{split}.jsonl", [text.graphs[s] for s in sel])
        _write_jsonl(ds_out / "anatomy_pairs" / f"{split}.jsonl", pairs)
        _write_jsonl(ds_out / "quality" / f"{split}.jsonl", [quality[s] for s in sel])
        report.counts[split] = {"volumes": len(sel), "region_report": len(rr), **tables.counts(),
                                "scene_graph": len(sel), "anatomy_pairs": len(pairs)}

    # -- volumes and masks in the upstream layout (per volume, on the workers) ---------------------------
    from tqdm.auto import tqdm

    from .runner import bounded_map

    jobs = [(str(volume_paths[s]), str(rg_out / radgenome_volume_path(s)), cfg.link,
             {k: str(p) for k, p in masks.files.get(s, {}).items()},
             {k: str(rg_out / mask_dir(s, k)) for k in ("anatomy", "region")}) for s in stems]  # type: ignore[arg-type]
    t_write = time.perf_counter()
    with tqdm(total=len(jobs), desc="release files", unit="volume",
              disable=None if cfg.progress is None else not cfg.progress) as bar:
        for _, res in bounded_map(executor, _write_volume_files, jobs):
            if isinstance(res, BaseException):
                raise res
            bar.update()
    sec = time.perf_counter() - t_write
    run["write"] = {"volumes": len(jobs), "seconds": round(sec, 3), "volumes_per_s": round(len(jobs) / sec, 3) if sec else None}
    if release.radgenome_root:
        for f in release.qa_template_files():
            _place(Path(f), ds_out / "qa_templates" / Path(f).name, "copy")
    if cfg.include_ctrate and release.ctrate_root:
        src = Path(release.ctrate_root)
        for p in sorted(src.rglob("*")):
            if p.is_file():
                _place(p, out / "CT-RATE" / p.relative_to(src), cfg.link)
    report.volumes = len(stems)
    report.seconds = time.perf_counter() - t0
    run["seconds"] = round(report.seconds, 3)
    run["volumes_per_s"] = round(len(stems) / report.seconds, 3) if report.seconds else None
    report.run = run
    write_text(work / "run_report.json", json.dumps(run, indent=1, sort_keys=True))
    return report


def _write_volume_files(job: tuple[str, str, str, dict[str, str], dict[str, str]]) -> None:
    """Worker: one volume's file and its mask folders in the upstream layout (region masks derived from the
    anatomy ones when the masks have no region kind)."""
    from ..access.masks import PackedMasks

    src, dst, link, files, targets = job
    _place(Path(src), Path(dst), link)
    anatomy = PackedMasks.load(files["anatomy"]) if "anatomy" in files else None
    region = PackedMasks.load(files["region"]) if "region" in files else _regions_from(anatomy)
    for kind, pm in (("anatomy", anatomy), ("region", region)):
        if pm is not None and len(pm):
            target = Path(targets[kind])
            if target.exists():
                shutil.rmtree(target)
            pm.to_nifti_folder(target)


def _regions_from(anatomy: "PackedMasks | None") -> "PackedMasks | None":
    """Region masks for a segmentation output: its structures named like a top-level region."""
    if anatomy is None:
        return None
    from ..access.masks import PackedMasks
    from ..ontology import get_ontology

    regions = set(get_ontology().region_masks)
    names = [n for n in anatomy.names if n in regions]
    if not names:
        return None
    out = PackedMasks(anatomy.shape, anatomy.affine)
    for n in names:
        out.add(n, anatomy.mask(n), source="region")
    return out

