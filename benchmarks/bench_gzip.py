"""gzip inflation: ISA-L (``isal``, what ``io/compression.py`` uses) against ``rapidgzip`` (1 and 2 threads) and the
standard library, on what the rebuild inflates.

    python benchmarks/bench_gzip.py                 # a realistic synthetic release (512x512x300), 5 rounds
    python benchmarks/bench_gzip.py --shape 160 160 112 --rounds 3

Three inputs, all from one synthetic release in the real layouts (``radgenome_hf.testing.synthetic``):

- **outer stream**: the train anatomy mask archive, a tar.gz of per-structure ``.nii.gz`` members cut into
  ``_aa``, ``_ab``... parts, read as one stream (``io.archives.open_split_stream``) to its end, as the packing's one
  streaming pass reads it;
- **members**: every per-structure ``.nii.gz`` of that archive (bytes in memory), each inflated whole, as the
  packing workers do;
- **volume**: one CT volume ``.nii.gz`` (512x512x300 int16 with ``--realistic``, the default), inflated whole.

Each method reads through a 1 MiB buffer (what ``io/archives.py`` does) or takes the bytes at once where that is
its API; the output is checked against the standard library's. Timings are medians of interleaved rounds; CPU
seconds (all threads of this process) are printed beside them, because a second thread only helps when a core is
idle: in the rebuild every worker already holds a core. The 1-minute load average is printed.
"""

from __future__ import annotations

import argparse
import gzip
import io
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import emit_json  # noqa: E402

_CHUNK = 1 << 20


def _drain(f) -> int:
    n = 0
    while True:
        b = f.read(_CHUNK)
        if not b:
            return n
        n += len(b)


def methods() -> dict[str, Callable[[Callable[[], io.RawIOBase]], int]]:
    """name -> fn(open_raw) returning the inflated byte count; ``open_raw()`` gives a fresh binary stream."""
    from isal import igzip

    out: dict[str, Callable] = {
        "isal": lambda open_raw: _drain(io.BufferedReader(igzip.GzipFile(fileobj=open_raw(), mode="rb"), _CHUNK)),
        "stdlib gzip": lambda open_raw: _drain(gzip.GzipFile(fileobj=open_raw(), mode="rb")),
    }
    try:
        import rapidgzip
    except ImportError:
        print("rapidgzip is not installed: pip install rapidgzip==0.16.1", file=sys.stderr)
        return out
    for threads in (1, 2):
        out[f"rapidgzip {threads} thread{'s' if threads > 1 else ''}"] = (
            lambda open_raw, t=threads: _drain(rapidgzip.open(open_raw(), parallelization=t)))
    return out


def _time(fn: Callable[[], int]) -> tuple[float, float, int]:
    c0, t0 = time.process_time(), time.perf_counter()
    n = fn()
    return time.perf_counter() - t0, time.process_time() - c0, n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=None, help="grid (default: realistic 512x512x300)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    from radgenome_hf.generate.segment import discover_volumes
    from radgenome_hf.io.archives import iter_members
    from radgenome_hf.io.release import UpstreamRelease
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    load = [os.getloadavg()[0]]
    cfg = SyntheticConfig(n_train_patients=1, n_valid_patients=0, realistic=args.shape is None,
                          **({"shape": tuple(args.shape)} if args.shape else {}))
    tmp = Path(tempfile.mkdtemp(prefix="bench_gzip_"))
    t0 = time.perf_counter()
    rel = write_release(tmp / "release", cfg, progress=False)
    made = time.perf_counter() - t0
    source = UpstreamRelease.discover(rel.root).mask_source("train", "anatomy")
    members = [data for name, data in iter_members(source) if name.endswith(".nii.gz")]
    volume = Path(discover_volumes(rel.root)[0][1]).read_bytes()
    outer = list(source.paths)
    open_outer = source.open  # one stream over the parts, as the packing reads it

    inputs: dict[str, tuple[str, Callable[[Callable], int]]] = {
        "outer stream": (f"{len(outer)} parts, {sum(p.stat().st_size for p in outer) / 1e6:.1f} MB",
                         lambda m: m(open_outer)),
        "members": (f"{len(members)} structures, {sum(map(len, members)) / 1e6:.1f} MB",
                    lambda m: sum(m(lambda d=d: io.BytesIO(d)) for d in members)),
        "volume": (f"{cfg.grid_shape} int16, {len(volume) / 1e6:.1f} MB", lambda m: m(lambda: io.BytesIO(volume))),
    }
    ms = methods()
    expected = {name: run(ms["stdlib gzip"]) for name, (_, run) in inputs.items()}
    res: dict[str, dict[str, list[tuple[float, float]]]] = {i: {m: [] for m in ms} for i in inputs}
    load.append(os.getloadavg()[0])
    for _ in range(args.rounds):
        for iname, (_, run) in inputs.items():
            for mname, m in ms.items():
                wall, cpu, n = _time(lambda: run(m))
                assert n == expected[iname], (iname, mname, n, expected[iname])
                res[iname][mname].append((wall, cpu))
    load.append(os.getloadavg()[0])

    print(f"synthetic release {cfg.grid_shape} written in {made:.0f} s; rounds {args.rounds}; 1-minute load average "
          f"{load[0]:.2f} at start, {load[1]:.2f} before timing, {load[2]:.2f} at the end (2 cores)")
    print(f"{'input':14s} {'method':20s} {'wall ms':>9s} {'CPU ms':>9s} {'MB/s out':>9s} {'isal / this':>12s}")
    summary: dict[str, dict] = {}
    for iname, (desc, _) in inputs.items():
        base = statistics.median(w for w, _ in res[iname]["isal"])
        print(f"{iname} ({desc}; {expected[iname] / 1e6:.0f} MB inflated)")
        for mname in ms:
            wall = statistics.median(w for w, _ in res[iname][mname])
            cpu = statistics.median(c for _, c in res[iname][mname])
            print(f"{'':14s} {mname:20s} {wall * 1e3:9.1f} {cpu * 1e3:9.1f} {expected[iname] / wall / 1e6:9.0f} "
                  f"{base / wall:11.2f}x")
            summary.setdefault(iname, {})[mname] = {"wall_ms": round(wall * 1e3, 1), "cpu_ms": round(cpu * 1e3, 1),
                                                     "isal_over_this": round(base / wall, 3)}
    shutil.rmtree(tmp, ignore_errors=True)
    emit_json({"shape": list(cfg.grid_shape), "rounds": args.rounds, "load_average": load, "results": summary},
              args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
