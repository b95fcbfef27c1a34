"""Preprocessing presets against plain reference implementations of their formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from radgenome_hf import training as T

_interpolate = F.interpolate  # the references keep the real one when a test spies on F.interpolate


# ---------------------------------------------------------------------------------------------------------
# references (written from the published steps, float64, no shortcuts)
# ---------------------------------------------------------------------------------------------------------
def ctclip_reference(img_hwd: np.ndarray, spacing_xyz, target_shape=(480, 480, 240), slope=1.0, intercept=0.0):
    """CT-CLIP scripts/data.py nii_img_to_tensor, step by step, in float64 (spacing per nibabel axis)."""
    img = np.asarray(img_hwd, dtype=np.float64)  # get_fdata
    img = slope * img + intercept
    img = img.transpose(2, 0, 1)
    t = torch.tensor(img).unsqueeze(0).unsqueeze(0)
    current = (spacing_xyz[2], spacing_xyz[0], spacing_xyz[1])
    target = (1.5, 0.75, 0.75)
    new_shape = [int(t.shape[2 + i] * (current[i] / target[i])) for i in range(3)]
    img = _interpolate(t, size=new_shape, mode="trilinear", align_corners=False).numpy()[0][0]
    img = np.transpose(img, (1, 2, 0))
    img = np.clip(img, -1000, 1000)
    img = (img / 1000).astype(np.float32)
    tensor = torch.tensor(img)
    h, w, d = tensor.shape
    dh, dw, dd = target_shape
    h_start = max((h - dh) // 2, 0)
    h_end = min(h_start + dh, h)
    w_start = max((w - dw) // 2, 0)
    w_end = min(w_start + dw, w)
    d_start = max((d - dd) // 2, 0)
    d_end = min(d_start + dd, d)
    tensor = tensor[h_start:h_end, w_start:w_end, d_start:d_end]
    pad_h_before = (dh - tensor.size(0)) // 2
    pad_h_after = dh - tensor.size(0) - pad_h_before
    pad_w_before = (dw - tensor.size(1)) // 2
    pad_w_after = dw - tensor.size(1) - pad_w_before
    pad_d_before = (dd - tensor.size(2)) // 2
    pad_d_after = dd - tensor.size(2) - pad_d_before
    tensor = F.pad(tensor, (pad_d_before, pad_d_after, pad_w_before, pad_w_after, pad_h_before, pad_h_after), value=-1)
    return tensor.permute(2, 0, 1).unsqueeze(0)


def phantom(shape=(50, 46, 30), seed=0) -> np.ndarray:
    """int16 HU, F-ordered like a NIfTI array: air, a body ellipse, a bright 'spine', noise."""
    rng = np.random.default_rng(seed)
    i, j, k = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    ci, cj = shape[0] / 2, shape[1] / 2
    body = ((i - ci) / (0.4 * shape[0])) ** 2 + ((j - cj) / (0.35 * shape[1])) ** 2 < 1
    vol = np.where(body, 40, -1000).astype(np.float32)
    vol[(np.abs(i - ci) < 3) & (j > cj + 3) & body] = 1200
    vol += rng.normal(0, 30, shape).astype(np.float32)
    return np.asfortranarray(np.clip(vol, -1024, 3000).astype(np.int16))


@pytest.fixture
def no_float64(monkeypatch):
    """Fail if F.interpolate ever sees float64 (CT-CLIP's slow path)."""
    seen = []
    real = F.interpolate

    def spy(x, *a, **k):
        seen.append(x.dtype)
        assert x.dtype != torch.float64, "float64 reached F.interpolate"
        return real(x, *a, **k)

    monkeypatch.setattr(torch.nn.functional, "interpolate", spy)
    return seen


# ---------------------------------------------------------------------------------------------------------
# CT-CLIP
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,spacing,target",
    [
        ((50, 46, 30), (1.0, 1.0, 2.0), (64, 60, 32)),  # crop on every axis (66, 61, 40)
        ((50, 46, 30), (1.0, 1.0, 2.0), (81, 70, 47)),  # pad on every axis, odd differences
        ((40, 44, 26), (0.9, 0.7, 1.3), (50, 38, 24)),  # anisotropic x/y, mixed crop and pad
    ],
)
def test_ctclip_matches_reference(shape, spacing, target, no_float64):
    ct = phantom(shape)
    ref = ctclip_reference(ct, spacing, target)
    out = T.ctclip_preprocess(ct, spacing=spacing, target_shape=target)
    assert out.dtype == torch.float32 and out.is_contiguous()
    assert tuple(out.shape) == (1, target[2], target[0], target[1]) == tuple(ref.shape)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5, rtol=0)
    assert no_float64 and all(d == torch.float32 for d in no_float64)


