"""Volume and mask access: our fast path against nibabel, MONAI and HF datasets, in one interleaved run.

    python benchmarks/bench_access.py                 # small (256x256x120), a few seconds
    python benchmarks/bench_access.py --realistic     # 512x512x300 int16 like perf-anchors.md (minutes)
    python benchmarks/bench_access.py --rounds 7 --markdown

Everything is synthetic and written to a temporary folder. Prints our median, each baseline's median measured
in the same run (interleaved rounds), and the ratio baseline/ours; then bytes on disk, a blosc2 codec sweep
for the prepared cache, and whether the repo's performance targets are met.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    Comparison,
    comparisons_markdown,
    drop_page_cache,
    fmt_bytes,
    interleaved,
    median_ms,
    print_comparisons,
    synthetic_ct,
    synthetic_structures,
)


def _dir_bytes(paths) -> int:
    return sum(Path(p).stat().st_size for p in paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--realistic", action="store_true", help="512x512x300 int16 (default 256x256x120)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--blobs", type=int, default=None, help="extra blob structures (default 8, realistic 16)")
    ap.add_argument("--no-monai", action="store_true", help="skip the MONAI baseline (slow)")
    ap.add_argument("--markdown", action="store_true", help="also print the tables as markdown")
    args = ap.parse_args(argv)

    import blosc2
    import nibabel as nib

    from radgenome_hf.access.cache import PreparedCache
    from radgenome_hf.access.masks import MaskGrid, PackedMasks
    from radgenome_hf.access.volume import Volume

    shape = (512, 512, 300) if args.realistic else (256, 256, 120)
    n_blobs = args.blobs if args.blobs is not None else (16 if args.realistic else 8)
    crop_shape = (96, 96, 64) if args.realistic else (48, 48, 32)
    affine = np.diag([0.73, 0.73, 1.0, 1.0])
    tmp = Path(tempfile.mkdtemp(prefix="bench_access_"))
    print(f"# bench_access: shape={shape} int16, rounds={args.rounds}, temp={tmp}")
    print(f"# cores={os.cpu_count()} blosc2 {blosc2.__version__} nibabel {nib.__version__}; "
          f"load average at start {os.getloadavg()}")

    t0 = time.perf_counter()
    ct = synthetic_ct(shape)
    structures = synthetic_structures(shape, n_blobs)
    nii = tmp / "train_1_a_1.nii.gz"
    img = nib.Nifti1Image(ct, affine)
    img.header.set_data_dtype(np.int16)
    nib.save(img, nii)  # nibabel's default gzip level (1), like most pipelines' outputs
    seg_dir = tmp / "seg_train_1_a_1"
    packed = PackedMasks.from_arrays(structures, affine)
    seg_files = packed.to_nifti_folder(seg_dir)
    packed_path = packed.save(tmp / "masks.parquet", volume_name="train_1_a_1")
    cache = PreparedCache(tmp / "cache")
    Volume.open(nii, cache=cache).array()  # fill the cache
    cache_file = next((tmp / "cache").rglob("*.b2nd"))
    print(f"# setup {time.perf_counter() - t0:.1f} s; .nii.gz {fmt_bytes(nii.stat().st_size)} "
          f"(gzip ratio {ct.nbytes / nii.stat().st_size:.2f}x)")

    # crop box centred on the heart
    hb = packed.bbox("heart")
    centre = [(hb[a] + hb[a + 3]) // 2 for a in range(3)]
    box = tuple(max(0, centre[a] - crop_shape[a] // 2) for a in range(3))
    box = box + tuple(box[a] + crop_shape[a] for a in range(3))
    sl = tuple(slice(box[a], box[a + 3]) for a in range(3))

    # ---------------------------------------------------------------- full volume
    def ours_cached():
        return Volume.open(nii, cache=cache).array()

    full_out = np.empty(shape, np.int16, order="F")

    def ours_cached_out():
        # what the loader does: decode into a reused buffer, so the kernel need not map and zero 157 MB of fresh
        # pages per call (that costs 40-400 ms here, varying with the machine's state)
        return Volume.open(nii, cache=cache).array(out=full_out)

    def ours_isal():
        return Volume.open(nii).array()

    def nibabel_full():
        return np.asanyarray(nib.load(nii).dataobj)

    def monai_full():
        from monai.transforms import LoadImage

        return LoadImage(image_only=True)(str(nii))

    import datasets

    feat = datasets.Nifti()
    nii_bytes = nii.read_bytes()

    def hf_path():
        return np.asanyarray(feat.decode_example({"path": str(nii), "bytes": None}).dataobj)

    def hf_bytes():
        return np.asanyarray(feat.decode_example({"path": None, "bytes": nii_bytes}).dataobj)

    # correctness before timing
    assert np.array_equal(ours_cached(), ct) and np.array_equal(ours_isal(), ct)
    assert np.array_equal(nibabel_full(), ct)

    assert np.array_equal(ours_cached_out(), ct)
    full_ops = {"ours (cached)": ours_cached, "ours (cached, out=)": ours_cached_out, "ours (isal .nii.gz)": ours_isal, "nibabel .nii.gz": nibabel_full,
                "HF datasets Nifti (path)": hf_path, "HF datasets Nifti (bytes)": hf_bytes}
    if not args.no_monai:
        full_ops["MONAI LoadImage"] = monai_full
    print("# timing full-volume reads ...", flush=True)
    full = interleaved(full_ops, rounds=args.rounds, warmup=False)
    cold_full = interleaved({"ours (cached)": ours_cached, "nibabel .nii.gz": nibabel_full},
                            rounds=args.rounds, warmup=False,
                            before={"ours (cached)": lambda: drop_page_cache(cache_file),
                                    "nibabel .nii.gz": lambda: drop_page_cache(nii)})

    # ---------------------------------------------------------------- crops
    # CT + label crop: the label map (uint8, all structures) sits in the cache next to the CT; both are decoded
    # straight into preallocated buffers (what ThreadedVolumeLoader does with cache.reader(key, bbox))
    labels = packed.label_map()
    seg_nii = tmp / "seg.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), seg_nii)
    ct_key = Volume.open(nii, cache=cache)._cache_key_for()
    lab_key = cache.key_for(seg_nii, "labels")
    cache.put_array(lab_key, labels)
    lab_file = cache.file_for(lab_key)
    crop_ct = np.empty(crop_shape, np.int16, order="F")
    crop_lab = np.empty(crop_shape, np.uint8, order="F")

    def ours_crop_pair():
        return cache.crop(ct_key, box, out=crop_ct), cache.crop(lab_key, box, out=crop_lab)

    def ours_crop():
        return Volume.open(nii, cache=cache).crop(box)

    def nib_crop():
        return np.asanyarray(nib.load(nii).dataobj[sl])

    def nib_crop_pair():
        return np.asanyarray(nib.load(nii).dataobj[sl]), np.asanyarray(nib.load(seg_nii).dataobj[sl])

    assert np.array_equal(ours_crop(), ct[sl]) and np.array_equal(nib_crop(), ct[sl])
    got_ct, got_lab = ours_crop_pair()
    assert np.array_equal(got_ct, ct[sl]) and np.array_equal(got_lab, labels[sl])
    print("# timing crops ...", flush=True)
    crop_ops = {"ours": ours_crop, "nibabel": nib_crop, "ours CT+label": ours_crop_pair, "nibabel CT+label": nib_crop_pair}
    drop = {"ours": lambda: drop_page_cache(cache_file), "nibabel": lambda: drop_page_cache(nii),
            "ours CT+label": lambda: drop_page_cache(cache_file, lab_file),
            "nibabel CT+label": lambda: drop_page_cache(nii, seg_nii)}
    warm_crop = interleaved(crop_ops, rounds=max(args.rounds, 7))
    cold_crop = interleaved(crop_ops, rounds=max(args.rounds, 7), warmup=False, before=drop)

    # ---------------------------------------------------------------- one structure's mask
    heart_nii = seg_dir / "heart.nii.gz"

    def ours_mask():
        return PackedMasks.load(packed_path).mask("heart")

    loaded = PackedMasks.load(packed_path)

    def ours_mask_loaded():
        return loaded.mask("heart")

    grid = MaskGrid(loaded.shape)
    other = next(n for n in loaded.names if n != "heart")

    def ours_mask_grid():
        return loaded.mask("heart", out=grid)

    def other_into_grid():  # untimed, before each timed call: the grid then holds another structure to clear
        loaded.mask(other, out=grid)

    def ours_mask_crop():
        return loaded.crop("heart", box)

    def nib_mask():
        return np.asanyarray(nib.load(heart_nii).dataobj)

    assert np.array_equal(ours_mask(), structures["heart"]) and np.array_equal(nib_mask() != 0, structures["heart"])
    other_into_grid()
    assert np.array_equal(ours_mask_grid(), structures["heart"])
    print("# timing masks ...", flush=True)
    masks_t = interleaved({"ours (load parquet + mask)": ours_mask, "ours (mask)": ours_mask_loaded,
                           "ours (MaskGrid)": ours_mask_grid, "ours (MaskGrid, after other)": ours_mask_grid,
                           "ours (crop)": ours_mask_crop, "nibabel": nib_mask},
                          rounds=max(args.rounds, 7), before={"ours (MaskGrid, after other)": other_into_grid})
    print(f"# MaskGrid: 'reused' decodes the heart over the previous heart (steady state); 'after {other}' first "
          f"clears {other!r} (bbox {loaded.bbox(other)}) from the grid")

    comps = [
        Comparison("full volume, warm", "ours (cached)", full["ours (cached)"],
                   {k: v for k, v in full.items() if not k.startswith("ours (cached")}),
        Comparison("full volume, warm", "ours (cached, out=)", full["ours (cached, out=)"],
                   {k: v for k, v in full.items() if not k.startswith("ours (cached")}),
        Comparison("full volume, cold", "ours (cached)", cold_full["ours (cached)"],
                   {"nibabel .nii.gz": cold_full["nibabel .nii.gz"]}),
        Comparison("full volume, warm", "ours (isal .nii.gz)", full["ours (isal .nii.gz)"],
                   {"nibabel .nii.gz": full["nibabel .nii.gz"]}),
        Comparison(f"CT+label crop {crop_shape}, warm", "cache.crop(out=) x2", warm_crop["ours CT+label"],
                   {"nibabel CT+label .nii.gz": warm_crop["nibabel CT+label"]}),
        Comparison(f"CT+label crop {crop_shape}, cold", "cache.crop(out=) x2", cold_crop["ours CT+label"],
                   {"nibabel CT+label .nii.gz": cold_crop["nibabel CT+label"]}),
        Comparison(f"CT crop {crop_shape}, warm", "Volume(cache).crop", warm_crop["ours"], {"nibabel .nii.gz": warm_crop["nibabel"]}),
        Comparison(f"CT crop {crop_shape}, cold", "Volume(cache).crop", cold_crop["ours"], {"nibabel .nii.gz": cold_crop["nibabel"]}),
        Comparison("one structure (heart), full grid, reused", "mask(out=MaskGrid)", masks_t["ours (MaskGrid)"],
                   {"nibabel heart.nii.gz": masks_t["nibabel"]}),
        Comparison(f"one structure (heart), full grid, reused after {other}", "mask(out=MaskGrid)",
                   masks_t["ours (MaskGrid, after other)"], {"nibabel heart.nii.gz": masks_t["nibabel"]}),
        Comparison("one structure (heart), full grid, fresh", "ours (mask)", masks_t["ours (mask)"],
                   {"nibabel heart.nii.gz": masks_t["nibabel"]}),
        Comparison("one structure incl. parquet load", "ours (load+mask)", masks_t["ours (load parquet + mask)"],
                   {"nibabel heart.nii.gz": masks_t["nibabel"]}),
        Comparison(f"heart mask crop {crop_shape}", "ours (crop)", masks_t["ours (crop)"],
                   {"nibabel heart.nii.gz (full)": masks_t["nibabel"]}),
    ]
    print()
    print_comparisons(comps)

    # ---------------------------------------------------------------- bytes on disk
    seg_bytes = _dir_bytes(seg_files)
    size_rows = [
        ("packed masks parquet", packed_path.stat().st_size, f"per-structure .nii.gz folder ({len(seg_files)} files)", seg_bytes),
        ("prepared cache file (blosc2)", cache_file.stat().st_size, "CT .nii.gz", nii.stat().st_size),
        ("prepared cache file (blosc2)", cache_file.stat().st_size, "raw int16", ct.nbytes),
    ]
    print("\n| ours | bytes | baseline | bytes | baseline/ours |\n|---|---|---|---|---|")
    for a, na, b, nb in size_rows:
        print(f"| {a} | {fmt_bytes(na)} | {b} | {fmt_bytes(nb)} | {nb / na:.1f}x |")

    # ---------------------------------------------------------------- codec sweep for the cache
    print("\n# prepared-cache codec sweep (1 file per volume, (k,j,i) C-order)")
    print("| codec | layout | write ms | full warm ms | full cold ms | crop warm ms | crop cold ms | size | ratio |")
    print("|---|---|---|---|---|---|---|---|---|")
    full_buf = np.empty(shape, np.int16, order="F")  # decode into one reused buffer, like the loader
    for codec, clevel, chunks, blocks, layout in [
        ("ZSTD", 5, (64, 64, 64), (32, 32, 32), "chunked"),
        ("ZSTD", 1, (64, 64, 64), (32, 32, 32), "chunked"),
        ("ZSTD", 1, (64, 64, 64), (16, 32, 32), "chunked"),  # the PreparedCache default
        ("LZ4", 5, (64, 64, 64), (16, 32, 32), "chunked"),
        ("ZSTD", 1, (32, 32, 32), (16, 16, 16), "chunked"),
        ("ZSTD", 1, None, None, "frame"),
        ("LZ4", 5, None, None, "frame"),
    ]:
        c = PreparedCache(tmp / f"sweep_{codec}{clevel}_{layout}_{chunks and chunks[0]}_{blocks and blocks[0]}",
                          codec=codec, clevel=clevel, chunks=chunks or (64, 64, 64), blocks=blocks or (16, 32, 32),
                          layout=layout)
        key = c.key_for(nii, "hu")
        t = time.perf_counter()
        path = c.put_array(key, ct)
        write_ms = 1000 * (time.perf_counter() - t)
        ops = {"full": lambda: c.get_array(key, out=full_buf)}
        if layout == "chunked":
            ops["crop"] = lambda: c.crop(key, box, out=crop_ct)
        r = interleaved(ops, rounds=args.rounds)
        rc = interleaved(ops, rounds=args.rounds, warmup=False, before={k: (lambda: drop_page_cache(path)) for k in ops})
        size = path.stat().st_size
        crop_cells = (f"{median_ms(r['crop']):.2f} | {median_ms(rc['crop']):.2f}" if "crop" in r
                      else "whole-array decode | whole-array decode")
        print(f"| {codec}-{clevel} | {layout} {f'{chunks} blocks {blocks}' if chunks else 'one chunk'} | {write_ms:.0f} | {median_ms(r['full']):.1f} "
              f"| {median_ms(rc['full']):.1f} | {crop_cells} | {fmt_bytes(size)} | {ct.nbytes / size:.2f}x |")

    # ---------------------------------------------------------------- targets
    full_ratio = median_ms(full["nibabel .nii.gz"]) / median_ms(full["ours (cached)"])
    full_out_ratio = median_ms(full["nibabel .nii.gz"]) / median_ms(full["ours (cached, out=)"])
    mask_ratio = median_ms(masks_t["nibabel"]) / median_ms(masks_t["ours (MaskGrid)"])
    fresh_ratio = median_ms(masks_t["nibabel"]) / median_ms(masks_t["ours (mask)"])
    after_ratio = median_ms(masks_t["nibabel"]) / median_ms(masks_t["ours (MaskGrid, after other)"])
    size_ratio = seg_bytes / packed_path.stat().st_size
    print("\n# targets")
    for label, ok, value in [
        ("cached full read >= 3x faster than nibabel .nii.gz (new array)", full_ratio >= 3, f"{full_ratio:.1f}x"),
        ("cached full read >= 3x faster than nibabel .nii.gz (reused buffer)", full_out_ratio >= 3,
         f"{full_out_ratio:.1f}x"),
        ("CT+label crop <= 5 ms warm", median_ms(warm_crop["ours CT+label"]) <= 5,
         f"{median_ms(warm_crop['ours CT+label']):.1f} ms"),
        ("CT+label crop <= 15 ms cold", median_ms(cold_crop["ours CT+label"]) <= 15,
         f"{median_ms(cold_crop['ours CT+label']):.1f} ms"),
        ("one structure's mask >= 50x faster than its .nii.gz (into a reused MaskGrid)", mask_ratio >= 50,
         f"{mask_ratio:.0f}x (after {other}: {after_ratio:.0f}x; into a fresh array: {fresh_ratio:.0f}x)"),
        ("packed masks >= 10x smaller than the .nii.gz folder", size_ratio >= 10, f"{size_ratio:.1f}x"),
    ]:
        print(f"- [{'x' if ok else ' '}] {label}: {value}")
    print(f"# load average at end {os.getloadavg()}")
    if args.markdown:
        print()
        print(comparisons_markdown(comps))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
