"""What the README tells users to write goes through the fast paths: the rows' prepared cache, the per-process
LRU of open volumes, cached preset outputs, the HF formatting conventions, and the reused-buffer loader."""

from __future__ import annotations

import datasets
import numpy as np
import pytest
import torch

import radgenome_hf  # noqa: F401 - registers the builder and the feature types
from radgenome_hf.access import volume as volume_mod
from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.io.nifti import NiftiFile
from radgenome_hf.training import CTClipd, make_dataloader

SMALL = dict(target_spacing=(3.0, 3.0, 6.0), target_shape=(32, 32, 24), output="int16")


@pytest.fixture()
def nifti_reads(monkeypatch):
    """Counts every read of voxel data from a NIfTI file (whole or cropped), by path."""
    counts: dict[str, int] = {}
    for name in ("read_raw", "read_raw_crop"):
        real = getattr(NiftiFile, name)

        def counted(self, *a, _real=real, **k):
            counts[str(self.source)] = counts.get(str(self.source), 0) + 1
            return _real(self, *a, **k)

        monkeypatch.setattr(NiftiFile, name, counted)
    volume_mod.clear_open_volumes()
    yield counts
    volume_mod.clear_open_volumes()


@pytest.fixture(scope="module")
def vqa(synthetic_release, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("natural")
    return datasets.load_dataset("radgenome", "vqa", data_dir=str(synthetic_release.root), split="train",
                                 cache_dir=str(tmp / "hf"), volume_cache=str(tmp / "volumes"))


def _rows_of_one_volume(ds, n=3):
    names = ds["volume_name"]
    first = names[0]
    idx = [i for i, v in enumerate(names) if v == first][:n]
    assert len(idx) == n, "the synthetic release has several rows per volume"
    return idx


def test_second_row_of_a_volume_does_not_reread_the_file(vqa, nifti_reads):
    i, j, k = _rows_of_one_volume(vqa)
    box = (4, 6, 2, 30, 40, 20)
    a = vqa[i]["volume"].crop(box)
    path = vqa[i]["volume"].path
    assert nifti_reads == {path: 1}
    b = vqa[j]["volume"].crop(box)           # a fresh row, a fresh Volume object: served from the process LRU
    full = vqa[k]["volume"].array()
    assert nifti_reads == {path: 1}
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, full[4:30, 6:40, 2:20])
    assert not full.flags.writeable           # shared by the rows: read-only


def test_other_process_state_reads_the_prepared_cache_not_the_file(vqa, nifti_reads):
    i, j, _ = _rows_of_one_volume(vqa)
    expected = vqa[i]["volume"].array().copy()
    volume_mod.wait_for_writes()
    reads = dict(nifti_reads)
    volume_mod.clear_open_volumes()           # as in a new DataLoader worker or the next run
    v = vqa[j]["volume"]
    assert v.prepared_cache is not None and v.prepared_cache.root.name == "volumes"
    np.testing.assert_array_equal(v.crop((0, 0, 0, 8, 8, 8)), expected[:8, :8, :8])
    np.testing.assert_array_equal(v.array(), expected)
    assert nifti_reads == reads               # no new NIfTI read: the crop and the array came from the cache


def test_volume_cache_off(synthetic_release, tmp_path, nifti_reads):
    ds = datasets.load_dataset("radgenome", "vqa", data_dir=str(synthetic_release.root), split="train",
                               cache_dir=str(tmp_path / "hf"), volume_cache=False)
    v = ds[0]["volume"]
    assert v.prepared_cache is None
    v.array()
    assert sum(nifti_reads.values()) == 1


def test_with_format_torch_and_numpy(vqa):
    row = vqa.with_format("torch", dtype=torch.int16)[0]   # int16 kept (datasets' default would be int64)
    vol = vqa[0]["volume"]
    assert isinstance(row["volume"], torch.Tensor) and row["volume"].dtype == torch.int16
    assert tuple(row["volume"].shape) == vol.shape
    np.testing.assert_array_equal(row["volume"].numpy(), vol.array())
    mask = vqa.with_format("torch")[0]["mask"]
    assert mask.dtype == torch.bool and tuple(mask.shape) == vol.shape
    np.testing.assert_array_equal(mask.numpy(), vqa[0]["mask"].array())
    arr = vqa.with_format("numpy")[0]["volume"]
    assert isinstance(arr, np.ndarray) and arr.shape == vol.shape


