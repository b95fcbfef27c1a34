"""What choosing a patch costs next to reading it: samplers against the 96×96×64 crop they lead to.

On a 512×512×300 phantom (int16 CT in a chunked prepared cache, ~20 packed structures), per sample:
- the crop alone (``Volume.crop`` from the prepared cache, what any patch-based loop pays);
- ``ForegroundPatches`` (fraction 0.33, nnU-Net style), ``LabelPatches`` (TorchIO style) and
  ``FindingAwareSampler`` (a row index) — drawing only, then drawing + the crop.

    python benchmarks/bench_samplers.py [--samples 400]

Prints medians in ms per sample; the sampling overhead is the draw time (target: ≤ 1 ms over the crop itself).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.access.masks import PackedMasks
from radgenome_hf.access.volume import Volume
from radgenome_hf.io.nifti import write_nifti
from radgenome_hf.testing.synthetic import make_phantom
from radgenome_hf.training.samplers import FindingAwareSampler, ForegroundPatches, LabelPatches, sample_rng

PATCH = (96, 96, 64)


def _per_sample_ms(fn, n: int) -> float:
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        fn(i)
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=400)
    args = ap.parse_args()
    ph = make_phantom((512, 512, 300), (0.73, 0.73, 1.0), rng_or_seed=0, realistic=True)
    names = [n for n in ph.structures if ph.structures[n].any()][:20]
    masks = PackedMasks.from_arrays({n: ph.structures[n] for n in names}, ph.affine)
    tmp = tempfile.mkdtemp()
    path = write_nifti(os.path.join(tmp, "train_1_a_1.nii.gz"), ph.ct, ph.affine)
    vol = Volume.open(path, cache=PreparedCache(os.path.join(tmp, "cache")))
    vol.array()  # decoded once into the prepared cache, as a touched volume is
    vol.release()
    shape = vol.shape
    fg = ForegroundPatches(PATCH, names[:3], fraction=0.33)
    lab = LabelPatches(PATCH, {n: 1.0 for n in names} | {None: 1.0})
    answers = ["nodule"] * 50 + ["effusion"] * 5 + ["no findings"] * 200
    fa = FindingAwareSampler({"question_type": ["abnormality"] * len(answers), "answer": answers},
                             num_samples=args.samples, rank=0, world_size=1)
    n = args.samples
    centre = tuple(s // 2 for s in shape)
    fixed = (centre[0] - 48, centre[1] - 48, centre[2] - 32, centre[0] + 48, centre[1] + 48, centre[2] + 32)
    crop = _per_sample_ms(lambda i: vol.crop(fixed), n)
    rows = []
    for label, sampler in (("ForegroundPatches (0.33)", fg), ("LabelPatches", lab)):
        draw = _per_sample_ms(lambda i: sampler(shape, masks, sample_rng(0, index=i)), n)
        both = _per_sample_ms(lambda i: vol.crop(sampler(shape, masks, sample_rng(1, index=i)).box), n)
        rows.append((label, draw, both))
    it = iter(fa)
    draw_fa = _per_sample_ms(lambda i: next(it, None), min(n, len(fa)))
    print(f"load average {os.getloadavg()[0]:.1f}; {len(names)} structures; grid {shape}; patch {PATCH}")
    print(f"{'what (per sample)':<30} {'draw ms':>9} {'draw + its crop ms':>18} {'draw / crop':>12}")
    print(f"{'crop alone (a centred box)':<30} {'':>9} {crop:>18.2f}")
    for label, draw, both in rows:
        print(f"{label:<30} {draw:>9.3f} {both:>18.2f} {draw / both:>11.1%}")
    print(f"{'FindingAwareSampler (index)':<30} {draw_fa:>9.4f}")
    print("the sampling overhead is the draw column (target <= 1 ms per sample); crops of random boxes and of the")
    print("centred box differ by which cache chunks they touch")


if __name__ == "__main__":
    main()
