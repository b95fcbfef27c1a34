#!/usr/bin/env python
"""Learn the grounding lexicon (``radgenome_hf/data/lexicon.json``) from real RadGenome rows.

Reads only the RadGenome VQA rows (``train_vqa_abnormality.csv``) of a folder, by default
``../shared/reference/radgenome-real-sample/`` next to the repository, and keeps words and short phrases, never
report text:

- ``findings``: finding head terms (the last word of a phrase, or its last two words when the last one is
  generic: ``atelectatic changes``), seen in at least ``--min-count`` distinct phrases;
- ``finding_anatomy``: content words of finding phrases that sit at one most specific path in most of their
  uses (``hepatosteatosis`` -> the liver); the grounder uses them for sentences that name no anatomy;
- ``implies``: path A -> paths B that carry the same finding in most volumes where A does (aortic findings
  are listed under ``mediastinum/aorta`` and ``abdomen/abdomen/aorta``; cardiac ones under ``heart tissue``);
- ``collapse``: paths RadGenome (almost) never uses while their parent is common, mapped to that parent
  (``right lung middle lobe`` -> ``right lung``);
- ``descend``: paths that are (almost) never the most specific abnormal path of a volume, mapped to their generic
  tissue child (``mediastinum`` -> ``mediastinum/mediastinal tissue``): a finding "in the mediastinum" sits there;
- ``region_priority``: region R -> regions Q whose share of a sentence naming both goes to R (with the reports,
  ``--reports``, only to tell which sentence a real phrase comes from: a phrase written verbatim in a findings
  sentence): RadGenome lists the findings of a sentence that mentions the pleura ("subpleural", "pleural-based")
  under the pleura, not the lung; it lists "bronchiectasis in both lungs" under the lung, not the bronchi;
- ``node_priority``: anatomy node A -> nodes B of other regions: when a findings sentence names both, the rows
  list its findings under A alone (``aorta`` beats ``heart``: "plaques in the aorta and coronary arteries" are
  aortic rows); a finding grounded at both loses B's paths;
- ``anatomy_terms``: a few anatomy words the rows place elsewhere than the ontology's synonyms do (checked by hand
  against the rows, see ``ANATOMY_TERMS``).

Usage: ``python builder_scripts/make_lexicon.py [ROWS_FOLDER] [--reports REPORTS_CSV]
[--out radgenome_hf/data/lexicon.json]``
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_ROWS = ROOT / ".." / "shared" / "reference" / "radgenome-real-sample"
DEFAULT_REPORTS = ROOT / ".." / "shared" / "reference" / "ctrate-dev-reports" / "reports.csv"

#: Last words that are no finding head by themselves (the head is then the last two words).
GENERIC_HEADS = frozenset("""changes change areas area appearance appearances increase increases lesion lesions
    densities density foci focus pattern formations formation""".split())
#: Words that are never a finding head or an anatomy cue.
NOT_FINDINGS = frozenset("""mm cm images image structures structure diameter findings finding process normal sizes
    size window level levels examination evaluated sectioned region line borders pathologies pathology spaces
    tissue height skin stable heart stomach aorta spleen kidneys mediastinum pleura fossa hilus wall involvement
    infective loculated heterogeneous lobulated thick ectatic hypertrophic atrophic increased cc porces ratio
    pandemic covid glass uptake spread halo tapering""".split())
#: General words that are no anatomy cue however concentrated their few uses are.
GENERAL = frozenset("""approximately atypical based consistent decrease facing largest moderate occupying outlook
    progression short space specific vessel manifestations mixed index taperings""".split())
#: Anatomy words RadGenome's rows place elsewhere than the ontology's synonyms (term -> node name), checked by
#: hand against the rows of the development volumes: a "lingular segment" finding is listed under the left lung,
#: not its upper lobe, unless the upper lobe is named too (24 of 25 volumes); the coronary arteries' abbreviations
#: name the heart, as "coronary" does in the ontology; "at the thoracic level" is a spinal level (4 of 5 sentences).
ANATOMY_TERMS = {"lingula": "left lung", "lingular": "left lung", "lad": "heart", "rca": "heart", "lcx": "heart",
                 "thoracic level": "thoracic vertebrae"}
STOP = frozenset("""with and the of in on at to from for an a which that this these both left right bilateral
    minimal mild millimetric nonspecific several multiple few some small large""".split())


def _phrases(cell: str) -> list[str]:
    return [p.strip().lower() for p in cell.split(",") if p.strip() and p.strip().lower() != "no findings"]


def _words(phrase: str) -> list[str]:
    return re.findall(r"[a-z]+", phrase.replace("-", " "))


def _specific(paths: set[str]) -> set[str]:
    return {p for p in paths if not any(q.startswith(p + "/") for q in paths)}


def region_keywords(region: str) -> tuple[str, ...]:
    """Substrings that name a top-level region in a sentence: the first six letters of each word of its name
    (``pleura`` also in "subpleural", ``bronch`` in "bronchial")."""
    return tuple(w[:6] for w in region.split() if len(w) >= 4)


def _placed_sentences(by_phrase: dict[tuple[str, str], set[str]], reports: Path) -> Iterator[tuple[str, set[str]]]:
    """(findings sentence, regions the rows place its real phrases in) for every sentence holding a real phrase
    verbatim: the evidence both priorities are learned from."""
    sys.path.insert(0, str(ROOT))
    from radgenome_hf.generate.ground import split_sentences

    by_volume: dict[str, dict[str, set[str]]] = defaultdict(dict)
    for (vol, ph), paths in by_phrase.items():
        by_volume[vol.removesuffix(".nii.gz")][ph] = {p.split("/", 1)[0] for p in paths}
    with open(reports, newline="", encoding="utf-8-sig") as f:
        for r in csv.DictReader(f):
            phrases = by_volume.get(r["VolumeName"].removesuffix(".nii.gz"), {})
            for sent in split_sentences(r.get("Findings_EN") or ""):
                low = sent.lower()
                placed = set().union(*[rs for ph, rs in phrases.items() if len(ph) > 3 and ph in low] or [set()])
                if placed:
                    yield sent, placed


def _winners(both: Counter, alone: Counter, min_sentences: int, share: float) -> dict[str, list[str]]:
    out: dict[str, list[str]] = defaultdict(list)
    for (a, b), n in sorted(both.items()):
        won, lost = alone[(a, b)], alone[(b, a)]
        if won >= min_sentences and won >= share * (won + lost):
            out[a].append(b)
    return dict(out)


def learn_priority(by_phrase: dict[tuple[str, str], set[str]], reports: Path, regions: list[str],
                   min_sentences: int = 5, share: float = 0.75) -> dict[str, list[str]]:
    """Region R beats region Q when, of the findings sentences naming both whose real phrases (written verbatim
    in the sentence) the rows place in one of the two alone, at least ``min_sentences`` and a ``share`` go to R."""
    both: Counter[tuple[str, str]] = Counter()
    alone: Counter[tuple[str, str]] = Counter()
    for sent, placed in _placed_sentences(by_phrase, reports):
        low = sent.lower()
        named = [g for g in regions if any(k in low for k in region_keywords(g))]
        for a in named:
            for b in named:
                if a != b:
                    both[(a, b)] += 1
                    alone[(a, b)] += placed == {a}
    return _winners(both, alone, min_sentences, share)


def learn_node_priority(by_phrase: dict[tuple[str, str], set[str]], reports: Path, min_sentences: int = 5,
                        share: float = 0.75) -> dict[str, list[str]]:
    """Node A beats node B (of another region) when, of the findings sentences naming both (by the package's
    anatomy lexicon) whose real phrases the rows place in one region alone, at least ``min_sentences`` and a
    ``share`` go to A's."""
    sys.path.insert(0, str(ROOT))
    from radgenome_hf.generate.ground import Lexicon

    lex = Lexicon.default()
    both: Counter[tuple[str, str]] = Counter()
    alone: Counter[tuple[str, str]] = Counter()
    for sent, placed in _placed_sentences(by_phrase, reports):
        names = lex._match_names(sent)[0]
        regions = {n: {p.split("/", 1)[0] for p in lex.node_paths.get(n, ())} for n in names}
        for a in names:
            for b in names:
                if a != b and regions[a] and regions[b] and not regions[a] & regions[b]:
                    both[(a, b)] += 1
                    alone[(a, b)] += placed <= regions[a]
    return _winners(both, alone, min_sentences, share)


