"""The text stages of a rebuild (region_report rows, VQA, scene graphs, anatomy pairs) over shards of patients.

They run on the rebuild's :mod:`~radgenome_hf.generate.runner` executor (a process pool, or Ray tasks), in two
rounds of tasks over the same shards, each shard whole patients (a scene graph compares a patient's exams):

1. per volume: its masks loaded once (anatomy and region kinds merged, no voxel decoded), its scene graph (the
   worker writes its ``<stem>_SceneGraph.json``), anatomy pairs, region_report rows, and the VQA facts
   (:func:`~radgenome_hf.generate.vqa.abnormality_by_path`), size rows and disorders row;
2. per volume of each split: the abnormality and presence rows, given the split's region vocabulary (the driver
   builds it between the rounds from the facts: it needs every volume of the split, and is a union of phrases).

Results are keyed by volume and put in the split's volume order by the driver, so the tables are byte-identical to
one serial pass (:func:`~radgenome_hf.generate.vqa.build_vqa`,
:func:`~radgenome_hf.generate.scene_graph.build_scene_graphs`,
:func:`~radgenome_hf.generate.anatomy_pairs.build_anatomy_pairs`), whatever the executor and the shard sizes.

>>> from radgenome_hf.generate.ground import GroundedReport, ground_report
>>> from radgenome_hf.generate.runner import make_executor
>>> from radgenome_hf.generate.vqa import build_vqa
>>> g = {s: GroundedReport(s, ground_report(text, None)) for s, text in [
...     ("train_1_a_1", "A 6x4 mm nodule in the right upper lobe."), ("train_1_b_1", "The nodule is stable."),
...     ("train_2_a_1", "Heart size is normal. Mild pleural effusion on the left.")]}
>>> with make_executor(workers=1) as ex:
...     out = run_text_stages(g, dict.fromkeys(g, "train"), ex, shard_volumes=1, progress=False)
>>> out.vqa["train"] == build_vqa(g), out.shards, out.graphs["train_1_b_1"]["prior_volume_name"]
(True, 2, 'train_1_a_1')
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from ..names import VolumeName
from .ground import GroundedReport, region_report_rows

if TYPE_CHECKING:  # pragma: no cover
    from ..access.masks import PackedMasks
    from .vqa import VQATables, VolumeFacts

__all__ = ["TextOutputs", "run_text_stages", "patient_shards", "merged_masks"]


@dataclass
class TextOutputs:
    """What :func:`run_text_stages` gives: rows per volume, and the VQA tables per split."""

    graphs: dict[str, dict] = field(default_factory=dict)  # stem -> scene-graph row
    pairs: dict[str, list[dict]] = field(default_factory=dict)  # stem -> anatomy-pair rows
    region_report: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)  # stem -> rows
    vqa: "dict[str, VQATables]" = field(default_factory=dict)  # split -> tables
    shards: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # round -> wall seconds


def patient_shards(stems: Sequence[str], size: int) -> list[list[str]]:
    """``stems`` (sorted by volume name) cut into runs of about ``size`` volumes, never splitting a patient.

    >>> patient_shards(["train_1_a_1", "train_1_b_1", "train_2_a_1", "train_3_a_1"], 1)
    [['train_1_a_1', 'train_1_b_1'], ['train_2_a_1'], ['train_3_a_1']]
    """
    shards: list[list[str]] = []
    for _, group in itertools.groupby(stems, key=lambda s: VolumeName.parse(s).patient_id):
        vols = list(group)
        if shards and len(shards[-1]) + len(vols) <= size:
            shards[-1] += vols
        else:
            shards.append(vols)
    return shards


def merged_masks(files: Mapping[str, str | Path]) -> "PackedMasks | None":
    """One volume's packed masks for the graphs and pairs: the anatomy kind, then the region structures it lacks
    (tagged ``region``), as stored: nothing is decoded (``files``: kind -> ``.masks.parquet``)."""
    from ..access.masks import PackedMasks

    anatomy = PackedMasks.load(files["anatomy"]) if "anatomy" in files else None
    region = PackedMasks.load(files["region"]) if "region" in files else None
    if anatomy is None or region is None:
        return anatomy if anatomy is not None else region
    # merge() lets its argument win on a shared name and keeps the first object's order: merging the anatomy back
    # in gives the anatomy structures (first, and winning) followed by the region-only ones
    return anatomy.merge(region).merge(anatomy)


# -- the tasks (module level: they run in workers) -------------------------------------------------------------
def _volumes_shard(item: tuple[int, tuple[dict[str, GroundedReport], dict[str, dict], dict[str, dict[str, str]],
                                          str | None]]) -> dict[str, dict[str, Any]]:
    """Round 1 over one shard: per volume its graph, pairs, region_report rows and VQA facts / sizes / disorders."""
    from .anatomy_pairs import build_anatomy_pairs
    from .scene_graph import build_scene_graphs, write_scene_graphs
    from .vqa import abnormality_by_path, disorders_rows, size_rows

    grounded, labels, mask_files, json_dir = item[1]
    out: dict[str, dict[str, Any]] = {}
    for _, group in itertools.groupby(grounded, key=lambda s: VolumeName.parse(s).patient_id):
        patient = {s: grounded[s] for s in group}
        masks = {s: merged_masks(mask_files.get(s, {})) for s in patient}  # each volume's masks read once
        graphs = build_scene_graphs(patient, masks.get, progress=False)
        if json_dir is not None:
            write_scene_graphs(graphs, json_dir)
        pairs = build_anatomy_pairs(patient, labels=labels, masks_of=masks.get, progress=False)
        for row in graphs:
            stem = row["volume_name"]
            g = patient[stem]
            out[stem] = {"graph": row, "pairs": [r for r in pairs if r["volume_name"] == stem],
                         "region_report": region_report_rows(stem, g.sentences),
                         "facts": abnormality_by_path(g.sentences), "size": size_rows(stem, g.sentences),
                         "disorders": disorders_rows({stem: g})}
    return out


def _vqa_shard(item: tuple[int, tuple[list[tuple[str, "VolumeFacts"]], dict[str, list[str]], int]]) -> dict[str, Any]:
    """Round 2 over one shard's volumes of one split: their abnormality and presence rows."""
    from .vqa import volume_rows

    facts, vocab, seed = item[1]
    return {stem: volume_rows(stem, f, vocab, seed=seed) for stem, f in facts}


