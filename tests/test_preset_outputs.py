"""Presets store their outputs (FVLMd, SliceSequenced, RegionCropd, like CTClipd): a second epoch reads them, they
equal the uncached outputs, and a changed parameter or source is never served stale. RegionCropd crops a ``vqa``
row's volume around the row's own grounding mask (a LazyMask), decoding only the box."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import radgenome_hf  # noqa: F401 - registers the builder and the feature types
from radgenome_hf.access import lazymasks
from radgenome_hf.access import volume as volume_mod
from radgenome_hf.access.lazymasks import LazyMask
from radgenome_hf.access.masks import PackedMasks
from radgenome_hf.io.nifti import NiftiFile, write_nifti
from radgenome_hf.training import FVLMd, RegionCropd, SliceSequenced, make_dataloader
from radgenome_hf.training import fvlm as fvlm_mod
from radgenome_hf.training import regions as regions_mod
from radgenome_hf.training import slices as slices_mod


@pytest.fixture()
def nifti_reads(monkeypatch):
    """Every read of voxel data from a NIfTI file (whole or cropped)."""
    reads: list[str] = []
    for name in ("read_raw", "read_raw_crop"):
        real = getattr(NiftiFile, name)
        monkeypatch.setattr(NiftiFile, name, lambda self, *a, _real=real, **k: reads.append(str(self.source))
                            or _real(self, *a, **k))
    volume_mod.clear_open_volumes()
    yield reads
    volume_mod.clear_open_volumes()


def _counted(monkeypatch, module, name: str) -> list:
    """Calls of a preset's array function (what an uncached sample computes)."""
    calls: list = []
    real = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _mask_sources(ds) -> list[str]:
    """Each row's grounding-mask source, from the stored column (nothing decoded)."""
    return ds.data.column("mask").combine_chunks().field("source").to_pylist()


