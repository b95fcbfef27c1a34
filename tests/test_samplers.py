"""Patch and finding-aware samplers on phantom masks and synthetic releases: rates, containment, determinism."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from radgenome_hf.access.masks import PackedMasks
from radgenome_hf.access.volume import Volume
from radgenome_hf.testing.synthetic import make_phantom
from radgenome_hf.training.samplers import (
    CentredPatches, FindingAwareSampler, ForegroundPatches, LabelPatches, SamplePatchd, UniformPatches, patch_box,
    sample_rng,
)

SIZE = (16, 16, 8)


@pytest.fixture(scope="module")
def phantom_masks():
    ph = make_phantom((64, 64, 48), rng_or_seed=1,
                      lesions=[{"kind": "nodule", "lobe": "right lung upper lobe", "size_mm": 12}])
    names = ["heart", "lung nodule", "left lung lower lobe", "trachea"]
    arrays = {n: ph.structures[n] for n in names}
    return ph, PackedMasks.from_arrays(arrays, ph.affine), arrays


def test_random_voxels_lie_in_the_structure_and_cover_it(phantom_masks):
    _, masks, arrays = phantom_masks
    rng = np.random.default_rng(0)
    for name, arr in arrays.items():
        v = masks.random_voxels(name, 4000, rng)
        assert v.shape == (4000, 3) and arr[tuple(v.T)].all(), name
    # uniform over the structure: the two halves (split at the median k of its voxels) get equal shares
    heart = arrays["heart"]
    ks = np.nonzero(heart)[2]
    cut = np.median(ks)
    share = (masks.random_voxels("heart", 20000, rng)[:, 2] <= cut).mean()
    assert abs(share - (ks <= cut).mean()) < 0.02
    with pytest.raises(ValueError, match="empty"):
        PackedMasks.from_arrays({"x": np.zeros((4, 4, 4), bool)}).random_voxels("x", 1, rng)


def test_foreground_fraction_and_containment(phantom_masks):
    ph, masks, arrays = phantom_masks
    sampler = ForegroundPatches(SIZE, ["lung nodule"], fraction=0.33)
    kinds, contained = [], []
    for i in range(10_000):
        p = sampler(ph.ct.shape, masks, sample_rng(0, index=i))
        kinds.append(p.kind)
        assert all(0 <= p.box[a] < p.box[a + 3] <= ph.ct.shape[a] for a in range(3))
        if p.kind == "foreground" and len(contained) < 300:
            contained.append(bool(masks.crop("lung nodule", p.box).any()))
    rate = kinds.count("foreground") / len(kinds)
    assert abs(rate - 0.33) <= 0.02, rate
    assert contained and all(contained)
    # the nodule is small: uniform patches alone would rarely contain it
    uniform = UniformPatches(SIZE)
    hits = sum(bool(masks.crop("lung nodule", uniform(ph.ct.shape, masks, sample_rng(1, index=i)).box).any())
               for i in range(300))
    assert hits / 300 < 0.33


def test_label_probabilities_renormalised_over_present_structures(phantom_masks):
    ph, masks, _ = phantom_masks
    sampler = LabelPatches(SIZE, {"heart": 0.6, "trachea": 0.2, "absent structure": 0.5, None: 0.2})
    c = Counter(sampler(ph.ct.shape, masks, sample_rng(2, index=i)).structure for i in range(10_000))
    assert abs(c["heart"] / 10_000 - 0.6) <= 0.02 and abs(c["trachea"] / 10_000 - 0.2) <= 0.02
    assert abs(c[None] / 10_000 - 0.2) <= 0.02 and "absent structure" not in c


def test_patch_box_stays_inside_and_keeps_its_size():
    assert patch_box((0, 0, 0), (8, 8, 8), (32, 32, 32)) == (0, 0, 0, 8, 8, 8)
    assert patch_box((31, 31, 31), (8, 8, 8), (32, 32, 32)) == (24, 24, 24, 32, 32, 32)
    assert patch_box((5, 5, 5), (64, 8, 8), (32, 32, 32))[::3] == (0, 32)


def test_sample_patchd_is_deterministic_per_epoch_and_crops_volume_and_labels(phantom_masks):
    ph, masks, arrays = phantom_masks
    vol = Volume.from_array(ph.ct, ph.affine)
    make = lambda: SamplePatchd(LabelPatches(SIZE, {"heart": 1.0, "trachea": 1.0}),  # noqa: E731
                                label_names=["heart", "trachea"], seed=7)
    a, b = make(), make()
    first = [a({"volume": vol, "masks": masks}) for _ in range(20)]
    again = [b({"volume": vol, "masks": masks}) for _ in range(20)]
    assert [s["patch_box"] for s in first] == [s["patch_box"] for s in again]
    a.set_epoch(1)
    other = [a({"volume": vol, "masks": masks}) for _ in range(20)]
    assert [s["patch_box"] for s in other] != [s["patch_box"] for s in first]
    for s in first:
        box = s["patch_box"]
        sl = tuple(slice(box[i], box[i + 3]) for i in range(3))
        np.testing.assert_array_equal(s["volume"], ph.ct[sl])
        want = np.zeros(s["label"].shape, np.uint8)
        want[arrays["heart"][sl]] = 1
        want[arrays["trachea"][sl]] = 2
        np.testing.assert_array_equal(s["label"], want)
        assert s["label"][s["label"] > 0].size > 0  # centred on a voxel of the drawn structure


def test_finding_aware_rates_rarity_and_ranks():
    answers = ["nodule"] * 90 + ["effusion"] * 10 + ["no findings"] * 100
    rows = {"question_type": ["abnormality"] * 200, "answer": answers}
    s = FindingAwareSampler(rows, num_samples=20_000, positive_fraction=0.3, rarity_power=1.0, seed=0, rank=0,
                            world_size=1)
    c = Counter(answers[i] for i in s)
    assert abs(c["no findings"] / 20_000 - 0.7) <= 0.02
    assert abs(c["effusion"] / (c["effusion"] + c["nodule"]) - 0.5) <= 0.03  # rare finding up-weighted to parity
    flat = FindingAwareSampler(rows, num_samples=20_000, positive_fraction=1.0, rarity_power=0.0, seed=0, rank=0,
                               world_size=1)
    c0 = Counter(answers[i] for i in flat)
    assert abs(c0["effusion"] / 20_000 - 0.1) <= 0.02  # no up-weighting: the rows' own frequency
    r0 = FindingAwareSampler(rows, num_samples=101, seed=3, rank=0, world_size=2)
    r1 = FindingAwareSampler(rows, num_samples=101, seed=3, rank=1, world_size=2)
    assert len(r0) == len(r1) == 51 and list(r0) != list(r1)
    assert list(r0) == list(FindingAwareSampler(rows, num_samples=101, seed=3, rank=0, world_size=2))
    r0.set_epoch(1)
    assert list(r0) != list(FindingAwareSampler(rows, num_samples=101, seed=3, rank=0, world_size=2))


def test_finding_aware_loop_on_a_release_crops_around_each_rows_mask(synthetic_release, tmp_path):
    import torch

    import radgenome_hf
    from radgenome_hf.training import make_dataloader

    ds = radgenome_hf.load_dataset("vqa", data_dir=str(synthetic_release.root), split="train",
                                   cache_dir=str(tmp_path / "hf"))
    sampler = FindingAwareSampler(ds.select_columns(["question_type", "answer"]), num_samples=12, seed=0,
                                  rank=0, world_size=1)
    crop = SamplePatchd(CentredPatches((16, 16, 8)), masks_key="mask", seed=0)
    loader = make_dataloader(ds, batch_size=4, num_workers=2, transform=crop, sampler=sampler)
    seen, boxes = 0, []
    for batch in loader:
        assert isinstance(batch["volume"], torch.Tensor) and tuple(batch["volume"].shape[1:]) == (16, 16, 8)
        for kind, answer in zip(batch["patch_kind"], batch["answer"]):
            assert kind == "centred" and answer
        seen += len(batch["answer"])
        boxes += [tuple(b) for b in batch["patch_box"]]
    assert seen == 12
    # two threads finish rows in any order: the patches are the same in a second run of the epoch
    again = [tuple(b) for batch in make_dataloader(ds, batch_size=4, num_workers=2, transform=crop, sampler=sampler)
             for b in batch["patch_box"]]
    assert again == boxes
    rows = [ds[i] for i in sampler]
    assert {r["question_type"] for r in rows} == {"abnormality"}
    # a drawn row's patch contains a voxel of that row's grounding mask
    r = rows[0]
    p = crop({"volume": r["volume"], "mask": r["mask"]})
    if r["mask"].source != "whole":
        assert r["mask"].crop(p["patch_box"]).any()
