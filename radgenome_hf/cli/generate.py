"""``radgenome-hf generate``: the text-side generation stages and the end-to-end rebuild.

Subcommands: ``ground`` (region_report CSV from CT-RATE reports), ``vqa`` (the VQA CSVs and case disorders),
``scene-graph`` (Chest ImaGenome-style graphs), ``anatomy-pairs`` (fVLM-style organ captions), ``split``
(patient-level train/validation assignment), ``rebuild`` (all of them into a new release folder) and
``evaluate`` (agreement of a regenerated release with a reference release), ``quality`` (per-volume checks).

``rebuild`` and ``quality`` run in a local process pool (``--workers N``, default all cores) or, with
``--ray [ADDRESS]``, as Ray Data pipelines on a local Ray instance or the cluster at ADDRESS (e.g. ``auto`` on a
cluster node, ``ray://head:10001`` from outside); both resume after a kill.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _grounding(args: argparse.Namespace):
    from ..generate.llm import get_grounding_backend

    if getattr(args, "grounding", "lexicon") == "llm":
        return get_grounding_backend("llm", endpoint=args.llm_endpoint, model=args.llm_model)
    return None


def _add_grounding(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grounding", choices=("lexicon", "llm"), default="lexicon",
                   help="sentence grounding backend (default: the ontology lexicon)")
    p.add_argument("--llm-endpoint", help="OpenAI-compatible base URL (or RADGENOME_LLM_ENDPOINT); the API key is "
                   "read from RADGENOME_LLM_API_KEY / OPENAI_API_KEY, never from the command line")
    p.add_argument("--llm-model", help="model name (or RADGENOME_LLM_MODEL)")


def _reports_of(upstream: str, split: str | None):
    import pyarrow as pa

    from ..io.release import UpstreamRelease
    from ..io.tables import read_ctrate_reports

    release = UpstreamRelease.discover(upstream, need="ctrate")
    tables = []
    for s in ("train", "valid"):
        if split in (None, s):
            p = release.ctrate_reports(s)  # type: ignore[arg-type]
            if p:
                tables.append(read_ctrate_reports(p))
    if not tables:
        from ..errors import ReleaseNotFoundError

        raise ReleaseNotFoundError(f"{upstream}: no CT-RATE reports found (dataset/radiology_text_reports/)")
    return release, pa.concat_tables(tables)


def _grounded(args: argparse.Namespace):
    from ..generate.ground import ground_reports

    release, reports = _reports_of(args.upstream, args.split)
    return release, ground_reports(reports, backend=_grounding(args), progress=True)


def _by_split(grounded):
    from ..names import VolumeName

    out: dict[str, dict] = {}
    for stem, g in grounded.items():
        out.setdefault(VolumeName.parse(stem).split, {})[stem] = g
    return out


def _cmd_ground(args: argparse.Namespace) -> int:
    from ..generate.ground import write_region_report
    from ..names import radgenome_csv_name

    _, grounded = _grounded(args)
    for split, g in sorted(_by_split(grounded).items()):
        p = write_region_report(Path(args.out) / radgenome_csv_name(split, "region_report"), g)  # type: ignore[arg-type]
        print(f"wrote {p} ({len(g)} volumes)")
    return 0


def _cmd_vqa(args: argparse.Namespace) -> int:
    from ..generate.vqa import build_vqa, check_invariants, write_vqa

    _, grounded = _grounded(args)
    for split, g in sorted(_by_split(grounded).items()):
        tables = build_vqa(dict(sorted(g.items())), seed=args.seed)
        write_vqa(args.out, split, tables)
        print(f"{split}: " + ", ".join(f"{k} {v}" for k, v in tables.counts().items()))
        for p in check_invariants(tables):
            print(f"  PROBLEM: {p}", file=sys.stderr)
    return 0


def _masks_loader(masks_dir: str | None):
    from ..access.masks import PackedMasks

    def load(stem: str):
        if not masks_dir:
            return None
        p = Path(masks_dir) / f"{stem}.masks.parquet"
        return PackedMasks.load(p) if p.is_file() else None

    return load


def _cmd_scene_graph(args: argparse.Namespace) -> int:
    from ..generate.scene_graph import build_scene_graphs, write_scene_graphs

    _, grounded = _grounded(args)
    rows = build_scene_graphs(dict(sorted(grounded.items())), _masks_loader(args.masks_dir), progress=True)
    out = Path(args.out)
    write_scene_graphs(rows, out / "json", parquet=out / "scene_graph.parquet")
    print(f"wrote {len(rows)} scene graphs to {out}")
    return 0


def _cmd_anatomy_pairs(args: argparse.Namespace) -> int:
    import pyarrow as pa

    from ..generate.anatomy_pairs import build_anatomy_pairs, write_anatomy_pairs
    from ..io.tables import read_ctrate_labels

    release, grounded = _grounded(args)
    labels = [read_ctrate_labels(p) for s in ("train", "valid") if (p := release.ctrate_labels(s))]
    rows = build_anatomy_pairs(dict(sorted(grounded.items())), labels=pa.concat_tables(labels) if labels else None,
                               masks_of=_masks_loader(args.masks_dir), progress=True)
    p = write_anatomy_pairs(rows, Path(args.out) / "anatomy_pairs.parquet")
    print(f"wrote {len(rows)} anatomy pairs to {p}")
    return 0


def _cmd_split(args: argparse.Namespace) -> int:
    from ..generate.splits import assign_splits, split_report, write_splits
    from ..generate.segment import discover_volumes

    names = [n for n, _ in discover_volumes(args.upstream)]
    table = assign_splits(names, validation=args.validation, seed=args.seed)
    p = write_splits(args.out, table)
    print(f"wrote {p}: {split_report(table)}")
    return 0


def _cmd_rebuild(args: argparse.Namespace) -> int:
    from ..generate.pipeline import PipelineConfig, rebuild_release
    from .segment import backend_from_args

    backend = backend_from_args(args) if args.masks_from == "segment" and not args.masks_dir else args.backend
    cfg = PipelineConfig(seed=args.seed, validation=args.validation, masks_from=args.masks_from,
                         masks_dir=args.masks_dir, segment_backend=backend, link=args.link,
                         grounding=_grounding(args), progress=True, ray=args.ray, workers=args.workers,
                         segment_batch=args.segment_batch)
    report = rebuild_release(args.upstream, args.out, cfg)
    print(report.summary())
    print(f"run report: {Path(args.out) / '.work' / 'run_report.json'}")
    return 1 if report.problems else 0


def _cmd_quality(args: argparse.Namespace) -> int:
    import json

    from ..generate.segment import discover_volumes
    from ..generate.volumes import VolumeJob, run_volume_stages
    from ..io.atomic import write_text

    out = Path(args.out)
    masks = Path(args.masks_dir) if args.masks_dir else None
    jobs = [VolumeJob(name, str(path), str(masks / f"{name}.masks.parquet")
                      if masks and (masks / f"{name}.masks.parquet").is_file() else None)
            for name, path in discover_volumes(args.upstream)]
    report = run_volume_stages(jobs, out, ray=args.ray, workers=args.workers, progress=True)
    rows = [report.quality[j.item] for j in jobs if j.item in report.quality]
    write_text(out / "quality.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    write_text(out / "run_report.json", json.dumps(report.as_dict(), indent=1, sort_keys=True))
    flagged = [r for r in rows if r["flags"]]
    print(f"wrote {out / 'quality.jsonl'}: {len(rows)} volumes, {len(flagged)} flagged, {len(report.failed)} failed")
    for r in flagged:
        print(f"  {r['volume_name']}: {', '.join(r['flags'])}")
    for name, err in sorted(report.failed.items()):
        print(f"  FAILED {name}: {err.strip().splitlines()[0]}", file=sys.stderr)
    return 1 if report.failed else 0


def _add_executor(q: argparse.ArgumentParser) -> None:
    q.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run as Ray Data pipelines: a local Ray instance, or the cluster at ADDRESS "
                   "(or $RADGENOME_RAY_ADDRESS)")
    q.add_argument("--workers", type=int, default=None,
                   help="local pool processes, or the local Ray instance's CPUs (default all cores, $RADGENOME_WORKERS)")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import tempfile

    from ..generate.evaluate import evaluate, rebuild_from_reports, write_json

    reports = args.reports or args.regenerate
    if args.drop_negated and not reports:
        print("--drop-negated needs --reports (or --regenerate)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        rebuilt = args.rebuilt
        if args.regenerate:
            rebuilt = rebuild_from_reports(args.regenerate, Path(args.rebuilt) if args.rebuilt != "-" else tmp,
                                           seed=args.seed)
        result = evaluate(rebuilt, args.reference, reports=reports, drop_negated=args.drop_negated)
    print(result.summary())
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    return 0


def add_rebuild_arguments(q: argparse.ArgumentParser) -> None:
    """The arguments of ``generate rebuild`` (also ``builder_scripts/rebuild_release.py``'s); ``func`` runs it."""
    from .segment import add_backend_options

    q.add_argument("upstream", help="upstream release folder")
    q.add_argument("out", help="new release folder")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--validation", type=float, default=None,
                   help="re-split patients with this validation fraction (default: keep the upstream split)")
    q.add_argument("--masks-from", choices=("release", "segment", "none"), default="release",
                   help="masks from the release's own folders/archives, from running a segmentation backend, or none")
    q.add_argument("--masks-dir", help="use this folder of <stem>.masks.parquet instead")
    q.add_argument("--backend", default="threshold", choices=["threshold", "monai", "totalsegmentator", "sat"],
                   help="segmentation backend for --masks-from segment")
    q.add_argument("--link", choices=("hardlink", "copy", "symlink"), default="hardlink",
                   help="how volumes and CT-RATE files get into the new release")
    _add_executor(q)
    q.add_argument("--segment-batch", type=int, default=2, help="volumes per segmentation actor call (Ray)")
    _add_grounding(q)
    add_backend_options(q)
    q.set_defaults(func=_cmd_rebuild)


