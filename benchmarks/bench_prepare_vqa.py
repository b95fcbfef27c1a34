"""Preparing the ``vqa`` config from CSVs of ~1.3M rows (the real release's size): ours vs a per-row baseline.

Builds train_vqa_{abnormality,location,presence,size}.csv + case_disorders at the real files' proportions by
replicating the real sample rows (../shared/reference/radgenome-real-sample) under new volume names (or synthetic
rows when the sample is absent), then times:

* ours: ``datasets.load_dataset("radgenome", "vqa", data_dir=…)`` end to end (CSV parse with pyarrow, question
  rendering, grounding, Arrow write), CSV-only release (no volumes/masks);
* baseline: the per-row way a loading script would do it: ``csv.DictReader`` over the same files, one Python
  dict per row with the same fields, through a ``GeneratorBasedBuilder``-style ``Dataset.from_generator``;
* pandas: ``pandas.read_csv`` + ``Dataset.from_pandas`` (no questions, no grounding: a floor);
* today (``--base-package DIR``): ``ours``' lines on an older radgenome_hf (e.g. ``git archive <commit> radgenome_hf``
  unpacked in DIR), run in the same rounds; its prepared rows are compared with ours (``pyarrow.Table.equals``).

Every runner is its own process (``os.wait4`` gives its peak RSS); rounds alternate the runners. The load average is
printed with each run; ratios are printed at the end.

Run: python benchmarks/bench_prepare_vqa.py [--rows 1300000] [--rounds 1] [--base-package DIR] [--skip baseline]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import Comparison, print_comparisons  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "reference" / "radgenome-real-sample"
# rows of the real train files (data-formats.md §1.2 sizes scaled): abnormality 34.8 MB, location 24.4, presence 45.6
PROPORTIONS = {"abnormality": 0.33, "location": 0.22, "presence": 0.43, "size": 0.01, "case_disorders": 0.01}


def make_release(root: Path, total_rows: int) -> dict[str, int]:
    files = root / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    files.mkdir(parents=True)
    counts = {}
    for kind, share in PROPORTIONS.items():
        name = f"train_{kind}.csv" if kind == "case_disorders" else f"train_vqa_{kind}.csv"
        src = SAMPLE / name
        with open(src, newline="") as f:
            reader = csv.reader(f)
            header = next(reader)
            rows = list(reader)
        target = int(total_rows * share)
        with open(files / name, "w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(header)
            n, rep = 0, 0
            while n < target:
                for r in rows:
                    if n >= target:
                        break
                    stem = r[0][: -len(".nii.gz")]
                    split_, p, s, rec = stem.split("_")
                    w.writerow([f"{split_}_{int(p) + 1000 * rep}_{s}_{rec}.nii.gz", *r[1:]])
                    n += 1
                rep += 1
        counts[kind] = target
    return counts


def ours(root: Path, cache: Path) -> int:
    import datasets

    import radgenome_hf  # noqa: F401

    ds = datasets.load_dataset("radgenome", "vqa", data_dir=str(root), cache_dir=str(cache), split="train")
    return len(ds)


def baseline(root: Path, cache: Path) -> int:
    import datasets

    from radgenome_hf.templates import QuestionTemplates

    files = root / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    t = QuestionTemplates.default()

    def gen():
        for kind in ("abnormality", "location", "presence", "size"):
            with open(files / f"train_vqa_{kind}.csv", newline="") as f:
                for r in csv.DictReader(f):
                    finding = r.get("Finding") or r["Abnormality"]
                    region = r["Anatomy"].rsplit("/", 1)[-1]
                    yield {"volume_name": r["Volumename"][:-7], "question_type": kind,
                           "question": t.render(kind, key=r["Volumename"] + r["Anatomy"] + finding,
                                                region=region, abnormality=finding),
                           "answer": r.get("Presence") or r.get("Size") or finding, "anatomy": r["Anatomy"]}
        with open(files / "train_case_disorders.csv", newline="") as f:
            for r in csv.DictReader(f):
                yield {"volume_name": r["Volumename"][:-7], "question_type": "disorders",
                       "question": t.render("disorders", key=r["Volumename"]), "answer": r["Disorders"],
                       "anatomy": ""}

    ds = datasets.Dataset.from_generator(gen, cache_dir=str(cache))
    return len(ds)


def pandas_baseline(root: Path, cache: Path) -> int:
    """pandas.read_csv of every file + ``Dataset.from_pandas`` (no question rendering, no grounding: a floor)."""
    import datasets
    import pandas as pd

    files = root / "RadGenome-ChestCT" / "dataset" / "radgenome_files"
    frames = []
    for kind in ("abnormality", "location", "presence", "size"):
        df = pd.read_csv(files / f"train_vqa_{kind}.csv", dtype=str)
        frames.append(pd.DataFrame({"volume_name": df["Volumename"].str[:-7], "question_type": kind,
                                    "anatomy": df["Anatomy"], "answer": df.iloc[:, -1]}))
    df = pd.read_csv(files / "train_case_disorders.csv", dtype=str)
    frames.append(pd.DataFrame({"volume_name": df["Volumename"].str[:-7], "question_type": "disorders",
                                "anatomy": "", "answer": df["Disorders"]}))
    ds = datasets.Dataset.from_pandas(pd.concat(frames, ignore_index=True))
    ds.save_to_disk(str(cache))  # the Arrow write, as the builders do
    return len(ds)


RUNNERS = {"ours": ours, "today": ours, "baseline": baseline, "pandas": pandas_baseline}
NAMES = {"today": "the same lines on the base package", "baseline": "csv.DictReader + Dataset.from_generator",
         "pandas": "pandas.read_csv + Dataset.from_pandas (no questions)"}


def in_child(label: str, root: Path, cache: Path, pythonpath: str | None = None) -> tuple[float, int, int]:
    """(seconds, rows, peak RSS bytes) of one runner in a fresh process (``os.wait4`` gives that process's
    own maximum resident set). ``pythonpath`` puts another radgenome_hf first (the child runs in ``cache``'s parent
    folder, so the current directory's package never shadows it)."""
    import json
    import os
    import subprocess

    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_prepare_vqa as b; "
            f"from pathlib import Path; print(json.dumps(b.RUNNERS[{label!r}](Path({str(root)!r}), "
            f"Path({str(cache)!r}))))")
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env,
                            cwd=str(cache.parent))
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    dt = time.perf_counter() - t
    if status != 0:
        raise SystemExit(f"{label} failed (status {status})")
    return dt, int(json.loads(out)), usage.ru_maxrss * 1024


