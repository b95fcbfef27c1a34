"""Generation stage 1 (segmentation): backends, the resumable runner, its manifest, the CLI.

Quality bounds of the threshold baseline (``test_threshold_dice_on_phantoms``) on the default phantom grid
(64 x 64 x 48 at 6 mm, the synthetic release's grid), seeds 0-2, were measured at: left/right lung and lung
0.996-0.999, bone 0.965-0.981, trachea and bronchie 0.865-0.912, trachea 0.815-0.889, bronchie 0.788-0.813.
The asserted bounds leave a margin for noise-realisation changes in the phantom: lungs >= 0.95 (large, high
contrast: only fissure-free boundary voxels can differ), bone >= 0.9 (cortical/rib HU far above the threshold;
losses are partial-volume rib voxels), trachea and bronchie >= 0.75, trachea >= 0.7, bronchie >= 0.6 (a lumen of
2-3 voxels at 6 mm: one voxel of wall more or less moves Dice by ~0.1, and the carina level is only known to a
slice).
"""

from __future__ import annotations

import gzip
import json
import os
import sys
import textwrap
import types
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radgenome_hf.errors import ManifestError, RadGenomeError, ShapeMismatchError
from radgenome_hf.generate.backends import get_backend
from radgenome_hf.generate.backends._common import label_map_to_masks
from radgenome_hf.generate.manifest import Manifest, ManifestKey, params_hash
from radgenome_hf.generate.segment import (
    MANIFEST_NAME,
    discover_volumes,
    load_volume,
    run_segmentation,
    segment_volume,
)
from radgenome_hf.access.masks import PackedMasks
from radgenome_hf.ontology import get_ontology
from radgenome_hf.testing.synthetic import make_phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int((a & b).sum()) / s


def _save(path: Path, arr: np.ndarray, affine: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(arr, affine), str(path))
    return path


@pytest.fixture(scope="module")
def phantom():
    return make_phantom((64, 64, 48), None, 0)


@pytest.fixture()
def volume_dir(tmp_path, phantom):
    """Three small volume files (phantoms) in the RadGenome preprocessed layout, plus their ground truth."""
    root = tmp_path / "release"
    files = []
    for i, seed in enumerate((0, 1, 2), start=1):
        ph = phantom if seed == 0 else make_phantom((48, 48, 32), None, seed)
        p = root / "dataset" / "train_preprocessed" / f"train_{i}" / f"train_{i}a" / f"train_{i}_a_1.nii.gz"
        files.append((f"train_{i}_a_1", _save(p, ph.ct, ph.affine)))
    return root, files


# -- threshold backend --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_threshold_dice_on_phantoms(seed):
    """Dice of the HU-threshold baseline against the phantom's ground truth (bounds: module docstring)."""
    ph = make_phantom((64, 64, 48), None, seed)
    masks = segment_volume(ph.ct, get_backend("threshold"), affine=ph.affine)
    bounds = {"left lung": 0.95, "right lung": 0.95, "lung": 0.95, "bone": 0.9,
              "trachea and bronchie": 0.75, "trachea": 0.7, "bronchie": 0.6}
    scores = {n: dice(masks.mask(n), ph.structures[n]) for n in bounds}
    assert all(scores[n] >= b for n, b in bounds.items()), scores
    onto = get_ontology()
    assert set(masks.names) <= set(onto.anatomy_masks) | set(onto.region_masks)
    assert set(masks.sources.values()) == {"threshold"}


def test_threshold_sides_follow_world_orientation(phantom):
    """Flip the LPS phantom into an RAS voxel order: left and right lungs must follow the anatomy, not the index."""
    ct = phantom.ct[::-1, ::-1, :]
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = ct.shape[0] - 1, ct.shape[1] - 1
    affine = phantom.affine @ flip
    masks = segment_volume(np.ascontiguousarray(ct), get_backend("threshold"), affine=affine)
    for side in ("left lung", "right lung"):
        assert dice(masks.mask(side), phantom.structures[side][::-1, ::-1, :]) > 0.95
    assert np.allclose(masks.affine, affine)


