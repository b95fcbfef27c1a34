"""Remote masks and subset downloads of a packed release, on the local Hub server (issue #15, part 2).

    python benchmarks/bench_remote_masks.py                 # ~100 train volumes, 64x64x48 (a few minutes)
    python benchmarks/bench_remote_masks.py --patients 34   # ~50 volumes
    python benchmarks/bench_remote_masks.py --realistic     # + masks of realistic size (512x512x300, ~2 more minutes)

A synthetic release is built into a packed release and published to ``HubServer`` (127.0.0.1). Every client
measurement runs in a fresh process with an empty Hugging Face cache, as a user would; bytes are what the server
really sent (``HubServer.downloaded_bytes``). In the same run, the baseline:

* **today's path**: the same volume's masks as one per-volume parquet file (what the packed release held before
  this change: ``masks/<split>_<kind>/<volume>.masks.parquet``), fetched whole through ``io.hub.fetch`` and
  parsed, then the structure decoded;
* for the first streaming row: plain ``datasets.load_dataset(repo, "vqa", streaming=True)`` (no package).

Printed: bytes for one structure (and % of the split's anatomy masks), cold and warm ms, time to first row of
``load_packed(..., streaming=True)`` (with and without the imports), a subset's dry-run estimate against what the
download then moved, and the load average next to each figure. Ratios are printed by the script itself.

The synthetic masks are small (~175 B per structure compressed, against ~16 KB for a 512x512x300 phantom's), so
``--realistic`` adds the same one-structure measurement on masks of realistic size: one realistic phantom's
structures stand for each of 32 volumes' masks, in shards as a big release has them (16 volumes each).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = "radgenome-bench/packed"


def _load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def _fresh_env(hub, work: Path) -> dict[str, str]:
    """The environment of a client with empty caches (a new folder under ``work``), pointed at the server."""
    home = Path(tempfile.mkdtemp(prefix="client-", dir=work))
    return {**os.environ, **hub.client_env(home / "hf"), "RADGENOME_CACHE": str(home / "rg")}


def _client(hub, work: Path, code: str, params: dict) -> dict:
    """Run ``code`` in a fresh process with empty caches, with ``P`` = ``params``; its last line is JSON."""
    env = _fresh_env(hub, work)
    code = f"import json, sys\nP = json.loads(sys.argv[1])\n{code}"
    res = subprocess.run([sys.executable, "-c", code, json.dumps(params)], env=env, capture_output=True, text=True,
                         timeout=600)
    if res.returncode != 0:
        raise RuntimeError(res.stderr[-3000:])
    return json.loads(res.stdout.strip().splitlines()[-1])


ONE_STRUCTURE = r"""
import time
import datasets, torch  # imports outside the timings
from radgenome_hf.access.lazymasks import open_packed_masks
from radgenome_hf.io.hub import hf_url, resolve_revision

resolve_revision(P["repo"], P["commit"])


def one(structure):
    t0 = time.perf_counter()
    if P["mode"] == "shards":  # this change: a LazyMask's read (footer once, then the structure's row group)
        pm = open_packed_masks(hf_url(P["repo"], P["shard"], P["commit"]), P["volume"], structure)
    else:  # today's path (unchanged code): the volume's masks file fetched whole into the HF cache, parsed, kept
        pm = open_packed_masks(hf_url(P["repo"], P["pervolume"], P["commit"]))
    m = pm.mask(structure)
    return 1000 * (time.perf_counter() - t0), m


from radgenome_hf.io.ranged_parquet import total_bytes_read

out = {}
out["cold_ms"], m = one(P["structure"])
out["first_bytes"] = total_bytes_read()  # range reads so far (0 for today's path: it fetches whole files)
out["warm_other_ms"], _ = one(P["other"])
out["all_bytes"] = total_bytes_read()
out["warm_same_ms"] = sorted(one(P["structure"])[0] for _ in range(21))[10]
out["voxels"] = int(m.sum())
print(json.dumps(out))
"""

FIRST_ROW = r"""
import time
t0 = time.perf_counter()
if P["preimport"]:
    import datasets, torch
t1 = time.perf_counter()
if P["mode"] == "package":
    import radgenome_hf
    ds = radgenome_hf.load_packed(P["repo"], "vqa", split="train", streaming=True)
else:
    import datasets
    datasets.config.USE_PARQUET_EXPORT = False
    ds = datasets.load_dataset(P["repo"], "vqa", split="train", streaming=True)
rows = iter(ds)
row = next(rows)
t2 = time.perf_counter()
if P["mode"] == "package":
    while row["mask"].source != "anatomy":
        row = next(rows)
    row["mask"].array()