def test_ctclip_pad_value_and_split():
    ct = np.asfortranarray(np.full((8, 10, 6), 500, np.int16))
    out = T.ctclip_preprocess(ct, spacing=(0.75, 0.75, 1.5), target_shape=(12, 13, 9))[0]  # (D, H, W) = (9, 12, 13)
    inside = out == 0.5
    # H: 8 -> 12 pads 2 + 2; W: 10 -> 13 pads 1 before, 2 after; D: 6 -> 9 pads 1 before, 2 after
    idx = torch.nonzero(inside)
    assert idx.min(0).values.tolist() == [1, 2, 1] and idx.max(0).values.tolist() == [6, 9, 10]
    assert torch.all(out[~inside] == -1.0) and int((~inside).sum()) == 9 * 12 * 13 - 6 * 8 * 10


def test_ctclip_axis_order_follows_ctclip():
    """Output (1, D, H, W) with H, W = nibabel axes 0, 1: a voxel at (i, j, k) lands at [0, k, i, j]."""
    ct = np.asfortranarray(np.full((6, 8, 4), -1000, np.int16))
    ct[1, 5, 2] = 1000
    out = T.ctclip_preprocess(ct, spacing=(0.75, 0.75, 1.5), target_shape=(6, 8, 4))
    assert tuple(out.shape) == (1, 4, 6, 8)
    assert torch.nonzero(out[0] == 1.0).tolist() == [[2, 1, 5]]


def test_ctclip_rescale_and_nifti_input(tmp_path, no_float64):
    import nibabel as nib

    hu = phantom((30, 28, 16))
    raw = np.asfortranarray((hu + 1024).astype(np.int16))  # CT-RATE v1 style stored values
    spacing = (1.0, 1.0, 2.0)
    ref = ctclip_reference(raw, spacing, (40, 36, 24), slope=1.0, intercept=-1024.0)
    out = T.ctclip_preprocess(raw, spacing=spacing, rescale=(1.0, -1024.0), target_shape=(40, 36, 24))
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
    # a nibabel image whose header carries the rescale: read unscaled, rescaled in float32, same result
    img = nib.Nifti1Image(raw, np.diag([*spacing, 1.0]))
    img.header.set_slope_inter(1.0, -1024.0)
    p = tmp_path / "v.nii.gz"
    nib.save(img, p)
    out2 = T.ctclip_preprocess(nib.load(p), target_shape=(40, 36, 24))
    np.testing.assert_allclose(out2.numpy(), ref.numpy(), atol=1e-5)


def test_ctclip_int16_output_and_gpu_normalize():
    ct = phantom((50, 46, 30))
    ref = ctclip_reference(ct, (1.0, 1.0, 2.0), (64, 60, 48))
    out = T.ctclip_preprocess(ct, spacing=(1.0, 1.0, 2.0), target_shape=(64, 60, 48), output="int16")
    assert out.dtype == torch.int16 and tuple(out.shape) == tuple(ref.shape)
    assert int(out.min()) >= -1000 and int(out.max()) <= 1000
    pad = ref == -1.0
    assert torch.all(out[pad] == -1000)
    norm = T.ctclip_normalize(out)
    assert norm.dtype == torch.float32
    np.testing.assert_allclose(norm.numpy(), ref.numpy(), atol=0.5 / 1000 + 1e-5)


def test_ctclip_int16_at_target_spacing_skips_float(monkeypatch):
    ct = phantom((40, 40, 20))
    called = []
    monkeypatch.setattr(torch.nn.functional, "interpolate", lambda *a, **k: called.append(1))
    out = T.ctclip_preprocess(ct, spacing=(0.75, 0.75, 1.5), target_shape=(36, 44, 20), output="int16")
    assert not called
    ref = np.clip(ct, -1000, 1000)[2:38].transpose(2, 0, 1)  # crop i 40->36 (2..38), pad j 40->44 (2 + 2)
    np.testing.assert_array_equal(out[0, :, :, 2:42].numpy(), ref)
    assert torch.all(out[0, :, :, :2] == -1000)


