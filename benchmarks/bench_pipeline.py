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
start. The machine may be shared: the 1-minute load average is printed before and after; ratios are only as good as
that noise allows. CPU seconds are printed per configuration, split between this process (the driver) and the
processes it started, and pack + quality's scaling is also given from CPU time (the busiest worker, the pool's
overhead), which other jobs on the machine disturb much less than wall time.
"""

from __future__ import annotations

import argparse
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

from _common import (Comparison, comparisons_markdown, emit_json, interleaved, median_ms,  # noqa: E402
                     print_comparisons)


def _fresh(base: Path, name: str) -> Path:
    d = base / name
    if d.exists():
        shutil.rmtree(d)
    return d


class CpuMeter:
    """CPU seconds (user + system) of this process and of the processes it started: live descendants through psutil
    (pool workers; a local Ray instance's daemons and workers, only for the Ray configurations), ended children
    through ``RUSAGE_CHILDREN``."""

    KEYS = ("driver", "workers", "busiest")

    def __init__(self) -> None:
        self.ray_roots: set[int] = set()  # the local Ray instance's daemons (their subtree is Ray's)

    def start_ray(self, start) -> float:
        """Run ``start()`` (which starts a local Ray instance); its new child processes are Ray's. Returns seconds."""
        import psutil

        before = {p.pid for p in psutil.Process().children()}
        t0 = time.perf_counter()
        start()
        seconds = time.perf_counter() - t0
        self.ray_roots = {p.pid for p in psutil.Process().children()} - before
        return seconds

    def snapshot(self, with_ray: bool) -> tuple[float, float, dict[int, float]]:
        import psutil

        live: dict[int, float] = {}
        for p in psutil.Process().children(recursive=True):
            try:
                if not with_ray and (p.pid in self.ray_roots or any(q.pid in self.ray_roots for q in p.parents())):
                    continue
                live[p.pid] = sum(p.cpu_times()[:2])
            except psutil.Error:  # ended meanwhile: counted by RUSAGE_CHILDREN once reaped
                pass
        ru = resource.getrusage(resource.RUSAGE_CHILDREN)
        return time.process_time(), ru.ru_utime + ru.ru_stime, live

    def since(self, before: tuple[float, float, dict[int, float]], with_ray: bool) -> dict[str, float]:
        """``driver``, ``workers`` (every other process) and ``busiest`` (the most of any one live process)."""
        d0, ended0, live0 = before
        d1, ended1, live1 = self.snapshot(with_ray)
        per = {pid: c - live0.get(pid, 0.0) for pid, c in live1.items()}
        return {"driver": d1 - d0, "workers": sum(per.values()) + (ended1 - ended0),
                "busiest": max(per.values(), default=0.0)}


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
    meter = CpuMeter()
    if not args.no_ray:
        from radgenome_hf.generate.runner import init_ray

        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                                 os.environ.get("PYTHONPATH")]))
        # started as the rebuild starts it (the workers' setup hook included)
        ray_start = meter.start_ray(lambda: init_ray("local", num_cpus=2))
        ops["rebuild, Ray Data (local, 2 CPUs)"] = rebuild(2, "local")
    for name in ("pack+quality, 2 pool processes", "pack+quality, 1 worker"):
        ops[name]()  # untimed: the workers' first-use imports (pyarrow, nibabel, the ontology)
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in ops}

    def with_cpu(name: str, fn):
        def run() -> None:
            before = meter.snapshot("Ray" in name)
            fn()
            cpu[name].append(meter.since(before, "Ray" in name))
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
    med = {name: {k: statistics.median(c[k] for c in cpu[name]) for k in CpuMeter.KEYS} for name in ops}
    print("\nCPU seconds (medians): this process (the driver), every other process it started (pool workers; Ray's "
          "workers and daemons), the busiest of those, and cores kept busy (CPU / wall):")
    for name, xs in times.items():
        m = med[name]
        print(f"  {name:40s} wall {statistics.median(xs):7.2f} s  driver {m['driver']:6.2f}  workers {m['workers']:6.2f}"
              f"  busiest {m['busiest']:6.2f}  cores {(m['driver'] + m['workers']) / statistics.median(xs):4.2f}")
    one, two = med["pack+quality, 1 worker"], med["pack+quality, 2 pool processes"]
    cpu_one = one["driver"] + one["workers"]
    cpu_two = two["driver"] + two["workers"]
    projected = max(two["busiest"], cpu_two / 2)  # the wall time on two idle cores: the busiest worker, or half the CPU
    print(f"\npack + quality from CPU time (less sensitive to other jobs' load than the wall times above):\n"
          f"  1 worker {cpu_one:.2f} CPU-s; 2 processes {cpu_two:.2f} CPU-s (driver {two['driver']:.2f}, busiest "
          f"worker {two['busiest']:.2f}) -> work overhead of the pool {cpu_two / cpu_one:.2f}x, projected speedup on 2 "
          f"idle cores {cpu_one / projected:.2f}x (target >= 1.7x)")
    if "rebuild, Ray Data (local, 2 CPUs)" in med:
        ray_m, pool_m = med["rebuild, Ray Data (local, 2 CPUs)"], med["rebuild, 2 pool processes"]
        ray_cpu, pool_cpu = ray_m["driver"] + ray_m["workers"], pool_m["driver"] + pool_m["workers"]
        print(f"rebuild CPU: Ray {ray_cpu:.2f} CPU-s, pool {pool_cpu:.2f} CPU-s -> Ray uses {ray_cpu / pool_cpu:.2f}x the "
              f"pool's CPU (Ray's daemons included)")
    rates = {name: {"median_s": round(median_ms(xs) / 1000, 3), "volumes_per_s": round(n_vol / (median_ms(xs) / 1000), 3),
                    "runs_s": [round(x, 3) for x in xs],
                    "cpu_s": [{k: round(v, 3) for k, v in c.items()} for c in cpu[name]]}
             for name, xs in times.items()}
    for name in ("pack+quality, 2 pool processes", "pack+quality, 1 worker", "pack, MaskStore.prepare serial"):
        rates[name]["structures_per_s"] = round(n_struct / (median_ms(times[name]) / 1000), 1)
    result = {"volumes": n_vol, "structures": n_struct, "shape": list(args.shape), "load_average": load,
              "ray_start_s": ray_start, "pool_start_s": pool_start, "ops": rates}
    pools[2].shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    emit_json(result, args.json_out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