print(json.dumps({"imports_s": t1 - t0, "first_row_s": t2 - t1, "total_s": t2 - t0,
                  "first_mask_s": time.perf_counter() - t2}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--patients", type=int, default=66, help="train patients (~1.5 volumes each)")
    ap.add_argument("--shape", type=int, nargs=3, default=(64, 64, 48))
    ap.add_argument("--rounds", type=int, default=3, help="fresh client processes per measurement")
    ap.add_argument("--workdir", help="keep the releases here (default: a temporary folder)")
    ap.add_argument("--realistic", action="store_true", help="also masks of realistic size (a few minutes more)")
    args = ap.parse_args()

    import pyarrow.parquet as pq

    from radgenome_hf.access.lazymasks import open_packed_masks
    from radgenome_hf.publish.build import build_release
    from radgenome_hf.publish.hub import publish_release
    from radgenome_hf.testing.hub_server import HubServer
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-remote-masks-"))
    print(f"building a synthetic release of {args.patients} train patients, shape {tuple(args.shape)} in {work} "
          f"(load {_load()})", flush=True)
    rel = write_release(work / "upstream", SyntheticConfig(n_train_patients=args.patients, n_valid_patients=2,
                                                           shape=tuple(args.shape)), progress=False)
    packed = build_release(rel.root, work / "packed", configs=("vqa", "segmentation"), overwrite=True).folder
    shards = sorted((packed / "masks" / "train_anatomy").glob("*.parquet"))
    split_bytes = sum(p.stat().st_size for p in shards)
    table = pq.read_table(shards[len(shards) // 2])
    volume = table.column("volume_name")[0].as_py()
    structures = [s for v, s in zip(table.column("volume_name").to_pylist(), table.column("structure").to_pylist())
                  if v == volume]
    structure, other = structures[len(structures) // 2], structures[-1]
    # today's layout: that volume's masks as one file, as the packed release held them before
    pervolume_rel = f"masks/train_anatomy_pervolume/{volume}.masks.parquet"
    open_packed_masks(str(shards[len(shards) // 2]), volume).save(packed / pervolume_rel, volume_name=volume)
    pervolume_bytes = (packed / pervolume_rel).stat().st_size
    n_volumes = len({v for s in shards for v in pq.read_table(s, columns=["volume_name"]).column(0).to_pylist()})
    print(f"train anatomy masks: {n_volumes} volumes in {len(shards)} shards, {split_bytes} B; "
          f"one volume's per-volume file: {pervolume_bytes} B")

    with HubServer() as hub:
        with hub.patch_client():
            publish_release(packed, REPO, endpoint=hub.endpoint, token=hub.token, verify=False)
        params = {"repo": REPO, "commit": hub.head(REPO), "volume": volume, "structure": structure, "other": other,
                  "shard": shards[len(shards) // 2].relative_to(packed).as_posix(), "pervolume": pervolume_rel}

        # 1. one structure of a remote volume, cold (fresh process) and warm, shards vs today's whole file
        results: dict[str, list[dict]] = {"shards": [], "pervolume": []}
        for r in range(args.rounds):
            for mode in ("shards", "pervolume"):
                hub.reset_log()
                got = _client(hub, work, ONE_STRUCTURE, {**params, "mode": mode})
                sent = hub.downloaded_bytes(REPO, "masks/")
                if mode == "shards":  # the client's own count of its range reads is the server's: split it by step
                    assert sent == got["all_bytes"], (sent, got)
                    got["bytes"], got["bytes_other"] = got["first_bytes"], sent - got["first_bytes"]
                else:
                    got["bytes"], got["bytes_other"] = sent, 0
                got["load"] = _load()
                results[mode].append(got)
        print(f"\n1. one structure ({structure!r} of {volume}), fresh process each round, {args.rounds} rounds; then "
              f"another of the same volume ({other!r}, another row group) and the first again (warm)")
        print(f"   {'path':<34}{'bytes':>9}{'% split':>9}{'cold ms':>10}{'+bytes other':>13}{'warm ms (other)':>17}"
              f"{'warm ms (same)':>16}  load")
        for mode, label in (("shards", "shards, range reads (this change)"), ("pervolume", "today: whole file")):
            rs = results[mode]
            med = {k: statistics.median(r[k] for r in rs) for k in ("bytes", "cold_ms", "bytes_other",
                                                                       "warm_other_ms", "warm_same_ms")}
            results[mode + "_median"] = med  # type: ignore[assignment]
            print(f"   {label:<34}{med['bytes']:>9.0f}{100 * med['bytes'] / split_bytes:>8.2f}%"
                  f"{med['cold_ms']:>10.1f}{med['bytes_other']:>13.0f}{med['warm_other_ms']:>17.2f}{med['warm_same_ms']:>16.3f}  "
                  f"{', '.join(r['load'] for r in rs)}")
        a, b = results["shards_median"], results["pervolume_median"]  # type: ignore[index]
        print(f"   ratio today / shards: bytes {b['bytes'] / a['bytes']:.2f}x, cold {b['cold_ms'] / a['cold_ms']:.2f}x, "
              f"warm (same) {b['warm_same_ms'] / a['warm_same_ms']:.2f}x")
        print(f"   target: <= 2% of the split's anatomy masks -> {100 * a['bytes'] / split_bytes:.2f}% "
              f"({'met' if a['bytes'] <= 0.02 * split_bytes else 'NOT met'})")

        # every structure's first read, from the footers alone (what a cold read of each would fetch)
        ratios = []
        for s in shards:
            md = pq.read_metadata(s)
            footer = 8 + int.from_bytes(s.read_bytes()[-8:-4], "little")
            for g in range(md.num_row_groups):
                rg = md.row_group(g)
                ratios.append((footer + sum(rg.column(c).total_compressed_size for c in range(rg.num_columns)))
                              / split_bytes)
        print(f"   over every row group of the split: median {100 * statistics.median(ratios):.2f}%, "
              f"max {100 * max(ratios):.2f}% of the split's anatomy masks")

        # 2. time to first row, streaming
        firsts: dict[str, list[dict]] = {}
        for r in range(args.rounds):
            for mode, pre in (("package", False), ("package", True), ("plain", False), ("plain", True)):
                key = f"{mode}, {'datasets+torch imported first' if pre else 'imports timed'}"
                got = _client(hub, work, FIRST_ROW, {**params, "mode": mode,
                                                                               "preimport": pre})
                got["load"] = _load()
                firsts.setdefault(key, []).append(got)
        print("\n2. time to first row of the vqa train split, streaming, fresh process each round")
        for key, rs in firsts.items():
            med = statistics.median(r["total_s"] for r in rs) if "imports timed" in key else statistics.median(
                r["first_row_s"] for r in rs)
            mask = statistics.median(r["first_mask_s"] for r in rs)
            print(f"   {key:<48} {med:6.2f} s" + (f"  (+ first anatomy mask {mask:.2f} s)" if "package" in key
                                                  else "") + f"  load {', '.join(r['load'] for r in rs)}")
        pk = statistics.median(r["first_row_s"] for r in firsts["package, datasets+torch imported first"])
        plain = statistics.median(r["first_row_s"] for r in firsts["plain, datasets+torch imported first"])
        print(f"   ratio plain datasets / load_packed (after imports): {plain / pk:.2f}x")
        print(f"   target: <= 3 s after imports -> {pk:.2f} s ({'met' if pk <= 3 else 'NOT met'}); no mask packing "
              "on the client (masks decode from the shards)")

        # 3. a subset: dry-run estimate against what the download then moves
        env = _fresh_env(hub, work)
        cli = [sys.executable, "-m", "radgenome_hf", "download", REPO, "--config", "vqa", "--split", "train",
               "--volumes", ",".join(sorted({volume, n_volume_after(packed, volume)})), "--json"]
        hub.reset_log()
        t0 = time.perf_counter()
        dry = subprocess.run(cli + ["--dry-run"], env=env, capture_output=True, text=True, timeout=600)
        dry_s = time.perf_counter() - t0
        plan = json.loads(dry.stdout.strip().splitlines()[-1])["plan"]
        planning_sent = hub.downloaded_bytes(REPO)
        hub.reset_log()
        t0 = time.perf_counter()
        run = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=600)
        run_s = time.perf_counter() - t0
        moved = hub.downloaded_bytes(REPO)
        estimate = sum(f["size"] for f in plan["files"])
        total = sum(p.stat().st_size for p in packed.rglob("*") if p.is_file())
        print(f"\n3. subset of 2 volumes (vqa, train): {len(plan['files'])} files")
        print(f"   dry-run estimate {estimate} B (planning read {planning_sent} B, {dry_s:.1f} s); the download moved "
              f"{moved} B ({run_s:.1f} s); difference {100 * abs(moved - estimate) / estimate:.3f}% (target <= 1%); "
              f"the whole release is {total} B ({total / estimate:.1f}x the subset)  load {_load()}")
        if run.returncode != 0:
            print(run.stderr[-2000:])
        if args.realistic:
            realistic(hub, work)


def realistic(hub, work: Path, n_volumes: int = 32) -> None:
    """One structure of shards of realistic masks, against the whole per-volume file (today's path)."""
    import shutil

    import huggingface_hub.constants as hc
    import numpy as np
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    from radgenome_hf.access import lazymasks, maskshards
    from radgenome_hf.access.masks import PackedMasks
    from radgenome_hf.access.maskshards import write_mask_shards
    from radgenome_hf.io import hub as hub_io
    from radgenome_hf.io import ranged_parquet
    from radgenome_hf.io.hub import hf_url
    from radgenome_hf.testing.synthetic import REALISTIC_SHAPE, REALISTIC_SPACING, make_phantom

    one = work / "realistic" / "one.masks.parquet"
    if not one.is_file():
        t0 = time.perf_counter()
        p = make_phantom(REALISTIC_SHAPE, REALISTIC_SPACING, 0, realistic=True)
        pm = PackedMasks(REALISTIC_SHAPE, p.affine)
        for name, m in p.structures.items():
            pm.add(name, np.asarray(m))
        pm.save(one)
        print(f"   (rendered and packed a realistic phantom's {len(pm)} structures in {time.perf_counter() - t0:.0f} s)")
    pm = PackedMasks.load(one)
    volumes = [f"train_{i + 1}_a_1" for i in range(n_volumes)]
    folder = work / "realistic" / "masks" / "train_anatomy"
    shutil.rmtree(folder.parent, ignore_errors=True)
    shard_of = write_mask_shards(volumes, lambda v: pm, folder, "train_anatomy", min_shards=1)
    (work / "realistic" / "masks" / "pervolume").mkdir(parents=True, exist_ok=True)
    pm.save(work / "realistic" / "masks" / "pervolume" / "train_3_a_1.masks.parquet", volume_name="train_3_a_1")
    repo = "radgenome-bench/realistic"
    with hub.patch_client():
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo(repo, repo_type="dataset", exist_ok=True)
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=work / "realistic" / "masks",
                          path_in_repo="masks")
        commit = hub.head(repo)
        split = sum(f.stat().st_size for f in folder.iterdir())
        structure = pm.names[len(pm.names) // 2]
        shard_url = hf_url(repo, f"masks/train_anatomy/{shard_of['train_3_a_1']}", commit)
        whole_url = hf_url(repo, "masks/pervolume/train_3_a_1.masks.parquet", commit)
        rows = []
        saved = hc.HF_HUB_CACHE
        try:
            for _ in range(3):
                for cache in (lazymasks._PACKED_CACHE, maskshards._ROWS, ranged_parquet._CACHE, hub_io._fetched):
                    cache.clear()
                hc.HF_HUB_CACHE = tempfile.mkdtemp(prefix="hub-", dir=work)  # an empty cache each round
                hub.reset_log()
                t0 = time.perf_counter()
                lazymasks.open_packed_masks(shard_url, "train_3_a_1", structure).mask(structure)
                shard_ms, shard_b = 1000 * (time.perf_counter() - t0), hub.downloaded_bytes(repo)
                hub.reset_log()
                t0 = time.perf_counter()
                lazymasks.open_packed_masks(whole_url).mask(structure)  # today's path: the file whole
                whole_ms, whole_b = 1000 * (time.perf_counter() - t0), hub.downloaded_bytes(repo)
                rows.append((shard_b, shard_ms, whole_b, whole_ms, _load()))
        finally:
            hc.HF_HUB_CACHE = saved
    files = sorted(folder.iterdir())
    md = pq.read_metadata(files[0])
    print(f"\n4. realistic masks: {len(pm)} structures of ~{one.stat().st_size // len(pm) // 1024} KB each per volume, "
          f"{n_volumes} volumes in {len(files)} shards ({split} B; {md.num_row_groups} row groups in the first, "
          f"footer {8 + int.from_bytes(files[0].read_bytes()[-8:-4], 'little')} B); one structure ({structure!r}):")
    for shard_b, shard_ms, whole_b, whole_ms, load in rows:
        print(f"   shards: {shard_b} B ({100 * shard_b / split:.2f}% of the split), {shard_ms:.0f} ms;   today's whole "
              f"file: {whole_b} B, {whole_ms:.0f} ms;   bytes ratio today / shards {whole_b / shard_b:.1f}x  load {load}")


def n_volume_after(packed: Path, volume: str) -> str:
    """Another train volume (the last one of the vqa rows), for a two-volume subset."""
    import pyarrow.parquet as pq

    names = sorted({v for f in (packed / "vqa").glob("train-*.parquet")
                    for v in pq.read_table(f, columns=["volume_name"]).column(0).to_pylist()})
    return names[-1] if names[-1] != volume else names[0]


if __name__ == "__main__":
    main()