def test_ctclip_mask_nearest_matches_reference():
    m = np.zeros((50, 46, 30), bool, order="F")
    m[10:30, 5:20, 8:22] = True
    out = T.ctclip_preprocess_mask(m, spacing=(1.0, 1.0, 2.0), target_shape=(64, 70, 48))
    t = torch.tensor(m.transpose(2, 0, 1).astype(np.float64))[None, None]
    r = F.interpolate(t, size=[40, 66, 61], mode="nearest")[0, 0].permute(1, 2, 0)
    ref = torch.zeros((64, 70, 48), dtype=torch.float64)
    ref[0:64, 4:65, 4:44] = r[1:65, :, :]  # H 66 -> crop 1..65; W 61 -> pad 4 + 5; D 40 -> pad 4 + 4
    assert out.dtype == torch.uint8 and tuple(out.shape) == (1, 48, 64, 70)
    np.testing.assert_array_equal(out[0].numpy(), ref.permute(2, 0, 1).numpy().astype(np.uint8))


def test_ctclipd_in_monai_compose():
    from monai.transforms import Compose

    ct = phantom((50, 46, 30))
    m = np.zeros(ct.shape, bool, order="F")
    m[20:30, 20:30, 10:20] = True
    pipe = Compose([T.CTClipd(keys="image", mask_keys="label", target_shape=(64, 60, 32))])
    out = pipe({"image": ct, "label": m, "image_spacing": (1.0, 1.0, 2.0), "text": "hello"})
    ref = ctclip_reference(ct, (1.0, 1.0, 2.0), (64, 60, 32))
    np.testing.assert_allclose(out["image"].numpy(), ref.numpy(), atol=1e-5)
    assert out["label"].dtype == torch.uint8 and out["label"].shape == out["image"].shape and out["text"] == "hello"
    assert int(out["label"].sum()) > 0


def test_ctclip_accepts_volume():
    pytest.importorskip("radgenome_hf.access.volume")
    from radgenome_hf.access.volume import Volume

    ct = phantom((30, 28, 16))
    v = Volume.from_array(ct, np.diag([1.0, 1.0, 2.0, 1.0]))
    out = T.ctclip_preprocess(v, target_shape=(40, 36, 24))
    np.testing.assert_allclose(out.numpy(), ctclip_reference(ct, (1.0, 1.0, 2.0), (40, 36, 24)).numpy(), atol=1e-5)


def test_ctclip_needs_spacing():
    with pytest.raises(ValueError, match="spacing"):
        T.ctclip_preprocess(np.zeros((4, 4, 4), np.int16))


