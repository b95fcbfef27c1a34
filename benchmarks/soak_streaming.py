"""Soak test: streaming over thousands of small volumes with a 2-worker DataLoader; memory must stay flat and
no row may be lost or repeated.

``datasets.load_dataset("radgenome", config, streaming=True)`` over a synthetic release with many patients, through
``torch.utils.data.DataLoader(num_workers=2, persistent_workers=True)``, decoding every volume and every mask in
the workers, epoch after epoch for ``--duration`` seconds. RSS of the main process plus its workers is sampled
every second. Prints RSS at start/middle/end, the slope, and rows seen vs expected per epoch.

    python benchmarks/soak_streaming.py --patients 1500 --duration 180            # ~2,250 volumes, 3 minutes
    python benchmarks/soak_streaming.py --config vqa --patients 200 --duration 60

The expected rows come from the non-streaming (Arrow-prepared) load of the same release, a separate code path.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

KEY_FIELDS = {
    "segmentation": ("volume_name",),
    "vqa": ("volume_name", "question_type", "question", "answer", "anatomy"),
}


def make_release(out: str | os.PathLike, patients: int, shape=(32, 32, 24), seed: int = 0) -> Path:
    """A synthetic upstream release with ``patients`` training patients (about 1.5 volumes each); reused if present."""
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    out = Path(out)
    marker = out / f".soak-{patients}-{'x'.join(map(str, shape))}-{seed}"
    if marker.exists():
        return out
    write_release(out, SyntheticConfig(n_train_patients=patients, n_valid_patients=0, shape=shape, seed=seed,
                                       mask_layout="folders"))
    marker.touch()
    return out


def _key(row: dict, config: str) -> tuple:
    return tuple(row[k] for k in KEY_FIELDS[config])


def _decode(row: dict, config: str) -> dict:
    """Runs in the workers: decode the volume and every mask, return only small facts (no arrays cross)."""
    vol = row["volume"].array()
    out = {"key": _key(row, config), "vox": int(vol.size), "pid": os.getpid()}
    if config == "segmentation":
        ms = row["masks"]
        out["mask_vox"] = sum(int(ms.mask(n).sum()) for n in ms.names)
    else:
        m = row.get("mask")
        out["mask_vox"] = int(m.array().sum()) if m is not None else 0
    row["volume"].release()
    return out


class _Decode:
    def __init__(self, config: str) -> None:
        self.config = config

    def __call__(self, row: dict) -> dict:
        return _decode(row, self.config)


def _rss_tree() -> int:
    import psutil

    me = psutil.Process()
    total = me.memory_info().rss
    for child in me.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:
            pass
    return total


def expected_rows(root: Path, config: str, cache_dir: str) -> collections.Counter:
    import datasets

    ds = datasets.load_dataset("radgenome", config, data_dir=str(root), split="train", cache_dir=cache_dir)
    cols = ds.select_columns(list(KEY_FIELDS[config]))
    return collections.Counter(tuple(r[k] for k in KEY_FIELDS[config]) for r in cols)


def soak(root: str | os.PathLike, config: str = "segmentation", duration: float = 180.0, workers: int = 2,
         cache_dir: str | None = None, interval: float = 1.0, log=print) -> dict[str, Any]:
    """Stream ``config`` for at least ``duration`` seconds (whole epochs); return the figures."""
    import datasets
    import torch
    from torch.utils.data import DataLoader

    from radgenome_hf.hf.loading import register

    register()
    root = Path(root)
    cache_dir = cache_dir or tempfile.mkdtemp(prefix="soak-hf-")
    expected = expected_rows(root, config, cache_dir)
    ds = datasets.load_dataset("radgenome", config, data_dir=str(root), split="train", streaming=True,
                               cache_dir=cache_dir)
    ds = ds.map(_Decode(config), remove_columns=list(ds.features or {}))
    loader = DataLoader(ds, batch_size=None, num_workers=workers, persistent_workers=workers > 0,
                        collate_fn=lambda x: x)
    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    t0 = time.perf_counter()

    def sampler() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, _rss_tree()))
            stop.wait(interval)

    th = threading.Thread(target=sampler, daemon=True)
    th.start()
    epochs: list[dict[str, Any]] = []
    try:
        while time.perf_counter() - t0 < duration or not epochs:
            seen: collections.Counter = collections.Counter()
            pids = set()
            te = time.perf_counter()
            voxels = 0
            for item in loader:
                seen[tuple(item["key"])] += 1
                pids.add(item["pid"])
                voxels += item["vox"]
            lost = sum((expected - seen).values())
            repeated = sum((seen - expected).values())
            epochs.append({"rows": sum(seen.values()), "expected": sum(expected.values()), "lost": lost,
                           "repeated": repeated, "workers_used": len(pids), "seconds": time.perf_counter() - te,
                           "voxels": voxels})
            log(f"epoch {len(epochs)}: {epochs[-1]['rows']}/{epochs[-1]['expected']} rows, lost {lost}, "
                f"repeated {repeated}, {len(pids)} worker pids, {epochs[-1]['seconds']:.1f} s, "
                f"RSS {samples[-1][1] / 2**20:.0f} MiB" if samples else "")
    finally:
        stop.set()
        th.join()
        del loader  # shuts persistent workers down
        torch.cuda.empty_cache() if torch.cuda.is_available() else None
    rss = [r for _, r in samples]
    n = len(rss)
    third = max(1, n // 3)
    first, last = statistics.median(rss[:third]), statistics.median(rss[-third:])
    if n >= 2:  # least-squares slope over the second half (after warm-up), MiB per minute
        half = samples[n // 2:] if n >= 4 else samples
        ts = [t for t, _ in half]
        rs = [r for _, r in half]
        mt, mr = statistics.fmean(ts), statistics.fmean(rs)
        var = sum((t - mt) ** 2 for t in ts) or 1.0
        slope = sum((t - mt) * (r - mr) for t, r in zip(ts, rs)) / var * 60 / 2**20
    else:
        slope = 0.0
    return {
        "config": config, "volumes": len(expected) if config == "segmentation" else None,
        "seconds": time.perf_counter() - t0, "epochs": epochs,
        "rows_seen": sum(e["rows"] for e in epochs), "rows_expected": sum(e["expected"] for e in epochs),
        "lost": sum(e["lost"] for e in epochs), "repeated": sum(e["repeated"] for e in epochs),
        "rss_start_mib": rss[0] / 2**20 if rss else None, "rss_mid_mib": rss[n // 2] / 2**20 if rss else None,
        "rss_end_mib": rss[-1] / 2**20 if rss else None, "rss_peak_mib": max(rss) / 2**20 if rss else None,
        "rss_first_third_median_mib": first / 2**20, "rss_last_third_median_mib": last / 2**20,
        "rss_growth_ratio": last / first, "rss_slope_mib_per_min_second_half": slope, "samples": n,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--release", help="existing release folder (default: a synthetic one under --workdir)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "radgenome-soak"))
    ap.add_argument("--patients", type=int, default=1500, help="synthetic training patients (~1.5 volumes each)")
    ap.add_argument("--config", choices=sorted(KEY_FIELDS), default="segmentation")
    ap.add_argument("--duration", type=float, default=300.0, help="seconds (whole epochs; at least one)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args(argv)
    if args.release:
        root = Path(args.release)
    else:
        t = time.perf_counter()
        root = make_release(Path(args.workdir) / f"release-{args.patients}", args.patients)
        print(f"synthetic release {root} ready in {time.perf_counter() - t:.1f} s")
    res = soak(root, args.config, args.duration, args.workers, cache_dir=str(Path(args.workdir) / "hf-cache"))
    slim = {k: v for k, v in res.items() if k != "epochs"}
    print(json.dumps(slim, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    ok = res["lost"] == 0 and res["repeated"] == 0 and res["rss_growth_ratio"] < 1.5
    print("OK" if ok else "FAILED: rows lost/repeated or memory grew")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
