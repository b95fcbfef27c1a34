"""Masks without the wait: parallel packing of an archive pass, and the first mask of a folder release.

    python benchmarks/bench_masks.py              # realistic 512x512x300 structure masks (a minute or two)

1. Structures/s packing one ``.tar.gz`` mask source (realistic masks, ``train_anatomy_mask/seg_<volume>/<name>``)
   with ``MaskStore.prepare(..., workers=1)`` (serial, what the package did) and ``workers=2`` (all cores),
   same run; ratio = parallel / serial (target >= 1.7x on 2 cores).
2. A folder release of 1,000 volumes x 197 structures (64x64x48 masks, hard links): time from nothing to the
   first decoded mask, i.e. ``MaskStore.prepare`` (index: listing + one header per volume) plus that volume's
   pack on first use, against packing every volume first (measured on 20 volumes, scaled to 1,000).
The machine is shared; the load average is printed with each figure.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


class _Release:  # the one method MaskStore.prepare asks of an UpstreamRelease
    def __init__(self, source):
        self.source = source

    def mask_source(self, split, kind):
        return self.source


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def archive_scaling(tmp: Path, n_volumes: int = 4, n_structures: int = 24) -> None:
    from radgenome_hf.access.maskstore import MaskStore
    from radgenome_hf.io.archives import MaskSource
    from radgenome_hf.testing.synthetic import (REALISTIC_SHAPE, REALISTIC_SPACING, _nifti_bytes, _tar_gz,
                                                make_phantom)

    p = make_phantom(REALISTIC_SHAPE, REALISTIC_SPACING, 0, realistic=True)
    names = list(p.structures)[:n_structures]
    blobs = {n: _nifti_bytes(np.asarray(p.structures[n], np.uint8), p.affine) for n in names}
    members = [(f"train_anatomy_mask/seg_train_{v + 1}_a_1/{n}.nii.gz", b)
               for v in range(n_volumes) for n, b in blobs.items()]
    path = tmp / "train_anatomy_mask.tar.gz"
    path.write_bytes(_tar_gz(members))
    source = MaskSource("tar", (path,), "train", "anatomy")
    rates = {}
    for rnd in range(2):
        for workers in (1, 2):
            t0 = time.perf_counter()
            store = MaskStore.prepare(_Release(source), "train", "anatomy", cache_root=tmp / f"c{rnd}{workers}",
                                      progress=False, workers=workers)
            dt = time.perf_counter() - t0
            assert len(store) == n_volumes
            rates.setdefault(workers, []).append(len(members) / dt)
            print(f"  round {rnd}, {workers} worker(s): {len(members) / dt:.1f} structures/s (load {_load()})")
    best = {w: max(r) for w, r in rates.items()}
    print(f"\n| archive pass, {len(members)} realistic structures | structures/s |\n| --- | --- |")
    print(f"| serial (workers=1) | {best[1]:.1f} |\n| all cores (workers=2) | {best[2]:.1f} |")
    print(f"- parallel / serial: {best[2] / best[1]:.2f}x (target >= 1.7x on 2 cores); best of 2 rounds each")


def folder_first_mask(tmp: Path, n_volumes: int = 1000, n_structures: int = 197) -> None:
    from radgenome_hf.access.lazymasks import LazyMask
    from radgenome_hf.access.maskstore import MaskStore
    from radgenome_hf.io.archives import MaskSource
    from radgenome_hf.testing.synthetic import _nifti_bytes, make_phantom

    p = make_phantom((64, 64, 48), None, 0)
    base = list(p.structures)
    proto = tmp / "proto"
    proto.mkdir()
    rng = np.random.default_rng(0)
    for s in range(n_structures):
        name = base[s % len(base)] if s < len(base) else f"structure {s}"
        m = np.asarray(p.structures[base[s % len(base)]], np.uint8)
        if s >= len(base):
            m = np.roll(m, int(rng.integers(1, 8)), axis=0)
        (proto / f"{name}.nii.gz").write_bytes(_nifti_bytes(m, p.affine))
    folder = tmp / "train_anatomy_mask"
    folder.mkdir()
    t0 = time.perf_counter()
    for v in range(n_volumes):
        d = folder / f"seg_train_{v + 1}_a_1"
        d.mkdir()
        for f in os.listdir(proto):
            os.link(proto / f, d / f)
    print(f"\n  made {n_volumes} x {n_structures} hard links in {time.perf_counter() - t0:.0f} s")
    source = MaskSource("folder", (folder,), "train", "anatomy")

    t0 = time.perf_counter()
    store = MaskStore.prepare(_Release(source), "train", "anatomy", cache_root=tmp / "lazy", progress=False)
    t_index = time.perf_counter() - t0
    stem = "train_1_a_1"
    name = store.names(stem)[0]
    t1 = time.perf_counter()
    mask = LazyMask(store.path(stem), name, "anatomy", store.shape(stem)).array()
    t_first = time.perf_counter() - t1
    assert mask.any()
    load = _load()

    few = MaskStore(tmp / "lazy", {s: store.index[s] for s in list(store.index)[:20]})
    t0 = time.perf_counter()
    few.pack_all(progress=False, workers=1)  # serial, as the package packed every volume at prepare time
    t_pack20 = time.perf_counter() - t0
    print(f"\n| {n_volumes}-volume folder release, {n_structures} structures each | s | load |\n| --- | --- | --- |")
    print(f"| ours: index (listing + one header per volume) | {t_index:.2f} | {load} |")
    print(f"| ours: + first mask (its volume packed on first use) | {t_index + t_first:.2f} | |")
    print(f"| before: every volume packed first (20 measured, x{n_volumes // 20}) | {t_pack20 * n_volumes / 20:.0f} | {_load()} |")
    print(f"- first mask {t_index + t_first:.2f} s (target <= 10 s for the first vqa row); "
          f"{t_pack20 * n_volumes / 20 / (t_index + t_first):.0f}x sooner")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="bench_masks_") as tmp:
        print(f"load {_load()}")
        for sub, run in (("a", archive_scaling), ("f", folder_first_mask)):
            (Path(tmp) / sub).mkdir()
            run(Path(tmp) / sub)
    return 0


if __name__ == "__main__":
    sys.exit(main())