def test_with_transform_runs_a_preset_on_batches_and_caches_its_output(vqa):
    ds = vqa.with_transform(CTClipd("volume", **SMALL))
    batch = ds[0:2]
    assert len(batch["volume"]) == 2 and batch["volume"][0].shape == (1, 24, 32, 32)
    assert batch["question"] == vqa[0:2]["question"]
    t = CTClipd("volume", **SMALL)
    row = vqa[0]
    readers = t.cached_readers(row)
    assert readers is not None               # the batch above stored the output
    np.testing.assert_array_equal(readers["volume"]().reshape(1, 24, 32, 32), batch["volume"][0].numpy())
    fresh = CTClipd("volume", cache=False, **SMALL)(row)["volume"]
    torch.testing.assert_close(fresh, batch["volume"][0], rtol=0, atol=0)
    assert CTClipd("volume", **{**SMALL, "target_shape": (16, 16, 8)}).cached_readers(row) is None  # other params


def test_streaming_map_with_a_preset(synthetic_release, tmp_path):
    ids = datasets.load_dataset("radgenome", "vqa", data_dir=str(synthetic_release.root), split="train",
                                streaming=True, cache_dir=str(tmp_path / "hf"), volume_cache=str(tmp_path / "v"))
    row = next(iter(ids.map(CTClipd("volume", **SMALL))))
    assert isinstance(row["volume"], torch.Tensor) and row["volume"].shape == (1, 24, 32, 32)


def _ids(batch):
    return list(zip(batch["volume_name"], batch["question"]))


def test_make_dataloader_serves_cached_preset_outputs_through_the_ring(vqa, monkeypatch):
    ds = vqa.select(range(12))
    t = CTClipd("volume", **SMALL)
    loader = make_dataloader(ds, batch_size=2, num_workers=2, transform=t)
    assert type(loader).__name__ == "ThreadedDataLoader" and len(loader) == 6
    first = [(_ids(b), b["volume"].clone()) for b in loader]
    volume_mod.wait_for_writes()
    calls = []
    real = CTClipd.__call__
    monkeypatch.setattr(CTClipd, "__call__", lambda self, d: calls.append(1) or real(self, d))
    allocs = None
    for epoch in range(2):
        second = [(_ids(b), b["volume"].clone()) for b in loader]
        allocs = loader.allocations if allocs is None else allocs
        assert loader.allocations == allocs     # the ring is reused, nothing allocated per batch
    assert calls == []                          # every sample was a cache hit, decoded into the ring
    assert [i for i, _ in first] == [i for i, _ in second]
    for (_, a), (_, b) in zip(first, second):
        assert a.shape == (2, 1, 24, 32, 32) and a.dtype == torch.int16
        torch.testing.assert_close(a, b, rtol=0, atol=0)


class _Plain:  # a user transform: holds the GIL, so make_dataloader picks worker processes
    def __call__(self, row):
        return {"n": len(row["question"]), "volume_name": row["volume_name"]}


def test_make_dataloader_processes_for_other_transforms_and_streaming_nodes(synthetic_release, tmp_path, vqa):
    loader = make_dataloader(vqa.select(range(6)), batch_size=3, num_workers=2, transform=_Plain())
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert sum(len(b["n"]) for b in loader) == 6
    ids = datasets.load_dataset("radgenome", "vqa", data_dir=str(synthetic_release.root), split="train",
                                streaming=True, cache_dir=str(tmp_path / "hf"), volume_cache=str(tmp_path / "v"))
    seen = []
    for rank in range(2):
        for b in make_dataloader(ids, batch_size=4, num_workers=2, rank=rank, world_size=2):
            seen += _ids(b)
    assert sorted(seen) == sorted(zip(vqa["volume_name"], vqa["question"]))  # every row once over the nodes


def test_segmentation_with_format_numpy_gives_the_label_map(synthetic_release, tmp_path):
    ds = datasets.load_dataset("radgenome", "segmentation", data_dir=str(synthetic_release.root), split="train",
                               cache_dir=str(tmp_path / "hf"), volume_cache=str(tmp_path / "v"))
    ms = ds[0]["masks"]
    got = ds.with_format("numpy")[0]["masks"]
    names = ms.anatomy.names
    assert got.shape == ds[0]["volume"].shape and got.max() <= len(names)
    np.testing.assert_array_equal(got, ms.label_map(names))
    np.testing.assert_array_equal(got > 0, ms.union(names))


def test_slice_preset_takes_a_datasets_batch(vqa):
    from radgenome_hf.training import SliceSequenced

    rows = vqa.select(range(2))
    batch = rows.with_transform(SliceSequenced("volume", n_slices=4))[0:2]
    assert len(batch["volume"]) == 2
    one = SliceSequenced("volume", n_slices=4)(rows[0])["volume"]
    torch.testing.assert_close(torch.as_tensor(batch["volume"][0]), torch.as_tensor(one), rtol=0, atol=0)
