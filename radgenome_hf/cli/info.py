"""``radgenome-hf info [DATA_DIR]``: what the package knows, and what a release folder holds."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="show the package's configs and ontology, or what a release folder holds")
    p.add_argument("data_dir", nargs="?", type=Path, help="an upstream release folder to inspect")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from .._version import __version__
    from ..ontology import get_ontology
    from ..hf.schema import CONFIG_NAMES

    onto = get_ontology()
    print(f"radgenome-hf {__version__}")
    print(f"configs: {', '.join(CONFIG_NAMES)}")
    print(
        f"ontology: {len(onto.paths)} anatomy paths, {len(onto.top_level)} top-level regions, "
        f"{len(onto.region_masks)} region masks, {len(onto.anatomy_masks)} anatomy masks, "
        f"{len(onto.ctrate_labels)} CT-RATE labels"
    )
    if args.data_dir is None:
        return 0
    from ..demo import describe_release

    print(describe_release(args.data_dir))
    return 0
