"""Run every benchmark in one command: python benchmarks/run_all.py [--realistic]

Each benchmark prints our median, each baseline's median measured in the same run, and the ratio.
Timing thresholds never go into tests; targets are compared in the printed tables and benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realistic", action="store_true", help="512x512x300 volumes (minutes; default small sizes)")
    ap.add_argument("--vqa-rows", type=int, default=1_300_000)
    args = ap.parse_args()
    size = ["--realistic"] if args.realistic else []
    runs = [
        ["bench_natural.py", *size],
        ["bench_masks.py"],
        ["bench_remote_masks.py", *size],
        ["bench_access.py", *size],
        ["bench_presets.py", *size],
        ["bench_prepare_vqa.py", "--rows", str(args.vqa_rows)],
        ["bench_quality.py"],
        ["bench_segment.py"],
    ]
    failed = []
    for cmd in runs:
        print(f"\n===== {' '.join(cmd)}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(HERE / cmd[0]), *cmd[1:]])
        print(f"===== {cmd[0]}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
        if rc:
            failed.append(cmd[0])
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
