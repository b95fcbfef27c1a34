"""Remote volumes on the local Hub server (#15): a region crop and a whole volume of a 512×512×300 CT, chunked
(zarr v3, what ``radgenome-hf build`` now writes) against today's path (a ``.nii.gz`` packed release: the row's
volume is fetched whole into the HF cache, then decoded), measured in one run.

    python benchmarks/bench_remote.py                 # realistic phantom (~30 s to render), 5 rounds
    python benchmarks/bench_remote.py --rounds 3 --gaps --formats

The server runs in this process; every measurement runs in a fresh child process (its own HF cache, chunk cache
and prepared cache), as a user's would. Bytes are what the server sent as file content for the volume
(``HubServer.downloaded_bytes``), each box in its own child with empty caches. Timings (child, interleaved
rounds, medians): *cold* = empty chunk cache / HF cache / prepared cache / in-process memory, a new ``Volume``
(so ``zarr.json`` and the shard index are fetched too) but a process that already resolved the revision and
imported its libraries; *warm* = the same crop again through a new ``Volume`` object (chunk cache on disk,
headers remembered; for the baseline: its decoded array in the process LRU); *first crop in a fresh process*
includes the imports and resolving the revision. Ratios are baseline / ours (> 1: ours is faster or smaller).
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

import numpy as np

os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # uploads and downloads: keep the output a report
os.environ.setdefault("TQDM_DISABLE", "1")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path[:0] = [str(HERE), str(ROOT)]

REPO = "bench/remote-volumes"
BOXES = {  # (i0, j0, k0, i1, j1, k1), 96×96×64 each
    "heart": (188, 168, 133, 284, 264, 197),
    "lung": (100, 200, 150, 196, 296, 214),
    "corner": (0, 0, 0, 96, 96, 64),
}

CHILD = r"""
import json, os, shutil, sys, time
sys.path[:0] = [sys.argv[2], sys.argv[3]]
req = json.loads(sys.argv[1])
t_start = time.perf_counter()
import numpy as np
from radgenome_hf.hf.features import _open_volume
from radgenome_hf.access import volume as V
from radgenome_hf.io import chunked, hub as hub_io
from radgenome_hf.access.chunkcache import default_chunk_cache
from radgenome_hf.hf.features import prepared_cache

def open_row(kind):  # what decoding a row of a packed release does (hf/features.py)
    return _open_volume({"path": req["urls"][kind], "name": "train_1_a_1"})

def clear():
    default_chunk_cache().clear()
    chunked.clear_header_memo()
    V.wait_for_writes(); V.clear_open_volumes()
    c = prepared_cache("default")
    if c is not None:
        c.clear()
    hub_io._fetched.clear()
    shutil.rmtree(os.path.join(os.environ["HF_HOME"], "hub"), ignore_errors=True)

box = tuple(req.get("box") or (0, 0, 0, 1, 1, 1))
out = {}
if req["mode"] == "firstrow":
    import radgenome_hf
    t = time.perf_counter()
    row = next(iter(radgenome_hf.load_packed(req["repo"], "vqa", split="train", streaming=True)))
    out["first_row_s"] = time.perf_counter() - t
    out["volume"] = row["volume"].path
    t = time.perf_counter()  # again, the libraries now imported (a fresh datasets cache)
    next(iter(radgenome_hf.load_packed(req["repo"], "vqa", split="train", streaming=True,
                                       cache_dir=os.path.join(os.environ["HF_HOME"], "again"))))
    out["again_s"] = time.perf_counter() - t
elif req["mode"] == "first":
    t = time.perf_counter()
    open_row(req["kind"]).crop(box)
    out["first_crop_s"] = time.perf_counter() - t_start
elif req["mode"] == "bytes":
    open_row(req["kind"]).crop(box)
elif req["mode"] == "time":
    from _common import interleaved
    for kind in ("zarr", "nifti"):  # imports, revision, HTTP client: warm before timing
        open_row(kind).crop(box)
    clear()
    def cold(kind):
        return lambda: open_row(kind).crop(box)
    def warm(kind):
        return lambda: open_row(kind).crop(box)
    def whole(kind):
        return lambda: open_row(kind).array()
    # order matters: each warm op right after its cold one (a "before" clear wipes every cache)
    ops = {"zarr cold crop": cold("zarr"), "zarr warm crop": warm("zarr"),
           "nifti cold crop": cold("nifti"), "nifti warm crop": warm("nifti"),
           "zarr array": whole("zarr"), "nifti array": whole("nifti")}
    before = {k: clear for k in ops if "cold" in k or "array" in k}
    times = interleaved(ops, rounds=req["rounds"], before=before, warmup=False)
    V.wait_for_writes()
    out["times"] = times
