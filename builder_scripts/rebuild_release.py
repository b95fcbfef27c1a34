#!/usr/bin/env python
"""Rebuild a RadGenome release end to end (maintainers' entry script).

    python builder_scripts/rebuild_release.py UPSTREAM OUT                    # a local process pool, all cores
    python builder_scripts/rebuild_release.py UPSTREAM OUT --ray              # a local Ray instance
    python builder_scripts/rebuild_release.py UPSTREAM OUT --ray auto         # the Ray cluster this node is in
    python builder_scripts/rebuild_release.py UPSTREAM OUT --ray ray://head:10001 --masks-from segment \\
        --backend monai --bundle wholeBody_ct_segmentation --segment-batch 2

Same as ``radgenome-hf generate rebuild``, with the same options (defined once, in
``radgenome_hf/cli/generate.py``): ingest the upstream folder (CT-RATE reports/labels/metadata + RadGenome volumes
and masks), optionally segment, ground, split by patient, build VQA, scene graphs and anatomy pairs, and write a
NEW release folder in the upstream layout (see radgenome_hf/generate/pipeline.py). Resumable: after a kill, the same
command finishes the job. Exit status 1 if an invariant check failed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from radgenome_hf.cli import main as cli_main
from radgenome_hf.cli.generate import add_rebuild_arguments


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rebuild_release.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_rebuild_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    build_parser().parse_args(argv)  # this script's --help and usage errors, under its own name
    return cli_main(["generate", "rebuild", *argv])  # the CLI runs it: the same options, the same error messages


if __name__ == "__main__":
    sys.exit(main())
