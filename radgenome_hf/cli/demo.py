"""``radgenome-hf demo``: build a small synthetic release in the real layouts and load every config from it."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="offline demo: write a small synthetic release and load every config from it",
        description="Builds a small synthetic RadGenome-ChestCT + CT-RATE release in the real layouts (in a "
        "temporary folder unless --out is given), prints what the readers see, then loads every datasets config "
        "from it and prints one row of each. Needs no network.",
    )
    p.add_argument("--out", type=Path, default=None, help="write the release here (default: a temporary folder)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

    if args.out is not None:
        run_demo(args.out, seed=args.seed)
        return 0
    with tempfile.TemporaryDirectory(prefix="radgenome-demo-") as tmp:
        run_demo(Path(tmp), seed=args.seed)
    return 0
