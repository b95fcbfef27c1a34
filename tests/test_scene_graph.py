"""Scene graphs (objects in mL, attributes, a→b comparisons) and fVLM-style anatomy pairs."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from radgenome_hf.generate.anatomy_pairs import (
    ANATOMY_PAIRS_FEATURES,
    build_anatomy_pairs,
    caption_for,
    normal_template,
    organ_sentences,
)
from radgenome_hf.generate.ground import GroundedReport, ground_report
from radgenome_hf.generate.scene_graph import (
    SCENE_GRAPH_FEATURES,
    arrow_schema,
    bbox_mm,
    build_scene_graph,
    build_scene_graphs,
    prior_volumes,
    voxel_volume_ml,
    write_scene_graphs,
)
from radgenome_hf.access.masks import PackedMasks

AFFINE = np.array([[-0.75, 0, 0, 10.0], [0, -0.75, 0, 20.0], [0, 0, 1.5, -30.0], [0, 0, 0, 1]])


def _masks(nodule: int, with_effusion: bool = False) -> PackedMasks:
    shape = (24, 20, 12)
    lung = np.zeros(shape, bool)
    lung[2:22, 2:18, 1:11] = True
    rul = lung.copy()
    rul[12:] = False
    nod = np.zeros(shape, bool)
    nod[4:4 + nodule, 4:4 + nodule, 3:5] = True
    arrays = {"lung": lung, "right lung upper lobe": rul, "heart": np.zeros(shape, bool), "lung nodule": nod}
    arrays["heart"][14:20, 4:10, 2:6] = True
    if with_effusion:
        eff = np.zeros(shape, bool)
        eff[2:6, 15:18, 2:8] = True
        arrays["lung effusion"] = eff
    return PackedMasks.from_arrays(arrays, affine=AFFINE)


def test_objects_volume_ml_and_bbox():
    pm = _masks(3)
    row = build_scene_graph("train_5_a_1", ground_report("A nodule in the right upper lobe.", None), pm)
    vml = 0.75 * 0.75 * 1.5 / 1000
    assert voxel_volume_ml(AFFINE) == pytest.approx(vml)
    objs = {o["name"]: o for o in row["objects"]}
    assert set(objs) == {"lung", "right lung upper lobe", "heart", "lung nodule"}
    for name, o in objs.items():
        assert o["voxel_count"] == pm.voxel_count(name)
        assert o["volume_ml"] == pytest.approx(pm.voxel_count(name) * vml, rel=1e-3)
        assert o["bbox"] == list(pm.bbox(name))
        assert o["object_id"] == f"train_5_a_1_{name}"
        lo, hi = np.array(o["bbox_mm"][:3]), np.array(o["bbox_mm"][3:])
        assert (hi > lo).all()
        extent = (np.array(o["bbox"][3:]) - np.array(o["bbox"][:3])) * np.array([0.75, 0.75, 1.5])
        assert hi - lo == pytest.approx(extent)
    assert objs["right lung upper lobe"]["anatomy_path"] == "lung/lung/right lung/right lung upper lobe"
    assert objs["lung nodule"]["anatomy_path"] == "lung/lung"
    assert bbox_mm((0, 0, 0, 1, 1, 1), np.eye(4)) == [-0.5, -0.5, -0.5, 0.5, 0.5, 0.5]


def test_attributes_chest_imagenome_strings():
    ss = ground_report("A nodule in the right upper lobe. No pleural effusion. Heart size is normal.", None)
    row = build_scene_graph("train_5_a_1", ss, _masks(3))
    att = {a["name"]: a for a in row["attributes"]}
    assert att["right lung upper lobe"]["attributes"] == ["anatomicalfinding|yes|nodule", "nlp|yes|abnormal"]
    assert att["right lung upper lobe"]["abnormal"] is True
    assert att["lung nodule"]["phrases"] == ["A nodule in the right upper lobe."]
    assert att["heart"]["attributes"] == ["nlp|yes|normal"] and att["heart"]["abnormal"] is False
    assert all(s.count("|") == 2 for a in row["attributes"] for s in a["attributes"])


def test_comparisons_across_scans():
    a = _masks(2, with_effusion=True)
    b = _masks(4)
    sb = ground_report("The nodule in the right upper lobe has grown and now measures 6 mm. Heart size is stable.",
                       None)
    row = build_scene_graph("train_5_b_1", sb, b, prior_volume_name="train_5_a_1", prior_masks=a)
    assert row["prior_volume_name"] == "train_5_a_1"
    rel = {r["name"]: r for r in row["relationships"]}
    nod = rel["lung nodule"]
    assert nod["predicate"] == "worsened" and nod["relationship_names"] == ["comparison|yes|worsened"]
    assert nod["subject_id"] == "train_5_a_1_lung nodule" and nod["object_id"] == "train_5_b_1_lung nodule"
    vml = voxel_volume_ml(AFFINE)
    assert nod["volume_ml_before"] == pytest.approx(a.voxel_count("lung nodule") * vml, rel=1e-3)
    assert nod["volume_ml_after"] == pytest.approx(b.voxel_count("lung nodule") * vml, rel=1e-3)
    assert nod["change_percent"] == pytest.approx(300.0, abs=0.5)
    assert rel["right lung upper lobe"]["predicate"] == "worsened"
    assert "lung" not in rel  # the text names the lobe, the deepest object on its path
    assert rel["heart"]["predicate"] == "no change"
    # a lesion mask only in the prior scan, with no text about it: measured as resolved
    assert rel["lung effusion"]["predicate"] == "resolved"
    assert rel["lung effusion"]["object_id"] is None and rel["lung effusion"]["volume_ml_after"] is None
    # rows fit the declared schema
    pa.Table.from_pylist([row], schema=arrow_schema(SCENE_GRAPH_FEATURES))


def test_prior_volumes_and_build_many(tmp_path):
    assert prior_volumes(["train_1_b_1", "train_1_a_1", "train_2_a_1", "train_1_c_2"]) == {
        "train_1_a_1": None, "train_1_b_1": "train_1_a_1", "train_1_c_2": "train_1_b_1", "train_2_a_1": None}
    masks = {"train_5_a_1": _masks(2), "train_5_b_1": _masks(4)}
    grounded = {k: GroundedReport(k, ground_report("A nodule in the right upper lobe.", None)) for k in masks}
    rows = build_scene_graphs(grounded, masks.get, progress=False)
    assert [r["prior_volume_name"] for r in rows] == [None, "train_5_a_1"]
    assert rows[1]["relationships"][0]["name"] == "lung nodule"  # measured, no text cue
    assert rows[1]["relationships"][0]["predicate"] == "worsened"
    out = write_scene_graphs(rows, tmp_path, parquet=tmp_path / "sg.parquet")
    assert sorted(p.name for p in out["json"]) == ["train_5_a_1_SceneGraph.json", "train_5_b_1_SceneGraph.json"]
    assert json.loads((tmp_path / "train_5_b_1_SceneGraph.json").read_text()) == rows[1]
    import pyarrow.parquet as pq

    assert pq.read_table(tmp_path / "sg.parquet").num_rows == 2


# -- anatomy pairs ---------------------------------------------------------------------------------------


def test_caption_fvlm_rules():
    ss = ground_report('Bronchial wall thickening ("mild") in both lungs. Heart size is normal. '
                       "Calcific plaques in the thoracic aorta", "Atelectasis in both lungs.")
    lung = organ_sentences(ss, "lung")
    cap, conc, desc = caption_for("lung", lung)
    assert conc == "Atelectasis in both lungs."
    assert desc == "Bronchial wall thickening mild in both lungs."
    assert cap == "Atelectasis in both lungs. Bronchial wall thickening mild in both lungs."
    heart = caption_for("heart", organ_sentences(ss, "heart"))[0]
    assert heart == "heart shows no significant abnormalities. Heart size is normal."
    # the aorta has no impression: template + description (ends with ".")
    aorta = caption_for("aorta", organ_sentences(ss, "mediastinum/aorta"))[0]
    assert aorta == "aorta shows no significant abnormalities. Calcific plaques in the thoracic aorta."
    # a report without impressions uses its abnormal findings as the conclusion
    nf = ground_report("Calcific plaques in the thoracic aorta.", "Not given.")
    assert caption_for("aorta", organ_sentences(nf, "mediastinum/aorta"), impressions_given=False)[0].startswith(
        "Calcific plaques")


def test_anatomy_pairs_rows():
    g = {"train_5_a_1": GroundedReport("train_5_a_1", ground_report(
        "A nodule in the right upper lobe. Heart size is normal.", "Pulmonary nodule."))}
    labels = {"train_5_a_1.nii.gz": {"Lung nodule": 1, "Cardiomegaly": 0, "Atelectasis": 0}}
    rows = build_anatomy_pairs(g, labels=labels, masks_of=lambda s: _masks(3), progress=False)
    by = {r["organ"]: r for r in rows}
    assert list(by) == ["lung", "heart", "esophagus", "aorta", "mediastinum"]
    assert by["lung"]["abnormal"] is True and by["heart"]["abnormal"] is False
    assert by["esophagus"]["caption"] == normal_template("esophagus")
    lung_labels = {d["name"]: d["value"] for d in by["lung"]["labels"]}
    assert lung_labels["Lung nodule"] == 1 and lung_labels["Atelectasis"] == 0
    assert lung_labels["Emphysema"] is None  # not in the labels given
    assert {d["name"] for d in by["heart"]["labels"]} == {"Cardiomegaly", "Pericardial effusion",
                                                         "Coronary artery wall calcification"}
    assert by["lung"]["mask_name"] == "lung" and by["lung"]["bbox"] == list(_masks(3).bbox("lung"))
    assert by["esophagus"]["bbox"] is None
    pa.Table.from_pylist(rows, schema=arrow_schema(ANATOMY_PAIRS_FEATURES))
