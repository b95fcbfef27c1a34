"""Throughput of the rebuild's volume stages and of the whole rebuild: process pool vs Ray vs serial, same run.

    python benchmarks/bench_pipeline.py                          # 9 volumes 160x160x112, 3 rounds, about 5 minutes
    python benchmarks/bench_pipeline.py --shape 96 96 64 --rounds 2 --no-ray
    python benchmarks/bench_pipeline.py --markdown

Builds one synthetic release (archives: the train anatomy masks as one tar.gz cut into parts, like the Hub) and
times, in interleaved rounds (each configuration once per round, every run into a fresh folder, nothing resumed):

- **pack + quality**: the streaming pack of every mask source (:mod:`radgenome_hf.generate.packing`) and the
  per-volume read -> quality stage (:mod:`radgenome_hf.generate.volumes`), on 2 pool processes against 1 worker
  (in this process) and against the serial pack of ``access/maskstore`` (``MaskStore.prepare``, one process, what
  the rebuild used before). The pool is started (and its imports done) before timing, like the Ray instance: a
  release rebuild pays that once; its cost is printed.
- **rebuild**: :func:`~radgenome_hf.generate.pipeline.rebuild_release` end to end on a local Ray instance
  (2 CPUs, started once before timing: its start is reported apart) against the 2-process pool and 1 worker.

The rebuild timings include starting the rebuild's own process pool (spawn + imports) and Ray Data's per-pipeline
start. The machine may
be shared: the 1-minute load average is printed before and after; ratios are only as good as that noise allows.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from _common import Comparison, comparisons_markdown, interleaved, median_ms, print_comparisons  # noqa: E402


def _fresh(base: Path, name: str) -> Path:
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    return d


def _warm(_: int) -> int:
    import radgenome_hf.access.masks  # noqa: F401
    import radgenome_hf.generate.packing  # noqa: F401
    import radgenome_hf.generate.volumes  # noqa: F401

    return os.getpid()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", type=int, nargs=3, default=(160, 160, 112))
    ap.add_argument("--patients", type=int, nargs=2, default=(4, 2), metavar=("TRAIN", "VALID"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--json-out", type=Path)
    args = ap.parse_args()

    from radgenome_hf.access.maskstore import MaskStore
    from radgenome_hf.generate.packing import pack_mask_sources
    from radgenome_hf.generate.pipeline import PipelineConfig, rebuild_release
    from radgenome_hf.generate.runner import make_executor
    from radgenome_hf.generate.segment import discover_volumes
    from radgenome_hf.generate.volumes import VolumeJob, run_volume_stages
    from radgenome_hf.io.release import UpstreamRelease
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    load = [os.getloadavg()[0]]
    tmp = Path(tempfile.mkdtemp(prefix="bench_pipeline_"))
    rel = write_release(tmp / "release", SyntheticConfig(n_train_patients=args.patients[0],
                                                         n_valid_patients=args.patients[1],
                                                         shape=tuple(args.shape)), progress=False)
    release = UpstreamRelease.discover(rel.root, need="ctrate")
    sources = [s for split in ("train", "valid") for kind in ("anatomy", "region")
               if (s := release.mask_source(split, kind)) is not None]
    volumes = discover_volumes(rel.root)
    work = tmp / "work"
    counts: dict[str, int] = {}

    t0 = time.perf_counter()
    pools = {1: make_executor(workers=1), 2: make_executor(workers=2)}
    list(pools[2].map(_warm, range(4)))  # spawn + imports: paid once per run, reported apart
    pool_start = time.perf_counter() - t0  # (the first pack + quality below, untimed, finishes the imports)

    def pack_quality(workers: int):
        def run() -> None:
            out = _fresh(work, f"pq{workers}")
            ex = pools[workers]
            packed: dict[str, Path] = {}
            n = 0
            reps = pack_mask_sources([(src, out / f"{src.split}_{src.kind}") for src in sources], ex, progress=False)
            for src, rep in zip(sources, reps):
                n += rep.structures
                if src.kind == "anatomy":
                    packed.update(rep.outputs)
            jobs = [VolumeJob(v, str(p), str(packed[v])) for v, p in volumes]
            vrep = run_volume_stages(jobs, out / "volumes", executor=ex if workers > 1 else None, workers=workers,
                                     progress=False)
            assert len(vrep.done) == len(volumes), vrep.failed
            counts["structures"] = n
        return run

    def maskstore_serial() -> None:
        out = _fresh(work, "maskstore")
        for src in sources:
            MaskStore.prepare(release, src.split, src.kind, cache_root=out, progress=False)

    def rebuild(workers: int | None, ray: str | None = None):
        def run() -> None:
            out = _fresh(work, f"rebuild_{ray or workers}")
            rep = rebuild_release(rel.root, out, PipelineConfig(progress=False, workers=workers, ray=ray))
            assert not rep.skipped and not rep.problems
        return run

    ops = {"pack+quality, 2 pool processes": pack_quality(2), "pack+quality, 1 worker": pack_quality(1),
           "pack, MaskStore.prepare serial": maskstore_serial,
           "rebuild, 2 pool processes": rebuild(2), "rebuild, 1 worker": rebuild(1)}
    ray_start = None
    if not args.no_ray:
        import ray

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                 os.environ.get("PYTHONPATH")]))
        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        ray_start = time.perf_counter() - t0
        ops["rebuild, Ray Data (local, 2 CPUs)"] = rebuild(2, "local")
    for name in ("pack+quality, 2 pool processes", "pack+quality, 1 worker"):
        ops[name]()  # untimed: the workers' first-use imports (pyarrow, nibabel, the ontology)
    cpu: dict[str, list[float]] = {name: [] for name in ops}

    def cpu_seconds() -> float:
        """CPU time of this process, its finished children (the rebuild's own pools) and the live benchmark pool."""
        import psutil

        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        live = sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pools[2]._processes)  # type: ignore[attr-defined]
        return time.process_time() + ru.ru_utime + ru.ru_stime + live

    def with_cpu(name: str, fn):
        def run() -> None:
            c0 = cpu_seconds()
            fn()
            cpu[name].append(cpu_seconds() - c0)
        return run

    load.append(os.getloadavg()[0])
    times = interleaved({name: with_cpu(name, fn) for name, fn in ops.items()}, rounds=args.rounds, warmup=False)
    load.append(os.getloadavg()[0])

    n_vol, n_struct = len(volumes), counts["structures"]
    comps = [
        Comparison("pack + quality (all sources, every volume)", "2 pool processes", times["pack+quality, 2 pool processes"],
                   {"1 worker": times["pack+quality, 1 worker"],
                    "MaskStore.prepare serial (pack only)": times["pack, MaskStore.prepare serial"]},
                   note=f"{n_vol} volumes, {n_struct} structures; pool started before timing ({pool_start:.1f} s)"),
        Comparison("rebuild end to end", "2 pool processes", times["rebuild, 2 pool processes"],
                   {"1 worker": times["rebuild, 1 worker"]}),
    ]
    if "rebuild, Ray Data (local, 2 CPUs)" in times:
        comps.append(Comparison("rebuild end to end", "Ray Data (local, 2 CPUs)", times["rebuild, Ray Data (local, 2 CPUs)"],
                                {"2 pool processes": times["rebuild, 2 pool processes"]},
                                note=f"Ray start {ray_start:.1f} s not included"))
    print(f"release: {n_vol} volumes {tuple(args.shape)}, {n_struct} structures packed per pass; rounds {args.rounds}")
    print(f"1-minute load average: {load[0]:.2f} at start, {load[1]:.2f} before timing, {load[2]:.2f} at the end "
          f"(2 cores: above 2 the runs share the CPUs with others)")
    (print(comparisons_markdown(comps)) if args.markdown else print_comparisons(comps))
    print("\nCPU seconds used (median; Ray workers are not counted) and cores kept busy (CPU / wall):")
    for name, xs in times.items():
        c = statistics.median(cpu[name])
        note = "" if "Ray" not in name else "  (driver only)"
        print(f"  {name:40s} wall {statistics.median(xs):7.2f} s  CPU {c:7.2f} s  cores {c / statistics.median(xs):4.2f}{note}")
    rates = {name: {"median_s": round(median_ms(xs) / 1000, 3), "volumes_per_s": round(n_vol / (median_ms(xs) / 1000), 3),
                    "runs_s": [round(x, 3) for x in xs], "cpu_s": [round(x, 3) for x in cpu[name]]}
             for name, xs in times.items()}
    for name in ("pack+quality, 2 pool processes", "pack+quality, 1 worker", "pack, MaskStore.prepare serial"):
        rates[name]["structures_per_s"] = round(n_struct / (median_ms(times[name]) / 1000), 1)
    result = {"volumes": n_vol, "structures": n_struct, "shape": list(args.shape), "load_average": load,
              "ray_start_s": ray_start, "pool_start_s": pool_start, "ops": rates}
    pools[2].shutdown()
    print(json.dumps(result, indent=1))
    if args.json_out:
        args.json_out.write_text(json.dumps(result, indent=1))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
