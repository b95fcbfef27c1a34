"""Volume names and upstream paths."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from radgenome_hf.errors import VolumeNameError
from radgenome_hf.names import (
    VolumeName,
    ctrate_volume_path,
    mask_archive_prefix,
    mask_dir,
    mask_path,
    parse_mask_member,
    parse_volume_name,
    radgenome_csv_name,
    radgenome_volume_path,
)


def test_parse_forms_and_ids():
    for text in ("train_1_a_1", "train_1_a_1.nii.gz", "train_1_a_1.nii", "/data/train/train_1/train_1_a/train_1_a_1.nii.gz",
                 "C:\\data\\train_1_a_1.nii.gz"):
        v = VolumeName.parse(text)
        assert (v.split, v.patient, v.scan, v.reconstruction) == ("train", 1, "a", 1), text
    v = parse_volume_name("train_1022_a_11.nii.gz")  # multi-digit reconstruction (real subset)
    assert (v.patient, v.scan, v.reconstruction) == (1022, "a", 11)
    assert (v.stem, v.filename) == ("train_1022_a_11", "train_1022_a_11.nii.gz")
    assert (v.patient_id, v.scan_id, v.reconstruction_id) == ("train_1022", "train_1022_a", 11)
    assert str(v) == "train_1022_a_11" and v.hf_split == "train"
    w = VolumeName.parse("valid_53_bc_2")
    assert (w.scan, w.scan_id, w.hf_split) == ("bc", "valid_53_bc", "validation")
    assert VolumeName.parse("train_2_a_1") < VolumeName.parse("train_10_a_1")  # numeric order, not text


@pytest.mark.parametrize(
    "junk",
    ["train_0_a_1", "test_1_a_1", "train_1_A_1", "train_1_a", "train_1_a_0", "train_01_a_1", "train_1_1_1",
     "train_1_a_1.nii.gz.bak", "Train_1_a_1", "train_1_a_1 ", "", "train__a_1", "valid_1_a_1_1"],
)
def test_rejects_junk(junk):
    with pytest.raises(VolumeNameError, match="train_1_a_1"):
        VolumeName.parse(junk)


def test_rejects_non_strings():
    with pytest.raises(VolumeNameError):
        VolumeName.parse(5)  # type: ignore[arg-type]
    assert issubclass(VolumeNameError, ValueError)


def test_paths_train_and_valid():
    assert ctrate_volume_path("train_1_a_1") == "dataset/train/train_1/train_1_a/train_1_a_1.nii.gz"
    assert ctrate_volume_path("valid_53_b_2.nii.gz", fixed=True) == "dataset/valid_fixed/valid_53/valid_53_b/valid_53_b_2.nii.gz"
    assert radgenome_volume_path("train_1003_a_1") == "dataset/train_preprocessed/train_1003/train_1003a/train_1003_a_1.nii.gz"
    assert radgenome_volume_path("valid_7_c_11") == "dataset/valid_preprocessed/valid_7/valid_7c/valid_7_c_11.nii.gz"
    assert mask_dir("valid_7_c_1", "region") == "dataset/valid_region_mask/seg_valid_7_c_1"
    assert mask_path("train_1_a_1", "anatomy", "lung nodule") == "dataset/train_anatomy_mask/seg_train_1_a_1/lung nodule.nii.gz"
    assert mask_archive_prefix("valid", "anatomy") == "valid_anatomy_mask/"
    assert radgenome_csv_name("valid", "vqa_presence") == "validation_vqa_presence.csv"
    assert radgenome_csv_name("train", "region_report") == "train_region_report.csv"
    with pytest.raises(ValueError):
        mask_dir("train_1_a_1", "organ")  # type: ignore[arg-type]


def test_parse_mask_member():
    v, kind, name = parse_mask_member("train_anatomy_mask/seg_train_1_a_1/thoracic vertebrae 12 (T12).nii.gz")
    assert (str(v), kind, name) == ("train_1_a_1", "anatomy", "thoracic vertebrae 12 (T12)")
    v, kind, name = parse_mask_member("./dataset/valid_region_mask/seg_valid_3_b_2/trachea and bronchie.nii.gz")
    assert (str(v), kind, name) == ("valid_3_b_2", "region", "trachea and bronchie")
    assert parse_mask_member("train_anatomy_mask/seg_train_1_a_1.nii.gz") is None  # SAT's aggregated map
    assert parse_mask_member("train_anatomy_mask/seg_valid_1_a_1/lung.nii.gz") is None  # split mismatch
    assert parse_mask_member("train_anatomy_mask/seg_junk/lung.nii.gz") is None
    assert parse_mask_member("train_anatomy_mask/seg_train_1_a_1/") is None


names = st.builds(
    VolumeName,
    split=st.sampled_from(["train", "valid"]),
    patient=st.integers(1, 10**6),
    scan=st.text(alphabet="abcdefghijklmnopqrstuvwxyz", min_size=1, max_size=3),
    reconstruction=st.integers(1, 10**4),
)


@settings(max_examples=300, deadline=None)
@given(names, st.sampled_from(["", ".nii.gz", ".nii"]), st.sampled_from(["", "a/b/", "/abs/"]))
def test_any_valid_name_round_trips(v, suffix, prefix):
    assert VolumeName.parse(prefix + str(v) + suffix) == v
    assert VolumeName.parse(v.filename) == v
    assert VolumeName.parse(ctrate_volume_path(v)) == v
    assert VolumeName.parse(radgenome_volume_path(v)) == v
    parsed = parse_mask_member(mask_path(v, "anatomy", "lung"))
    assert parsed is not None and parsed[0] == v
    assert v.scan_id.startswith(v.patient_id + "_") and v.stem.startswith(v.scan_id + "_")
