"""``radgenome-hf segment``: run a segmentation backend over an upstream-layout release (generation stage 1)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "segment",
        help="segment the CT volumes of a release into packed masks (threshold, monai, totalsegmentator, sat)",
        description="Segment every volume of an upstream-layout folder (RadGenome dataset/{train,valid}_preprocessed, "
        "else CT-RATE dataset/{train,valid}_fixed) into OUT/<volume>.masks.parquet, resumably: a re-run skips "
        "volumes whose input, backend version and parameters are unchanged. Exits 1 if any volume failed.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", type=Path, help="release root (or its RadGenome-ChestCT/CT-RATE folder)")
    p.add_argument("--backend", default="threshold", choices=["threshold", "monai", "totalsegmentator", "sat"])
    p.add_argument("--out", required=True, type=Path, help="output folder (packed masks + segment.manifest.sqlite)")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: 1 for GPU backends, else up to 4)")
    p.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                   help="run on Ray Data: a local Ray instance, or the cluster at ADDRESS (pip install 'radgenome-hf[ray]')")
    p.add_argument("--limit", type=int, default=None, help="only the first N volumes (by name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_backend_options(p)
    p.set_defaults(func=run)


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """The options that build a backend (``--bundle``, ``--device``, ...), shared with ``generate rebuild``."""
    g = p.add_argument_group("monai")
    g.add_argument("--bundle", type=Path, help="MONAI bundle folder (configs/inference.json, models/model.pt)")
    g.add_argument("--checkpoint", type=Path, help="state dict file (with --network-config)")
    g.add_argument("--network-config", type=Path, help="JSON/YAML network config ({'_target_': 'SegResNet', ...})")
    g.add_argument("--channel-def", type=Path, help="JSON with channel_def (channel -> class name)")
    g.add_argument("--highres", action=argparse.BooleanOptionalAction, default=None,
                   help="wholeBody bundle: 1.5 mm model.pt (--highres) or 3 mm model_lowres.pt (--no-highres)")
    g.add_argument("--sw-batch-size", type=int, default=None, help="sliding-window batch size")
    g.add_argument("--device", default=None, help="auto, cuda, cuda:1, cpu (monai); gpu/cpu (totalsegmentator)")
    t = p.add_argument_group("totalsegmentator")
    t.add_argument("--task", default=None, help="TotalSegmentator task (default total)")
    t.add_argument("--fast", action="store_true", help="TotalSegmentator 3 mm model")
    t.add_argument("--engine", choices=("nnunet", "api"), default="nnunet",
                   help="nnunet: nnU-Net predictors loaded once per worker and kept across volumes (default); api: "
                   "TotalSegmentator's Python API per volume")
    t.add_argument("--model-folder", type=Path, action="append", dest="model_folders", metavar="DIR",
                   help="an nnU-Net trained-model folder (repeat for several; default: TotalSegmentator's own)")
    s = p.add_argument_group("sat")
    s.add_argument("--sat-dir", type=Path, help="SAT checkout (working directory of its inference.py)")
    s.add_argument("--sat-checkpoint", type=Path)
    s.add_argument("--sat-text-encoder", type=Path, help="SAT text encoder checkpoint")
    s.add_argument("--sat-command", help="custom command; {rcd_dir} and {jsonl} are filled in")
    s.add_argument("--sat-labels", help="comma-separated prompts (default: the ontology's anatomy names)")


def backend_from_args(args: argparse.Namespace):
    """The backend ``--backend`` and its options name."""
    from ..generate.backends import get_backend

    if args.backend == "threshold":
        return get_backend("threshold")
    if args.backend == "monai":
        opts: dict[str, Any] = {"sw_batch_size": args.sw_batch_size, "device": args.device}
        if args.channel_def is not None:
            opts["channel_def"] = args.channel_def
        if args.bundle is not None:
            return get_backend("monai", bundle=args.bundle, highres=args.highres, checkpoint=args.checkpoint, **opts)
        return get_backend("monai", checkpoint=args.checkpoint, network_config=args.network_config, **opts)
    if args.backend == "totalsegmentator":
        opts = {"fast": args.fast, "engine": args.engine, "model_folders": args.model_folders}
        if args.task:
            opts["task"] = args.task
        if args.device:
            opts["device"] = args.device
        return get_backend("totalsegmentator", **opts)
    labels = [x.strip() for x in args.sat_labels.split(",") if x.strip()] if args.sat_labels else None
    return get_backend(
        "sat", command=args.sat_command, sat_dir=args.sat_dir, checkpoint=args.sat_checkpoint,
        text_encoder_checkpoint=args.sat_text_encoder, labels=labels,
    )


def run(args: argparse.Namespace) -> int:
    from ..generate.segment import discover_volumes, run_segmentation

    volumes = discover_volumes(args.data_dir)
    if args.limit is not None:
        volumes = volumes[: args.limit]
    backend = backend_from_args(args)
    report = run_segmentation(
        volumes, args.out, backend, workers=args.workers, ray=args.ray, progress=not args.no_progress
    )
    if args.json:
        print(json.dumps({
            "out_dir": str(report.out_dir), "backend": report.backend, "version": report.version,
            "done": report.done, "skipped": report.skipped, "failed": report.failed, "seconds": report.seconds,
        }, indent=2))
    else:
        print(report.summary())
    if report.failed:
        print(f"radgenome-hf segment: {len(report.failed)} volume(s) failed; see above (recorded in "
              f"{Path(args.out) / 'segment.manifest.sqlite'}); fix them and re-run", file=sys.stderr)
        return 1
    return 0