def test_label_map_mapping_merges_and_derives():
    lm = np.zeros((6, 6, 6), np.int16)
    lm[0, 0, 0], lm[1, 1, 1], lm[2, 2, 2], lm[3, 3, 3], lm[4, 4, 4] = 1, 2, 3, 4, 5
    names = {0: "background", 1: "iliac_artery_left", 2: "iliac_artery_right", 3: "lung_upper_lobe_left",
             4: "rib_left_3", 5: "kidney_cyst_left"}
    m = label_map_to_masks(lm, names, np.eye(4), source="x")
    assert m.voxel_count("iliac artery") == 2  # two classes, one ontology name
    assert m.voxel_count("left lung") == m.voxel_count("lung") == 1  # derived unions
    assert m.voxel_count("bone") == 1
    assert "kidney_cyst_left" not in m and "kidney cyst left" not in m  # no ontology node: not stored


# -- manifest -----------------------------------------------------------------------------------------
def test_manifest_keys_failures_and_stage(tmp_path):
    path = tmp_path / "m.sqlite"
    key = ManifestKey("v1", "sha256:a", "threshold", "1", params_hash({"x": 1}))
    with Manifest(path, "segment") as m:
        assert m.status(key) is None
        m.mark_failed(key, "CorruptVolumeError: bad gzip")
        assert m.status(key) == "failed" and not m.is_done(key)
        m.mark_done(key, {"masks": "v1.masks.parquet"})
        assert m.is_done(key)
        assert not m.is_done(key._replace(params_hash=params_hash({"x": 2})))
        assert not m.is_done(key._replace(input_hash="sha256:b"))
        f = tmp_path / "in.bin"
        f.write_bytes(b"abc")
        h1 = m.input_hash(f)
        f.write_bytes(b"abd")
        os.utime(f, ns=(1, 1))
        assert m.input_hash(f) != h1
    with Manifest(path, "segment") as m:  # persisted
        assert m.get("v1").outputs == {"masks": "v1.masks.parquet"}
    with pytest.raises(ManifestError, match="belongs to stage 'segment'"):
        Manifest(path, "vqa")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"not a database" * 100)
    with pytest.raises(ManifestError, match="delete it"):
        Manifest(bad, "segment")
    assert params_hash({"a": (1, 2), "b": None}) == params_hash({"b": None, "a": [1, 2]})


# -- runner -------------------------------------------------------------------------------------------
def test_run_segmentation_resume_redo_and_failures(tmp_path, volume_dir):
    root, files = volume_dir
    corrupt = root / "dataset" / "train_preprocessed" / "train_9" / "train_9a" / "train_9_a_1.nii.gz"
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(gzip.compress(b"\x5c\x01" + b"\0" * 500)[:60])  # truncated gzip, not a NIfTI
    inputs = files + [("train_9_a_1", corrupt)]
    out = tmp_path / "out"
    backend = get_backend("threshold")

    r1 = run_segmentation(inputs, out, backend, workers=1, progress=False)
    assert r1.done == ["train_1_a_1", "train_2_a_1", "train_3_a_1"] and r1.skipped == []
    assert list(r1.failed) == ["train_9_a_1"] and "CorruptVolumeError" in r1.failed["train_9_a_1"]
    assert "train_9_a_1" in r1.summary() and not r1.ok
    for name, path in files:  # outputs on the input grid, ontology names
        pm = PackedMasks.load(out / f"{name}.masks.parquet")
        img = nib.load(str(path))
        assert pm.shape == img.shape and np.allclose(pm.affine, img.affine)
        assert pm.volume_name == name and "left lung" in pm
    with Manifest(out / MANIFEST_NAME, "segment") as m:
        assert [e.item for e in m.entries("failed")] == ["train_9_a_1"]
        assert "CorruptVolumeError" in m.get("train_9_a_1").error

    # unchanged -> skipped; the failure is retried (and fails again, still reported)
    r2 = run_segmentation(inputs, out, backend, workers=1, progress=False)
    assert r2.done == [] and r2.skipped == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]
    assert list(r2.failed) == ["train_9_a_1"]

    # changed input content -> only that volume is redone; changed params -> all are redone
    ph = make_phantom((48, 48, 32), None, 7)
    _save(files[1][1], ph.ct, ph.affine)
    r3 = run_segmentation(files, out, backend, workers=1, progress=False)
    assert r3.done == ["train_2_a_1"] and r3.skipped == ["train_1_a_1", "train_3_a_1"]
    r4 = run_segmentation(files, out, get_backend("threshold", bone_hu=250), workers=1, progress=False)
    assert r4.done == ["train_1_a_1", "train_2_a_1", "train_3_a_1"]
    # a deleted output is redone even though the manifest says done
    (out / "train_1_a_1.masks.parquet").unlink()
    r5 = run_segmentation(files, out, get_backend("threshold", bone_hu=250), workers=1, progress=False)
    assert r5.done == ["train_1_a_1"]


