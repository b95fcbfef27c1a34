"""Anatomy-centred scene graphs for chest CT, in the style of Chest ImaGenome (feeds the ``scene_graph`` config).

One graph per volume:

- ``objects``: the volume's segmented structures with their voxel bbox, world bbox in mm (voxel edges through the
  affine), voxel count and volume in mL (``voxel_count × |det(affine[:3, :3])| / 1000``).
- ``attributes``: per object that a report sentence talks about, Chest ImaGenome-style ``category|yes/no|label``
  strings (``anatomicalfinding|yes|nodule``, ``anatomicalfinding|no|pleural effusion``, ``nlp|yes|abnormal`` /
  ``nlp|yes|normal``), the phrases (sentences) and an abnormal flag. A sentence describes an object when one of
  its paths is the object's path or lies below it; a lesion mask (``lung nodule``) takes only the sentences whose
  findings name its kind.
- ``relationships``: comparisons with the same patient's previous scan (``train_1_a`` → ``train_1_b``) per
  structure: the predicate the text states (``improved`` / ``worsened`` / ``no change`` / ``new`` /
  ``resolved`` from "regressed", "increased", "stable", "new", "resolved" …), else for lesion masks the measured
  change (> +20 % worsened, < −20 % improved, present only now: new, only before: resolved); volumes before/after
  in mL and the change in percent where both masks exist. ``relationship_names`` use Chest ImaGenome's three
  comparison labels (new → worsened, resolved → improved).

Rows are plain dicts of lists of structs (no dicts with varying keys); :data:`SCENE_GRAPH_FEATURES` gives the
schema in plain types: ``"string"``/``"int32"``/``"int64"``/``"float32"``/``"bool"`` are scalar values, a
one-element list ``[x]`` is a list of ``x``, a dict is a struct.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ..names import VolumeName
from ..io.atomic import atomic_path, write_text
from ..ontology import normalize_name
from .ground import GroundedReport, Lexicon, Sentence, _dedupe, normalize_finding

if TYPE_CHECKING:  # pragma: no cover
    from ..access.masks import PackedMasks

__all__ = [
    "SCENE_GRAPH_FEATURES", "arrow_schema", "object_path", "voxel_volume_ml", "bbox_mm", "prior_volumes",
    "build_scene_graph", "build_scene_graphs", "write_scene_graphs", "CHANGE_THRESHOLD_PERCENT",
]


def __getattr__(name: str) -> Any:
    """The schema names of :mod:`radgenome_hf.hf.schema`, imported on first use: it imports ``datasets`` (seconds),
    which a worker building graphs never needs."""
    if name in ("SCENE_GRAPH_FEATURES", "arrow_schema"):
        from ..hf import schema

        return getattr(schema, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: Measured relative change beyond which a lesion counts as worsened / improved.
CHANGE_THRESHOLD_PERCENT = 20.0

_COMPARISON_NAME = {"improved": "improved", "worsened": "worsened", "no change": "no change",
                    "new": "worsened", "resolved": "improved"}


# ------------------------------------------------------------------------------------------------
# geometry
# ------------------------------------------------------------------------------------------------


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL from a 4x4 affine."""
    return float(abs(np.linalg.det(np.asarray(affine, np.float64)[:3, :3]))) / 1000.0


def bbox_mm(bbox: Sequence[int], affine: np.ndarray) -> list[float]:
    """World-space box (min xyz, max xyz) of a half-open voxel bbox, through the voxel edges."""
    i0, j0, k0, i1, j1, k1 = (float(v) for v in bbox)
    corners = np.array([[i, j, k, 1.0] for i in (i0 - 0.5, i1 - 0.5) for j in (j0 - 0.5, j1 - 0.5)
                        for k in (k0 - 0.5, k1 - 0.5)])
    world = corners @ np.asarray(affine, np.float64).T
    lo, hi = world[:, :3].min(axis=0), world[:, :3].max(axis=0)
    return [round(float(v), 3) for v in (*lo, *hi)]


def object_path(name: str, lexicon: Lexicon | None = None) -> str:
    """Anatomy path of a mask name: its ontology node (first grouping), else what the name grounds to
    (``lung nodule`` -> ``lung/lung``), else ``""``."""
    lexicon = lexicon or Lexicon.default()
    n = normalize_name(name)
    paths = lexicon.node_paths.get(n)
    if paths:
        return paths[0]
    matched = lexicon.match(n)
    return matched[0] if matched else ""


def _is_lesion(name: str, lexicon: Lexicon) -> bool:
    return normalize_name(name) not in lexicon.node_paths


def _lesion_kind(name: str) -> str:
    return normalize_finding(normalize_name(name).rsplit(" ", 1)[-1])


# ------------------------------------------------------------------------------------------------
# graph
# ------------------------------------------------------------------------------------------------


