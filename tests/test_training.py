"""collate_volumes, make_dataloader (node/worker sharding) and ThreadedVolumeLoader."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from radgenome_hf.training import ThreadedVolumeLoader, collate_volumes, dist_info, make_dataloader


# ---------------------------------------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------------------------------------
def test_collate_pads_per_key_and_records_shapes():
    batch = [
        {"ct": np.full((4, 3, 2), 7, np.int16), "mask": np.ones((4, 3, 2), bool), "name": "a", "n": 1},
        {"ct": np.full((2, 5, 2), 9, np.int16), "mask": np.ones((2, 5, 2), bool), "name": "b", "n": 2},
    ]
    out = collate_volumes(batch, pad_values={"ct": -1000})
    assert out["ct"].dtype == torch.int16 and tuple(out["ct"].shape) == (2, 4, 5, 2)
    assert out["ct_shape"].tolist() == [[4, 3, 2], [2, 5, 2]]
    assert torch.all(out["ct"][0, :, :3] == 7) and torch.all(out["ct"][0, :, 3:] == -1000)
    assert torch.all(out["ct"][1, :2] == 9) and torch.all(out["ct"][1, 2:] == -1000)
    assert out["mask"].dtype == torch.bool and int(out["mask"].sum()) == 24 + 20  # default pad 0 = False
    assert out["name"] == ["a", "b"] and out["n"] == [1, 2]


def test_collate_same_shape_stacks_no_pad_lists_and_no_float64():
    same = [{"x": torch.arange(6).reshape(2, 3)}, {"x": torch.arange(6).reshape(2, 3) + 6}]
    out = collate_volumes(same)
    assert torch.equal(out["x"], torch.arange(12).reshape(2, 2, 3))
    diff = [{"x": np.zeros((2, 2))}, {"x": np.zeros((3, 1))}, {"x": np.zeros((1, 1))}]  # float64 input
    out = collate_volumes(diff, pad=False)
    assert isinstance(out["x"], list) and [tuple(t.shape) for t in out["x"]] == [(2, 2), (3, 1), (1, 1)]
    assert all(t.dtype == torch.float32 for t in out["x"])
    padded = collate_volumes(diff)
    assert padded["x"].dtype == torch.float32 and tuple(padded["x"].shape) == (3, 3, 2)
    # a key missing in one sample is a list with None, not dropped
    assert collate_volumes([{"a": 1}, {"b": 2}]) == {"a": [1, None], "b": [None, 2]}


# ---------------------------------------------------------------------------------------------------------
# make_dataloader
# ---------------------------------------------------------------------------------------------------------
def _ids(loader) -> list[int]:
    out = []
    for batch in loader:
        ids = batch["id"]
        out.extend(int(i) for i in (ids.tolist() if isinstance(ids, torch.Tensor) else ids))
    return out


@pytest.fixture(scope="module")
def hf_rows():
    datasets = pytest.importorskip("datasets")
    n = 37
    return datasets.Dataset.from_dict(
        {"id": list(range(n)), "ct": [np.full((2 + i % 3, 3, 2), i, np.int16).tolist() for i in range(n)]}
    )


def test_streaming_two_workers_every_row_once(hf_rows):
    ds = hf_rows.to_iterable_dataset(num_shards=6)
    loader = make_dataloader(ds, batch_size=4, num_workers=2, rank=0, world_size=1)
    ids = _ids(loader)
    assert sorted(ids) == list(range(37))  # every row exactly once


def test_streaming_split_by_node_disjoint_complete(hf_rows, monkeypatch):
    ds = hf_rows.to_iterable_dataset(num_shards=4)
    parts = [_ids(make_dataloader(ds, batch_size=5, num_workers=2, rank=r, world_size=2)) for r in range(2)]
    assert not set(parts[0]) & set(parts[1])
    assert sorted(parts[0] + parts[1]) == list(range(37))
    # the same from the environment (what torchrun sets)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert dist_info() == (1, 2)
    assert sorted(_ids(make_dataloader(ds, batch_size=5, num_workers=0))) == sorted(parts[1])


def test_map_style_split_shuffle_and_transform(hf_rows):
    parts = [
        _ids(make_dataloader(hf_rows, batch_size=3, num_workers=0, rank=r, world_size=2, shuffle=True, seed=1))
        for r in range(2)
    ]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == list(range(37))
    assert parts[0] != sorted(parts[0])  # shuffled

    ds = hf_rows.with_format("numpy")

    def tf(sample):
        sample["ct"] = sample["ct"].astype(np.int16)
        return sample

    batch = next(iter(make_dataloader(ds, batch_size=3, num_workers=0, transform=tf, pad_values={"ct": -1})))
    assert batch["ct"].dtype == torch.int16 and tuple(batch["ct"].shape) == (3, 4, 3, 2)
    assert batch["ct_shape"][:, 0].tolist() == [2, 3, 4] and int(batch["ct"][0, 3, 0, 0]) == -1


def test_plain_torch_dataset_split():
    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 11

        def __getitem__(self, i):
            return {"id": i}

    parts = [_ids(make_dataloader(DS(), batch_size=2, num_workers=0, rank=r, world_size=3)) for r in range(3)]
    assert sorted(sum(parts, [])) == list(range(11)) and parts[1] == [1, 4, 7, 10]


# ---------------------------------------------------------------------------------------------------------
# ThreadedVolumeLoader
# ---------------------------------------------------------------------------------------------------------
def test_threaded_loader_order_values_and_buffer_reuse():
    shapes = [(6, 5, 4), (6, 5, 4), (3, 5, 4), (6, 5, 4)] * 5
    items = [
        (lambda i=i, s=s: {"image": np.full(s, i, np.int16), "label": np.full(s, i % 7, np.uint8), "name": f"v{i}"})
        for i, s in enumerate(shapes)
    ]
    loader = ThreadedVolumeLoader(items, num_threads=2, prefetch=3)
    ptrs = set()
    seen = []
    for sample in loader:
        i = sample["index"]
        assert tuple(sample["image"].shape) == shapes[i] and sample["image"].dtype == torch.int16
        assert torch.all(sample["image"] == i) and torch.all(sample["label"] == i % 7) and sample["name"] == f"v{i}"
        ptrs.add(sample["image"].data_ptr())
        seen.append(i)
    assert seen == list(range(len(items)))
    assert len(ptrs) <= 4  # ring of prefetch + 1 slots, reused
    assert loader.allocations <= 2 * 4  # one buffer per key per slot, never per sample
    before = loader.allocations
    assert [s["index"] for s in loader] == seen and loader.allocations == before  # second epoch: no allocation


def test_threaded_loader_paths_and_alloc_callables(tmp_path):
    rng = np.random.default_rng(0)
    arrays = [np.asfortranarray(rng.integers(-1000, 1000, (8, 7, 6)).astype(np.int16)) for _ in range(4)]
    npy = []
    for n, a in enumerate(arrays):
        np.save(tmp_path / f"v{n}.npy", a)
        npy.append(tmp_path / f"v{n}.npy")
    sources = [{"image": p, "label": (lambda alloc, n=n: _fill(alloc, n))} for n, p in enumerate(npy)]
    got = [(s["index"], s["image"].clone(), s["label"].clone()) for s in ThreadedVolumeLoader(sources, num_threads=2)]
    for idx, img, lab in got:
        np.testing.assert_array_equal(img.numpy(), arrays[idx])
        assert torch.all(lab == idx) and lab.dtype == torch.uint8


def _fill(alloc, n):
    out = alloc("label", (4, 4, 4), np.uint8)
    out.fill(n)
    return out


def test_threaded_loader_prepared_cache_files(tmp_path):
    cache_mod = pytest.importorskip("radgenome_hf.access.cache")
    cache = cache_mod.PreparedCache(tmp_path / "cache", max_bytes=1 << 30)
    rng = np.random.default_rng(1)
    arrays = [np.asfortranarray(rng.integers(-1000, 1000, (20, 18, 9)).astype(np.int16)) for _ in range(3)]
    paths = []
    for n, a in enumerate(arrays):
        key = cache.key_for(f"vol{n}".encode(), "hu")
        paths.append(cache.put_array(key, a))
    for s in ThreadedVolumeLoader(paths, num_threads=2):
        np.testing.assert_array_equal(s["image"].numpy(), arrays[s["index"]])  # (i, j, k), F-ordered view


@pytest.mark.parametrize("layout", ["frame", "chunked"])
def test_threaded_loader_cache_readers_no_allocation_on_second_epoch(tmp_path, layout):
    from radgenome_hf.access.cache import PreparedCache

    cache = PreparedCache(tmp_path / "cache", layout=layout)
    rng = np.random.default_rng(2)
    cts = [rng.integers(-1000, 1000, (12, 16, 14)).astype(np.int16) for _ in range(3)]  # C-ordered (D, H, W)
    labs = [(c > 0).astype(np.uint8) + 1 for c in cts]
    keys = []
    for n, (c, lab) in enumerate(zip(cts, labs)):
        kc, kl = cache.key_for(f"ct{n}".encode()), cache.key_for(f"lab{n}".encode())
        cache.put_array(kc, c)
        cache.put_array(kl, lab)
        keys.append((kc, kl))
    items = [{"image": cache.reader(keys[i % 3][0]), "label": cache.reader(keys[i % 3][1])} for i in range(9)]
    loader = ThreadedVolumeLoader(items, num_threads=2, prefetch=2)
    for s in loader:
        i = s["index"] % 3
        assert s["image"].dtype == torch.int16 and s["label"].dtype == torch.uint8
        np.testing.assert_array_equal(s["image"].numpy(), cts[i])
        np.testing.assert_array_equal(s["label"].numpy(), labs[i])
    first = loader.allocations
    assert first <= 2 * 3  # one buffer per key per ring slot, never per sample
    ptrs = set()
    for s in loader:  # second epoch: decoded into the same buffers, nothing allocated
        ptrs.add(s["image"].data_ptr())
        np.testing.assert_array_equal(s["image"].numpy(), cts[s["index"] % 3])
    assert loader.allocations == first and len(ptrs) <= 3
    # crops through the loader equal slicing of the full array
    boxes = [(1, 2, 3, 9, 14, 11), (0, 0, 0, 12, 16, 14), (5, 7, 2, 6, 16, 9)]
    crops = [{"image": cache.reader(keys[n][0], b), "label": cache.reader(keys[n][1], b)} for n, b in enumerate(boxes)]
    for s in ThreadedVolumeLoader(crops, num_threads=2):
        n = s["index"]
        sl = tuple(slice(boxes[n][a], boxes[n][a + 3]) for a in range(3))
        np.testing.assert_array_equal(s["image"].numpy(), cts[n][sl])
        np.testing.assert_array_equal(s["label"].numpy(), labs[n][sl])


def test_threaded_loader_frame_file_paths(tmp_path):
    from radgenome_hf.access.cache import PreparedCache

    cache = PreparedCache(tmp_path, layout="frame")
    arrays = [np.asfortranarray(np.random.default_rng(n).integers(-9, 9, (10, 6, 4)).astype(np.int16)) for n in range(3)]
    paths = [cache.put_array(cache.key_for(f"v{n}".encode()), a) for n, a in enumerate(arrays)]
    assert all(p.suffix == ".b2f" for p in paths)
    for s in ThreadedVolumeLoader(paths, num_threads=2):
        assert s["image"].numpy().flags.f_contiguous  # (i, j, k) as put, zero-copy view of the ring
        np.testing.assert_array_equal(s["image"].numpy(), arrays[s["index"]])
