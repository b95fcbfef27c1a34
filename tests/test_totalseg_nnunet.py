"""The TotalSegmentator backend's nnunet engine: nnU-Net predictors built once per process, kept across volumes.

No TotalSegmentator weights here: the tests build tiny nnU-Net trained-model folders of the real architecture
(``PlainConvUNet`` through ``plans.json``, randomly initialised, saved as ``fold_0/checkpoint_final.pth``) and load
them with the real loading code (``nnUNetPredictor.initialize_from_trained_model_folder``). Skipped without
``nnunetv2`` (it comes with TotalSegmentator: ``pip install 'radgenome-hf[totalsegmentator]'``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 is not installed (pip install 'radgenome-hf[totalsegmentator]')")

#: two "parts" like TotalSegmentator's five total models, with TotalSegmentator class names (one unmapped)
PARTS = [{"background": 0, "lung_upper_lobe_left": 1, "lung_lower_lobe_left": 2, "trachea": 3},
         {"background": 0, "heart": 1, "aorta": 2, "kidney_cyst_left": 3}]
SPACING = 12.0  # mm: the 64x64x48 synthetic volumes (6 mm) become 32x32x24, one sliding window


def make_model_folder(root: Path, labels: dict[str, int], seed: int) -> Path:
    """An nnU-Net v2 trained-model folder: dataset.json, plans.json (3d_fullres, PlainConvUNet with 3 stages of
    4/8/16 features), and a randomly initialised checkpoint in nnU-Net's format."""
    import torch
    from pydoc import locate

    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    root.mkdir(parents=True)
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": labels,
                                                   "numTraining": 1, "file_ending": ".nii.gz"}))
    arch = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [4, 8, 16], "conv_op": "torch.nn.modules.conv.Conv3d",
                            "kernel_sizes": [[3, 3, 3]] * 3, "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}
    resampling = {"resampling_fn_data": "resample_data_or_seg_to_shape",
                  "resampling_fn_seg": "resample_data_or_seg_to_shape",
                  "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
                  "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
                  "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                         "force_separate_z": None}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [24, 32, 32], "median_image_size_in_voxels": [24, 32, 32],
              "spacing": [SPACING] * 3, "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
              "architecture": arch, "batch_dice": False, **resampling}
    plans = {"dataset_name": "Dataset999_Tiny", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
             "original_median_spacing_after_transp": [SPACING] * 3, "original_median_shape_after_transp": [24, 32, 32],
             "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "configurations": {"3d_fullres": config},
             "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
             "foreground_intensity_properties_per_channel": {"0": {
                 "max": 1500.0, "mean": 0.0, "median": 0.0, "min": -1000.0, "percentile_00_5": -1000.0,
                 "percentile_99_5": 1500.0, "std": 400.0}}}
    (root / "plans.json").write_text(json.dumps(plans))
    kwargs = dict(arch["arch_kwargs"])
    for k in arch["_kw_requires_import"]:
        kwargs[k] = locate(kwargs[k]) if kwargs[k] is not None else None
    torch.manual_seed(seed)
    net = PlainConvUNet(input_channels=1, num_classes=len(labels), deep_supervision=False, **kwargs)
    (root / "fold_0").mkdir()
    torch.save({"network_weights": net.state_dict(), "trainer_name": "nnUNetTrainer",
                "init_args": {"configuration": "3d_fullres"}, "inference_allowed_mirroring_axes": None},
               root / "fold_0" / "checkpoint_final.pth")
    return root


@pytest.fixture(scope="module")
def model_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet_models")
    return [make_model_folder(root / f"Dataset{291 + i}_part{i}", labels, seed=i) for i, labels in enumerate(PARTS)]


def test_predictors_built_once_and_labels_in_ontology_names(model_folders, synthetic_release, tmp_path, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from radgenome_hf.access.masks import PackedMasks
    from radgenome_hf.generate.backends import get_backend
    from radgenome_hf.generate.backends._common import DERIVED_NAMES, ontology_name
    from radgenome_hf.generate.segment import discover_volumes, load_volume
    from radgenome_hf.generate.volumes import VolumeJob, run_volume_stages

    built = []
    real_init = nnUNetPredictor.initialize_from_trained_model_folder
    monkeypatch.setattr(nnUNetPredictor, "initialize_from_trained_model_folder",
                        lambda self, folder, *a, **k: built.append(folder) or real_init(self, folder, *a, **k))
    backend = get_backend("totalsegmentator", model_folders=model_folders, device="cpu")
    assert backend.engine == "nnunet" and backend.separates_packing
    assert list(backend.class_names().values()) == [n for part in PARTS for n in part if n != "background"]

    vols = discover_volumes(synthetic_release.root)[:3]
    jobs = [VolumeJob(n, str(p), out=str(tmp_path / f"{n}.masks.parquet")) for n, p in vols]
    report = run_volume_stages(jobs, tmp_path, backend, workers=1, progress=False)
    assert report.done == [n for n, _ in vols] and not report.failed
    assert built == [str(f) for f in model_folders]  # one predictor per model, kept for all three volumes

    hu, affine = load_volume(vols[0][1])
    labels = backend.predict_labels(hu, affine)
    assert built == [str(f) for f in model_folders]  # still the same predictors
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    present = {backend.class_names()[v] for v in np.unique(labels) if v}
    assert present, "the random networks predicted background everywhere: pick other seeds"
    masks = PackedMasks.load(tmp_path / f"{vols[0][0]}.masks.parquet")
    mapped = {ontology_name(n) for n in present} - {None}
    every = {ontology_name(n) for n in backend.class_names().values()} - {None}
    assert set(masks.names) <= every | set(DERIVED_NAMES)  # ontology names only (+ the derived unions)
    nonempty = {n for n in masks.names if masks.voxel_count(n)}
    assert mapped <= nonempty <= mapped | set(DERIVED_NAMES)
    for name in mapped:
        lab = [v for v, n in backend.class_names().items() if ontology_name(n) == name]
        assert np.array_equal(masks.mask(name), np.isin(labels, lab)), name
    assert "kidney_cyst_left" in backend.unmapped


def test_pickled_backend_builds_its_own_predictors(model_folders):
    """A Ray actor or pool worker gets the backend without the predictors, and builds them once."""
    import pickle

    from radgenome_hf.generate.backends import get_backend

    backend = get_backend("totalsegmentator", model_folders=model_folders, device="cpu")
    first = backend.predictors()
    assert backend.predictors() is first
    clone = pickle.loads(pickle.dumps(backend))
    assert clone._predictors is None and clone.class_names() == backend.class_names()
    assert clone.params() == backend.params()  # same manifest key: the same weights


def test_cli_options_reach_the_backend(model_folders, tmp_path):
    from radgenome_hf.cli import build_parser
    from radgenome_hf.cli.segment import backend_from_args

    args = build_parser().parse_args(["segment", str(tmp_path), "--out", str(tmp_path / "o"), "--backend",
                                      "totalsegmentator", "--device", "cpu", *[a for f in model_folders
                                                                               for a in ("--model-folder", str(f))]])
    backend = backend_from_args(args)
    assert backend.engine == "nnunet" and backend.model_folders == [Path(f).resolve() for f in model_folders]