@pytest.fixture(scope="module")
def rows(synthetic_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("preset_outputs")
    kw = dict(data_dir=str(synthetic_release.root), split="train", cache_dir=str(tmp / "hf"),
              volume_cache=str(tmp / "volumes"))
    vqa = datasets.load_dataset("radgenome", "vqa", **kw)
    grounded = [i for i, s in enumerate(_mask_sources(vqa)) if s != "whole"]
    return {"vqa": vqa.select(grounded[::7][:8]), "segmentation": datasets.load_dataset("radgenome", "segmentation", **kw)}


PRESETS = {
    "fvlm": ("segmentation", fvlm_mod, "fvlm_preprocess",
             lambda **k: FVLMd("volume", "masks", organs=["heart", "aorta"], target_spacing=(6.0, 6.0, 12.0),
                               pad_zyx=(16, 32, 32), margin_zyx=(1, 2, 2), **k)),
    "slices": ("vqa", slices_mod, "slice_sequence",
               lambda **k: SliceSequenced("volume", plane="coronal", n_slices=5, window=(-1000, 400), **k)),
    "region": ("vqa", regions_mod, "region_crop", lambda **k: RegionCropd("volume", masks_key="mask", margin=6.0, **k)),
}


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if isinstance(a[k], torch.Tensor):
            assert a[k].dtype == b[k].dtype, k
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        elif isinstance(a[k], np.ndarray):
            np.testing.assert_array_equal(a[k], b[k])
        elif k not in ("volume", "mask", "masks"):  # lazy objects of the row: compared through the outputs above
            assert a[k] == b[k], k


@pytest.mark.parametrize("name", PRESETS)
def test_a_second_epoch_reads_the_stored_outputs_which_equal_uncached_ones(name, rows, nifti_reads, monkeypatch):
    config, module, fn, make = PRESETS[name]
    ds = rows[config]
    n = min(len(ds), 6)
    uncached = [make(cache=False)(ds[i]) for i in range(n)]
    volume_mod.clear_open_volumes()
    calls = _counted(monkeypatch, module, fn)
    first = [make()(ds[i]) for i in range(n)]          # computes (rows of one volume and mask share an entry) and stores
    assert 0 < len(calls) <= n
    computed, reads = len(calls), len(nifti_reads)
    volume_mod.clear_open_volumes()                    # as a new worker or the next run sees it
    second = [make()(ds[i]) for i in range(n)]
    assert len(calls) == computed                      # nothing computed again
    assert len(nifti_reads) == reads                   # no volume decoded: the outputs came from the cache
    for a, b, c in zip(uncached, first, second):
        _same(a, b)
        _same(a, c)


@pytest.mark.parametrize("name", ["fvlm", "region"])
def test_make_dataloader_decodes_stored_outputs_without_the_transform(name, rows, monkeypatch):
    config, _, _, make = PRESETS[name]
    ds = rows[config].select(range(4))
    preset = make()
    loader = make_dataloader(ds, batch_size=1, num_workers=2, transform=preset)
    keys = ("volume", "mask" if name == "region" else "masks")
    first = [{k: b[k].clone() for k in keys} | {"box": b[f"volume_bbox{'_zyx' if name == 'fvlm' else ''}"]}
             for b in loader]
    calls = []
    real = type(preset).__call__
    monkeypatch.setattr(type(preset), "__call__", lambda self, d: calls.append(1) or real(self, d))
    assert all(preset.cached_readers(ds[i]) is not None for i in range(len(ds)))
    second = [{k: b[k].clone() for k in keys} | {"box": b[f"volume_bbox{'_zyx' if name == 'fvlm' else ''}"]}
              for b in loader]
    assert calls == []                                 # every sample a cache hit, decoded into the loader's ring
    for a, b in zip(first, second):
        for k in keys:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
        assert a["box"] == b["box"]


def test_a_changed_parameter_is_a_new_entry(rows, monkeypatch):
    ds = rows["vqa"]
    row = ds[0]
    variants = [
        SliceSequenced("volume", plane="coronal", n_slices=5),
        SliceSequenced("volume", plane="axial", n_slices=5),
        SliceSequenced("volume", plane="axial", n_slices=6),
        SliceSequenced("volume", plane="axial", n_slices=6, window=(-1000, 400)),
        SliceSequenced("volume", plane="axial", n_slices=6, spacing=(1.0, 1.0, 2.0)),
    ]
    keys = [v._entry(row, "volume").key for v in variants]
    assert len(set(keys)) == len(keys)
    crops = [RegionCropd("volume", masks_key="mask", margin=m, margin_unit=u) for m, u in ((6.0, "mm"), (12.0, "mm"),
                                                                                           (6.0, "voxel"))]
    assert len({c._entry(row).key for c in crops}) == 3
    m = row["mask"]
    sibling = next(n for n in lazymasks.open_packed_masks(m.path).names if n != m.structure)
    other = {**row, "mask": LazyMask(m.path, sibling, m.source, m.shape)}  # another structure of the same file
    assert crops[0]._entry(other).key != crops[0]._entry(row).key
    # each variant, computed after the others were stored, equals its own uncached output
    for v in variants:
        v(dict(row))
    for v in variants:
        _same(type(v)(**{**_init(v), "cache": False})(ds[0]), v(ds[0]))


def _init(v: SliceSequenced) -> dict:
    return dict(keys=v.keys, window=v.window, spacing=v.spacing, **v.kw)


def test_a_changed_mask_or_volume_is_never_served_stale(tmp_path):
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=1, n_valid_patients=0, shape=(32, 32, 24)),
                        progress=False)
    ds = datasets.load_dataset("radgenome", "vqa", data_dir=str(rel.root), split="train", cache_dir=str(tmp_path / "hf"),
                               volume_cache=str(tmp_path / "v"), mask_cache_dir=str(tmp_path / "m"))
    i = _mask_sources(ds).index("anatomy")
    crop = RegionCropd("volume", masks_key="mask", margin=1, margin_unit="voxel")
    before = crop(ds[i])
    # the packed mask rewritten (a re-packed source): another box for the structure
    lm = ds[i]["mask"]
    packed = PackedMasks.load(lm.path)
    new = np.zeros(packed.shape, bool)
    new[2:7, 3:9, 4:8] = True
    rewritten = PackedMasks(packed.shape, packed.affine)
    for name in packed.names:
        rewritten.add(name, new if name == lm.structure else packed.mask(name), source=packed.sources[name])
    rewritten.save(lm.path)
    lazymasks._PACKED_CACHE.clear()  # this process' LRU of packed files: what a new worker starts with
    after = crop(ds[i])
    assert after["volume_bbox"] == (1, 2, 3, 8, 10, 9) != before["volume_bbox"]
    _same(after, RegionCropd("volume", masks_key="mask", margin=1, margin_unit="voxel", cache=False)(ds[i]))
    # the volume rewritten with other voxels: slices of the new voxels
    slices = SliceSequenced("volume", n_slices=4)
    old = slices(ds[i])["volume"]
    v = ds[i]["volume"]
    write_nifti(v.path, np.asfortranarray(v.array() + 7), v.affine)
    volume_mod.clear_open_volumes()
    fresh = slices(ds[i])["volume"]
    torch.testing.assert_close(fresh, old + 7, rtol=0, atol=0)


