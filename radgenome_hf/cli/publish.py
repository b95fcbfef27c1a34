"""``radgenome-hf publish FOLDER --repo ORG/NAME``: push a release folder to the Hub, verify it, tag it.

Examples::

    radgenome-hf publish build/release --repo my-org/radgenome-chestct --branch staging --dry-run
    radgenome-hf publish build/release --repo my-org/radgenome-chestct --branch staging --tag v1.0 --gated manual

The token comes from ``--token``, else ``HF_TOKEN`` / the saved ``huggingface-cli login`` token; it is
never printed. ``--endpoint`` (or ``HF_ENDPOINT``) targets another Hub-compatible server, e.g. the
local test server of ``radgenome_hf.testing.hub_server``.
"""

from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "publish",
        help="publish a release folder to a Hub dataset repo (diff by hash, one commit, verify, tag)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("folder", help="release folder (parquet per config + README.md with `configs:`)")
    p.add_argument("--repo", required=True, metavar="ORG/NAME", help="dataset repo id")
    p.add_argument("--branch", default="main", help="branch to commit to (created from main if missing)")
    p.add_argument("--tag", default=None, help="tag the verified commit, e.g. v1.0")
    p.add_argument("--private", action="store_true", default=None, help="make the repo private")
    p.add_argument("--gated", choices=["auto", "manual"], default=None, help="gate access to the repo")
    p.add_argument("--token", default=None, help="Hub token (default: HF_TOKEN or the saved login)")
    p.add_argument("--endpoint", default=None, help="Hub endpoint URL (default: HF_ENDPOINT or huggingface.co)")
    p.add_argument("--dry-run", action="store_true", help="print the plan; upload nothing")
    p.add_argument("--no-verify", action="store_true", help="skip loading the pushed revision back")
    p.add_argument("--keep-remote", action="store_true",
                   help="do not delete remote files that the folder no longer has")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..publish.hub import PublishVerificationError, publish_release

    try:
        report = publish_release(
            args.folder, args.repo, branch=args.branch, tag=args.tag, token=args.token, endpoint=args.endpoint,
            private=args.private, gated=args.gated, dry_run=args.dry_run, verify=not args.no_verify,
            commit_message=args.message, delete=not args.keep_remote)
    except PublishVerificationError as e:
        print(json.dumps(e.report.to_dict(), indent=2, default=str) if args.json else e.report.summary())
        print(f"radgenome-hf publish: error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        if args.dry_run and report.plan is not None:
            print(report.plan.summary(max_files=50))
        print(report.summary())
    return 0
