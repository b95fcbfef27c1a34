"""The anatomy ontology: tree navigation, the grounding-mask rule, real anatomy paths, label mappings."""

from __future__ import annotations

from pathlib import Path

import pytest

from radgenome_hf.errors import UnknownAnatomyError
from radgenome_hf.ontology import get_ontology, normalize_name, normalize_path
from radgenome_hf.io.tables import CTRATE_LABELS, read_vqa

RUL = "lung/lung/right lung/right lung upper lobe"
T12 = "bone/bone/vertebrae/thoracic vertebrae/thoracic vertebrae 12 (t12)"


@pytest.fixture(scope="module")
def onto():
    return get_ontology()


def test_normalisation():
    assert normalize_name("  Thoracic  Vertebrae 12 (T12).nii.gz") == "thoracic vertebrae 12 (t12)"
    assert normalize_path(" Lung / Lung/Right  Lung ") == "lung/lung/right lung"
    for whole in (None, float("nan"), "", "  ", "NaN", "whole scan", "Whole"):
        assert normalize_path(whole) == ""


def test_tree_navigation(onto):
    assert onto.parent(RUL) == "lung/lung/right lung"
    assert onto.parent("lung") is None and onto.parent("") is None
    assert onto.depth(RUL) == 4 and onto.depth("lung") == 1 and onto.depth("") == 0
    assert onto.ancestors(RUL) == ["lung", "lung/lung", "lung/lung/right lung", RUL]
    assert onto.ancestors("") == []
    assert set(onto.children("")) == {p for p in onto.top_level}
    assert len(onto.top_level) == 11 and "others" in onto.top_level
    kids = onto.children("lung/lung/right lung")
    assert RUL in kids and all(onto.parent(k) == "lung/lung/right lung" for k in kids)
    assert onto.children(RUL) == ()
    # the same node under two parents (multi-granularity)
    assert set(onto.paths_ending_in("right lung upper lobe")) == {RUL, "lung/lung/lung upper lobe/right lung upper lobe"}
    assert onto.leaf(RUL) == "right lung upper lobe" and onto.region_of(RUL) == "lung"
    assert "Lung/Lung" in onto and "lung/liver" not in onto
    for p in onto.paths:  # closed under parents
        assert onto.parent(p) is None or onto.parent(p) in onto


def test_unknown_paths_raise_with_hint(onto):
    with pytest.raises(UnknownAnatomyError, match="lung/kidney") as e:
        onto.depth("lung/kidney")
    assert "did you mean" in str(e.value)
    with pytest.raises(KeyError):
        onto.parent("nowhere")


def test_grounding_mask_rule(onto):
    assert onto.grounding_mask(RUL) == ("anatomy", "right lung upper lobe")
    # case of SAT's "(T12)" and the CSVs' "(t12)" both resolve to the same normalised mask
    upper = T12.replace("(t12)", "(T12)")
    assert onto.grounding_mask(upper) == onto.grounding_mask(T12) == ("anatomy", "thoracic vertebrae 12 (t12)")
    assert onto.grounding_mask("pleura/pleura") == ("region", "pleura")  # no anatomy mask -> region of the top node
    assert onto.grounding_mask("others/thoracic cavity")[0] in ("anatomy", "whole")
    assert onto.grounding_mask("others") == ("whole", None)  # no region mask named "others"
    assert onto.grounding_mask("") == onto.grounding_mask(None) == ("whole", None)


def test_grounding_mask_with_available_lists(onto):
    # a volume whose archive has the T12 mask written in SAT's casing
    assert onto.grounding_mask(T12, available_anatomy=["Thoracic vertebrae 12 (T12).nii.gz"]) == (
        "anatomy", "thoracic vertebrae 12 (t12)")
    # anatomy mask missing for this volume -> falls back to the region mask of the first node
    assert onto.grounding_mask(RUL, available_anatomy=["lung"], available_regions=["lung", "heart"]) == ("region", "lung")
    # neither available -> the whole scan
    assert onto.grounding_mask(RUL, available_anatomy=[], available_regions=["heart"]) == ("whole", None)
    assert onto.grounding_mask("heart/heart", available_anatomy=[], available_regions=None) == ("region", "heart")


def test_every_real_anatomy_value_resolves(onto, real_sample_dir: Path):
    seen = set()
    for kind in ("abnormality", "location", "presence", "size"):
        seen |= set(read_vqa(real_sample_dir / f"train_vqa_{kind}.csv", kind)["anatomy"].to_pylist())
    assert len(seen) > 50
    for p in sorted(seen):
        assert onto.validate(p) == p
        source, mask = onto.grounding_mask(p)
        assert source in ("anatomy", "region", "whole")
        if source == "anatomy":
            assert mask == onto.leaf(p) and mask in onto.anatomy_masks
        elif source == "region":
            assert mask == onto.region_of(p) and mask in onto.region_masks
        assert onto.ancestors(p)[-1] == p and all(a in onto for a in onto.ancestors(p))


def test_label_mapping(onto):
    assert onto.label_names == CTRATE_LABELS and len(onto.label_names) == 18
    assert set(onto.labels_of_organ("lung")) == {
        "Emphysema", "Atelectasis", "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
        "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
        "Interlobular septal thickening",
    }
    assert set(onto.labels_of_organ("heart")) == {"Cardiomegaly", "Pericardial effusion", "Coronary artery wall calcification"}
    assert onto.labels_of_organ("esophagus") == ("Hiatal hernia",)
    assert onto.labels_of_organ("aorta") == ("Arterial wall calcification",)
    by_label = {l.label: l for l in onto.ctrate_labels}
    assert by_label["Medical material"].fvlm_organ is None
    for organ in ("lung", "heart", "esophagus", "aorta"):
        assert onto.fvlm_organs[organ] in onto  # each fVLM organ is an ontology path
    for l in onto.ctrate_labels:
        assert l.path is None or l.path in onto


def test_region_and_anatomy_masks_are_normalised(onto):
    assert len(onto.region_masks) == 10 and "trachea and bronchie" in onto.region_masks
    for name in (*onto.region_masks, *onto.anatomy_masks):
        assert normalize_name(name) == name
    assert onto.from_totalsegmentator("aorta") == "aorta"