def _related(sentences: Sequence[Sentence], path: str, lesion_kind: str | None) -> list[Sentence]:
    if not path:
        return []
    out = []
    for s in sentences:
        if not any(p == path or p.startswith(path + "/") for p in s.paths):
            continue
        if lesion_kind is not None:
            words = " ".join(normalize_finding(f) for f in (*s.findings, *s.negated))
            if not re.search(rf"\b{re.escape(lesion_kind)}\b", words):
                continue
        out.append(s)
    return out


def _objects(stem: str, masks: "PackedMasks | None", lexicon: Lexicon) -> list[dict]:
    if masks is None:
        return []
    vml = voxel_volume_ml(masks.affine)
    out = []
    for name in masks.names:
        box = masks.bbox(name)
        if box is None:
            continue
        count = int(masks.voxel_count(name))
        out.append({
            "object_id": f"{stem}_{name}",
            "name": name,
            "anatomy_path": object_path(name, lexicon),
            "bbox": [int(v) for v in box],
            "bbox_mm": bbox_mm(box, masks.affine),
            "volume_ml": float(count * vml),
            "voxel_count": count,
        })
    return out


def _attributes(objects: Sequence[dict], sentences: Sequence[Sentence], lexicon: Lexicon) -> list[dict]:
    out = []
    for obj in objects:
        kind = _lesion_kind(obj["name"]) if _is_lesion(obj["name"], lexicon) else None
        rel = _related(sentences, obj["anatomy_path"], kind)
        if not rel:
            continue
        attrs: list[str] = []
        for s in rel:
            attrs += [f"anatomicalfinding|yes|{f}" for f in s.findings] if s.abnormal else []
            attrs += [f"anatomicalfinding|no|{f}" for f in s.negated]
            attrs.append("nlp|yes|abnormal" if s.abnormal else "nlp|yes|normal")
        out.append({
            "object_id": obj["object_id"],
            "name": obj["name"],
            "attributes": list(_dedupe(attrs)),
            "phrases": [s.text for s in rel],
            "abnormal": any(s.abnormal for s in rel),
        })
    return out


def _measured(before: float | None, after: float | None) -> tuple[str | None, float | None]:
    if before is None and after is None:
        return None, None
    if before is None:
        return "new", None
    if after is None:
        return "resolved", None
    if before <= 0:
        return ("new" if after > 0 else None), None
    pct = (after - before) / before * 100.0
    if pct > CHANGE_THRESHOLD_PERCENT:
        return "worsened", pct
    if pct < -CHANGE_THRESHOLD_PERCENT:
        return "improved", pct
    return "no change", pct


def _comparison_targets(objects: Sequence[dict], sentences: Sequence[Sentence],
                        lexicon: Lexicon) -> dict[str, Sentence]:
    """Object name -> the first comparison sentence about it. A sentence goes to the deepest organ objects on
    its paths (``right lung upper lobe`` rather than ``lung``) and to lesion objects whose kind it names."""
    out: dict[str, Sentence] = {}
    organs = [o for o in objects if not _is_lesion(o["name"], lexicon) and o["anatomy_path"]]
    lesions = [o for o in objects if _is_lesion(o["name"], lexicon)]
    for s in sentences:
        if not s.comparison or not s.paths:
            continue
        targets: list[str] = []
        for sp in s.paths:
            nodes = sp.split("/")
            on_path = [o["name"] for o in organs if o["name"] in nodes]
            if on_path:
                deepest = max(nodes.index(n) for n in on_path)
                targets += [n for n in on_path if nodes.index(n) == deepest]
        targets = [t for t in _dedupe(targets)
                   if not any(t in lexicon.ancestor_names.get(u, ()) for u in targets if u != t)]
        for o in lesions:
            if _related([s], o["anatomy_path"], _lesion_kind(o["name"])):
                targets.append(o["name"])
        for name in targets:
            out.setdefault(name, s)
    return out


def _relationships(objects: Sequence[dict], sentences: Sequence[Sentence], prior_objects: Sequence[dict],
                   lexicon: Lexicon) -> list[dict]:
    cur = {o["name"]: o for o in objects}
    pri = {o["name"]: o for o in prior_objects}
    said = _comparison_targets([*objects, *[o for o in prior_objects if o["name"] not in cur]], sentences, lexicon)
    out = []
    for name in _dedupe([*cur, *pri]):
        c, p = cur.get(name), pri.get(name)
        lesion = _is_lesion(name, lexicon)
        before = p["volume_ml"] if p else None
        after = c["volume_ml"] if c else None
        measured, pct = _measured(before, after)
        if pct is None and before is not None and after is not None and before > 0:
            pct = (after - before) / before * 100.0
        if name in said:
            predicate, phrase = said[name].comparison, said[name].text
        elif lesion and measured is not None:
            predicate, phrase = measured, ""
        else:
            continue
        out.append({
            "subject_id": p["object_id"] if p else None,
            "object_id": c["object_id"] if c else None,
            "name": name,
            "predicate": predicate,
            "relationship_names": [f"comparison|yes|{_COMPARISON_NAME[predicate]}"],
            "phrase": phrase,
            "volume_ml_before": before,
            "volume_ml_after": after,
            "change_percent": None if pct is None else round(pct, 2),
        })
    return out