def test_region_crop_of_a_vqa_rows_grounding_mask_decodes_only_the_box(rows, monkeypatch):
    ds = rows["vqa"]
    row = ds[0]
    mask: LazyMask = row["mask"]
    assert isinstance(mask, LazyMask) and mask.source in ("anatomy", "region")
    volume = row["volume"]
    full, full_mask = volume.array().copy(), mask.array().copy()
    volume_mod.wait_for_writes()
    volume_mod.clear_open_volumes()  # the volume is in the prepared cache now; nothing holds the whole grid
    sp = volume.spacing
    margin_vox = [int(np.ceil(6.0 / s - 1e-6)) for s in sp]
    tight = mask.bbox
    box = tuple(max(tight[a] - margin_vox[a], 0) for a in range(3)) + tuple(
        min(tight[a + 3] + margin_vox[a], full.shape[a]) for a in range(3))

    def no_full_grid(*a, **k):
        raise AssertionError("the whole grid was decoded")

    monkeypatch.setattr(LazyMask, "array", no_full_grid)
    monkeypatch.setattr(volume_mod.Volume, "array", no_full_grid)
    out = RegionCropd("volume", masks_key="mask", margin=6.0, cache=False)(ds[0])
    sl = tuple(slice(box[a], box[a + 3]) for a in range(3))
    assert out["volume_bbox"] == box
    np.testing.assert_array_equal(out["volume"][0].numpy().T, full[sl])       # (1, k, j, i) of the (i, j, k) box
    np.testing.assert_array_equal(out["mask"][0].numpy().T.astype(bool), full_mask[sl])
    assert full_mask[sl].sum() == mask.voxel_count                            # the whole structure is inside
    whole = LazyMask(None, None, "whole", None)
    out = RegionCropd("volume", masks_key="mask", cache=False)({**ds[0], "mask": whole})
    assert out["volume_bbox"] == (0, 0, 0, *full.shape) and bool(out["mask"].all())


def test_outputs_are_stored_as_lz4_frames_which_the_volumes_cache_reads(rows):
    from radgenome_hf.training import CTClipd
    from radgenome_hf.training.inputs import OUTPUT_CODEC

    row = rows["vqa"][0]
    preset = CTClipd("volume", target_spacing=(6.0, 6.0, 12.0), target_shape=(16, 16, 8), output="int16")
    out = preset(row)["volume"]
    entry = preset._entry(rows["vqa"][0], "volume")
    path = entry.cache.file_for(entry.key)
    assert path.suffix == ".b2f" and f'"codec": "{OUTPUT_CODEC[0]}"'.encode() in path.read_bytes()[:4096]
    assert entry.cache.codec == "ZSTD"  # the volume's own cache (raw volumes) keeps its codec and reads the output
    torch.testing.assert_close(torch.from_numpy(entry.cache.get_array(entry.key)), out, rtol=0, atol=0)
