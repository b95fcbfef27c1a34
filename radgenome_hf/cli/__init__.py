"""The ``radgenome-hf`` command line.

Each module in this package defines ``register(subparsers)`` that adds one or more subcommands, each
subparser setting ``func=<callable(args) -> int>``; subcommands are discovered, so a stage adds its
command by adding a module here.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from typing import Sequence

from .._version import __version__
from ..errors import RadGenomeError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="radgenome-hf",
        description="RadGenome-Chest CT for Hugging Face datasets and PyTorch: demo, synthetic releases, "
        "inspection, generation and publishing.",
    )
    parser.add_argument("--version", action="version", version=f"radgenome-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except RadGenomeError as exc:
        print(f"radgenome-hf {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # a full disk, a lost permission: the file and the reason, not a traceback
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"radgenome-hf {args.command}: error: {where}{exc.strerror or exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