def build_scene_graph(volume_name: str, sentences: Sequence[Sentence], masks: "PackedMasks | None", *,
                      prior_volume_name: str | None = None, prior_masks: "PackedMasks | None" = None,
                      lexicon: Lexicon | None = None) -> dict:
    """One volume's scene-graph row (keys of :data:`SCENE_GRAPH_FEATURES`)."""
    lexicon = lexicon or Lexicon.default()
    v = VolumeName.parse(volume_name)
    objects = _objects(v.stem, masks, lexicon)
    prior_stem = VolumeName.parse(prior_volume_name).stem if prior_volume_name else None
    relationships: list[dict] = []
    if prior_stem is not None:
        prior_objects = _objects(prior_stem, prior_masks, lexicon)
        relationships = _relationships(objects, sentences, prior_objects, lexicon)
    return {
        "volume_name": v.stem,
        "patient_id": v.patient_id,
        "scan_id": v.scan_id,
        "reconstruction_id": v.reconstruction_id,
        "prior_volume_name": prior_stem,
        "objects": objects,
        "attributes": _attributes(objects, sentences, lexicon),
        "relationships": relationships,
    }


def _scan_order(scan: str) -> tuple[int, str]:
    return (len(scan), scan)


def prior_volumes(volume_names: Iterable[str]) -> dict[str, str | None]:
    """``{stem: prior stem or None}``: the same patient's previous scan (``a`` → ``b`` → … → ``aa``), its volume
    with the same reconstruction id if there is one, else its lowest reconstruction.

    >>> prior_volumes(["train_1_a_1", "train_1_a_2", "train_1_b_2", "train_1_b_3", "train_2_a_1"])
    {'train_1_a_1': None, 'train_1_a_2': None, 'train_1_b_2': 'train_1_a_2', 'train_1_b_3': 'train_1_a_1', 'train_2_a_1': None}
    """
    vols = sorted({VolumeName.parse(v) for v in volume_names},
                  key=lambda v: (v.split, v.patient, _scan_order(v.scan), v.reconstruction))
    by_scan: dict[tuple[str, str], dict[int, VolumeName]] = {}
    scans: dict[str, list[str]] = {}
    for v in vols:
        by_scan.setdefault((v.patient_id, v.scan), {})[v.reconstruction] = v
        lst = scans.setdefault(v.patient_id, [])
        if v.scan not in lst:
            lst.append(v.scan)
    out: dict[str, str | None] = {}
    for v in vols:
        order = scans[v.patient_id]
        i = order.index(v.scan)
        if i == 0:
            out[v.stem] = None
            continue
        prev = by_scan[(v.patient_id, order[i - 1])]
        match = prev.get(v.reconstruction) or prev[min(prev)]
        out[v.stem] = match.stem
    return out


def build_scene_graphs(grounded: Mapping[str, GroundedReport],
                       masks_of: Callable[[str], "PackedMasks | None"], *,
                       progress: bool | None = None) -> list[dict]:
    """Scene-graph rows of many volumes (sorted by name); ``masks_of(stem)`` returns a volume's masks or None.

    A volume's prior scan is looked up among the same ``grounded`` volumes (:func:`prior_volumes`).
    """
    from tqdm.auto import tqdm

    lexicon = Lexicon.default()
    priors = prior_volumes(grounded)
    cache: dict[str, Any] = {}

    def masks(stem: str):
        if stem not in cache:
            if len(cache) > 4:
                cache.pop(next(iter(cache)))
            cache[stem] = masks_of(stem)
        return cache[stem]

    rows = []
    for stem in tqdm(list(priors), desc="scene graph", unit="volume",
                     disable=None if progress is None else not progress):
        g = grounded[stem]
        prior = priors[stem]
        rows.append(build_scene_graph(stem, g.sentences, masks(stem), prior_volume_name=prior,
                                      prior_masks=masks(prior) if prior else None, lexicon=lexicon))
    return rows


def write_scene_graphs(rows: Sequence[dict], folder: str | Path, *, json_files: bool = True,
                       parquet: str | Path | None = None) -> dict[str, Any]:
    """Write ``<folder>/<stem>_SceneGraph.json`` per volume and, if asked, one parquet of all rows."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"json": []}
    if json_files:
        for row in rows:
            p = folder / f"{row['volume_name']}_SceneGraph.json"
            write_text(p, json.dumps(row, indent=1, ensure_ascii=False))
            written["json"].append(p)
    if parquet is not None:
        from ..hf.schema import SCENE_GRAPH_FEATURES

        written["parquet"] = write_rows_parquet(rows, parquet, SCENE_GRAPH_FEATURES)
    return written


def write_rows_parquet(rows: Sequence[dict], path: str | Path, spec: Mapping[str, Any]) -> Path:
    """Rows -> one zstd parquet file with the schema of ``spec``, atomically."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ..hf.schema import arrow_schema

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(list(rows), schema=arrow_schema(spec))
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path