print("@@" + json.dumps(out))
"""


def _child(hub, work: Path, home: str, **req) -> dict:
    env = {**os.environ, **hub.client_env(Path(home) / "hf"), "RADGENOME_CACHE": str(Path(home) / "rg"),
           "TQDM_DISABLE": "1"}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(req), str(ROOT), str(HERE)], env=env,
                         capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.rsplit("@@", 1)[1])


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def _formats(work: Path, hu: np.ndarray, zarr_path: Path, rounds: int) -> None:
    """The format choice, measured: the same volume as zarr v3 (one shard, 32³ inner chunks) and as blosc2
    NDArray files (zstd-5 + shuffle), read locally (warm, and cold: file pages dropped first)."""
    import blosc2
    import zarr
    from _common import Comparison, drop_page_cache, fmt_bytes, interleaved, print_comparisons

    from radgenome_hf.access.volume import Volume, clear_open_volumes

    data = hu.T  # (k, j, i), C order: what both formats store
    b = BOXES["heart"]
    kji = (slice(b[2], b[5]), slice(b[1], b[4]), slice(b[0], b[3]))
    files, writes = {"zarr 32³": zarr_path}, {}
    for chunks, blocks in (((32, 32, 32), (16, 16, 16)), ((64, 64, 64), (32, 32, 32))):
        name = f"b2nd {chunks[0]}³/{blocks[0]}³"
        path = work / f"{chunks[0]}.b2nd"
        t = time.perf_counter()
        blosc2.asarray(data, urlpath=str(path), mode="w", chunks=chunks, blocks=blocks,
                       cparams=blosc2.CParams(codec=blosc2.Codec.ZSTD, clevel=5, filters=[blosc2.Filter.SHUFFLE],
                                              typesize=2))
        writes[name], files[name] = time.perf_counter() - t, path
    print("\nformats (heart box bytes: the compressed chunks it touches, as a range reader would fetch them):")
    for name, path in files.items():
        size = _size(path)
        if name.startswith("zarr"):
            from radgenome_hf.io.chunked import ChunkedVolumeFile

            f = ChunkedVolumeFile.open(path)
            ids = f.layout.touched((b[2], b[1], b[0]), (b[5], b[4], b[3]))
            touched = int(f._index_array()[ids, 1].sum())
        else:
            arr = blosc2.open(str(path), mode="r")
            grid = [-(-s // c) for s, c in zip(arr.shape, arr.chunks)]
            axes = [range(lo // c, (hi - 1) // c + 1) for lo, hi, c in
                    zip((b[2], b[1], b[0]), (b[5], b[4], b[3]), arr.chunks)]
            touched = sum(len(arr.schunk.get_chunk(int(np.ravel_multi_index((x, y, z), grid))))
                          for x in axes[0] for y in axes[1] for z in axes[2])
        w = f"written in {writes[name]:.2f} s" if name in writes else "written by the build (see above)"
        print(f"  {name:14s} {fmt_bytes(size)}, {w}; heart crop touches {fmt_bytes(touched)} = "
              f"{100 * touched / size:.2f} %")

    def ours() -> np.ndarray:
        clear_open_volumes()
        return Volume.open(zarr_path).crop(b)

    ops = {"zarr 32³, our reader": ours,
           "zarr 32³, zarr-python": lambda: zarr.open_array(str(zarr_path), mode="r")[kji],
           **{f"{n}, blosc2": (lambda p=p: blosc2.open(str(p), mode="r")[kji]) for n, p in files.items()
              if n.startswith("b2nd")}}
    paths = {"zarr 32³, our reader": zarr_path, "zarr 32³, zarr-python": zarr_path,
             **{f"{n}, blosc2": p for n, p in files.items() if n.startswith("b2nd")}}
    warm = interleaved(ops, rounds=rounds)
    cold = interleaved(ops, rounds=rounds, before={k: (lambda p=p: drop_page_cache(p)) for k, p in paths.items()},
                       warmup=False)
    base = "zarr 32³, our reader"
    print_comparisons([Comparison("local crop 96x96x64 warm", base, warm[base],
                                  {k: v for k, v in warm.items() if k != base}),
                       Comparison("local crop 96x96x64 cold", base, cold[base],
                                  {k: v for k, v in cold.items() if k != base})])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--small", action="store_true", help="a 256×256×160 phantom (quick check, not the target)")
    ap.add_argument("--gaps", action="store_true", help="also print requests and bytes per coalescing gap")
    ap.add_argument("--formats", action="store_true",
                    help="also compare the candidate formats locally: zarr v3 sharded (our reader, zarr-python) "
                         "and blosc2 NDArray (.b2nd): write time, size, heart-crop bytes, crop ms warm/cold")
    args = ap.parse_args()

    from _common import Comparison, fmt_bytes, median_ms, print_comparisons

    from radgenome_hf.io.chunked import write_chunked_volume
    from radgenome_hf.io.nifti import write_nifti
    from radgenome_hf.testing.hub_server import HubServer
    from radgenome_hf.testing.synthetic import make_phantom

    print(f"load average at start: {open('/proc/loadavg').read().split()[:3]}")
    shape = (256, 256, 160) if args.small else (512, 512, 300)
    if args.small:  # the same places, scaled to the smaller grid (same 96×96×64 size)
        for name, b in list(BOXES.items()):
            lo = [min(int(b[a] * shape[a] / (512, 512, 300)[a]), shape[a] - (b[a + 3] - b[a])) for a in range(3)]
            BOXES[name] = (*lo, *(lo[a] + b[a + 3] - b[a] for a in range(3)))
    work = Path(tempfile.mkdtemp(prefix="bench-remote-"))
    t = time.perf_counter()
    ph = make_phantom(shape, rng_or_seed=0, lesions=None, realistic=not args.small)
    ct, affine = np.asfortranarray(ph.ct), ph.affine
    print(f"phantom {shape} int16 rendered in {time.perf_counter() - t:.1f} s")

    nii = work / "volumes" / "train_1_a_1.nii.gz"
    t = time.perf_counter()
    write_nifti(nii, ct, affine)
    t_gz = time.perf_counter() - t
    from radgenome_hf.access.volume import Volume

    t = time.perf_counter()
    v = Volume.open(nii)
    zarr_path = write_chunked_volume(work / "volumes" / "train_1_a_1.zarr", v.array(), v.affine, name=v.name,
                                     source=nii.name, rescale=v.rescale)
    t_conv = time.perf_counter() - t
    size_gz, size_zarr = _size(nii), _size(zarr_path)
    print(f"build per volume: chunked conversion (decode .nii.gz + write zarr) {t_conv:.2f} s; "
          f"a nifti release only links the file (writing it as .nii.gz here took {t_gz:.2f} s)")
    print(f"size on disk: zarr {fmt_bytes(size_zarr)} vs .nii.gz {fmt_bytes(size_gz)} "
          f"(ratio {size_gz / size_zarr:.2f}x); raw int16 {fmt_bytes(ct.nbytes)}")

    if args.gaps:
        from radgenome_hf.io import chunked as ch
        from radgenome_hf.io.ranges import group_spans

        f = ch.ChunkedVolumeFile.open(zarr_path)
        lay, index = f.layout, f._index_array()
        for gap in (0, 8 << 10, 32 << 10, 64 << 10, 128 << 10, 256 << 10):
            cells = []
            for name, b in BOXES.items():
                ids = lay.touched((b[2], b[1], b[0]), (b[5], b[4], b[3]))
                want = sorted((int(index[i, 0]), int(index[i, 1]), int(i)) for i in ids)
                runs = group_spans(want, gap, ch._MAX_REQUEST)
                nbytes = sum(r[-1][0] + r[-1][1] - r[0][0] for r in runs)
                cells.append(f"{name}: {len(runs)} requests, {100 * nbytes / size_zarr:.2f} %")
            print(f"gap {gap >> 10:>3} KiB | " + " | ".join(cells))

    if args.formats:
        _formats(work, v.array(), zarr_path, args.rounds)

    with HubServer() as hub:
        from huggingface_hub import HfApi

        with hub.patch_client():
            api = HfApi(endpoint=hub.endpoint, token=hub.token)
            api.create_repo(REPO, repo_type="dataset")
            api.upload_folder(folder_path=str(work / "volumes"), path_in_repo="volumes", repo_id=REPO,
                              repo_type="dataset")
        urls = {"zarr": f"hf://datasets/{REPO}@main/volumes/train_1_a_1.zarr",
                "nifti": f"hf://datasets/{REPO}@main/volumes/train_1_a_1.nii.gz"}
        print("\nbytes the server sent for one cold crop (each in a fresh process with empty caches):")
        sent = {}
        for name, box in BOXES.items():
            row, gets = [], []
            for kind in ("zarr", "nifti"):
                hub.reset_log()
                _child(hub, work, tempfile.mkdtemp(dir=work), mode="bytes", kind=kind, box=box, urls=urls)
                n = hub.downloaded_bytes(REPO, path_contains=f"train_1_a_1.{kind if kind == 'zarr' else 'nii.gz'}")
                sent[(name, kind)] = n
                row.append(n)
                gets.append(hub.counts(REPO)["resolve"])
            print(f"  {name:7s} zarr {fmt_bytes(row[0])} = {100 * row[0] / size_zarr:.2f} % of the volume's bytes "
                  f"({gets[0]} GETs); nifti {fmt_bytes(row[1])} = "
                  f"{100 * row[1] / size_gz:.0f} %; ratio {row[1] / max(row[0], 1):.0f}x")

        firsts = {}
        for kind in ("zarr", "nifti"):
            firsts[kind] = _child(hub, work, tempfile.mkdtemp(dir=work), mode="first", kind=kind,
                                  box=BOXES["heart"], urls=urls)["first_crop_s"]
        print(f"\nfirst heart crop in a fresh process (imports + revision + fetch + decode): zarr {firsts['zarr']:.2f} s, "
              f"nifti {firsts['nifti']:.2f} s (ratio {firsts['nifti'] / firsts['zarr']:.1f}x)")

        # time to the first row of load_packed(..., streaming=True), on a small packed release (the synthetic
        # upstream's 64x64x48 volumes) built both ways: what the volume side fetches to make the row
        from radgenome_hf.publish.build import build_release
        from radgenome_hf.publish.hub import publish_release
        from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

        up = write_release(work / "upstream", SyntheticConfig(), progress=False)
        rows = {}
        for fmt in ("chunked", "nifti"):
            folder = build_release(up.root, work / f"packed-{fmt}", configs=("vqa",), volumes=fmt).folder
            with hub.patch_client():
                publish_release(folder, f"{REPO}-{fmt}", endpoint=hub.endpoint, token=hub.token, verify=False)
            hub.reset_log()
            got = _child(hub, work, tempfile.mkdtemp(dir=work), mode="firstrow", repo=f"{REPO}-{fmt}")
            rows[fmt] = (got["first_row_s"], hub.downloaded_bytes(f"{REPO}-{fmt}", path_contains="volumes/"),
                         hub.downloaded_bytes(f"{REPO}-{fmt}"), got["again_s"])
        print("\nfirst row of load_packed(repo, 'vqa', split='train', streaming=True), fresh process "
              "(small synthetic release, 64x64x48 volumes):")
        for fmt, (sec, vol_bytes, all_bytes, again) in rows.items():
            print(f"  {fmt:7s} {sec:.2f} s ({again:.2f} s for a second load in the same process, libraries imported); "
                  f"volume bytes sent for the rows: {fmt_bytes(vol_bytes)} (all files: {fmt_bytes(all_bytes)})")

        print(f"\ntimings, heart box, {args.rounds} interleaved rounds in one child; load average now "
              f"{open('/proc/loadavg').read().split()[:3]}")
        times = _child(hub, work, tempfile.mkdtemp(dir=work), mode="time", box=BOXES["heart"], urls=urls,
                       rounds=args.rounds)["times"]
        print_comparisons([
            Comparison("crop 96x96x64, cold", "zarr", times["zarr cold crop"], {"nifti": times["nifti cold crop"]}),
            Comparison("crop 96x96x64, warm", "zarr", times["zarr warm crop"], {"nifti": times["nifti warm crop"]},
                       note="nifti: array held in the process LRU"),
            Comparison("array() cold", "zarr", times["zarr array"], {"nifti": times["nifti array"]}),
        ])
        heart = sent[("heart", "zarr")]
        print("\ntargets (heart box):")
        print(f"  bytes <= 5 % of the volume: {100 * heart / size_zarr:.2f} % -> "
              f"{'met' if heart <= 0.05 * size_zarr else 'NOT met'}")
        sec, vol_bytes, _, again = rows["chunked"]
        print(f"  first row <= 3 s with no volume fetched: {sec:.2f} s in a fresh process ({again:.2f} s with the "
              f"libraries imported), {vol_bytes} volume bytes -> time {'met' if sec <= 3 else 'NOT met'}, "
              f"volume side {'met' if vol_bytes == 0 else 'NOT met'}")
        for label, key, limit in (("warm crop <= 30 ms", "zarr warm crop", 30), ("cold crop <= 250 ms",
                                                                                 "zarr cold crop", 250)):
            ms = median_ms(times[key])
            print(f"  {label}: {ms:.1f} ms -> {'met' if ms <= limit else 'NOT met'}")
    print(f"load average at end: {open('/proc/loadavg').read().split()[:3]}")
    import shutil

    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