@pytest.mark.slow
def test_process_pool_matches_in_process(tmp_path, volume_dir):
    _, files = volume_dir
    a = run_segmentation(files[:2], tmp_path / "a", get_backend("threshold"), workers=1, progress=False)
    b = run_segmentation(files[:2], tmp_path / "b", get_backend("threshold"), workers=2, progress=False)
    assert a.done == b.done and not b.failed
    for name, _ in files[:2]:
        assert PackedMasks.load(a.outputs[name]) == PackedMasks.load(b.outputs[name])


def test_segment_volume_rejects_off_grid_backend(phantom):
    class Bad:
        name, version = "bad", "0"

        def segment(self, volume, affine):
            return PackedMasks.from_arrays({"lung": np.ones((4, 4, 4), bool)}, np.eye(4))

    with pytest.raises(ShapeMismatchError, match="input grid"):
        segment_volume(phantom.ct, Bad(), affine=phantom.affine)


def test_load_volume_applies_rescale_once(tmp_path):
    img = nib.Nifti1Image(np.full((4, 4, 4), 10, np.int16), np.eye(4))
    img.header.set_slope_inter(2.0, -1024.0)
    p = tmp_path / "v.nii.gz"
    nib.save(img, str(p))
    arr, _ = load_volume(p)
    assert arr.dtype == np.float32 and float(arr[0, 0, 0]) == 2.0 * 10 - 1024


# -- CLI ----------------------------------------------------------------------------------------------
def test_cli_segment(tmp_path, volume_dir, capsys):
    from radgenome_hf.cli import main

    root, files = volume_dir
    assert [n for n, _ in discover_volumes(root)] == [n for n, _ in files]
    out = tmp_path / "cli"
    assert main(["segment", str(root), "--backend", "threshold", "--out", str(out), "--workers", "1",
                 "--no-progress"]) == 0
    assert sorted(p.name for p in out.glob("*.masks.parquet")) == [f"{n}.masks.parquet" for n, _ in files]
    capsys.readouterr()
    assert main(["segment", str(root), "--out", str(out), "--workers", "1", "--no-progress", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["skipped"] == [n for n, _ in files]
    bad = root / "dataset" / "valid_preprocessed" / "valid_1" / "valid_1a" / "valid_1_a_1.nii.gz"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"\x1f\x8b garbage")
    capsys.readouterr()
    assert main(["segment", str(root), "--out", str(out), "--workers", "1", "--no-progress", "--json"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["skipped"] == [n for n, _ in files] and list(report["failed"]) == ["valid_1_a_1"]
    assert "failed" in captured.err


# -- MONAI backend ------------------------------------------------------------------------------------
NET = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 5, "init_filters": 8}
CHANNELS = {0: "background", 1: "lung_upper_lobe_left", 2: "lung_lower_lobe_right", 3: "trachea", 4: "rib_left_1"}


@pytest.fixture(scope="module")
def monai_bundle(tmp_path_factory):
    """A tiny randomly initialised SegResNet saved as a checkpoint and as a bundle folder (no downloads)."""
    import torch
    from monai.networks.nets import SegResNet

    root = tmp_path_factory.mktemp("bundle")
    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, in_channels=1, out_channels=5, init_filters=8)
    (root / "models").mkdir()
    (root / "configs").mkdir()
    torch.save(net.state_dict(), root / "models" / "model.pt")
    inference = {
        "displayable_configs": {"highres": True, "sw_overlap": 0.25, "sw_batch_size": 1},
        "bundle_root": ".",
        "device": "$torch.device('cpu')",
        "pixdim": "$[12.0, 12.0, 12.0] if @displayable_configs#highres else [24.0, 24.0, 24.0]",
        "modelname": "$'model.pt' if @displayable_configs#highres else 'model_lowres.pt'",
        "network_def": NET,
        "network": "$@network_def.to(@device)",
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [32, 32, 32], "sw_batch_size": 1,
                    "overlap": 0.25, "mode": "gaussian", "padding_mode": "replicate"},
    }
    (root / "configs" / "inference.json").write_text(json.dumps(inference))
    meta = {"name": "tiny", "version": "0.0.1",
            "network_data_format": {"outputs": {"pred": {"channel_def": {str(k): v for k, v in CHANNELS.items()}}}}}
    (root / "configs" / "metadata.json").write_text(json.dumps(meta))
    return root


