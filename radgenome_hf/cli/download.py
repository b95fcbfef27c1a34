"""``radgenome-hf download REPO``: what a subset of a packed release costs, then exactly that into the HF cache."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "download",
        help="print the files and bytes a subset of a packed release needs, then fetch exactly those",
        description="Plan a subset of a packed release on the Hub (rows shards, volume files, masks shards, sized "
        "from the Hub's listing: nothing is downloaded to size them), print it, then fetch exactly those files "
        "into the Hugging Face cache (resumable; files already cached are skipped). Afterwards "
        "radgenome_hf.load_packed(REPO, CONFIG, volumes=…) with the same subset works offline.",
    )
    p.add_argument("repo", help="the packed release's Hub repo id (org/name)")
    p.add_argument("--revision", help="branch, tag or commit (default: the default branch)")
    p.add_argument("--config", default="vqa", help="config whose rows define the subset (default: vqa)")
    p.add_argument("--split", help="train or validation (default: every split)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--volumes", help="comma-separated volume names (train_1_a_1,...)")
    who.add_argument("--patients", help="comma-separated patient ids (train_1) or numbers (1: of the split read)")
    p.add_argument("--anatomy", help="comma-separated anatomy paths or node names (rows grounded there)")
    p.add_argument("--question-type", dest="question_types", help="comma-separated VQA question types")
    p.add_argument("--dry-run", action="store_true", help="print the plan and move nothing")
    p.add_argument("--json", action="store_true", help="print the plan (and result) as JSON")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from ..hf.subset import download, plan_download

    plan = plan_download(args.repo, args.config, split=args.split, revision=args.revision, volumes=args.volumes,
                         patients=args.patients, anatomy=args.anatomy, question_types=args.question_types)
    if not args.json:
        print(plan.summary(), flush=True)
    report = download(args.repo, args.config, plan=plan, dry_run=args.dry_run,
                      progress=not (args.no_progress or args.json))
    if args.json:
        print(json.dumps({"plan": json.loads(plan.to_json()), "dry_run": args.dry_run,
                          "fetched_files": report.fetched_files, "fetched_bytes": report.fetched_bytes,
                          "cached_files": report.cached_files, "cached_bytes": report.cached_bytes}))
    elif args.dry_run:
        print(f"dry run: nothing moved ({report.cached_files} of {len(plan.files)} files already cached)")
    else:
        print(report)
    return 0
