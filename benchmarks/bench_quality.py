"""Quality of the text-side generation stages, measured against the synthetic release's ground truth.

    python benchmarks/bench_quality.py [--train 8] [--valid 4] [--seed 0] [--real-sample DIR]

Prints, as a table, precision and recall of

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
import re
import sys
import tempfile
import time
from pathlib import Path

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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train", type=int, default=8)
    ap.add_argument("--valid", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real-sample", type=Path,
                    default=Path(__file__).resolve().parents[2] / "shared" / "reference" / "radgenome-real-sample")
    args = ap.parse_args(argv)

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
