"""``radgenome-hf build OUT --data-dir SRC``: write the packed release (parquet per config, packed masks, card)."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    from ..hf.schema import CONFIG_NAMES

    p = sub.add_parser("build", help="build the packed release folder that `publish` pushes to the Hub")
    p.add_argument("out", type=Path, help="folder to write (atomically)")
    p.add_argument("--data-dir", type=Path, required=True, help="upstream-layout release (e.g. from `generate rebuild`)")
    p.add_argument("--configs", nargs="+", default=list(CONFIG_NAMES), choices=CONFIG_NAMES)
    p.add_argument("--num-shards", type=int, default=None, help="shards per split (default: 8, or 64 above 64k rows)")
    p.add_argument("--volumes", choices=("chunked", "nifti"), default="chunked",
                   help="volume format: chunked (zarr v3, range-readable from the Hub; default) or nifti (the files "
                        "as they are)")
    p.add_argument("--workers", type=int, default=None, help="processes converting volumes (default: all cores)")
    p.add_argument("--copy", action="store_true", help="copy NIfTI volumes instead of hard-linking them")
    p.add_argument("--repo-id", default="<org>/radgenome-chestct", help="repo id shown in the card's examples")
    p.add_argument("--overwrite", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..publish.build import build_release

    report = build_release(
        args.data_dir, args.out, configs=tuple(args.configs), num_shards=args.num_shards,
        link="copy" if args.copy else "hardlink", repo_id=args.repo_id, progress=True, overwrite=args.overwrite,
        volumes=args.volumes, workers=args.workers,
    )
    print(report)
    return 0
