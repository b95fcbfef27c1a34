"""Chunked volumes of the packed release (#15): built by default, read locally, and read from the local Hub server
by range requests in fresh processes, with the bytes the server really sent counted."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radgenome_hf.access.chunkcache import ChunkCache
from radgenome_hf.access.volume import Volume
from radgenome_hf.errors import CorruptVolumeError
from radgenome_hf.io.chunked import ChunkedVolumeFile, write_chunked_volume
from radgenome_hf.testing.hub_server import HubServer

REPO = "radgenome-test/chunked"
SHAPE = (128, 128, 96)  # 4 x 4 x 3 inner chunks of 32³: a box inside one chunk is ~1/48 of the volume


@pytest.fixture(scope="module")
def upstream(tmp_path_factory):
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    return write_release(tmp_path_factory.mktemp("up"), SyntheticConfig(n_train_patients=1, n_valid_patients=1,
                                                                         shape=SHAPE), progress=False)


@pytest.fixture(scope="module")
def packed(upstream, tmp_path_factory):
    from radgenome_hf.publish.build import build_release

    return build_release(upstream.root, tmp_path_factory.mktemp("packed") / "release", configs=("vqa",),
                         repo_id=REPO).folder


@pytest.fixture(scope="module")
def hub(packed):
    from radgenome_hf.publish.hub import publish_release

    with HubServer() as server:
        with server.patch_client():
            publish_release(packed, REPO, endpoint=server.endpoint, token=server.token, verify=False)
        yield server


def _source(upstream, name: str) -> tuple[str, tuple[float, float]]:
    """(file, rescale) of a volume as the upstream rows reference it: the builder's ``volume`` column (the
    metadata CSV's RescaleSlope / RescaleIntercept where the header has none)."""
    import datasets

    import radgenome_hf  # noqa: F401 - registers the builder

    for split in ("train", "validation"):
        table = datasets.load_dataset("radgenome", "vqa", data_dir=str(upstream.root), split=split).data.table
        for name_, vol in zip(table.column("volume_name").to_pylist(), table.column("volume").to_pylist()):
            if name_ == name:
                return vol["path"], tuple(vol["rescale"] or (1.0, 0.0))
    raise AssertionError(f"{name} is in no upstream row")


def _expected(upstream, name: str) -> np.ndarray:
    """The source volume in HU: nibabel's voxels (its own scaling) with the rows' rescale applied, float64."""
    path, (slope, inter) = _source(upstream, name)
    return np.asarray(nib.load(path).dataobj) * slope + inter


def _volume_bytes(packed: Path, rel: str) -> int:
    return sum(p.stat().st_size for p in (packed / rel).rglob("*") if p.is_file())


CHILD = r"""
import json, sys, time, numpy as np
t0 = time.perf_counter()
import radgenome_hf
req = json.loads(sys.argv[1])
ds = radgenome_hf.load_packed(req["repo"], "vqa", split="train", streaming=True)
row = next(iter(ds))
t1 = time.perf_counter()
vol = row["volume"]
out = {"name": vol.name, "path": vol.path, "shape": list(vol.shape), "repr": repr(vol), "first_row_s": t1 - t0}
if req.get("box"):
    t = time.perf_counter()
    np.save(req["out"] + "/crop.npy", vol.crop(req["box"]))
    out["crop_s"] = time.perf_counter() - t
if req.get("array"):
    np.save(req["out"] + "/array.npy", vol.array())
print("@@" + json.dumps(out))
"""


