"""Epoch 1 without fresh memory per volume: decodes into reused buffers, preset outputs written into the loader's
ring, frames compressed in pieces by the loader thread alone, one torch thread per loader thread (issue 13)."""

from __future__ import annotations

import json
import threading
import tracemalloc

import blosc2
import nibabel as nib
import numpy as np
import pytest
import torch

from radgenome_hf.access import cache as cache_mod
from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.access.volume import Volume, clear_open_volumes
from radgenome_hf.errors import CorruptVolumeError
from radgenome_hf.io.nifti import NiftiFile
from radgenome_hf.training import CTClipd, ctclip_preprocess
from radgenome_hf.training.inputs import OutputEntry, as_array, reuse_buffers
from radgenome_hf.training.loaders import ThreadedDataLoader, _one_torch_thread

SHAPE = (256, 256, 64)  # 8 MiB of int16: well above the 1 MiB read step


def _ct(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    arr = np.full(SHAPE, -1000, np.int16)
    arr[40:216, 50:200, 5:60] = rng.integers(-200, 400, (176, 150, 55), dtype=np.int16)
    return arr


@pytest.fixture(scope="module")
def volumes(tmp_path_factory) -> list[tuple[str, np.ndarray]]:
    root = tmp_path_factory.mktemp("reused")
    out = []
    for i in range(3):
        arr = _ct(i)
        path = str(root / f"train_{i + 1}_a_1.nii.gz")
        img = nib.Nifti1Image(arr, np.diag([0.73, 0.73, 1.0, 1.0]))
        img.header.set_slope_inter(1, -1024 if i == 2 else 0)  # one volume with an integral intercept
        nib.save(img, path)
        out.append((path, arr.astype(np.int16) - (1024 if i == 2 else 0)))
    return out


def _peak(fn) -> tuple[object, int]:
    tracemalloc.start()
    try:
        got = fn()
        return got, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_read_raw_inflates_into_out_without_a_second_volume_sized_buffer(volumes):
    path, _ = volumes[0]
    f = NiftiFile.open(path)
    want = np.asanyarray(nib.load(path).dataobj.get_unscaled())
    out = np.empty(f.shape, f.stored_dtype, order="F")
    got, peak = _peak(lambda: f.read_raw(out=out))
    assert got is out and np.array_equal(out, want)
    assert peak < out.nbytes / 2, f"read_raw(out=) allocated {peak} bytes for a {out.nbytes}-byte volume"
    # without out= one buffer of the file's size, not two (gzip readers copy a whole request otherwise)
    arr, peak = _peak(f.read_raw)
    assert np.array_equal(arr, want) and peak < 1.5 * arr.nbytes


def test_read_raw_out_big_endian_and_bad_buffers(tmp_path, volumes):
    arr = _ct(7)
    path = tmp_path / "be.nii"
    img = nib.Nifti1Image(arr.astype(">i2"), np.eye(4))
    nib.save(img, path)
    f = NiftiFile.open(path)
    out = np.zeros(SHAPE, np.int16, order="F")
    assert np.array_equal(f.read_raw(out=out), arr)
    with pytest.raises(ValueError, match="out= must be a writable F-contiguous"):
        f.read_raw(out=np.zeros(SHAPE, np.int16))  # C order
    with pytest.raises(ValueError, match="out= must be"):
        f.read_raw(out=np.zeros(SHAPE, np.float32, order="F"))
    data = open(volumes[0][0], "rb").read()
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(data[: len(data) // 2])
    g = NiftiFile.open(cut)
    with pytest.raises(CorruptVolumeError, match="cut.nii.gz"):
        g.read_raw(out=np.empty(g.shape, g.stored_dtype, order="F"))


def test_volume_nothing_keeps_decodes_straight_into_out(volumes, monkeypatch):
    clear_open_volumes()
    for path, hu in volumes:
        v = Volume.open(path)
        v.retain = False
        out = np.empty(v.shape, v.dtype, order="F")
        got, peak = _peak(lambda: v.array(out=out))
        assert got is out and np.array_equal(out, hu)
        assert not v.loaded and peak < out.nbytes / 2
    # a retained volume still goes through the process LRU: a second row of it reads no file
    reads = []
    real = NiftiFile.read_raw
    monkeypatch.setattr(NiftiFile, "read_raw", lambda self, out=None: reads.append(out) or real(self, out))
    v = Volume.open(volumes[0][0])
    v.array(out=np.empty(v.shape, v.dtype, order="F"))
    assert np.array_equal(Volume.open(volumes[0][0]).array(), volumes[0][1])
    assert len(reads) == 1 and reads[0] is None
    with pytest.raises(ValueError, match="out= has shape"):
        Volume.open(volumes[1][0]).array(out=np.empty((4, 4, 4), np.int16, order="F"))


def test_presets_decode_every_volume_into_one_thread_buffer(volumes):
    rows = []
    with reuse_buffers() as scratch:
        for path, hu in volumes:
            v = Volume.open(path)
            v.retain = False
            arr, sp, _ = as_array(v, transient=True)
            assert np.array_equal(arr, hu) and sp == (0.73, 0.73, 1.0)
            rows.append(arr)
        assert scratch.allocations == 1  # three volumes of one shape, one buffer
        # a volume that is kept (retain) or not transient is never put in the scratch buffer
        kept = Volume.open(volumes[0][0])
        assert not np.may_share_memory(as_array(kept, transient=True)[0], scratch.buf)
    assert np.may_share_memory(rows[0], rows[-1])  # the same memory, reused
    outside = Volume.open(volumes[1][0])
    outside.retain = False
    assert not np.may_share_memory(as_array(outside, transient=True)[0], scratch.buf)


def test_ctclip_writes_into_a_given_output_and_fill_uses_the_loaders_buffer(volumes, tmp_path):
    path, hu = volumes[1]
    shape = (96, 96, 32)
    want = ctclip_preprocess(hu, spacing=(0.73, 0.73, 1.0), target_shape=shape, output="int16")
    out = torch.full((1, 32, 96, 96), 7, dtype=torch.int16)
    got = ctclip_preprocess(Volume.open(path), target_shape=shape, output="int16", out=out)
    assert got is out and torch.equal(out, want)
    with pytest.raises(ValueError, match="out= must be a contiguous"):
        ctclip_preprocess(hu, spacing=(1, 1, 1), target_shape=shape, output="float32", out=out)

    cache = PreparedCache(tmp_path / "cache")
    preset = CTClipd("volume", output="int16", target_shape=shape)
    ring = np.zeros((2, 1, 32, 96, 96), np.int16)
    asked = []

    def alloc(key, shp, dtype, order="C"):
        asked.append((key, tuple(shp), np.dtype(dtype)))
        return ring[1]

    with reuse_buffers():
        sample = preset.fill({"volume": Volume.open(path, cache=cache)}, alloc)
    assert asked == [("volume", (1, 32, 96, 96), np.dtype(np.int16))]
    assert sample["volume"].data_ptr() == torch.from_numpy(ring[1]).data_ptr()
    assert torch.equal(sample["volume"], want)
    again = preset({"volume": Volume.open(path, cache=cache)})  # stored from the ring: a cache hit now
    assert torch.equal(again["volume"], want)


def test_threaded_loader_misses_fill_the_ring_and_touch_no_spare_slot(volumes, tmp_path):
    shape = (96, 96, 32)
    want = [ctclip_preprocess(hu, spacing=(0.73, 0.73, 1.0), target_shape=shape, output="int16")
            for _, hu in volumes]
    cache = PreparedCache(tmp_path / "cache")
    rows = [{"volume": Volume.open(p, cache=cache), "i": i} for i, (p, _) in enumerate(volumes)] * 3
    loader = ThreadedDataLoader(rows, batch_size=1, num_threads=2,
                                transform=CTClipd("volume", output="int16", target_shape=shape, cache=False))
    for _ in range(2):
        for batch in loader:
            i = batch["i"][0]
            assert torch.equal(batch["volume"][0], want[i])
            ring = [b for s in loader._slots for b in s.buffers.values()]  # noqa: SLF001
            assert any(batch["volume"].data_ptr() == b.data_ptr() for b in ring)  # written in place, no copy
    used = [s for s in loader._slots if s.buffers]  # noqa: SLF001
    assert len(used) <= loader.prefetch < len(loader._slots)  # noqa: SLF001 - the spare slot is never mapped
    assert sum(s.allocations for s in loader._slots) == len(used)  # noqa: SLF001 - one buffer each, reused


def test_preset_outputs_are_compressed_on_the_loader_thread_alone(tmp_path, monkeypatch):
    cache = PreparedCache(tmp_path / "c")
    assert cache.nthreads is None  # the cache's own writes use every core
    seen = []
    real = blosc2.compress2
    monkeypatch.setattr(blosc2, "compress2", lambda src, **kw: seen.append(kw["cparams"].nthreads) or real(src, **kw))
    entry = OutputEntry(cache, PreparedCache.key_for(b"out", "ctclip"), {"": ("volume", "tensor")})
    value = torch.arange(6 * 1024, dtype=torch.int16).reshape(1, 6, 32, 32)
    entry.store({"": value})
    assert seen == [1]  # a loader's threads or workers are the parallelism: no blosc2 team per store
    assert torch.equal(entry.load()["volume"], value)


def test_frames_are_stored_in_pieces_and_older_single_chunk_frames_still_read(tmp_path, monkeypatch):
    monkeypatch.setattr(cache_mod, "_FRAME_PIECE", 1 << 20)
    cache = PreparedCache(tmp_path / "c")
    arr = np.arange(3 * 1024 * 1024 + 17, dtype=np.int16).reshape(-1, 1)  # 6 MiB + 34 B: 7 pieces
    key = PreparedCache.key_for(b"pieces")
    path = cache.put_array(key, arr, layout="frame", codec=("LZ4", 9), nthreads=1)
    with open(path, "rb") as f:
        meta = cache_mod._frame_header(path, f)[0]  # noqa: SLF001
    assert len(meta["pieces"]) == 7 and meta["piece_nbytes"] == 1 << 20
    assert np.array_equal(cache.get_array(key), arr)

    # a frame written before pieces: one blosc2 chunk and no "pieces" in its header
    old = PreparedCache.key_for(b"old")
    comp = blosc2.compress2(arr.reshape(-1), typesize=2)
    head = json.dumps({"shape": list(arr.shape), "dtype": arr.dtype.str, "reversed": False, "codec": "BLOSCLZ",
                       "clevel": 5}).encode()
    target = cache._frame_path(old)  # noqa: SLF001
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(cache_mod._frame_prefix(head, comp).ljust(cache_mod._FRAME_HEADER, b"\0") + comp)  # noqa: SLF001
    assert np.array_equal(cache.get_array(old), arr)

    # piece sizes that do not add up to the payload: a damaged entry, dropped (a miss), never wrong voxels
    bad = dict(meta, pieces=meta["pieces"][:-1])
    text = json.dumps(bad).encode()
    payload = path.read_bytes()[cache_mod._FRAME_HEADER:]  # noqa: SLF001
    path.write_bytes(cache_mod._frame_prefix(text, payload).ljust(cache_mod._FRAME_HEADER, b"\0") + payload)  # noqa: SLF001
    assert cache.get_array(key) is None
    assert key not in cache


def test_loader_threads_get_one_torch_thread_and_nobody_else_changes():
    main_before = torch.get_num_threads()
    seen = {}

    def loader_thread():
        _one_torch_thread()
        seen["loader"] = torch.get_num_threads()

    def later_thread():
        seen["later"] = torch.get_num_threads()

    for target in (loader_thread, later_thread):
        t = threading.Thread(target=target)
        t.start()
        t.join()
    assert seen["loader"] == 1
    assert torch.get_num_threads() == main_before
    assert seen["later"] == main_before  # threads started afterwards still get the process default