def test_monai_bundle_grid_names_and_runner(tmp_path, monai_bundle, phantom, volume_dir):
    backend = get_backend("monai", bundle=monai_bundle, sw_batch_size=2, device="cpu")
    assert backend.pixdim == (12.0, 12.0, 12.0) and backend.roi_size == (32, 32, 32)  # one 32^3 window: fast on CPU
    assert backend.version == "bundle-tiny-0.0.1"
    masks = segment_volume(phantom.ct, backend, affine=phantom.affine)
    assert masks.shape == phantom.ct.shape and np.allclose(masks.affine, phantom.affine)
    assert {"left lung upper lobe", "right lung lower lobe", "trachea", "left rib 1"} <= set(masks.names)
    assert {"left lung", "right lung", "lung", "bone", "trachea and bronchie"} <= set(masks.names)
    assert masks.voxel_count("lung") == masks.voxel_count("left lung") + masks.voxel_count("right lung")

    # the same network from checkpoint + network config gives the same masks
    cfg = tmp_path / "net.json"
    cfg.write_text(json.dumps({"network_def": NET, "channel_def": CHANNELS}))
    b2 = get_backend("monai", checkpoint=monai_bundle / "models" / "model.pt", network_config=cfg, pixdim=12.0,
                     roi_size=(32, 32, 32), device="cpu")
    assert b2.segment(phantom.ct, phantom.affine) == masks

    # runner: skip unchanged, record a corrupt input, redo after a parameter change
    _, files = volume_dir
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    inputs = files[:1] + [("train_8_a_1", bad)]
    r1 = run_segmentation(inputs, tmp_path / "m", backend, workers=1, progress=False)
    assert r1.done == ["train_1_a_1"] and list(r1.failed) == ["train_8_a_1"]
    r2 = run_segmentation(inputs, tmp_path / "m", backend, workers=1, progress=False)
    assert r2.skipped == ["train_1_a_1"] and r2.done == [] and list(r2.failed) == ["train_8_a_1"]
    r3 = run_segmentation(inputs[:1], tmp_path / "m", b2, workers=1, progress=False)  # other version/params
    assert r3.done == ["train_1_a_1"]


def test_monai_inversion_recovers_input_geometry(monai_bundle, phantom):
    """A stand-in network that labels dark voxels (logit -x vs 0.4 on the [-1, 1] scaled image): after resampling
    to 6 mm RAS and inverting back, its map must match the input's own air (< -400 HU), also for an input stored
    in another voxel order (axes permuted and flipped), which a wrong inversion would scramble."""
    import torch

    class DarkNet(torch.nn.Module):
        def forward(self, x):
            return torch.cat([torch.full_like(x, 0.4), -x], dim=1)

    backend = get_backend("monai", bundle=monai_bundle, device="cpu", channel_def={0: "background", 1: "lung"},
                          pixdim=6.0)
    backend._model = DarkNet()
    air = phantom.ct < -400
    labels = backend.predict_labels(phantom.ct, phantom.affine)
    assert labels.shape == phantom.ct.shape and dice(labels == 1, air) > 0.95
    # same anatomy stored (k, i, j) with flips: the affine says so
    ct2 = np.ascontiguousarray(np.transpose(phantom.ct, (2, 0, 1))[::-1, :, ::-1])
    perm = np.zeros((4, 4))
    perm[3, 3] = 1
    n = ct2.shape
    # voxel (a, b, c) of ct2 is voxel (b, n2-1-c, n0-1-a)... expressed as original index = P @ new index + t
    perm[0, 1] = 1
    perm[1, 2], perm[1, 3] = -1, n[2] - 1
    perm[2, 0], perm[2, 3] = -1, n[0] - 1
    aff2 = phantom.affine @ perm
    assert np.array_equal(ct2[3, 5, 7], phantom.ct[5, n[2] - 1 - 7, n[0] - 1 - 3])
    labels2 = backend.predict_labels(ct2, aff2)
    air2 = ct2 < -400
    assert dice(labels2 == 1, air2) > 0.95