def _child(hub: HubServer, out: Path, home: Path, **req) -> dict:
    """Run CHILD in a fresh process whose HF cache and chunk cache live in ``home``; arrays land in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **hub.client_env(home / "hf"), "RADGENOME_CACHE": str(home / "rg")}
    req = {"repo": REPO, "out": str(out), **req}
    res = subprocess.run([sys.executable, "-c", CHILD, json.dumps(req)], env=env, capture_output=True, text=True,
                         timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.rsplit("@@", 1)[1])


def test_fresh_process_crops_a_remote_volume_fetching_only_its_chunks(hub, packed, upstream, tmp_path):
    home = tmp_path / "client"  # a fresh HF cache and chunk cache, shared by the two processes below
    hub.reset_log()
    box = [40, 70, 36, 60, 90, 52]  # inside one 32³ chunk in i, j and k: (32..64, 64..96, 32..64)
    first = _child(hub, tmp_path, home, box=box)
    rel = first["path"].split("@main/", 1)[1]
    assert first["path"].startswith(f"hf://datasets/{REPO}@main/volumes/") and rel.endswith(".zarr")
    assert "loaded=False" in first["repr"]
    name, total = first["name"], _volume_bytes(packed, rel)
    sent = hub.downloaded_bytes(REPO, path_contains=rel)
    src = _expected(upstream, name)
    i0, j0, k0, i1, j1, k1 = box
    crop = np.load(tmp_path / "crop.npy")
    assert crop.dtype == np.int16 and np.array_equal(crop, src[i0:i1, j0:j1, k0:k1])
    assert 0 < sent <= 0.05 * total, f"{sent} bytes of a {total}-byte volume"
    # the whole shard was never asked for: every GET of it was a range of at most a few chunks
    shard_gets = [r for r in hub.requests if r.kind == "resolve" and rel + "/c/" in r.path]
    assert shard_gets and all(r.bytes_out < total / 4 for r in shard_gets)

    # the same crop in another fresh process: served by the chunk cache, no byte of the volume sent again
    hub.reset_log()
    again = _child(hub, tmp_path, home, box=box)
    assert again["name"] == name and hub.downloaded_bytes(REPO, path_contains=rel) == 0
    assert np.array_equal(np.load(tmp_path / "crop.npy"), crop)

    # array() in a third fresh process: every chunk, in parallel range requests; equal to the source
    hub.reset_log()
    _child(hub, tmp_path / "whole", tmp_path / "fresh", array=True)
    assert np.array_equal(np.load(tmp_path / "whole" / "array.npy"), src)
    assert hub.downloaded_bytes(REPO, path_contains=rel) <= total


def test_a_missing_remote_volume_is_an_error_naming_it(hub):
    from radgenome_hf.errors import HubAccessError

    url = f"hf://datasets/{REPO}@main/volumes/nope/train_9_a_1.zarr"
    with hub.patch_client(), pytest.raises(HubAccessError, match="no such file at this revision") as err:
        Volume.open(url, token=hub.token).crop((0, 0, 0, 4, 4, 4))
    assert "volumes/nope/train_9_a_1.zarr/zarr.json" in str(err.value) and hub.token not in str(err.value)


def test_card_snippet_reads_a_crop_with_zarr_alone(hub, packed, tmp_path):
    card = (packed / "README.md").read_text()
    section = card.split("## Volume format", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert f"hf://datasets/{REPO}@main/volumes/" in code and "import radgenome_hf" not in code
    env = {**os.environ, **hub.client_env(tmp_path / "hf")}
    hub.reset_log()
    res = subprocess.run([sys.executable, "-c", code + "\nimport sys; assert 'radgenome_hf' not in sys.modules\n"],
                         env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    m = re.match(r"\((\d+), (\d+), (\d+)\) (\w+) \[([\d., ]+)\] (\w+)", res.stdout)
    assert m, res.stdout
    assert tuple(int(x) for x in m.groups()[:3]) == (96, 96, 64) and m.group(4) == "int16"
    assert m.group(6) == "LPS" and len(m.group(5).split(",")) == 3
    # block_size=1: zarr-python fetches the chunks it needs (here: all of this small volume's) and not 5 MB of
    # read-ahead per chunk, which would send the volume many times over
    rel = code.split("@main/", 1)[1].split('"', 1)[0]
    assert hub.downloaded_bytes(REPO, path_contains=rel) <= 1.05 * _volume_bytes(packed, rel)


def test_local_chunked_volumes_crop_like_nibabel(packed, upstream):
    import radgenome_hf

    ds = radgenome_hf.load_packed(packed, "vqa", split="validation")
    vol = ds[0]["volume"]
    assert vol.path.endswith(".zarr") and "loaded=False" in repr(vol)
    src_img = nib.load(_source(upstream, vol.name)[0])
    src = _expected(upstream, vol.name)
    np.testing.assert_allclose(vol.affine, src_img.affine, atol=1e-5)
    for box in [(0, 0, 0, 128, 128, 96), (5, 33, 60, 100, 127, 95), (31, 31, 31, 33, 33, 33)]:
        i0, j0, k0, i1, j1, k1 = box
        got = vol.crop(box)
        assert got.flags.f_contiguous and np.array_equal(got, src[i0:i1, j0:j1, k0:k1]), box
    buf = np.empty(vol.shape, vol.dtype, order="F")
    assert vol.array(out=buf) is buf and np.array_equal(buf, src)
    # the files are plain zarr v3: zarr-python reads the same voxels, transposed
    import zarr

    z = zarr.open_array(str(packed / ds[0]["volume"].path), mode="r")
    assert z.attrs["radgenome"]["name"] == vol.name and np.array_equal(z[:].T, src)


def test_nifti_option_keeps_the_files_and_rows_as_they_were(upstream, tmp_path):
    import radgenome_hf
    from radgenome_hf.publish.build import build_release

    out = build_release(upstream.root, tmp_path / "nifti", configs=("vqa",), volumes="nifti").folder
    row = radgenome_hf.load_packed(out, "vqa", split="train", cache_dir=str(tmp_path / "c"))[0]
    assert row["volume"].path.endswith(".nii.gz")
    assert np.array_equal(row["volume"].array(), _expected(upstream, row["volume"].name))
    assert "NIfTI files of the upstream release" in (out / "README.md").read_text()
    with pytest.raises(ValueError, match="volumes must be one of"):
        build_release(upstream.root, tmp_path / "x", volumes="npy")


def _write(tmp_path: Path, arr: np.ndarray, name: str = "v") -> Path:
    return write_chunked_volume(tmp_path / f"{name}.zarr", arr, np.diag([0.8, 0.8, 2.0, 1.0]), name=name,
                                rescale=(1.0, -1024.0))


def test_constant_chunks_and_other_writers_files_and_float_volumes(tmp_path):
    import zarr
    from zarr.codecs import BloscCodec

    rng = np.random.default_rng(0)
    arr = np.full((70, 40, 66), -1024, np.int16, order="F")
    arr[10:30, 5:20, 40:66] = rng.integers(-1000, 2000, (20, 15, 26))
    f = ChunkedVolumeFile.open(_write(tmp_path, arr))
    index = f._index_array()
    assert (index[:, 0] != 2**64 - 1).all()  # every chunk stored: the shard always exists
    assert np.array_equal(f.read_raw(), arr) and np.array_equal(f.read_raw_crop((0, 0, 0, 64, 32, 32)), arr[:64, :32, :32])
    # a plain zarr-python array whose constant chunks are absent (zarr's default), no attributes of ours
    z = zarr.create_array(store=str(tmp_path / "plain.zarr"), shape=arr.T.shape, dtype="int16", chunks=(32, 32, 32),
                          shards=(96, 64, 96), compressors=BloscCodec(cname="lz4", clevel=3, shuffle="shuffle"),
                          fill_value=-1024, zarr_format=3)
    z[...] = arr.T
    g = ChunkedVolumeFile.open(tmp_path / "plain.zarr")
    assert (g._index_array()[:, 0] == 2**64 - 1).sum() > 0 and np.array_equal(g.read_raw(), arr)
    assert np.array_equal(Volume.open(tmp_path / "plain.zarr").crop((3, 30, 1, 64, 40, 66)), arr[3:64, 30:40, 1:66])
    hu = (rng.standard_normal((33, 34, 35)) * 100).astype(np.float32)
    h = ChunkedVolumeFile.open(_write(tmp_path, np.asfortranarray(hu), "f"))
    assert h.stored_dtype == np.float32 and np.array_equal(h.read_raw(), hu)
    v = Volume.open(tmp_path / "f.zarr")
    assert v.rescale == (1.0, 0.0) and v.dtype == np.float32 and v.spacing == (0.8, 0.8, 2.0)


def test_a_second_rescale_is_refused(tmp_path):
    path = _write(tmp_path, np.zeros((8, 8, 8), np.int16, order="F"))
    assert Volume.open(path, rescale=(1.0, -1024.0)).array().max() == 0  # the applied one: accepted, not re-applied
    with pytest.raises(ValueError, match="applied twice"):
        Volume.open(path, rescale=(1.0, -1000.0)).array()


def test_a_damaged_shard_index_is_an_error_naming_the_file(tmp_path):
    arr = np.asfortranarray(np.arange(40 * 40 * 40, dtype=np.int16).reshape(40, 40, 40))
    path = _write(tmp_path, arr)
    shard = path / "c" / "0" / "0" / "0"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptVolumeError, match="crc32c") as err:
        Volume.open(path).crop((0, 0, 0, 4, 4, 4))
    assert str(shard) in str(err.value)


def test_chunk_cache_drops_damaged_entries_and_stays_bounded(tmp_path):
    cache = ChunkCache(tmp_path / "cc", max_bytes=10_000)
    key = "ab" * 20
    cache.put(key, "3", b"x" * 1000)
    entry = next((tmp_path / "cc").rglob("*.rgchunk"))
    raw = bytearray(entry.read_bytes())
    raw[-1] ^= 1
    entry.write_bytes(bytes(raw))
    assert cache.get(key, "3") is None and not entry.exists()  # damaged: a miss, and gone
    for i in range(30):
        cache.put(key, str(i), bytes(1000))
    cache.evict()
    assert cache.size_bytes() <= 10_000 and cache.get(key, "29") == bytes(1000)
