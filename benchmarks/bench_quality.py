"""The quality stage: its speed against decoding the volumes once, its label checks on real text, and the quality
of the text-side generation stages against the synthetic release's ground truth.

    python benchmarks/bench_quality.py                      # all three sections
    python benchmarks/bench_quality.py --only speed [--volumes 2] [--rounds 5] [--float] [--volumes-dir DIR]
    python benchmarks/bench_quality.py --only labels [--label-sample 30]   # needs ../shared/reference
    python benchmarks/bench_quality.py --only text [--train 8] [--valid 4] [--seed 0] [--real-sample DIR]

**speed** (target: the stage runs at >= 80 % of the speed of decoding the volumes once): on ``--volumes``
512x512x300 int16 phantoms of realistic compressibility (``make_phantom(realistic=True)``: gzip about 2.2x, like
real CT) with their 50 packed anatomy masks, in rounds of paired timings (each volume decoded and run through the
stage back to back, in alternating order), volumes/s of (a) decoding each ``.nii.gz`` once
(``Volume.open(path).array()``, the baseline) and (b) what the stage does per volume (``generate.volumes``: decode,
HU checks, load the packed masks, lung coverage), and the ratio b/a (of the medians, and the median of the
paired ratios, which drifting load disturbs less); then the parts of (b) one by one, and the HU
checks of the previous implementation (two passes, a full boolean mask for float data) on the same arrays.
``--float`` adds float32 copies with non-finite voxels. The volumes are written once into ``--volumes-dir`` (default
a folder in the temp dir, reused by later runs: about a minute per volume to write).

**labels**: the CT-RATE label checks' mentions on the real development reports (patients 1-120, read from
``../shared/reference/ctrate-dev-reports``, never copied): per label, how many reports mention it present, absent,
or not at all; ``--label-sample N`` prints N decisions with their sentence, for checking by hand (on the terminal
only: the text must not be committed).

**text**: precision and recall of

- anatomy assignment: the (volume, path) pairs the grounding marks abnormal (vqa_location rows) vs the lesion
  paths in ``ground_truth.json`` (every level and alternative grouping);
- the most specific path per lesion sentence;
- VQA abnormality answers (the lesion's finding named in the answer at each of its paths), presence answers
  (``Yes.`` rows at lesion paths; ``No.`` rows never naming a lesion present there) and sizes (text as written);
- comparisons between a patient's scans (the generator's 'has grown' -> worsened, 'decreased' -> improved);

and, on the real RadGenome sample rows, how many location and presence-``Yes.`` rows the re-derivation from the
abnormality rows reproduces exactly.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

KIND_WORDS = {"nodule": r"nodule", "pleural effusion": r"effusion", "cardiomegaly": r"cardiomegaly|enlarged",
              "arterial wall calcification": r"atheroma|calcif|atherosclero"}


def _intended_change(sentence: str) -> str | None:
    """The change the synthetic generator wrote into a lesion sentence (its truth for the text)."""
    if "has grown" in sentence:
        return "worsened"
    if "decreased in size" in sentence:
        return "improved"
    return None


def pr(tp: int, n_pred: int, n_true: int) -> tuple[float, float]:
    return (tp / n_pred if n_pred else 1.0), (tp / n_true if n_true else 1.0)


def synthetic_quality(n_train: int, n_valid: int, seed: int) -> list[tuple[str, int, int, int]]:
    """Rows (metric, true positives, predicted, truth)."""
    import pyarrow as pa

    from radgenome_hf.generate.ground import ground_reports
    from radgenome_hf.generate.vqa import build_vqa
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
    from radgenome_hf.io.tables import filter_volumes, read_ctrate_reports

    tmp = Path(tempfile.mkdtemp(prefix="bench_quality_"))
    rel = write_release(tmp, SyntheticConfig(n_train_patients=n_train, n_valid_patients=n_valid, seed=seed,
                                             mask_layout="folders"))
    truth = json.loads(rel.ground_truth_path.read_text())
    vols = truth["radgenome_volumes"]
    rep_dir = rel.ctrate_root / "dataset" / "radiology_text_reports" if hasattr(rel, "ctrate_root") else \
        tmp / "CT-RATE" / "dataset" / "radiology_text_reports"
    reports = pa.concat_tables([read_ctrate_reports(p) for p in sorted(Path(rep_dir).glob("*_reports.csv"))])
    reports = filter_volumes(reports, vols)
    grounded = ground_reports(reports, progress=False)
    grounded = {s: grounded[s] for s in sorted(grounded)}
    t = build_vqa(grounded, seed=seed)

    true_paths = {(f"{s}.nii.gz", p) for s in vols for l in truth["volumes"][s]["lesions"] for p in l["paths"]}
    pred_paths = {(r[0], r[1]) for r in t.location}
    rows = [("anatomy assignment (all levels)", len(true_paths & pred_paths), len(pred_paths), len(true_paths))]

    # most specific path per lesion sentence
    tp = n_pred = n_true = 0
    for s in vols:
        for lesion in truth["volumes"][s]["lesions"]:
            n_true += 1
            sent = [x for x in grounded[s].sentences if x.text == lesion["sentence"]]
            if sent:
                n_pred += 1
                tp += lesion["anatomy_path"] in sent[0].paths
    rows.append(("most specific path per lesion sentence", tp, n_pred, n_true))

    # abnormality answers: the lesion's kind is named at each of its paths
    answers = {(r[0], r[1]): r[2] for r in t.abnormality}
    truth_items = [(f"{s}.nii.gz", p, l["kind"]) for s in vols for l in truth["volumes"][s]["lesions"]
                   for p in l["paths"]]
    hit = sum(bool(re.search(KIND_WORDS[k], answers.get((v, p), ""))) for v, p, k in truth_items)
    correct_pred = sum(1 for (v, p), a in answers.items() if a != "no findings" and (v, p) in true_paths)
    n_abn = sum(1 for a in answers.values() if a != "no findings")
    rows.append(("vqa abnormality (finding named at its path)", hit, len(truth_items), len(truth_items)))
    rows.append(("vqa abnormality (abnormal answers at lesion paths)", correct_pred, n_abn, len(true_paths)))

    # presence
    kinds_at: dict[tuple[str, str], set[str]] = {}
    for v, p, k in truth_items:
        kinds_at.setdefault((v, p), set()).add(k)
    yes = [(r[0], r[1]) for r in t.presence if r[3] == "Yes."]
    no = [(r[0], r[1], r[2]) for r in t.presence if r[3] == "No."]
    yes_ok = sum(k in true_paths for k in yes)
    no_ok = sum(not any(re.search(KIND_WORDS[k], f) for k in kinds_at.get((v, p), ())) for v, p, f in no)
    rows.append(("vqa presence Yes.", yes_ok, len(yes), len(true_paths)))
    rows.append(("vqa presence No. (not contradicting truth)", no_ok, len(no), len(no)))

    # sizes
    true_sizes = {(f"{s}.nii.gz", l["size_text"]) for s in vols for l in truth["volumes"][s]["lesions"]
                  if l["size_text"]}
    pred_sizes = {(r[0], r[3]) for r in t.size}
    rows.append(("vqa size (text as written)", len(true_sizes & pred_sizes), len(pred_sizes), len(true_sizes)))

    # comparisons (text): nodule grown / shrunk between consecutive scans
    from radgenome_hf.generate.scene_graph import prior_volumes

    priors = prior_volumes(vols)
    tp = n_pred = n_true = 0
    for s, prior in priors.items():
        if not prior:
            continue
        cur = {l["kind"]: l for l in truth["volumes"][s]["lesions"]}
        old = {l["kind"]: l for l in truth["volumes"][prior]["lesions"]}
        if "nodule" in cur and "nodule" in old:
            n_true += 1
            expect = _intended_change(cur["nodule"]["sentence"])
            if expect is None:
                n_true -= 1
                continue
            said = [x.comparison for x in grounded[s].sentences if x.comparison and "nodule" in " ".join(x.findings)]
            if said:
                n_pred += 1
                tp += said[0] == expect
    rows.append(("comparison predicate (nodule a -> b)", tp, n_pred, n_true))
    return rows


def real_rederivation(sample: Path) -> list[tuple[str, int, int]]:
    import pyarrow as pa

    from radgenome_hf.generate.vqa import rederive_location_presence

    def read(name):
        with open(sample / name, newline="", encoding="utf-8") as f:
            r = list(csv.reader(f))
        return r[0], [tuple(x) for x in r[1:]]

    h, abn = read("train_vqa_abnormality.csv")
    table = pa.table({c: [r[i] for r in abn] for i, c in enumerate(h)})
    loc, yes = rederive_location_presence(table)
    _, real_loc = read("train_vqa_location.csv")
    _, real_pres = read("train_vqa_presence.csv")
    real_yes = [r for r in real_pres if r[3] == "Yes."]
    got_loc = [tuple(r.values()) for r in loc.to_pylist()]
    got_yes = [tuple(r.values()) for r in yes.to_pylist()]
    return [
        ("location rows", sum(a == b for a, b in zip(got_loc, real_loc)) if len(got_loc) == len(real_loc) else 0,
         len(real_loc)),
        ("presence Yes. rows", sum(a == b for a, b in zip(got_yes, real_yes)) if len(got_yes) == len(real_yes) else 0,
         len(real_yes)),
    ]


# ----------------------------------------------------------------------------------------------------------------
# speed of the quality stage
# ----------------------------------------------------------------------------------------------------------------


def _previous_hu_checks(hu):
    """The HU checks as they were before this benchmark's issue (#16), for the comparison printed beside them."""
    import numpy as np

    finite = np.isfinite(hu) if hu.dtype.kind == "f" else None
    nonfinite = 0 if finite is None else int(finite.size - np.count_nonzero(finite))
    vals = hu if finite is None or nonfinite == 0 else hu[finite]
    return nonfinite, float(vals.min()), float(vals.max())


