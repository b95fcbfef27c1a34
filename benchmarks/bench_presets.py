"""Preprocessing presets and the training-loop feed: ours against MONAI and CT-CLIP's loader, in one run.

    python benchmarks/bench_presets.py               # small: 256x256x150 raw -> 240x240x120, seconds to a minute
    python benchmarks/bench_presets.py --realistic   # 512x512x300 raw -> 480x480x240 like perf-anchors.md (minutes)

Sections (medians; ratio = baseline / ours, > 1 means we are faster; the machine is shared: trust only ~2x):
1. CT-CLIP preset from a ``.nii.gz`` (first touch): Volume + ``ctclip_preprocess`` (float32 and int16) against the
   MONAI chain LoadImage + EnsureChannelFirst + Spacing + ScaleIntensityRange + ResizeWithPadOrCrop, and CT-CLIP's
   own steps (``get_fdata`` float64, rescale, transposes, float64 ``F.interpolate``, clip, crop/pad).
2. Volumes/s per core into the loop, preprocessed CT int16 + uint8 label: ``ThreadedVolumeLoader`` with 1 and 2
   threads over PreparedCache files (one-shot ``frame`` layout through ``cache.reader``, and chunked ``.b2nd``
   paths), decoded into the ring's reused buffers, against a plain ``DataLoader(num_workers=2)`` over ``.nii.gz``
   + the MONAI chain. "Per core" is printed two ways: wall rate / threads, and items per CPU-second of the
   process (honest when other jobs share the cores).
3. Region crops (96x96x64; 48x48x32 small) per second per core through ``ThreadedVolumeLoader`` (1 and 2
   threads; ``cache.reader(key, bbox)`` decodes only the touched chunks into the ring) against nibabel
   ``dataobj`` slicing of the ``.nii.gz``.
4. Peak RSS streaming 50 and 500 small volumes with a 2-way loader (threads; and DataLoader with 2 workers over a
   streaming ``datasets`` dataset): it should be flat in N.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Comparison, interleaved, median_ms, print_comparisons, synthetic_ct  # noqa: E402

CORES = 2  # loaders below use 2 threads / 2 workers


# ----------------------------------------------------------------------------------------------------------
# baselines
# ----------------------------------------------------------------------------------------------------------
def ctclip_own_loader(path: str, slope: float, intercept: float, xy: float, z: float, target_shape):
    """CT-CLIP scripts/data.py nii_img_to_tensor, step for step (float64)."""
    import nibabel as nib
    import torch
    import torch.nn.functional as F

    img = nib.load(path).get_fdata()
    img = slope * img + intercept
    img = img.transpose(2, 0, 1)
    t = torch.tensor(img).unsqueeze(0).unsqueeze(0)
    cur, tgt = (z, xy, xy), (1.5, 0.75, 0.75)
    size = [int(t.shape[2 + i] * (cur[i] / tgt[i])) for i in range(3)]
    img = F.interpolate(t, size=size, mode="trilinear", align_corners=False).cpu().numpy()[0][0]
    img = np.transpose(img, (1, 2, 0))
    img = (np.clip(img, -1000, 1000) / 1000).astype(np.float32)
    tensor = torch.tensor(img)
    h, w, d = tensor.shape
    dh, dw, dd = target_shape
    hs, ws, ds = max((h - dh) // 2, 0), max((w - dw) // 2, 0), max((d - dd) // 2, 0)
    tensor = tensor[hs : min(hs + dh, h), ws : min(ws + dw, w), ds : min(ds + dd, d)]
    ph, pw, pd = dh - tensor.size(0), dw - tensor.size(1), dd - tensor.size(2)
    tensor = F.pad(tensor, (pd // 2, pd - pd // 2, pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=-1)
    return tensor.permute(2, 0, 1).unsqueeze(0)


def monai_chain(keys, target_shape, with_load=True):
    from monai.transforms import (
        Compose,
        EnsureChannelFirstd,
        LoadImaged,
        ResizeWithPadOrCropd,
        ScaleIntensityRanged,
        Spacingd,
    )

    modes = ["bilinear", "nearest"][: len(keys)]
    ts = [LoadImaged(keys=keys, image_only=True), EnsureChannelFirstd(keys=keys)] if with_load else []
    ts += [
        Spacingd(keys=keys, pixdim=(0.75, 0.75, 1.5), mode=modes),
        ScaleIntensityRanged(keys=keys[:1], a_min=-1000, a_max=1000, b_min=-1, b_max=1, clip=True),
        ResizeWithPadOrCropd(keys=keys, spatial_size=target_shape, constant_values=-1),
    ]
    return Compose(ts)


class _MonaiDS:
    def __init__(self, items, chain):
        self.items, self.chain = items, chain

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.chain(dict(self.items[i]))


# ----------------------------------------------------------------------------------------------------------
# memory
# ----------------------------------------------------------------------------------------------------------
def _rss_tree(pid: int) -> int:
    """RSS (bytes) of a process and its children (DataLoader workers)."""
    total = 0
    pids = [pid]
    try:
        for line in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
            pids.append(int(line))
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakRSS:
    """Samples the RSS of this process and its children every 10 ms."""

    def __enter__(self):
        self.peak = _rss_tree(os.getpid())
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_tree(os.getpid()))

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, _rss_tree(os.getpid()))


def _mb(n: float) -> str:
    return f"{n / 1e6:,.0f} MB"


# ----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realistic", action="store_true", help="512x512x300 raw -> 480x480x240 (default: half size)")
    ap.add_argument("--rounds", type=int, default=None, help="timing rounds for section 1 (default 3, realistic 2)")
    ap.add_argument("--no-monai", action="store_true", help="skip the MONAI baselines (slow)")
    ap.add_argument("--sections", default="1234", help="which sections to run, e.g. 24")
    args = ap.parse_args(argv)

    import nibabel as nib
    import torch

    from radgenome_hf.access.cache import PreparedCache
    from radgenome_hf.training import ThreadedVolumeLoader, make_dataloader
    from radgenome_hf.training import ctclip_preprocess, ctclip_preprocess_mask
    from radgenome_hf.access.volume import Volume

    torch.set_num_threads(CORES)
    real = args.realistic
    raw_shape = (512, 512, 300) if real else (256, 256, 150)
    spacing = (0.73, 0.73, 1.0)
    target = (480, 480, 240) if real else (240, 240, 120)
    crop = (96, 96, 64) if real else (48, 48, 32)
    rounds = args.rounds or (2 if real else 3)
    n_files = 4
    print(f"raw grid {raw_shape} int16 at {spacing} mm -> CT-CLIP grid {target}; {CORES} threads; "
          f"torch {torch.__version__}; load average {os.getloadavg()}")

    tmp = Path(tempfile.mkdtemp(prefix="bench_presets_"))
    aff = np.diag([*spacing, 1.0])
    cts, segs = [], []
    t0 = time.perf_counter()
    for n in range(n_files):
        ct = synthetic_ct(raw_shape, seed=n)
        seg = np.zeros(raw_shape, np.uint8, order="F")
        seg[ct > 100] = 2
        seg[(ct < -500) & (ct > -950)] = 1
        p, q = tmp / f"ct{n}.nii.gz", tmp / f"seg{n}.nii.gz"
        nib.save(nib.Nifti1Image(ct, aff), p)
        nib.save(nib.Nifti1Image(seg, aff), q)
        cts.append(str(p))
        segs.append(str(q))
    print(f"wrote {n_files} CT + label .nii.gz in {time.perf_counter() - t0:.1f} s\n")
    comps: list[Comparison] = []
    notes: list[str] = []

    # -- 1. CT-CLIP preset from .nii.gz -------------------------------------------------------------------
    if "1" in args.sections:
        f = cts[0]
        ops = {
            "ours float32": lambda: ctclip_preprocess(Volume.open(f), target_shape=target),
            "ours int16": lambda: ctclip_preprocess(Volume.open(f), target_shape=target, output="int16"),
            "CT-CLIP loader (float64)": lambda: ctclip_own_loader(f, 1.0, 0.0, spacing[0], spacing[2], target),
        }
        if not args.no_monai:
            chain = monai_chain(["image"], target)
            ops["MONAI chain"] = lambda: chain({"image": f})
        cpu: dict[str, list[float]] = {k: [] for k in ops}

        def cpu_timed(name, fn):
            def run():
                c0 = time.process_time()
                r = fn()
                cpu[name].append(time.process_time() - c0)
                return r
            return run

        times = interleaved({k: cpu_timed(k, f) for k, f in ops.items()}, rounds=rounds, warmup=False)
        base = {k: v for k, v in times.items() if not k.startswith("ours")}
        for k in ops:
            ref = "MONAI chain" if "MONAI chain" in cpu else "CT-CLIP loader (float64)"
            notes.append(f"CT-CLIP preset CPU time (all threads of this process) {k}: {median_ms(cpu[k]):.0f} ms CPU "
                         f"median; {ref} / this = {median_ms(cpu[ref]) / median_ms(cpu[k]):.1f}x "
                         f"(load {os.getloadavg()[0]:.2f})")
        comps.append(Comparison("CT-CLIP preset, .nii.gz first touch", "ours float32", times["ours float32"], base))
        comps.append(Comparison("CT-CLIP preset, .nii.gz first touch", "ours int16", times["ours int16"], base))
        # numerical agreement with CT-CLIP's own loader
        a = ctclip_preprocess(Volume.open(f), target_shape=target).numpy()
        b = ctclip_own_loader(f, 1.0, 0.0, spacing[0], spacing[2], target).numpy()
        notes.append(f"CT-CLIP preset vs CT-CLIP's loader: shape {a.shape}, max |diff| {np.abs(a - b).max():.2e}")

    # prepared (CT-CLIP grid, int16 HU + uint8 label) volumes in the PreparedCache: both layouts
    cache = PreparedCache(tmp / "cache", max_bytes=1 << 40)  # chunked 64^3 (crops)
    fcache = PreparedCache(tmp / "fcache", max_bytes=1 << 40, layout="frame")  # one-shot frames (whole volumes)
    files, fkeys = [], []
    pre_bytes = fpre_bytes = 0
    for n in range(n_files):
        ct_t = ctclip_preprocess(Volume.open(cts[n]), target_shape=target, output="int16")[0]  # (D, H, W) C-order
        lb_t = ctclip_preprocess_mask(Volume.open(segs[n]), target_shape=target)[0]
        kc, kl = cache.key_for(cts[n], "ctclip-int16"), cache.key_for(segs[n], "ctclip-mask")
        files.append({"image": cache.put_array(kc, ct_t.numpy()), "label": cache.put_array(kl, lb_t.numpy())})
        pre_bytes += files[-1]["image"].stat().st_size + files[-1]["label"].stat().st_size
        fc, fl = fcache.put_array(kc, ct_t.numpy()), fcache.put_array(kl, lb_t.numpy())
        fkeys.append((kc, kl))
        fpre_bytes += fc.stat().st_size + fl.stat().st_size
    notes.append(f"prepared CT int16 + label uint8 per volume: chunked {_mb(pre_bytes / n_files)}, "
                 f"frame {_mb(fpre_bytes / n_files)}")

    def per_core(fn, n, threads):
        """(items/s wall, items/s per core = wall rate / threads, items per CPU-second of this process)."""
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        return n / wall, n / wall / threads, n / cpu

    def fmt_rates(rs):
        w, pc, cpu = (float(np.median([r[i] for r in rs])) for i in range(3))
        return f"{w:.2f}/s wall = {pc:.2f}/s per core; {cpu:.2f} per CPU-second"

    # -- 2. vol/s per core into the training loop -----------------------------------------------------------
    if "2" in args.sections:
        n_loads = 16 if real else 32
        variants = {
            "frame readers": [{"image": fcache.reader(fkeys[i % n_files][0]), "label": fcache.reader(fkeys[i % n_files][1])}
                              for i in range(n_loads)],
            "chunked .b2nd paths": [files[i % n_files] for i in range(n_loads)],
        }
        for threads in (1, CORES):
            for vname, items in variants.items():
                loader = ThreadedVolumeLoader(items, num_threads=threads)

                def run_ours(loader=loader):
                    for s in loader:
                        assert s["image"].dtype == torch.int16 and s["label"].dtype == torch.uint8

                run_ours()  # warm-up epoch (allocates the ring)
                allocs = loader.allocations
                rates = [per_core(run_ours, n_loads, threads) for _ in range(rounds + 1)]
                assert loader.allocations == allocs  # no allocation after the first epoch
                notes.append(f"ThreadedVolumeLoader({threads} thread{'s' * (threads > 1)}), {vname}, int16+uint8 "
                             f"{target}: {fmt_rates(rates)} (load {os.getloadavg()[0]:.2f})")
        if not args.no_monai:
            n_base = 2 if real else 4
            ds = _MonaiDS([{"image": cts[i % n_files], "label": segs[i % n_files]} for i in range(n_base)],
                          monai_chain(["image", "label"], target))
            dl = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=CORES, prefetch_factor=2)
            t = time.perf_counter()
            for _ in dl:
                pass
            base = n_base / (time.perf_counter() - t)
            notes.append(f"baseline DataLoader(2 workers) over .nii.gz + MONAI chain: {base:.3f} vol/s = "
                         f"{base / CORES:.3f} vol/s per core")

    # -- 3. crops/s per core ----------------------------------------------------------------------------------
    if "3" in args.sections:
        rng = np.random.default_rng(0)
        n_crops = 200
        shape_dhw = (target[2], target[0], target[1])
        cdhw = (crop[2], crop[0], crop[1])
        keys = [(cache.key_for(cts[n], "ctclip-int16"), cache.key_for(segs[n], "ctclip-mask")) for n in range(n_files)]
        boxes = []
        for _ in range(n_crops):
            lo = [int(rng.integers(0, s - c + 1)) for s, c in zip(shape_dhw, cdhw)]
            boxes.append((*lo, *[a + c for a, c in zip(lo, cdhw)]))
        items = [{"image": cache.reader(keys[n % n_files][0], boxes[n]), "label": cache.reader(keys[n % n_files][1], boxes[n])}
                 for n in range(n_crops)]
        for threads in (1, CORES):
            crop_loader = ThreadedVolumeLoader(items, num_threads=threads)

            def run_crops(crop_loader=crop_loader):
                for s in crop_loader:
                    assert tuple(s["image"].shape) == cdhw

            run_crops()
            rates = [per_core(run_crops, n_crops, threads) for _ in range(3)]
            notes.append(f"{cdhw} CT+label crops through ThreadedVolumeLoader({threads} thread"
                         f"{'s' * (threads > 1)}, cache.reader into the ring): {fmt_rates(rates)} "
                         f"(load {os.getloadavg()[0]:.2f})")

        def nii_crop():
            i0, j0, k0 = (s // 2 - c // 2 for s, c in zip(raw_shape, crop))
            return np.asanyarray(nib.load(cts[1]).dataobj[i0 : i0 + crop[0], j0 : j0 + crop[1], k0 : k0 + crop[2]])

        tn = interleaved({"nii": nii_crop}, rounds=3, warmup=False)["nii"]
        notes.append(f"baseline nibabel .nii.gz dataobj crop (CT only, raw grid): {median_ms(tn):.0f} ms = "
                     f"{1000 / median_ms(tn):.1f} crops/s")

    # -- 4. peak RSS, streaming 50 and 500 small volumes ------------------------------------------------------
    if "4" in args.sections:
        import datasets

        small = []
        for n in range(20):
            a = synthetic_ct((128, 128, 96), seed=100 + n)
            small.append(str(cache.put_array(cache.key_for(f"small{n}".encode(), "hu"), a)))
        rows = []
        before = _rss_tree(os.getpid())
        for N in (50, 500):
            with PeakRSS() as m1:
                for s in ThreadedVolumeLoader([small[i % 20] for i in range(N)], num_threads=CORES):
                    float(s["image"][0, 0, 0])
            ds = datasets.Dataset.from_dict({"path": [small[i % 20] for i in range(N)]}).to_iterable_dataset(num_shards=4)
            with PeakRSS() as m2:
                dl = make_dataloader(ds, batch_size=1, num_workers=CORES, transform=_ReadB2)
                for b in dl:
                    float(b["image"][0, 0, 0, 0])
            rows.append((N, m1.peak, m2.peak))
        for N, p1, p2 in rows:
            notes.append(f"peak RSS streaming {N} volumes of 128x128x96 (process RSS before: {_mb(before)}): "
                         f"ThreadedVolumeLoader {_mb(p1)} (+{_mb(p1 - before)}); make_dataloader (2 workers, "
                         f"streaming datasets; main + workers summed, forked pages counted per process) {_mb(p2)}")

    if comps:
        print_comparisons(comps)
        print()
    for line in notes:
        print("- " + line)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


def _ReadB2(row: dict) -> dict:  # noqa: N802 - used as a transform in the workers
    import blosc2

    row["image"] = blosc2.open(row["path"], mode="r")[()]
    return row


if __name__ == "__main__":
    sys.exit(main())
