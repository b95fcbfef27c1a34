"""The natural path, timed: exactly what the README tells users to write, against named baselines, in one run.

    python benchmarks/bench_natural.py --realistic            # 512x512x300 int16 volumes (writes a release once)
    python benchmarks/bench_natural.py                        # small volumes, a smoke run (seconds)
    python benchmarks/bench_natural.py --base-package DIR     # also time "today": an older radgenome_hf in DIR

Each measurement runs in its own process (cold process state, its own peak RSS over the process tree, workers
included); the machine's load average is printed with each figure. Ratios are baseline / ours or ours /
baseline as labelled; the machine is shared and noisy, so trust only differences of about 2x.

1. Into the training loop, CT-CLIP preset (int16 out, 480x480x240), batch 1, 2 workers, epochs 1 and 2:
   * ours: ``load_dataset("radgenome", "reports", ...)`` + ``make_dataloader(ds, num_workers=2,
     transform=CTClipd("volume", output="int16"))`` (threads, cached preset outputs, reused buffers);
   * ours with plain ``torch.utils.data.DataLoader(ds.with_transform(CTClipd(...)), num_workers=2)``;
   * today (``--base-package``): the same lines on the older package;
   * the package's fast path (advanced): ``ctclip_preprocess`` once into a ``PreparedCache`` frame, then
     ``ThreadedVolumeLoader`` over ``cache.reader`` (2 threads);
   * MONAI ``PersistentDataset`` + LoadImaged/EnsureChannelFirstd/Spacingd/ScaleIntensityRanged/
     ResizeWithPadOrCropd, ``DataLoader(num_workers=2)``;
   * CT-CLIP's own loader (``nii_img_to_tensor`` step for step, float64), ``DataLoader(num_workers=2)``, epoch 1.
2. A 96x96x64 crop (48x48x32 small) through a fresh row of an already touched volume (``ds[j]["volume"].crop``),
   warm, in the same process and after the process LRU is cleared (what a new worker sees), against nibabel
   (``nib.load(path).dataobj[box]``); voxels compared.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _load() -> str:
    a, b, c = os.getloadavg()
    return f"{a:.2f}/{b:.2f}/{c:.2f}"


# ----------------------------------------------------------------------------------------------------------
# children: one measurement per process
# ----------------------------------------------------------------------------------------------------------
def _reports(release: str, hf_cache: str, volume_cache: str | None):
    import datasets

    import radgenome_hf  # noqa: F401

    kw = {"volume_cache": volume_cache} if volume_cache else {}
    return datasets.load_dataset("radgenome", "reports", data_dir=release, split="train", cache_dir=hf_cache,
                                 progress=False, **kw)


def _epochs(make_iter, epochs: int, key: str) -> dict:
    from bench_presets import PeakRSS

    out = {"epochs": [], "first_batch_s": [], "load": []}
    with PeakRSS() as rss:
        for _ in range(epochs):
            out["load"].append(_load())
            t0 = time.perf_counter()
            first, n = None, 0
            for batch in make_iter():
                x = batch[key]
                if first is None:
                    first = time.perf_counter() - t0
                n += int(x.shape[0]) if hasattr(x, "shape") and x.dim() == 5 else 1
            out["epochs"].append((n, time.perf_counter() - t0))
            out["first_batch_s"].append(first)
    out["peak_rss"] = rss.peak
    return out


def child_natural(args) -> dict:
    from radgenome_hf.training import CTClipd, make_dataloader

    ds = _reports(args.release, args.hf_cache, args.volume_cache)
    shape = tuple(args.shape)
    preset = CTClipd("volume", output="int16", target_shape=shape)
    loader = make_dataloader(ds, batch_size=1, num_workers=2, transform=preset)
    out = _epochs(lambda: loader, args.epochs, "volume")
    # interleaved, same process, same cache files: our loader's epoch against the advanced fast path's
    # (ThreadedVolumeLoader over cache.reader of the very files the preset wrote): the loader's own cost
    from radgenome_hf.training import ThreadedVolumeLoader

    ring = ThreadedVolumeLoader([preset.cached_readers(ds[i])["volume"] for i in range(len(ds))], num_threads=2)
    pair: dict[str, list[float]] = {"ours": [], "fastpath": []}
    for _ in range(args.rounds):
        for name, it in (("ours", lambda: loader), ("fastpath", lambda: ring)):
            t0 = time.perf_counter()
            n = sum(1 for _ in it())
            pair[name].append(n / (time.perf_counter() - t0))
    out["interleaved_vol_s"] = pair
    out["interleaved_load"] = _load()
    return out


def child_plain_torch(args) -> dict:
    import torch

    from radgenome_hf.training import CTClipd

    ds = _reports(args.release, args.hf_cache, args.volume_cache)
    cols = ["volume", "volume_name"]
    ds = ds.select_columns(cols).with_transform(CTClipd("volume", output="int16", target_shape=tuple(args.shape)))
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2, collate_fn=lambda b: {
        "volume": torch.stack([r["volume"] for r in b])})
    return _epochs(lambda: loader, args.epochs, "volume")


def child_today(args) -> dict:  # the same lines as child_natural, on whatever package is on sys.path
    from radgenome_hf.training import CTClipd, make_dataloader

    ds = _reports(args.release, args.hf_cache, None)
    loader = make_dataloader(ds, batch_size=1, num_workers=2,
                             transform=CTClipd("volume", output="int16", target_shape=tuple(args.shape)))
    return _epochs(lambda: loader, args.epochs, "volume")


def _volume_paths(release: str) -> list[str]:
    """The CT-RATE train volumes the ``reports`` rows point at (the ``train_fixed`` copies)."""
    return sorted(str(p) for p in Path(release, "CT-RATE", "dataset", "train_fixed").rglob("train_*.nii.gz"))


def write_bench_release(out: str, patients: int, realistic: bool) -> None:
    """A synthetic release; with ``realistic``, its CT-RATE train volumes replaced by 512x512x300 int16 phantoms of
    realistic compressibility (``make_phantom(realistic=True)``; three phantoms, each volume a different roll of
    one, so every file differs). Rendering 197 realistic masks per volume would take hours and ``reports``
    does not read masks."""
    import numpy as np

    from radgenome_hf.io.nifti import write_nifti
    from radgenome_hf.testing.synthetic import (REALISTIC_SHAPE, REALISTIC_SPACING, SyntheticConfig, make_phantom,
                                                write_release)

    write_release(out, SyntheticConfig(n_train_patients=patients, n_valid_patients=0), progress=False)
    if not realistic:
        return
    phantoms = [make_phantom(REALISTIC_SHAPE, REALISTIC_SPACING, seed, realistic=True) for seed in range(3)]
    for i, path in enumerate(_volume_paths(out)):
        p = phantoms[i % 3]
        write_nifti(path, np.asfortranarray(np.roll(p.ct, 7 * i, axis=2)), p.affine)


def child_fastpath(args) -> dict:
    from radgenome_hf.access.cache import PreparedCache
    from radgenome_hf.access.volume import Volume
    from radgenome_hf.training import ThreadedVolumeLoader, ctclip_preprocess

    cache = PreparedCache(args.volume_cache, layout="frame")
    readers = []
    t0 = time.perf_counter()
    for path in _volume_paths(args.release):
        key = cache.key_for(path, "ctclip-int16", shape=list(args.shape))
        if key not in cache:
            cache.put_array(key, ctclip_preprocess(Volume.open(path), output="int16",
                                                   target_shape=tuple(args.shape)).numpy())
        readers.append(cache.reader(key))
    prep = time.perf_counter() - t0
    ring = ThreadedVolumeLoader(readers, num_threads=2)
    out = _epochs(lambda: ({"image": s["image"][None]} for s in ring), args.epochs, "image")
    out["prepare_s"] = prep
    return out


def child_monai(args) -> dict:
    import torch
    from monai.data import PersistentDataset

    from bench_presets import monai_chain

    items = [{"image": p} for p in _volume_paths(args.release)]
    ds = PersistentDataset(items, transform=monai_chain(["image"], tuple(args.shape)), cache_dir=args.volume_cache)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2)
    return _epochs(lambda: loader, args.epochs, "image")


class _CTClipDS:
    def __init__(self, paths, shape):
        self.paths, self.shape = paths, shape

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from bench_presets import ctclip_own_loader

        # the synthetic CT-RATE fixed volumes carry HU; CT-CLIP's loader takes the spacing from the metadata CSV
        return {"image": ctclip_own_loader(self.paths[i], 1.0, 0.0, 0.73, 1.0, self.shape)}


def child_ctclip(args) -> dict:
    import torch

    loader = torch.utils.data.DataLoader(_CTClipDS(_volume_paths(args.release), tuple(args.shape)),
                                         batch_size=1, num_workers=2)
    return _epochs(lambda: loader, 1, "image")


def child_crop(args) -> dict:
    import nibabel as nib
    import numpy as np

    from radgenome_hf.access.volume import clear_open_volumes, wait_for_writes

    ds = _reports(args.release, args.hf_cache, args.volume_cache)
    # rows of one volume: the reports config has one row per volume, so take the same row twice as "another row"
    # (a fresh decode of the row gives a fresh Volume object, exactly what a second vqa row of the volume gives)
    ds[0]["volume"].array()
    wait_for_writes()
    path = ds[0]["volume"].path
    sh = ds[0]["volume"].shape
    c = [s // 2 for s in sh]
    h = [args.crop[0] // 2, args.crop[1] // 2, args.crop[2] // 2]
    box = (c[0] - h[0], c[1] - h[1], c[2] - h[2], c[0] + h[0], c[1] + h[1], c[2] + h[2])
    sl = tuple(slice(box[a], box[a + 3]) for a in range(3))
    from _common import interleaved

    def lru():
        return ds[0]["volume"].crop(box)

    def cache_only():
        clear_open_volumes()
        return ds[0]["volume"].crop(box)

    def nibabel():
        return np.asanyarray(nib.load(path).dataobj[sl])

    ref = nibabel()
    assert np.array_equal(lru(), ref) and np.array_equal(cache_only(), ref), "crop voxels differ from nibabel"
    times = interleaved({"lru": lru, "cache": cache_only, "nibabel": nibabel}, rounds=args.rounds)
    med = {k: sorted(v)[len(v) // 2] for k, v in times.items()}
    return {"median_s": med, "load": _load(), "box": box}


CHILDREN = {"natural": child_natural, "plain_torch": child_plain_torch, "today": child_today,
            "fastpath": child_fastpath, "monai": child_monai, "ctclip": child_ctclip, "crop": child_crop}


# ----------------------------------------------------------------------------------------------------------
def _run_child(name: str, common: list[str], tmp: Path, pythonpath: str | None = None) -> dict:
    out = tmp / f"{name}.json"
    env = dict(os.environ, RADGENOME_CACHE=str(tmp / f"rg_{name}"), HF_HUB_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    cmd = [sys.executable, __file__, "--child", name, "--out", str(out),
           "--volume-cache", str(tmp / f"cache_{name}"), *common]
    t0 = time.perf_counter()
    rc = subprocess.call(cmd, env=env)
    if rc:
        print(f"  {name}: exit {rc}")
        return {}
    res = json.loads(out.read_text())
    res["wall_s"] = time.perf_counter() - t0
    return res


def _rate(res: dict, epoch: int) -> float | None:
    if not res or len(res.get("epochs", [])) <= epoch:
        return None
    n, t = res["epochs"][epoch]
    return n / t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realistic", action="store_true")
    ap.add_argument("--patients", type=int, default=4, help="synthetic train patients (volumes: ~2 per patient)")
    ap.add_argument("--release", help="an existing release folder (else one is written under --work)")
    ap.add_argument("--work", default=None, help="folder for the release and caches (default: a temp folder)")
    ap.add_argument("--base-package", help="folder holding an older radgenome_hf to time as 'today'")
    ap.add_argument("--skip", nargs="*", default=[], help="children to skip (e.g. monai ctclip)")
    ap.add_argument("--rounds", type=int, default=7)
    # child-only arguments
    ap.add_argument("--child")
    ap.add_argument("--out")
    ap.add_argument("--volume-cache")
    ap.add_argument("--hf-cache")
    ap.add_argument("--shape", type=int, nargs=3)
    ap.add_argument("--crop", type=int, nargs=3)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args(argv)
    if args.child:
        res = CHILDREN[args.child](args)
        Path(args.out).write_text(json.dumps(res))
        return 0

    work = Path(args.work or tempfile.mkdtemp(prefix="bench_natural_"))
    work.mkdir(parents=True, exist_ok=True)
    shape = (480, 480, 240) if args.realistic else (96, 96, 48)
    crop = (96, 96, 64) if args.realistic else (48, 48, 32)
    release = args.release
    if release is None:
        release = str(work / ("release_realistic" if args.realistic else "release_small"))
        if not Path(release, "CT-RATE").is_dir():
            t0 = time.perf_counter()
            write_bench_release(release, args.patients, args.realistic)
            print(f"wrote the synthetic release in {time.perf_counter() - t0:.0f} s")
    n_vol = len(_volume_paths(release))
    print(f"release {release}: {n_vol} CT-RATE train volumes; preset output {shape}; load {_load()}")
    tmp = Path(tempfile.mkdtemp(prefix="runs_", dir=work))
    common = ["--release", release, "--hf-cache", str(tmp / "hf"), "--shape", *map(str, shape),
              "--crop", *map(str, crop), "--rounds", str(args.rounds)]
    # the comparisons that matter most run twice, alternating, so drifting load hits both alike; the table shows
    # every run
    order = ["today", "natural", "fastpath", "monai", "ctclip", "plain_torch", "crop", "natural", "today", "fastpath"]
    runs: dict[str, list[dict]] = {}
    for i, name in enumerate(order):
        if name in args.skip or (name == "today" and not args.base_package):
            continue
        print(f"-- {name} (load {_load()})", flush=True)
        sub = tmp / f"run{i}"
        sub.mkdir()
        if name == "today":
            res = _run_child(name, [*common[:2], "--hf-cache", str(tmp / "hf_base"), *common[4:]], sub,
                             args.base_package)
        else:
            res = _run_child(name, common, sub, str(HERE.parent))
        runs.setdefault(name, []).append(res)

    def row(label, res):
        r1, r2 = _rate(res, 0), _rate(res, 1)
        f = lambda r: "—" if r is None else f"{r:.2f}"  # noqa: E731
        rss = res.get("peak_rss")
        print(f"| {label} | {f(r1)} | {f(r2)} | {'—' if rss is None else f'{rss / 1e9:.2f} GB'} | "
              f"{', '.join(res.get('load', [])) or '—'} |")

    print("\n## 1. Into the training loop: CT-CLIP preset, int16, batch 1, 2 workers (vol/s)\n")
    print("| what | epoch 1 | epoch 2 | peak RSS (tree) | load avg (1/5/15 min) per epoch |\n| --- | --- | --- | --- | --- |")
    labels = {"natural": "ours: load_dataset + make_dataloader + CTClipd (README)",
              "plain_torch": "ours: plain DataLoader(ds.with_transform(CTClipd), 2 workers)",
              "today": "today: the same lines on the base package",
              "fastpath": "package fast path (advanced: PreparedCache frame + ThreadedVolumeLoader)",
              "monai": "MONAI PersistentDataset chain, DataLoader(2 workers)",
              "ctclip": "CT-CLIP's own loader, DataLoader(2 workers)"}
    for name, label in labels.items():
        for k, res in enumerate(runs.get(name, [])):
            row(label + (f" (run {k + 1})" if len(runs[name]) > 1 else ""), res)
    nat = max(runs.get("natural", [{}]), key=lambda r: r.get("peak_rss", 0))
    print("\nRatios below take each path's faster run for that epoch (the runs above show the spread).")

    def best(name, epoch):
        rates = [r for r in (_rate(res, epoch) for res in runs.get(name, [])) if r]
        return max(rates) if rates else None

    def ratio(a, ea, b, eb, what):
        ra, rb = best(a, ea), best(b, eb)
        if ra and rb:
            print(f"- {what}: {ra / rb:.2f}x")

    print()
    ratio("natural", 1, "monai", 1, "epoch 2, ours / MONAI PersistentDataset (target >= 2.5x)")
    ratio("natural", 1, "fastpath", 1, "epoch 2, ours / the package's fast path, separate processes")
    for k, res in enumerate(runs.get("natural", [])):
        pair = res.get("interleaved_vol_s")
        if pair:
            med = {n: sorted(v)[len(v) // 2] for n, v in pair.items()}
            print(f"- epoch 2, ours / the fast path over the same files, {len(pair['ours'])} interleaved epochs each "
                  f"(run {k + 1}, load {res['interleaved_load']}): {med['ours']:.2f} / {med['fastpath']:.2f} vol/s "
                  f"= {med['ours'] / med['fastpath']:.2f}x (target >= 0.8x)")
    ratio("natural", 0, "ctclip", 0, "epoch 1, ours / CT-CLIP's loader (target >= 5x)")
    ratio("natural", 0, "today", 0, "epoch 1, ours / today (target >= 1x)")
    ratio("natural", 1, "today", 1, "epoch 2, ours / today")
    ratio("plain_torch", 1, "natural", 1, "epoch 2, plain torch DataLoader / make_dataloader")
    if nat.get("peak_rss"):
        print(f"- peak RSS of the 2-worker loop over 2 epochs (the larger run): {nat['peak_rss'] / 1e9:.2f} GB "
              "(target <= 2 GB)")
    crop_res = (runs.get("crop") or [None])[0]
    if crop_res:
        m = crop_res["median_s"]
        print(f"\n## 2. A {'x'.join(map(str, crop))} crop through a fresh row of a touched volume (warm, median of "
              f"{args.rounds}; load {crop_res['load']})\n")
        print("| what | ms | nibabel / ours |\n| --- | --- | --- |")
        for k, label in (("lru", "ours, same process (LRU of open volumes)"),
                         ("cache", "ours, LRU cleared (prepared cache, what a new worker sees)"),
                         ("nibabel", "nibabel nib.load(path).dataobj[box]")):
            print(f"| {label} | {m[k] * 1e3:.2f} | {m['nibabel'] / m[k]:.0f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