# ---------------------------------------------------------------------------------------------------------
# fVLM
# ---------------------------------------------------------------------------------------------------------
def fvlm_reference(ct, lab, spacing, pad=(40, 48, 56), margin=(5, 20, 20)):
    """resize.py (1x1x3 mm, trilinear / nearest) + preprocess.py (transpose to z,y,x, window, bbox±margin, pad 0)."""
    img = torch.tensor(np.asarray(ct, np.float64).transpose(2, 1, 0))[None, None]
    msk = torch.tensor(np.asarray(lab, np.float64).transpose(2, 1, 0))[None, None]
    size = [int(ct.shape[2] * spacing[2] / 3.0), int(ct.shape[1] * spacing[1] / 1.0), int(ct.shape[0] * spacing[0] / 1.0)]
    img = _interpolate(img, size=size, mode="trilinear", align_corners=False)[0, 0].numpy()
    msk = _interpolate(msk, size=size, mode="nearest")[0, 0].numpy()
    img = np.clip((img - -1150.0) / (350.0 - -1150.0), 0, 1)
    nz = np.nonzero(msk)
    lo = [max(int(nz[a].min()) - margin[a], 0) for a in range(3)]
    hi = [min(int(nz[a].max()) + 1 + margin[a], img.shape[a]) for a in range(3)]
    img = img[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    msk = msk[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    widths = [((max(p, s) - s) // 2, max(p, s) - s - (max(p, s) - s) // 2) for p, s in zip(pad, img.shape)]
    return np.pad(img, widths, constant_values=0), np.pad(msk, widths, constant_values=0), (*lo, *hi)


def test_fvlm_matches_reference(no_float64):
    ct = phantom((70, 64, 30))
    lab = np.zeros(ct.shape, np.uint8, order="F")
    lab[20:40, 25:35, 12:18] = 1  # "lung"
    lab[45:50, 30:34, 14:16] = 2  # "heart"
    spacing = (0.8, 0.8, 2.0)
    s = T.fvlm_preprocess(ct, lab, spacing=spacing, pad_zyx=(40, 48, 56))
    ref_img, ref_msk, ref_box = fvlm_reference(ct, lab, spacing)
    assert s.image.dtype == torch.float32 and s.mask.dtype == torch.uint8
    assert tuple(s.image.shape) == (1, *ref_img.shape) and s.bbox_zyx == ref_box
    np.testing.assert_allclose(s.image[0].numpy(), ref_img, atol=1e-5)
    np.testing.assert_array_equal(s.mask[0].numpy(), ref_msk.astype(np.uint8))
    assert float(s.image.min()) >= 0.0 and float(s.image.max()) <= 1.0


def test_fvlm_from_named_masks_no_resample():
    ct = phantom((40, 40, 20))
    heart = np.zeros(ct.shape, bool)
    heart[10:20, 12:22, 5:9] = True
    s = T.fvlm_preprocess(ct, {"heart": heart, "liver": ~heart}, resample=False, margin_zyx=(1, 2, 3), pad_zyx=None)
    # cropped to heart bbox ± margin in (z, y, x) = (k, j, i); only the heart (label 2 -> 1 here as the only organ)
    assert s.bbox_zyx == (4, 10, 7, 10, 24, 23)
    assert tuple(s.image.shape) == (1, 6, 14, 16)
    expected = np.clip((ct[7:23, 10:24, 4:10].astype(np.float32).transpose(2, 1, 0) + 1150) / 1500, 0, 1)
    np.testing.assert_allclose(s.image[0].numpy(), expected, atol=1e-6)
    assert int(s.mask.sum()) == heart.sum()


# ---------------------------------------------------------------------------------------------------------
# slice sequences
# ---------------------------------------------------------------------------------------------------------
@pytest.fixture
def coded():
    i, j, k = np.meshgrid(np.arange(12), np.arange(10), np.arange(8), indexing="ij")
    return np.asfortranarray((i * 10000 + j * 100 + k).astype(np.int32))


@pytest.mark.parametrize("plane,axis", [("axial", 2), ("coronal", 1), ("sagittal", 0)])
def test_slice_sequence_planes(coded, plane, axis):
    spacing = (0.5, 0.7, 2.5)
    aff = np.diag([*spacing, 1.0])
    aff[:3, 3] = (-10.0, 20.0, 100.0)
    s = T.slice_sequence(coded, plane=plane, n_slices=4, affine=aff)
    n = coded.shape[axis]
    expected_idx = [int((q + 0.5) * n / 4) for q in range(4)]
    assert s.indices.tolist() == expected_idx
    np.testing.assert_allclose(s.positions_mm, np.array(expected_idx) * spacing[axis], rtol=1e-6)
    np.testing.assert_allclose(s.world_mm[:, axis], np.array(expected_idx) * spacing[axis] + aff[axis, 3], rtol=1e-6)
    for q, idx in enumerate(expected_idx):
        sl = np.take(coded, idx, axis=axis)  # 2-D in the remaining (i, j, k) order
        np.testing.assert_array_equal(s.slices[q].numpy(), sl.T)  # rows = the slower of the two remaining axes
    assert s.slices.dtype == torch.int32 and s.slices.is_contiguous()


def test_slice_sequence_stride_spacing_window():
    ct = phantom((20, 20, 30))
    s = T.slice_sequence(ct, plane="axial", spacing_mm=6.0, spacing=(1, 1, 1.5), window=(-1000, 1000))
    assert s.indices.tolist() == [0, 4, 8, 12, 16, 20, 24, 28]
    assert s.slices.dtype == torch.float32 and tuple(s.slices.shape) == (8, 20, 20)
    np.testing.assert_allclose(s.slices[1].numpy(), np.clip((ct[:, :, 4].T.astype(np.float32) + 1000) / 2000, 0, 1), atol=1e-6)
    s2 = T.slice_sequence(ct, plane="sagittal", stride=7, spacing=(1, 1, 1.5))
    assert s2.indices.tolist() == [0, 7, 14] and tuple(s2.slices.shape) == (3, 30, 20)
    s3 = T.slice_sequence(ct, plane="axial", n_slices=64, spacing=(1, 1, 1.5))  # more slices than voxels
    assert len(s3.indices) == 64 and s3.indices.max() == 29 and np.all(np.diff(s3.indices) >= 0)
    with pytest.raises(ValueError):
        T.slice_sequence(ct, n_slices=3, stride=2)


def test_slice_sequenced_dict():
    ct = phantom((20, 20, 30))
    d = T.SliceSequenced(keys="image", mask_keys="mask", n_slices=5)({"image": ct, "mask": ct > 0, "image_spacing": (1, 1, 2)})
    assert tuple(d["image"].shape) == (5, 20, 20) and d["mask"].dtype == torch.bool
    assert d["image_slice_mm"].tolist() == [6.0, 18.0, 30.0, 42.0, 54.0]


# ---------------------------------------------------------------------------------------------------------
# region crops
# ---------------------------------------------------------------------------------------------------------
def _masks():
    heart = np.zeros((40, 36, 20), bool, order="F")
    heart[15:25, 10:20, 8:12] = True
    lung = np.zeros_like(heart)
    lung[2:38, 2:34, 1:19] = True
    lung &= ~heart
    return {"heart": heart, "lung": lung}


def test_region_crop_margin_mm_and_contains_structure():
    ct = phantom((40, 36, 20))
    masks = _masks()
    c = T.region_crop(ct, masks, "heart", margin=3.0, spacing=(1.0, 1.5, 2.0))
    # 3 mm -> 3, 2, 2 voxels
    assert c.bbox == (12, 8, 6, 28, 22, 14) and c.source == "anatomy" and c.mask_name == "heart"
    np.testing.assert_array_equal(c.image, ct[12:28, 8:22, 6:14])
    assert c.mask.sum() == masks["heart"].sum()
    assert not c.mask[:3].any() and not c.mask[-3:].any() and not c.mask[:, :2].any() and not c.mask[:, :, :2].any()


def test_region_crop_grounding_rule_and_whole_and_clamp():
    ct = phantom((40, 36, 20))
    masks = _masks()
    # no 'right lung upper lobe' mask: the path falls back to its region ('lung')
    c = T.region_crop(ct, masks, "lung/lung/right lung/right lung upper lobe", margin=5, margin_unit="voxel")
    assert c.mask_name == "lung" and c.bbox == (0, 0, 0, 40, 36, 20)  # margin clamped to the grid
    assert c.mask.sum() == masks["lung"].sum()
    w = T.region_crop(ct, masks, "", margin=5)
    assert w.source == "whole" and w.mask.all() and w.image.shape == ct.shape
    from radgenome_hf.errors import UnknownAnatomyError

    with pytest.raises(UnknownAnatomyError):
        T.region_crop(ct, masks, "no such organ")


def test_region_crop_packed_masks_and_dict_transform():
    pm_mod = pytest.importorskip("radgenome_hf.access.masks")
    ct = phantom((40, 36, 20))
    masks = _masks()
    pm = pm_mod.PackedMasks.from_arrays(masks)
    c = T.region_crop(ct, pm, "heart/heart", margin=2, margin_unit="voxel")
    assert c.bbox == (13, 8, 6, 27, 22, 14) and c.mask.sum() == masks["heart"].sum()
    d = T.RegionCropd(margin=2, margin_unit="voxel")({"image": ct, "masks": pm, "anatomy": "heart"})
    assert tuple(d["image"].shape) == (1, 8, 14, 14) and d["image"].dtype == torch.int16
    np.testing.assert_array_equal(d["image"][0].numpy(), ct[13:27, 8:22, 6:14].T)
    assert d["mask"].dtype == torch.uint8 and int(d["mask"].sum()) == masks["heart"].sum()


@pytest.mark.parametrize("n_in,n_out", [(7, 7), (10, 4), (9, 23), (300, 200), (1, 5)])
def test_linear_weights_match_torch_interpolate(n_in, n_out):
    x = torch.randn(n_in)
    ref = torch.nn.functional.interpolate(x[None, None], size=n_out, mode="linear", align_corners=False)[0, 0]
    from radgenome_hf.training.ctclip import _linear_weights

    i0, i1, w = _linear_weights(n_in, n_out)
    got = x[torch.from_numpy(i0)] * (1 - torch.from_numpy(w)) + x[torch.from_numpy(i1)] * torch.from_numpy(w)
    np.testing.assert_allclose(got.numpy(), ref.numpy(), atol=1e-5)


def test_ctclip_from_path_downsampling_and_rescale(tmp_path, no_float64):
    import nibabel as nib

    ct = phantom((60, 52, 40))
    spacing = (0.5, 0.6, 0.9)  # finer than CT-CLIP's grid on every axis: the resample shrinks it
    p = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, np.diag([*spacing, 1.0])), p)
    ref = ctclip_reference(ct, spacing, (44, 36, 26))
    out = T.ctclip_preprocess(str(p), target_shape=(44, 36, 26))  # a path: read by Volume (isal when installed)
    np.testing.assert_allclose(out.numpy(), ref.numpy(), atol=1e-5)
    raw = (ct.astype(np.int32) + 1024).astype(np.int16)
    ref2 = ctclip_reference(raw, spacing, (44, 36, 26), slope=1.0, intercept=-1024.0)
    out2 = T.ctclip_preprocess(raw, spacing=spacing, rescale=(1.0, -1024.0), target_shape=(44, 36, 26), output="int16")
    np.testing.assert_allclose(T.ctclip_normalize(out2).numpy(), ref2.numpy(), atol=0.5 / 1000 + 1e-5)
    assert all(d == torch.float32 for d in no_float64)
