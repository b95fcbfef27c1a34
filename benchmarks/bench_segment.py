"""Segmentation throughput of the MONAI backend on one device: volumes/s, GPU utilisation, host<->device bytes per
volume, peak GPU memory by sliding-window batch size, and the projected wall time of a whole release.

    python benchmarks/bench_segment.py                                   # CUDA if available, else a small CPU run
    python benchmarks/bench_segment.py --device cuda --size 512 512 300  # a realistic chest CT on a GPU
    python benchmarks/bench_segment.py --device cpu --size 48 48 32 --batch-sizes 1 --repeats 1   # a smoke run
    sh benchmarks/gpu_check.sh                                           # the prepared H100 check (see that file)

The network is the wholeBody bundle's SegResNet (105 channels, init_filters=32, blocks_down=[1,2,2,4],
blocks_up=[1,1,1]) randomly initialised (no download); weights do not change the cost. The input is a synthetic
chest phantom. Each batch size gets one warm-up run (cuDNN autotuning, allocator) and ``--repeats`` timed runs of
the whole ``segment`` call (resample, sliding window with AMP on CUDA, argmax, inversion, packing) and, separately,
of the sliding-window inference alone; ``predict_labels`` (what a GPU actor runs: upload, resample, inference,
argmax, inversion, download; the packing runs on CPU tasks in the pipeline) is timed apart. Peak GPU memory is
``torch.cuda.max_memory_allocated`` over the timed runs. GPU utilisation is sampled every 50 ms through NVML
(``torch.cuda.utilization``) while ``predict_labels`` runs. Host<->device bytes per volume are read from a CUDA
profiler trace of one ``predict_labels`` call (every memcpy, by direction); on the CPU they are given by construction
(the volume as stored up, the uint8 label map down). The projection: ``--release-volumes`` (25,692, CT-RATE's
train + validation) over ``--gpus`` (8) devices at the measured ``predict_labels`` rate, one actor per GPU, assuming
the CPU tasks (decode, pack, quality) keep up. Prints a table, then one JSON object (also written to ``--json-out``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

NET = {
    "_target_": "SegResNet",
    "spatial_dims": 3,
    "in_channels": 1,
    "out_channels": 105,
    "init_filters": 32,
    "blocks_down": [1, 2, 2, 4],
    "blocks_up": [1, 1, 1],
    "dropout_prob": 0.2,
}
# the chest channels of the wholeBody bundle's channel_def (TotalSegmentator v1 names); the rest are placeholders
_CHEST = {13: "lung_upper_lobe_left", 14: "lung_lower_lobe_left", 15: "lung_upper_lobe_right",
          16: "lung_middle_lobe_right", 17: "lung_lower_lobe_right", 42: "esophagus", 43: "trachea",
          44: "heart_myocardium", 45: "heart_atrium_left", 46: "heart_ventricle_left", 47: "heart_atrium_right",
          48: "heart_ventricle_right", 49: "pulmonary_artery"}
_CHEST.update({58 + i: f"rib_left_{i + 1}" for i in range(12)})
_CHEST.update({70 + i: f"rib_right_{i + 1}" for i in range(12)})


def channel_def() -> dict[int, str]:
    return {i: _CHEST.get(i, "background" if i == 0 else f"class_{i}") for i in range(105)}


class UtilisationSampler:
    """GPU utilisation (%) sampled through NVML every ``interval`` s while the ``with`` block runs (CUDA only)."""

    def __init__(self, cuda: bool, interval: float = 0.05) -> None:
        self.cuda, self.interval, self.samples = cuda, interval, []
        self._stop = threading.Event()

    def _run(self) -> None:
        import torch

        while not self._stop.is_set():
            try:
                self.samples.append(float(torch.cuda.utilization()))
            except Exception:  # no NVML (nvidia-ml-py): utilisation unknown
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> "UtilisationSampler":
        if self.cuda:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self.cuda:
            self._thread.join()


def transfer_bytes(fn, cuda: bool, by_construction: dict[str, int]) -> dict[str, object]:
    """Host->device and device->host bytes of one ``fn()`` call, from a CUDA profiler trace (every memcpy)."""
    if not cuda:
        return {**by_construction, "how": "by construction (no CUDA here)"}
    import torch
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    with tempfile.TemporaryDirectory() as tmp:
        trace = Path(tmp) / "trace.json"
        prof.export_chrome_trace(str(trace))
        events = json.loads(trace.read_text()).get("traceEvents", [])
    out = {"host_to_device": 0, "device_to_host": 0, "device_to_device": 0}
    for e in events:
        if e.get("cat") != "gpu_memcpy":
            continue
        name, n = e.get("name", ""), int(e.get("args", {}).get("bytes", 0))
        key = "host_to_device" if "HtoD" in name else "device_to_host" if "DtoH" in name else "device_to_device"
        out[key] += n
    return {**out, "how": "CUDA profiler trace (gpu_memcpy events)"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="auto", help="auto (cuda if available), cuda, cuda:N, cpu")
    ap.add_argument("--size", type=int, nargs=3, default=None, help="input shape (default 512 512 300 on CUDA, "
                    "64 64 48 on CPU)")
    ap.add_argument("--spacing", type=float, nargs=3, default=None, help="input spacing in mm (default: 0.73 0.73 1.0 "
                    "for 512-wide inputs, else a 384 x 384 x 288 mm field of view)")
    ap.add_argument("--pixdim", type=float, default=None, help="model spacing (1.5 = model.pt, the default on CUDA; "
                    "3.0 = model_lowres.pt; the CPU default is 6.0 so that a small run finishes)")
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--no-amp", action="store_true")
    ap.add_argument("--json-out", type=Path, default=None)
    ap.add_argument("--release-volumes", type=int, default=25_692, help="volumes of the release to project (25,692)")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs to project the release's wall time onto (8)")
    args = ap.parse_args(argv)

    import torch
    from monai.networks.nets import SegResNet

    from radgenome_hf.generate.backends.monai_bundle import MonaiBackend
    from radgenome_hf.testing.synthetic import make_phantom

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        print("CUDA requested but not available", file=sys.stderr)
        return 2
    size = tuple(args.size) if args.size else ((512, 512, 300) if cuda else (64, 64, 48))
    if args.pixdim is None:
        args.pixdim = 1.5 if cuda else 6.0
    spacing = tuple(args.spacing) if args.spacing else ((0.73, 0.73, 1.0) if size[0] >= 400 else None)
    t0 = time.perf_counter()
    ph = make_phantom(size, spacing, 0, lesions=None, realistic=size[0] >= 400)
    ct, affine = ph.ct, ph.affine
    phantom_s = time.perf_counter() - t0
    if cuda:
        torch.backends.cudnn.benchmark = True

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = Path(tmp) / "model.pt"
        torch.manual_seed(0)
        net_kwargs = {k: v for k, v in NET.items() if k != "_target_"}
        torch.save(SegResNet(**net_kwargs).state_dict(), ckpt)
        for bs in args.batch_sizes:
            backend = MonaiBackend(NET, ckpt, channel_def(), pixdim=args.pixdim, sw_batch_size=bs, device=device,
                                   amp=not args.no_amp)
            model = backend.model()
            backend.segment(ct, affine)  # warm-up
            if cuda:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            infers: list[float] = []

            def timed(fn) -> tuple[list[float], object]:
                """Seconds of ``--repeats`` calls (the device synchronised), and the last result."""
                out, res = [], None
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    res = fn()
                    if cuda:
                        torch.cuda.synchronize()
                    out.append(time.perf_counter() - t)
                return out, res

            totals, masks = timed(lambda: backend.segment(ct, affine))
            with UtilisationSampler(cuda) as util:
                predicts, labels = timed(lambda: backend.predict_labels(ct, affine))
            moved = transfer_bytes(lambda: backend.predict_labels(ct, affine), cuda,
                                   {"host_to_device": int(ct.nbytes), "device_to_host": int(labels.nbytes)})
            # sliding-window inference alone, on the resampled grid
            from monai.inferers import sliding_window_inference

            grid = [int(round(n * s / args.pixdim)) for n, s in zip(ct.shape, np.sqrt((affine[:3, :3] ** 2).sum(0)))]
            x = torch.randn(1, 1, *grid, device=device)
            for _ in range(args.repeats):
                if cuda:
                    torch.cuda.synchronize()
                t = time.perf_counter()
                with torch.inference_mode(), torch.autocast(torch.device(device).type, enabled=cuda and not args.no_amp):
                    out = sliding_window_inference(x, (96, 96, 96), bs, model, overlap=0.25, mode="gaussian",
                                                   padding_mode="replicate")
                    _ = out.argmax(1)
                if cuda:
                    torch.cuda.synchronize()
                infers.append(time.perf_counter() - t)
                del out
            peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
            med, pred = statistics.median(totals), statistics.median(predicts)
            rows.append({
                "sw_batch_size": bs,
                "seconds_per_volume": round(med, 3),
                "volumes_per_s": round(1.0 / med, 4),
                "predict_labels_s": round(pred, 3),
                "predict_volumes_per_s": round(1.0 / pred, 4),
                "inference_only_s": round(statistics.median(infers), 3),
                "gpu_utilisation_mean": round(statistics.mean(util.samples), 1) if util.samples else None,
                "gpu_utilisation_max": max(util.samples) if util.samples else None,
                "transfer_bytes_per_volume": moved,
                "peak_gpu_memory_gib": None if peak is None else round(peak, 2),
                "resampled_grid": grid,
                "structures": len(masks),
                "projected_release_hours": round(args.release_volumes * pred / args.gpus / 3600, 2),
            })
            del backend, model, x
            if cuda:
                torch.cuda.empty_cache()

    info = {
        "device": torch.cuda.get_device_name(0) if cuda else platform.processor() or "cpu",
        "torch": torch.__version__,
        "input_shape": list(size),
        "input_spacing": [round(float(s), 4) for s in np.sqrt((affine[:3, :3] ** 2).sum(0))],
        "pixdim": args.pixdim,
        "amp": cuda and not args.no_amp,
        "repeats": args.repeats,
        "phantom_seconds": round(phantom_s, 2),
        "load_average": os.getloadavg()[0],
        "projection": {"release_volumes": args.release_volumes, "gpus": args.gpus},
        "results": rows,
    }
    print(f"MONAI SegResNet(105) on {info['device']}, input {size} at {info['input_spacing']} mm, "
          f"model spacing {args.pixdim} mm, AMP {info['amp']}; 1-minute load average {info['load_average']:.2f}")
    print(f"{'sw_batch':>8} {'s/vol':>7} {'vol/s':>7} {'predict s':>9} {'infer s':>8} {'GPU %':>7} {'H2D MB':>7} "
          f"{'D2H MB':>7} {'peak GiB':>9}  grid")
    for r in rows:
        peak = "-" if r["peak_gpu_memory_gib"] is None else f"{r['peak_gpu_memory_gib']:.2f}"
        util = "-" if r["gpu_utilisation_mean"] is None else f"{r['gpu_utilisation_mean']:.0f}"
        moved = r["transfer_bytes_per_volume"]
        print(f"{r['sw_batch_size']:>8} {r['seconds_per_volume']:>7.3f} {r['volumes_per_s']:>7.3f} "
              f"{r['predict_labels_s']:>9.3f} {r['inference_only_s']:>8.3f} {util:>7} "
              f"{moved['host_to_device'] / 1e6:>7.1f} {moved['device_to_host'] / 1e6:>7.1f} {peak:>9}  "
              f"{r['resampled_grid']}")
    best = min(rows, key=lambda r: r["predict_labels_s"])
    print(f"host<->device bytes: {best['transfer_bytes_per_volume']['how']}")
    print(f"projected: {args.release_volumes:,} volumes on {args.gpus} such devices at sw_batch {best['sw_batch_size']} "
          f"({best['predict_volumes_per_s']:.3f} vol/s each, predict_labels) = {best['projected_release_hours']:.2f} h "
          "of segmentation, if the CPU tasks (decode, pack, quality) keep up")
    text = json.dumps(info)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
