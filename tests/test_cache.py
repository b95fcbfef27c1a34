"""PreparedCache: hits and misses, invalidation, layout, atomic concurrent writers, LRU eviction."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pytest

from radgenome_hf.cache import PreparedCache, default_cache_root, source_identity

SHAPE = (48, 40, 20)


def _vol(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asfortranarray(rng.integers(-1024, 2000, SHAPE).astype(np.int16))


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("RADGENOME_CACHE", str(tmp_path / "c"))
    assert default_cache_root() == tmp_path / "c"
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