def register(subparsers) -> None:

    p = subparsers.add_parser("generate", help="generation stages: ground, vqa, scene-graph, anatomy-pairs, split, "
                              "rebuild, evaluate, quality", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="stage", metavar="STAGE")
    p.set_defaults(func=lambda a: (p.print_help(), 2)[1])

    def common(q: argparse.ArgumentParser, out_help: str) -> None:
        q.add_argument("upstream", help="upstream release folder (holding CT-RATE/ and RadGenome-ChestCT/)")
        q.add_argument("out", help=out_help)
        q.add_argument("--split", choices=("train", "valid"), help="only this upstream split (default: both)")

    q = sub.add_parser("ground", help="ground report sentences -> {train,validation}_region_report.csv")
    common(q, "output folder for the CSVs")
    _add_grounding(q)
    q.set_defaults(func=_cmd_ground)

    q = sub.add_parser("vqa", help="VQA CSVs (abnormality, location, presence, size) and case disorders")
    common(q, "output folder for the CSVs")
    q.add_argument("--seed", type=int, default=0, help="seed of the sampled 'No.' presence rows")
    _add_grounding(q)
    q.set_defaults(func=_cmd_vqa)

    q = sub.add_parser("scene-graph", help="Chest ImaGenome-style scene graphs (JSON per volume + parquet)")
    common(q, "output folder")
    q.add_argument("--masks-dir", help="folder of <stem>.masks.parquet (segmentation output)")
    _add_grounding(q)
    q.set_defaults(func=_cmd_scene_graph)

    q = sub.add_parser("anatomy-pairs", help="fVLM-style organ captions with CT-RATE labels")
    common(q, "output folder")
    q.add_argument("--masks-dir", help="folder of <stem>.masks.parquet (segmentation output)")
    _add_grounding(q)
    q.set_defaults(func=_cmd_anatomy_pairs)

    q = sub.add_parser("split", help="patient-level train/validation assignment")
    q.add_argument("upstream", help="upstream release folder")
    q.add_argument("out", help="output table (.csv or .parquet)")
    q.add_argument("--validation", type=float, default=0.05, help="fraction of patients in validation (0.05)")
    q.add_argument("--seed", type=int, default=0)
    q.set_defaults(func=_cmd_split)

    q = sub.add_parser("evaluate", help="agreement of a regenerated release with a reference release (P/R/F1)",
                       description="Compare REBUILT with REFERENCE (folders in the upstream layout: VQA CSVs, case "
                       "disorders): P/R/F1 over (volume, anatomy path) at every level, top-level region and most "
                       "specific path, per region; finding phrases at the same path; sizes; case disorders.")
    q.add_argument("rebuilt", help="regenerated release folder (with --regenerate: where to write it, '-' = a "
                   "temporary folder)")
    q.add_argument("reference", help="reference release folder (e.g. the official RadGenome files)")
    q.add_argument("--out", help="also write the figures as JSON to this file")
    q.add_argument("--reports", help="CT-RATE reports CSV (VolumeName, Findings_EN, Impressions_EN) of the volumes")
    q.add_argument("--drop-negated", action="store_true",
                   help="drop reference phrases the report states only negatively (needs --reports)")
    q.add_argument("--regenerate", metavar="REPORTS_CSV",
                   help="first ground this reports CSV and write its VQA CSVs into REBUILT")
    q.add_argument("--seed", type=int, default=0, help="seed of the sampled 'No.' presence rows (--regenerate)")
    q.set_defaults(func=_cmd_evaluate)

    q = sub.add_parser("rebuild", help="end to end: a new release folder in the upstream layout")
    add_rebuild_arguments(q)

    q = sub.add_parser("quality", help="per-volume quality rows (non-finite voxels, HU range, double rescale, lung "
                       "coverage, spacing) -> OUT/quality.jsonl")
    q.add_argument("upstream", help="upstream release folder")
    q.add_argument("out", help="output folder (quality.jsonl, run_report.json, the resumable manifest)")
    q.add_argument("--masks-dir", help="folder of <stem>.masks.parquet (for the lung coverage)")
    _add_executor(q)
    q.set_defaults(func=_cmd_quality)