# -- TotalSegmentator (fake module) -------------------------------------------------------------------
TS_NAMES = {1: "lung_upper_lobe_left", 2: "lung_lower_lobe_left", 3: "lung_upper_lobe_right",
            4: "lung_middle_lobe_right", 5: "lung_lower_lobe_right", 6: "trachea", 7: "vertebrae_T5",
            8: "kidney_cyst_left"}


def _fake_totalseg(monkeypatch, phantom, *, header: bool):
    """Inject a fake ``totalsegmentator`` package whose API returns a label image built from the phantom's
    ground truth, on the *canonical (RAS)* grid rather than the input's (like a tool that reorients)."""
    calls = []

    def totalsegmentator(img, output=None, ml=False, task="total", fast=False, device="gpu", roi_subset=None,
                         quiet=False, **kw):
        calls.append({"ml": ml, "task": task, "device": device})
        assert ml is True and output is None
        assert np.array_equal(np.asanyarray(img.dataobj), phantom.ct)
        lm = np.zeros(phantom.ct.shape, np.uint8)
        gt = {"left lung upper lobe": 1, "left lung lower lobe": 2, "right lung upper lobe": 3,
              "right lung middle lobe": 4, "right lung lower lobe": 5, "trachea": 6,
              "thoracic vertebrae 5 (t5)": 7}
        for name, value in gt.items():
            lm[phantom.structures[name]] = value
        out = nib.as_closest_canonical(nib.Nifti1Image(lm, img.affine))
        if header:
            xml = "<CaretExtension><VolumeInformation><LabelTable>" + "".join(
                f'<Label Key="{k}" Red="1" Green="0" Blue="0" Alpha="1"><![CDATA[{v}]]></Label>'
                for k, v in TS_NAMES.items()) + "</LabelTable></VolumeInformation></CaretExtension>"
            out.header.extensions.append(nib.nifti1.Nifti1Extension(0, xml.encode()))
        return out

    pkg = types.ModuleType("totalsegmentator")
    pkg.__version__ = "9.9.9"
    api = types.ModuleType("totalsegmentator.python_api")
    api.totalsegmentator = totalsegmentator
    mtb = types.ModuleType("totalsegmentator.map_to_binary")
    mtb.class_map = {"total": TS_NAMES}
    monkeypatch.setitem(sys.modules, "totalsegmentator", pkg)
    monkeypatch.setitem(sys.modules, "totalsegmentator.python_api", api)
    monkeypatch.setitem(sys.modules, "totalsegmentator.map_to_binary", mtb)
    return calls


@pytest.mark.parametrize("header", [True, False], ids=["ext-header", "class-map"])
def test_totalsegmentator_fake_module(monkeypatch, phantom, header):
    calls = _fake_totalseg(monkeypatch, phantom, header=header)
    backend = get_backend("totalsegmentator", device="cpu", engine="api")
    assert backend.version == "9.9.9"
    masks = segment_volume(phantom.ct, backend, affine=phantom.affine)
    assert calls and calls[0]["task"] == "total" and calls[0]["device"] == "cpu"
    assert masks.shape == phantom.ct.shape and np.allclose(masks.affine, phantom.affine)
    for name in ("left lung upper lobe", "right lung middle lobe", "trachea", "thoracic vertebrae 5 (t5)",
                 "left lung", "right lung", "lung"):
        assert np.array_equal(masks.mask(name), phantom.structures[name]), name  # exact: a pure reorientation
    assert "kidney_cyst_left" in backend.unmapped


def test_totalsegmentator_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "totalsegmentator", None)
    with pytest.raises(RadGenomeError, match=r"pip install 'radgenome-hf\[totalsegmentator\]'"):
        get_backend("totalsegmentator")