def _run_round(executor: cf.Executor, fn: Any, jobs: Iterable[tuple[int, Any]], desc: str,
               progress: bool | None) -> dict[str, Any]:
    """``fn`` over ``(volume count, job)`` items, the per-volume results merged into one dict (a failed shard
    raises; the count drives the progress bar)."""
    from tqdm.auto import tqdm

    from .runner import bounded_map

    merged: dict[str, Any] = {}
    with tqdm(desc=desc, unit="volume", disable=None if progress is None else not progress) as bar:
        for (n, _), res in bounded_map(executor, fn, jobs):
            if isinstance(res, BaseException):
                raise res
            merged.update(res)
            bar.update(n)
    return merged


def run_text_stages(grounded: Mapping[str, GroundedReport], split_of: Mapping[str, str], executor: cf.Executor, *,
                    labels: Any = None, mask_files: Mapping[str, Mapping[str, str | Path]] | None = None,
                    seed: int = 0, json_dir: str | Path | None = None, shard_volumes: int | None = None,
                    progress: bool | None = None) -> TextOutputs:
    """Run the text stages of ``grounded`` (``{stem: GroundedReport}``) on ``executor`` (see the module docs).

    Args:
        split_of: each volume's split (``train`` / ``validation``); the VQA tables are per split.
        labels: the CT-RATE labels (a ``tables.read_ctrate_labels`` table or ``{volume: {label: 0/1}}``).
        mask_files: per volume, kind (``anatomy`` / ``region``) -> its ``.masks.parquet``.
        json_dir: where the workers write ``<stem>_SceneGraph.json`` (``None``: not written).
        shard_volumes: volumes per shard (whole patients; default: about four shards per worker).
    """
    from .anatomy_pairs import labels_by_volume
    from .runner import executor_width
    from .vqa import assemble_vqa, region_vocabulary

    stems = sorted(grounded, key=VolumeName.parse)
    out = TextOutputs()
    if not stems:
        return out
    size = shard_volumes or max(1, -(-len(stems) // (4 * executor_width(executor))))
    shards = patient_shards(stems, size)
    out.shards = len(shards)
    lab = labels_by_volume(labels)
    files = {s: {k: str(p) for k, p in v.items()} for s, v in (mask_files or {}).items()}
    jdir = None if json_dir is None else str(json_dir)

    t0 = time.perf_counter()
    jobs1 = ((len(sh), ({s: grounded[s] for s in sh}, {s: lab[s] for s in sh if s in lab},
                        {s: files[s] for s in sh if s in files}, jdir)) for sh in shards)
    per_volume = _run_round(executor, _volumes_shard, jobs1, "text stages", progress)
    out.seconds["volumes"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    splits = sorted(set(split_of[s] for s in stems))
    vocab = {sp: region_vocabulary(per_volume[s]["facts"][0] for s in stems if split_of[s] == sp) for sp in splits}
    jobs2 = ((len(part), (part, vocab[sp], seed)) for sh in shards for sp in splits
             if (part := [(s, per_volume[s]["facts"]) for s in sh if split_of[s] == sp]))
    rows = _run_round(executor, _vqa_shard, jobs2, "vqa rows", progress)
    out.seconds["vqa"] = time.perf_counter() - t1

    for sp in splits:
        parts = []
        for s in stems:
            if split_of[s] == sp:
                r = rows[s]
                r.size, r.disorders = per_volume[s]["size"], per_volume[s]["disorders"]
                parts.append(r)
        out.vqa[sp] = assemble_vqa(parts)
    for s in stems:
        v = per_volume[s]
        out.graphs[s], out.pairs[s], out.region_report[s] = v["graph"], v["pairs"], v["region_report"]
    return out
