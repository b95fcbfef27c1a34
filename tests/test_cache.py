"""PreparedCache: hits and misses, invalidation, layout, atomic concurrent writers, LRU eviction."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from radgenome_hf.access.cache import PreparedCache, source_identity
from radgenome_hf.config import cache_root

SHAPE = (48, 40, 20)


def _vol(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asfortranarray(rng.integers(-1024, 2000, SHAPE).astype(np.int16))


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RADGENOME_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert PreparedCache().root == tmp_path / "c"


def test_hit_miss_layout_and_crop(tmp_path):
    cache = PreparedCache(tmp_path)
    src = tmp_path / "v.nii.gz"
    src.write_bytes(b"x" * 10)
    key = cache.key_for(src, "hu")
    assert cache.get_array(key) is None and key not in cache
    a = _vol()
    path = cache.put_array(key, a)
    assert path.suffix == ".b2nd" and key in cache
    got = cache.get_array(key)
    np.testing.assert_array_equal(got, a)
    assert got.flags.f_contiguous and got.dtype == np.int16  # stored (k, j, i) C-order, returned as put
    import blosc2

    assert blosc2.open(str(path)).shape == SHAPE[::-1]
    box = (3, 5, 2, 40, 33, 19)
    np.testing.assert_array_equal(cache.crop(key, box), a[3:40, 5:33, 2:19])
    # a C-ordered tensor (e.g. a preset's (k, j, i) int16 grid) is stored as is, under a derived key
    t = np.ascontiguousarray(a.T)
    tkey = cache.key_for(src, "ctclip", size=[240, 480, 480])
    assert tkey != key and tkey != cache.key_for(src, "ctclip", size=[240, 480, 481])
    cache.put_array(tkey, t)
    got_t = cache.get_array(tkey)
    assert got_t.flags.c_contiguous
    np.testing.assert_array_equal(got_t, t)
    np.testing.assert_array_equal(cache.crop(tkey, (1, 2, 3, 5, 6, 7)), t[1:5, 2:6, 3:7])
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]


def test_invalidation_when_source_changes(tmp_path):
    cache = PreparedCache(tmp_path / "c")
    src = tmp_path / "v.nii.gz"
    src.write_bytes(b"abc")
    calls = []

    def producer():
        calls.append(1)
        return _vol(len(calls))

    first = cache.get_or_create(src, producer, "hu")
    again = cache.get_or_create(src, producer, "hu")
    assert len(calls) == 1
    np.testing.assert_array_equal(first, again)
    st = src.stat()
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000))  # touch
    cache.get_or_create(src, producer, "hu")
    assert len(calls) == 2
    src.write_bytes(b"abcd")  # rewrite, new size
    third = cache.get_or_create(src, producer, "hu")
    assert len(calls) == 3
    np.testing.assert_array_equal(third, _vol(3))
    assert source_identity(b"abc") != source_identity(b"abd")
    pinned = "hf://datasets/org/repo@" + "a" * 40 + "/vol.nii.gz"
    assert source_identity(pinned) == "url:" + pinned  # immutable revision: no network needed


def _writer(root: str, key: str, seed: int, barrier) -> None:
    cache = PreparedCache(root)
    barrier.wait()
    for _ in range(3):
        cache.put_array(key, _vol(seed))


def _reader(root: str, key: str, barrier, out) -> None:
    cache = PreparedCache(root)
    barrier.wait()
    seen = {"none": 0, "ok": 0, "bad": 0}
    valid = [_vol(s) for s in range(3)]
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline and seen["ok"] < 20:
        got = cache.get_array(key)
        if got is None:
            seen["none"] += 1
        elif any(np.array_equal(got, v) for v in valid):
            seen["ok"] += 1
        else:
            seen["bad"] += 1
    out.put(seen)


def test_atomic_concurrent_writers(tmp_path):
    ctx = mp.get_context("spawn")
    key = PreparedCache.key_for(b"same source", "hu")
    barrier = ctx.Barrier(4)
    out = ctx.Queue()
    procs = [ctx.Process(target=_writer, args=(str(tmp_path), key, s, barrier)) for s in range(3)]
    procs.append(ctx.Process(target=_reader, args=(str(tmp_path), key, barrier, out)))
    for p in procs:
        p.start()
    seen = out.get(timeout=60)
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert seen["bad"] == 0 and seen["ok"] > 0
    final = PreparedCache(tmp_path).get_array(key)
    assert any(np.array_equal(final, _vol(s)) for s in range(3))
    files = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert files == [f"{key}.b2nd"]  # no temp files left behind


def test_lru_eviction_and_reader_survives(tmp_path):
    probe = PreparedCache(tmp_path / "probe")
    size = probe.put_array(probe.key_for(b"p"), _vol(0)).stat().st_size
    cache = PreparedCache(tmp_path / "c", max_bytes=int(size * 2.5))
    keys = [cache.key_for(bytes([i])) for i in range(4)]
    cache.put_array(keys[0], _vol(0))
    time.sleep(0.02)
    cache.put_array(keys[1], _vol(1))
    time.sleep(0.02)
    b2, _ = cache._open(keys[0])  # a reader holds key 0 open, and touches it (now most recent)
    time.sleep(0.02)
    cache.put_array(keys[2], _vol(2))  # over budget: key 1 is least recently used
    assert keys[0] in cache and keys[1] not in cache and keys[2] in cache
    time.sleep(0.02)
    cache.put_array(keys[3], _vol(3))  # now key 0 goes
    assert keys[0] not in cache and keys[3] in cache
    assert cache.size_bytes() <= cache.max_bytes
    np.testing.assert_array_equal(b2[()].T, _vol(0))  # the open reader still works after eviction
    cache.clear()
    assert cache.size_bytes() == 0
    with pytest.raises(ValueError):
        cache.path_for("../../etc")


# ---------------------------------------------------------------------------------------------------------
# decode into a given buffer; the one-shot "frame" layout
# ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["chunked", "frame"])
def test_get_array_out_writes_into_the_given_buffer(tmp_path, layout):
    cache = PreparedCache(tmp_path, layout=layout)
    a = _vol(5)  # F-ordered (i, j, k)
    t = np.ascontiguousarray(_vol(6).T)  # C-ordered (k, j, i) tensor
    ka, kt = cache.key_for(b"a"), cache.key_for(b"t")
    pa = cache.put_array(ka, a)
    cache.put_array(kt, t)
    assert pa.suffix == (".b2f" if layout == "frame" else ".b2nd") and cache.file_for(ka) == pa
    buf = np.full(SHAPE, 7, np.int16, order="F")
    got = cache.get_array(ka, out=buf)
    assert got is buf
    np.testing.assert_array_equal(buf, a)
    tbuf = np.zeros(t.shape, np.int16)
    assert cache.get_array(kt, out=tbuf) is tbuf
    np.testing.assert_array_equal(tbuf, t)
    # a buffer in the other memory order still gets the right values (one extra copy)
    cbuf = np.zeros(SHAPE, np.int16)
    assert cache.get_array(ka, out=cbuf) is cbuf
    np.testing.assert_array_equal(cbuf, a)
    with pytest.raises(ValueError, match="shape"):
        cache.get_array(ka, out=np.zeros((3, 3, 3), np.int16))
    with pytest.raises(ValueError, match="dtype"):
        cache.get_array(ka, out=np.zeros(SHAPE, np.float32, order="F"))
    plain = cache.get_array(ka)
    assert plain.flags.f_contiguous and plain.dtype == np.int16
    np.testing.assert_array_equal(plain, a)


@pytest.mark.parametrize("layout", ["chunked", "frame"])
def test_crop_equals_full_array_slicing(tmp_path, layout):
    cache = PreparedCache(tmp_path, layout=layout, chunks=(16, 16, 8), blocks=(8, 8, 4))
    a = _vol(3)
    lab = (np.asfortranarray(_vol(4)) % 5).astype(np.uint8)  # a uint8 label map (stored without shuffle)
    ka, kl = cache.key_for(b"ct"), cache.key_for(b"lab")
    cache.put_array(ka, a)
    cache.put_array(kl, lab)
    rng = np.random.default_rng(0)
    for _ in range(6):
        lo = [int(rng.integers(0, s)) for s in SHAPE]
        hi = [int(rng.integers(l + 1, s + 1)) for l, s in zip(lo, SHAPE)]
        sl = tuple(slice(l, h) for l, h in zip(lo, hi))
        np.testing.assert_array_equal(cache.crop(ka, (*lo, *hi)), a[sl])
        np.testing.assert_array_equal(cache.crop(kl, (*lo, *hi)), lab[sl])
        buf = np.empty(a[sl].shape, np.int16, order="F")
        assert cache.crop(ka, (*lo, *hi), out=buf) is buf
        np.testing.assert_array_equal(buf, a[sl])
    # boxes past the edge are clipped like numpy slicing
    np.testing.assert_array_equal(cache.crop(ka, (40, -5, 15, 99, 10, 99)), a[40:, 0:10, 15:])
    assert cache.crop(cache.key_for(b"missing"), (0, 0, 0, 1, 1, 1)) is None


def test_frame_and_chunked_replace_each_other_and_count_for_eviction(tmp_path):
    cache = PreparedCache(tmp_path)
    key = cache.key_for(b"v")
    a = _vol(1)
    chunked = cache.put_array(key, a)
    frame = cache.put_array(key, a, layout="frame")
    assert frame.suffix == ".b2f" and frame.is_file() and not chunked.exists()
    assert key in cache and cache.size_bytes() == frame.stat().st_size
    np.testing.assert_array_equal(cache.get_array(key), a)
    cache.put_array(key, a)  # back to chunked
    assert not frame.exists() and cache.file_for(key).suffix == ".b2nd"
    cache.put_array(cache.key_for(b"w"), a, layout="frame")
    cache.evict(0)
    assert cache.size_bytes() == 0 and key not in cache
    with pytest.raises(ValueError, match="layout"):
        PreparedCache(tmp_path, layout="zarr")


def test_corrupt_frame_is_a_miss_and_reader(tmp_path):
    cache = PreparedCache(tmp_path, layout="frame")
    key = cache.key_for(b"v")
    path = cache.put_array(key, _vol(2))
    r = cache.reader(key, bbox=(1, 2, 3, 9, 8, 7))
    np.testing.assert_array_equal(r(), _vol(2)[1:9, 2:8, 3:7])
    path.write_bytes(path.read_bytes()[:5000])  # truncated
    assert cache.get_array(key) is None and not path.exists()
    from radgenome_hf.errors import MissingVolumeError

    with pytest.raises(MissingVolumeError, match="not in the prepared cache"):
        r()


def test_crop_read_ahead_asks_for_exactly_the_touched_chunks(tmp_path, monkeypatch):
    """A chunked entry records where each chunk lies; a crop hints the kernel (POSIX_FADV_WILLNEED) for the
    chunks it touches and no others. The index is only a hint: a wrong one never changes what a crop returns."""
    import blosc2

    from radgenome_hf.access import cache as cache_mod

    if not hasattr(os, "posix_fadvise"):
        pytest.skip("no posix_fadvise on this platform")
    cache = PreparedCache(tmp_path, chunks=(16, 16, 8), blocks=(8, 8, 4))
    a = _vol(5)
    a[:, :, :8] = -1000  # constant chunks (blosc2 stores them as short runs) are indexed too
    key = cache.key_for(b"ct")
    path = cache.put_array(key, a)
    b2 = blosc2.open(str(path))
    index = b2.schunk.meta["radgenome"]["chunk_index"]
    n = b2.schunk.nchunks
    offsets = np.frombuffer(index, np.int64, n)
    sizes = np.frombuffer(index, np.int32, n, offset=8 * n)
    data = path.read_bytes()
    for i in range(n):  # every chunk found, at the bytes blosc2 itself returns for it
        assert offsets[i] >= 0 and data[offsets[i] : offsets[i] + sizes[i]] == b2.schunk.get_chunk(i)

    calls: list[tuple[int, int]] = []
    real = os.posix_fadvise
    monkeypatch.setattr(cache_mod.os, "posix_fadvise",
                        lambda fd, off, size, advice: (calls.append((off, size)), real(fd, off, size, advice))[1])
    box = (20, 3, 9, 40, 30, 17)  # (i, j, k); stored (k, j, i) with chunks (16, 16, 8)
    np.testing.assert_array_equal(cache.crop(key, box), a[20:40, 3:30, 9:17])
    grid = [-(-s // c) for s, c in zip(b2.shape, b2.chunks)]
    want = {int(np.ravel_multi_index((ck, cj, ci), grid))
            for ck in range(9 // 16, (17 - 1) // 16 + 1)
            for cj in range(3 // 16, (30 - 1) // 16 + 1)
            for ci in range(20 // 8, (40 - 1) // 8 + 1)}
    hinted = set()
    for off, size in calls:
        hinted |= {i for i in range(n) if off <= offsets[i] and offsets[i] + sizes[i] <= off + size}
    assert hinted == want
    # a corrupt index only misdirects the hint: the crop is still right
    calls.clear()
    bad = {"reversed": True, "chunk_index": np.full(3 * n, 7, np.int32).tobytes()}
    writable = blosc2.open(str(path), mode="a")  # keep the array alive while its schunk is written
    writable.schunk.meta["radgenome"] = bad
    del writable
    np.testing.assert_array_equal(cache.crop(key, box), a[20:40, 3:30, 9:17])
    assert calls  # it did hint, at the wrong place
    # an unfilled index (the placeholder put_array leaves when it cannot locate the chunks) gives no hints at all:
    # a zero-length hint would ask for the whole file
    calls.clear()
    writable = blosc2.open(str(path), mode="a")
    writable.schunk.meta["radgenome"] = {"reversed": True, "chunk_index": bytes(12 * n)}
    del writable
    np.testing.assert_array_equal(cache.crop(key, box), a[20:40, 3:30, 9:17])
    assert calls == []