def _prepared(cache: Path):
    """The rows a builder prepared under ``cache`` (its Arrow files, memory-mapped, in order)."""
    import pyarrow as pa

    files = sorted(cache.rglob("radgenome-train*.arrow"))
    return pa.concat_tables([pa.ipc.open_stream(pa.memory_map(str(f))).read_all() for f in files])


def _differences(x, y) -> list[str]:
    """How two prepared tables differ: ``[]`` when equal; otherwise the columns that differ. A struct column whose
    type gained fields (e.g. ``quality.label_checks``) is compared on the fields both have, and the added fields
    are named."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if x.num_rows != y.num_rows:
        return [f"rows {x.num_rows} != {y.num_rows}"]
    out = [f"only in one: {c}" for c in sorted(set(x.column_names) ^ set(y.column_names))]
    for c in (c for c in x.column_names if c in y.column_names):
        a, b = x.column(c).combine_chunks(), y.column(c).combine_chunks()
        if pa.types.is_struct(a.type) and pa.types.is_struct(b.type) and a.type != b.type:
            common = [f.name for f in a.type if b.type.get_field_index(f.name) >= 0]
            added = sorted({f.name for f in a.type} ^ {f.name for f in b.type})
            out.append(f"{c}: fields only in one: {added}")
            a = pa.StructArray.from_arrays([a.field(n) for n in common], common, mask=pc.is_null(a))
            b = pa.StructArray.from_arrays([b.field(n) for n in common], common, mask=pc.is_null(b))
        if not a.equals(b):
            out.append(f"{c}: values differ")
    return out


def _same_rows(a: Path, b: Path) -> str:
    """Whether two prepares wrote the same rows (``pyarrow.Table.equals``; else :func:`_differences`), compared in a
    child process: the pages it touches would otherwise count in the peak RSS of every later child (Linux carries
    a parent's high-water mark into a forked child's ``ru_maxrss``)."""
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import bench_prepare_vqa as b; "
            f"from pathlib import Path; x, y = b._prepared(Path({str(a)!r})), b._prepared(Path({str(b)!r})); "
            "print('True' if x.num_rows == y.num_rows and x.equals(y) else '; '.join(b._differences(x, y)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=str(a.parent))
    return out.stdout.strip() or f"comparison failed: {out.stderr.strip()[-300:]}"


def main() -> None:
    import os
    import statistics

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_300_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--base-package", help="folder holding an older radgenome_hf to time as 'today'")
    ap.add_argument("--skip", nargs="*", default=[], help="runners to leave out (baseline, pandas)")
    args = ap.parse_args()
    if not SAMPLE.is_dir():
        sys.exit(f"needs the real sample rows at {SAMPLE}")
    labels = [k for k in RUNNERS if k not in args.skip and (k != "today" or args.base_package)]
    here = str(Path(__file__).resolve().parents[1])
    tmp = Path(tempfile.mkdtemp(prefix="bench-vqa-"))
    try:
        t0 = time.perf_counter()
        counts = make_release(tmp / "rel", args.rows)
        print(f"wrote {sum(counts.values()):,} CSV rows in {time.perf_counter() - t0:.1f} s: {counts}")
        times: dict[str, list[float]] = {k: [] for k in labels}
        rss: dict[str, list[int]] = {k: [] for k in labels}
        same = None
        for r in range(args.rounds):
            for label in labels:
                cache = tmp / f"cache-{label}-{r}"
                path = args.base_package if label == "today" else here
                dt, n, peak = in_child(label, tmp / "rel", cache, path)
                times[label].append(dt)
                rss[label].append(peak)
                print(f"  {label}: {n:,} rows in {dt:.1f} s (process start included), peak RSS {peak / 1e6:,.0f} MB, "
                      f"load {'/'.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
            if "today" in labels and same is None:  # the same rows, byte for byte (values, types, order)
                same = _same_rows(tmp / f"cache-ours-{r}", tmp / f"cache-today-{r}")
                print(f"  ours' prepared rows equal today's: {same}")
            for label in labels:
                shutil.rmtree(tmp / f"cache-{label}-{r}", ignore_errors=True)
        print_comparisons([Comparison(f"prepare vqa ({args.rows:,} CSV rows)", "radgenome builder", times["ours"],
                                      {NAMES[k]: times[k] for k in labels if k != "ours"})])
        med = {k: statistics.median(v) for k, v in rss.items()}
        print("peak RSS (median over rounds): " + ", ".join(f"{k} {v / 1e6:,.0f} MB" for k, v in med.items())
              + " (target: ours < 600 MB)")
        if "today" in labels:
            t_ours, t_today = statistics.median(times["ours"]), statistics.median(times["today"])
            print(f"ours / today: time {t_ours / t_today:.2f}x ({t_ours:.1f} s / {t_today:.1f} s), peak RSS "
                  f"{med['ours'] / med['today']:.2f}x ({med['ours'] / 1e6:,.0f} MB / {med['today'] / 1e6:,.0f} MB); "
                  f"rows equal: {same}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