def learn(rows_folder: Path, min_count: int = 2, reports: Path | None = None) -> dict:
    by_phrase: dict[tuple[str, str], set[str]] = defaultdict(set)  # (volume, phrase) -> paths
    path_count: Counter[str] = Counter()
    with open(rows_folder / "train_vqa_abnormality.csv", newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            phrases = _phrases(r["Abnormality"])
            if phrases:
                path_count[r["Anatomy"]] += 1
            for ph in phrases:
                by_phrase[(r["Volumename"], ph)].add(r["Anatomy"])

    heads: Counter[str] = Counter()
    for ph in {ph for _, ph in by_phrase}:
        w = _words(ph)
        if not w:
            continue
        head = " ".join(w[-2:]) if w[-1] in GENERIC_HEADS and len(w) > 1 else w[-1]
        if head.split()[-1] in NOT_FINDINGS or head in GENERIC_HEADS or len(head) < 4:
            continue
        heads[head] += 1
    findings = sorted(h for h, n in heads.items() if n >= min_count)

    word_paths: dict[str, Counter[str]] = defaultdict(Counter)
    word_volumes: dict[str, set[str]] = defaultdict(set)
    for (vol, ph), paths in by_phrase.items():
        spec = sorted(_specific(paths))
        for w in set(_words(ph)):
            if len(w) < 5 or w in STOP or w in NOT_FINDINGS or w in GENERIC_HEADS or w in GENERAL:
                continue
            word_volumes[w].add(vol)
            for p in spec:
                word_paths[w][p] += 1 / len(spec)
    finding_anatomy = {}
    for w, c in sorted(word_paths.items()):
        path, n = c.most_common(1)[0]
        if len(word_volumes[w]) >= min_count and n / sum(c.values()) >= 0.75:
            finding_anatomy[w] = path

    leaf_count: Counter[str] = Counter()
    pair_count: Counter[tuple[str, str]] = Counter()
    for paths in by_phrase.values():
        for a in _specific(paths):
            leaf_count[a] += 1
            for b in paths:
                if b != a and not a.startswith(b + "/"):
                    pair_count[(a, b)] += 1
    onto_paths = json.loads((ROOT / "radgenome_hf" / "data" / "ontology.json").read_text("utf-8"))["paths"]

    def alternatives(a: str) -> list[str]:
        """Other groupings of a's node in a's region (both lobe paths): the ontology's business already."""
        leaf, region = a.rsplit("/", 1)[-1], a.split("/", 1)[0]
        return [c for c in onto_paths if c != a and c.rsplit("/", 1)[-1] == leaf and c.split("/", 1)[0] == region]

    implies: dict[str, list[str]] = defaultdict(list)
    for (a, b), n in sorted(pair_count.items()):
        if any(c == b or c.startswith(b + "/") for c in alternatives(a)):
            continue
        if leaf_count[a] >= 5 and n / leaf_count[a] >= 0.7 and not b.startswith(a + "/"):
            implies[a].append(b)
    # a parent whose findings nearly always sit at one child as well: the child is implied too
    for parent, n_parent in path_count.items():
        for child, n_child in path_count.items():
            if child.rpartition("/")[0] == parent and n_parent >= 10 and n_child / n_parent >= 0.85:
                implies[parent].append(child)
    implies = {a: sorted(set(bs)) for a, bs in implies.items()}

    volume_paths: dict[str, set[str]] = defaultdict(set)
    for (vol, _), paths in by_phrase.items():
        volume_paths[vol] |= paths
    as_specific: Counter[str] = Counter()
    for paths in volume_paths.values():
        as_specific.update(_specific(paths))
    descend = {}
    for p, n in path_count.items():
        tissue = [c for c in onto_paths if c.rpartition("/")[0] == p and c.rsplit("/", 1)[-1].endswith(" tissue")]
        if n >= 10 and as_specific[p] <= 0.05 * n and len(tissue) == 1:
            descend[p] = tissue[0]

    collapse = {}
    for p in onto_paths:
        parent = p.rpartition("/")[0]
        if not parent or re.search(r"\d", p.rsplit("/", 1)[-1]):
            continue  # numbered levels (ribs, vertebrae) are rare one by one, not as a family
        if path_count[parent] >= 20 and path_count[p] <= 0.03 * path_count[parent]:
            collapse[p] = parent
    return {
        "source": "learned by builder_scripts/make_lexicon.py from RadGenome-ChestCT VQA rows (CC-BY-4.0)",
        "findings": findings,
        "finding_anatomy": finding_anatomy,
        "implies": implies,
        "collapse": collapse,
        "descend": dict(sorted(descend.items())),
        "anatomy_terms": ANATOMY_TERMS,
        "region_priority": learn_priority(by_phrase, reports, sorted({p.split("/", 1)[0] for p in onto_paths}))
        if reports is not None and reports.is_file() else {},
        "node_priority": learn_node_priority(by_phrase, reports) if reports is not None and reports.is_file() else {},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("rows", nargs="?", default=str(DEFAULT_ROWS), help="folder with train_vqa_abnormality.csv")
    ap.add_argument("--out", default=str(ROOT / "radgenome_hf" / "data" / "lexicon.json"))
    ap.add_argument("--reports", default=str(DEFAULT_REPORTS),
                    help="CT-RATE reports of the same volumes (VolumeName, Findings_EN): for region_priority")
    ap.add_argument("--min-count", type=int, default=2, help="distinct phrases / volumes a term needs (2)")
    args = ap.parse_args(argv)
    lex = learn(Path(args.rows), args.min_count, Path(args.reports))
    Path(args.out).write_text(json.dumps(lex, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {args.out}: {len(lex['findings'])} finding terms, {len(lex['finding_anatomy'])} anatomy cues, "
          f"{len(lex['implies'])} implication rules, {len(lex['collapse'])} collapsed paths, "
          f"{len(lex['descend'])} descents, "
          f"region priority {lex['region_priority']}, node priority {lex['node_priority']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