# -- SAT (stand-in executable) ------------------------------------------------------------------------
SAT_STANDIN = textwrap.dedent(
    """
    # Stand-in for SAT's inference.py: same jsonl, same MONAI geometry, same identity-affine outputs; the
    # "predictions" are the ground-truth masks in --gt_dir pushed through that geometry.
    import argparse, json, os
    import nibabel as nib, numpy as np
    from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, Orientationd,
                                  Spacingd)
    ap = argparse.ArgumentParser()
    ap.add_argument("--rcd_dir"); ap.add_argument("--datasets_jsonl"); ap.add_argument("--gt_dir")
    a = ap.parse_args()
    for line in open(a.datasets_jsonl):
        d = json.loads(line)
        labels = d["label"]
        keys = ["image"] + [f"l{i}" for i in range(len(labels))]
        data = {"image": d["image"], **{f"l{i}": os.path.join(a.gt_dir, f"{lab}.nii.gz") for i, lab in enumerate(labels)}}
        t = Compose([LoadImaged(keys), EnsureChannelFirstd(keys),
                     Orientationd(keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
                     Spacingd(keys, pixdim=(1, 1, 3), mode=["bilinear"] + ["nearest"] * len(labels)),
                     CropForegroundd(keys, source_key="image", allow_smaller=True)])
        out = t(data)
        sid = os.path.basename(d["image"]).replace(".nii.gz", "")
        seg = os.path.join(a.rcd_dir, d["dataset"], f"seg_{sid}")
        os.makedirs(seg, exist_ok=True)
        for i, lab in enumerate(labels):
            arr = np.asarray(out[f"l{i}"][0]).astype(np.float64)
            nib.save(nib.Nifti1Image(arr, np.eye(4)), os.path.join(seg, f"{lab}.nii.gz"))
    """
)


def test_sat_standin_masks_back_on_input_grid(tmp_path):
    """SAT's outputs live on its RAS, 1x1x3 mm, foreground-cropped grid with identity affines; mapped back, they
    must match the phantom: Dice >= 0.99 (measured 1.0: 6 mm voxels split exactly into 1x1x3 mm ones, so the
    nearest round trip is lossless; a wrong flip, axis order or crop offset drops Dice far below 0.9)."""
    phantom = make_phantom((56, 48, 24), (6.0, 6.0, 6.0), 0)  # the body inside a smaller field of view: fast
    gt_dir = tmp_path / "gt"
    labels = {"Left Lung": "left lung", "right lung": "right lung", "trachea": "trachea"}
    for sat_name, name in labels.items():
        _save(gt_dir / f"{sat_name}.nii.gz", phantom.structures[name].astype(np.uint8), phantom.affine)
    script = tmp_path / "sat_standin.py"
    script.write_text(SAT_STANDIN)
    backend = get_backend(
        "sat", command=[sys.executable, str(script), "--rcd_dir", "{rcd_dir}", "--datasets_jsonl", "{jsonl}",
                        "--gt_dir", str(gt_dir)], labels=list(labels), work_dir=tmp_path / "work",
    )
    masks = segment_volume(phantom.ct, backend, affine=phantom.affine)
    assert masks.shape == phantom.ct.shape and np.allclose(masks.affine, phantom.affine)
    scores = {n: dice(masks.mask(n), phantom.structures[n]) for n in ("left lung", "right lung", "trachea", "lung")}
    assert min(scores.values()) >= 0.99, scores
    assert not any((tmp_path / "work").iterdir())  # temporary files removed

    failing = get_backend("sat", command=[sys.executable, "-c", "import sys; sys.exit('no GPU here')"],
                          labels=["trachea"])
    with pytest.raises(RadGenomeError, match="no GPU here"):
        failing.segment(phantom.ct, phantom.affine)


def test_sat_default_command_needs_checkout():
    with pytest.raises(RadGenomeError, match="sat_dir"):
        get_backend("sat")


# -- Ray ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_ray_data_runner(tmp_path, volume_dir):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'radgenome-hf[ray]')")
    pytest.importorskip("ray.data", reason="ray[data] is not installed (pip install 'radgenome-hf[ray]')")
    _, files = volume_dir
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"\x1f\x8b\x08\x00 definitely not gzip")
    files = files[:2]
    inputs = files + [("train_7_a_1", bad)]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        r = run_segmentation(inputs, tmp_path / "ray", get_backend("threshold"), ray=True, progress=False)
    finally:
        ray.shutdown()
    assert r.done == [n for n, _ in files] and list(r.failed) == ["train_7_a_1"]
    local = run_segmentation(files, tmp_path / "local", get_backend("threshold"), workers=1, progress=False)
    for name, _ in files:
        assert PackedMasks.load(r.outputs[name]) == PackedMasks.load(local.outputs[name])
    r2 = run_segmentation(files, tmp_path / "ray", get_backend("threshold"), ray=True, progress=False)
    assert r2.skipped == [n for n, _ in files] and r2.done == []  # resumed without starting Ray work