def _bench_volumes(folder: Path, n: int, with_float: bool) -> list[tuple[str, Path, Path]]:
    """``n`` realistic phantoms (``.nii.gz`` + packed anatomy masks), written once into ``folder``."""
    import numpy as np

    from radgenome_hf.access.masks import PackedMasks
    from radgenome_hf.io.nifti import write_nifti
    from radgenome_hf.testing.synthetic import REALISTIC_SHAPE, REALISTIC_SPACING, make_phantom

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for seed in range(n):
        stem = f"train_{seed + 1}_a_1"
        vol, masks, fvol = folder / f"{stem}.nii.gz", folder / f"{stem}.masks.parquet", folder / f"{stem}.f32.nii.gz"
        if not (vol.is_file() and masks.is_file()) or (with_float and not fvol.is_file()):
            t0 = time.perf_counter()
            ph = make_phantom(REALISTIC_SHAPE, REALISTIC_SPACING, seed, None, realistic=True)
            write_nifti(vol, ph.ct, ph.affine)
            PackedMasks.from_arrays({k: ph.structures[k] for k in ph.anatomy_names}, ph.affine).save(masks, stem)
            if with_float:
                f = ph.ct.astype(np.float32)
                f[0, 0, : f.shape[2] // 4] = np.nan  # a streak of NaN and one inf, as the nonfinite fault has
                f[-1, -1, 0] = np.inf
                write_nifti(fvol, f, ph.affine)
            print(f"  wrote {stem} ({vol.stat().st_size / 1e6:.1f} MB .nii.gz) in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        out.append((stem, vol, masks))
        if with_float:
            out.append((f"{stem}_f32", fvol, masks))
    return out


def stage_speed(n_volumes: int, rounds: int, folder: Path, with_float: bool) -> dict:
    """Print and return volumes/s of decoding once vs decode + the quality row, and the parts of the stage."""
    import statistics

    from radgenome_hf.access.masks import PackedMasks
    from radgenome_hf.access.volume import Volume, clear_open_volumes
    from radgenome_hf.generate import quality
    from radgenome_hf.generate.volumes import _chain

    load0 = os.getloadavg()
    vols = _bench_volumes(folder, n_volumes, with_float)
    groups = {"int16": [v for v in vols if not v[0].endswith("_f32")], "float32": [v for v in vols if v[0].endswith("_f32")]}
    results = {}
    for kind, group in groups.items():
        if not group:
            continue

        def decode(stem: str, path: Path, masks: Path) -> None:
            clear_open_volumes()  # the per-process LRU of decoded volumes would make the next decode free
            Volume.open(path).array()

        def stage(stem: str, path: Path, masks: Path) -> None:
            clear_open_volumes()
            res = _chain(({"item": stem, "path": str(path), "masks": str(masks), "out": ""}, None))
            assert not res["error"], res["error"]

        # paired timings: each volume decoded and run through the stage back to back, in alternating order, so
        # the load of the (shared) machine and the page cache hit both alike
        stage(*group[0])  # warm-up: imports, first reads
        totals: dict[str, list[float]] = {"decode": [], "stage": []}
        pair_ratios = []
        for r in range(rounds):
            per = {"decode": 0.0, "stage": 0.0}
            for i, v in enumerate(group):
                got = {}
                for name, fn in ((("decode", decode), ("stage", stage)) if (r + i) % 2 == 0 else
                                 (("stage", stage), ("decode", decode))):
                    t0 = time.perf_counter()
                    fn(*v)
                    got[name] = time.perf_counter() - t0
                per = {k: per[k] + got[k] for k in per}
                pair_ratios.append(got["decode"] / got["stage"])
            for k in per:
                totals[k].append(per[k])
        a = len(group) / statistics.median(totals["decode"])
        b = len(group) / statistics.median(totals["stage"])
        # the parts of the stage, on the same volumes
        parts: dict[str, list[float]] = {"hu checks": [], "hu checks (previous)": [], "load packed masks": [],
                                          "lung coverage": []}
        for stem, path, masks in group:
            clear_open_volumes()
            vol = Volume.open(path)
            hu = vol.array()
            pm = PackedMasks.load(masks)
            for _ in range(rounds):
                for name, fn in (("hu checks", lambda: quality.hu_quality(hu, vol.affine)),
                                 ("hu checks (previous)", lambda: _previous_hu_checks(hu)),
                                 ("load packed masks", lambda: PackedMasks.load(masks)),
                                 ("lung coverage", lambda: quality.lung_coverage(pm, hu.shape[2]))):
                    t0 = time.perf_counter()
                    fn()
                    parts[name].append(time.perf_counter() - t0)
        per_vol = {k: statistics.median(v) * 1000 for k, v in parts.items()}
        paired = statistics.median(pair_ratios)
        results[kind] = {"decode_volumes_per_s": a, "stage_volumes_per_s": b, "ratio": b / a, "paired_ratio": paired,
                         "parts_ms": per_vol}
        print(f"\n{kind}: {len(group)} volume(s) 512x512x300, {rounds} rounds of paired timings")
        print(f"| {'what':<46} | {'volumes/s':>9} | {'ms/volume':>9} |")
        print(f"|{'-' * 48}|-----------|-----------|")
        print(f"| {'(a) decode once: Volume.open(path).array()':<46} | {a:>9.3f} | {1000 / a:>9.1f} |")
        print(f"| {'(b) the stage: decode + quality row':<46} | {b:>9.3f} | {1000 / b:>9.1f} |")
        print(f"ratio b/a = {b / a:.3f} (of the medians); median of the {len(pair_ratios)} paired ratios = {paired:.3f}  "
              f"(target >= 0.80: {'met' if min(b / a, paired) >= 0.8 else 'NOT met'})")
        print("parts of (b), median ms per volume: " + ", ".join(f"{k} {v:.1f}" for k, v in per_vol.items()))
    print(f"load average at start {'/'.join(f'{x:.2f}' for x in load0)}, at end "
          f"{'/'.join(f'{x:.2f}' for x in os.getloadavg())}")
    return results


# ----------------------------------------------------------------------------------------------------------------
# label checks on the real development reports
# ----------------------------------------------------------------------------------------------------------------


def real_label_mentions(reports_csv: Path, sample: int, seed: int) -> dict:
    """Per label, how many real reports the label checks find mentioning it present / absent / not at all; a
    random sample of sentence-level decisions is printed for checking by hand."""
    import random
    from collections import Counter

    from radgenome_hf.generate.evaluate import read_reports
    from radgenome_hf.generate.ground import GroundedReport, ground_report
    from radgenome_hf.generate.label_checks import label_mentions, sentence_mentions

    reports = read_reports(reports_csv)
    counts: dict[str, Counter] = {}
    decisions = []
    for stem, (findings, impressions) in reports.items():
        report = GroundedReport(stem, ground_report(findings, impressions))
        for label, said in label_mentions(report).items():
            counts.setdefault(label, Counter())[said] += 1
        decisions += [(stem, label, said, s.text) for s in report.sentences
                      for label, said in sentence_mentions(s).items()]
    print(f"\nlabel checks on {len(reports)} real reports ({reports_csv}): reports per mention")
    print(f"| {'label':<36} | present | absent | not mentioned |")
    print(f"|{'-' * 38}|---------|--------|---------------|")
    for label, c in counts.items():
        print(f"| {label:<36} | {c['present']:>7} | {c['absent']:>6} | {c[None]:>13} |")
    if sample:
        print(f"\n{sample} sentence-level decisions drawn at random (seed {seed}) for checking by hand "
              "(real report text: do not commit it):")
        for stem, label, said, text in random.Random(seed).sample(decisions, min(sample, len(decisions))):
            print(f"- [{stem}] {label}: {said} <- {text}")
    return {k: dict(v) for k, v in counts.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("speed", "labels", "text"), action="append",
                    help="run only these sections (repeatable; default all)")
    ap.add_argument("--volumes", type=int, default=2, help="speed: realistic volumes (about a minute each to write)")
    ap.add_argument("--rounds", type=int, default=5, help="speed: rounds of paired timings")
    ap.add_argument("--float", action="store_true", help="speed: float32 copies with non-finite voxels too")
    ap.add_argument("--volumes-dir", type=Path, default=Path(tempfile.gettempdir()) / "radgenome_bench_quality")
    ap.add_argument("--reports", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "reference"
                    / "ctrate-dev-reports" / "reports.csv", help="labels: the real development reports")
    ap.add_argument("--label-sample", type=int, default=0, help="labels: print this many decisions to check by hand")
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--valid", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-sample", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "reference" / "radgenome-real-sample")
    args = ap.parse_args(argv)
    only = set(args.only or ("speed", "labels", "text"))

    if "speed" in only:
        stage_speed(args.volumes, args.rounds, args.volumes_dir, args.float)
    if "labels" in only:
        if args.reports.is_file():
            real_label_mentions(args.reports, args.label_sample, args.seed)
        else:
            print(f"\nreal reports not found at {args.reports}; label checks on real text skipped")
    if "text" not in only:
        return 0

    t0 = time.perf_counter()
    rows = synthetic_quality(args.train, args.valid, args.seed)
    print(f"synthetic release: {args.train} train + {args.valid} valid patients, seed {args.seed} "
          f"({time.perf_counter() - t0:.1f} s)\n")
    print(f"| {'metric':<52} | {'TP':>4} | {'pred':>4} | {'true':>4} | precision | recall |")
    print(f"|{'-' * 54}|------|------|------|-----------|--------|")
    worst = 1.0
    for name, tp, n_pred, n_true in rows:
        p, r = pr(tp, n_pred, n_true)
        worst = min(worst, p, r)
        print(f"| {name:<52} | {tp:>4} | {n_pred:>4} | {n_true:>4} | {p:>9.3f} | {r:>6.3f} |")
    if args.real_sample.is_dir():
        print(f"\nreal sample ({args.real_sample}): re-derivation from vqa_abnormality")
        for name, same, total in real_rederivation(args.real_sample):
            print(f"  {name}: {same} / {total} identical ({'exact' if same == total else 'DIFFERS'})")
    else:
        print(f"\nreal sample not found at {args.real_sample}; skipped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
