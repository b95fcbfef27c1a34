"""``radgenome-hf synth OUT``: write a synthetic RadGenome-ChestCT + CT-RATE release in the real layouts."""

from __future__ import annotations

import argparse
import time


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic release (phantom CT volumes, masks, CSVs) in the real upstream layouts",
        description="Write a synthetic RadGenome-ChestCT + CT-RATE release under OUT (OUT/RadGenome-ChestCT, "
        "OUT/CT-RATE, OUT/ground_truth.json). Deterministic for a seed.",
    )
    p.add_argument("out", metavar="OUT", help="output folder (created if missing)")
    p.add_argument("--patients-train", type=int, default=4, metavar="N", help="training patients (default 4)")
    p.add_argument("--patients-valid", type=int, default=2, metavar="N", help="validation patients (default 2)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48), metavar=("I", "J", "K"),
                   help="voxel grid (default 64 64 48; spacing is chosen to cover a whole chest)")
    p.add_argument("--realistic", action="store_true",
                   help="512x512x300 int16 volumes at 0.73x0.73x1.0 mm that compress like real CT (benchmarks; "
                        "about 160 MB in memory per volume)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--mask-layout", choices=("archives", "folders", "both"), default="archives",
                   help="masks as .tar.gz / split _aa,_ab parts like the Hub (default), as seg_<volume>/ folders, "
                        "or both")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..testing.synthetic import SyntheticConfig, write_release

    cfg = SyntheticConfig(
        n_train_patients=args.patients_train,
        n_valid_patients=args.patients_valid,
        shape=tuple(args.shape),
        seed=args.seed,
        mask_layout=args.mask_layout,
        realistic=args.realistic,
    )
    t0 = time.perf_counter()
    rel = write_release(args.out, cfg, progress=not args.quiet)
    print(rel)
    print(f"wrote {rel.root} in {time.perf_counter() - t0:.1f} s "
          f"(ground truth: {rel.ground_truth_path})")
    return 0
