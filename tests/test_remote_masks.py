"""Packed-release masks: shards of many volumes, read per volume or structure by byte ranges (issue #15, part 2).

The release of ~100 synthetic volumes (``packed_release_100``) is published to the local Hub server; a fresh
process given only the repo id decodes one structure's mask and the server's byte count says what moved.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest


REPO = "radgenome-test/packed100"  # conftest.hub_100 publishes packed_release_100 there


def _source_mask(rel, volume: str, kind: str, structure: str) -> np.ndarray:
    """The upstream mask file of a structure (``seg_<volume>/<name>.nii.gz``), read with nibabel."""
    import nibabel as nib

    from radgenome_hf.names import VolumeName, mask_path
    from radgenome_hf.ontology import normalize_name

    folder = (rel.radgenome_root / mask_path(VolumeName.parse(volume), kind, "x")).parent  # type: ignore[arg-type]
    hit = [p for p in folder.iterdir() if normalize_name(p.name[: -len(".nii.gz")]) == structure]
    assert len(hit) == 1, (folder, structure)
    return np.asarray(nib.load(hit[0]).dataobj) != 0


@pytest.fixture
def hub(hub_100):
    hub_100.reset_log()
    return hub_100


FIRST_STRUCTURE = r"""
import json, sys, time
t0 = time.perf_counter()
import radgenome_hf
t1 = time.perf_counter()
ds = radgenome_hf.load_packed(REPO, "vqa", split="train", streaming=True)
rows = iter(ds)
row = next(rows)
t2 = time.perf_counter()
while row["mask"].source != "anatomy":
    row = next(rows)
mask = row["mask"].array()
import numpy as np
np.save(OUT, mask)
print(json.dumps({"volume": row["volume_name"], "structure": row["mask"].structure, "path": row["mask"].path,
                  "import_s": t1 - t0, "first_row_s": t2 - t1, "mask_s": time.perf_counter() - t2,
                  "packer_loaded": "radgenome_hf.access.maskstore" in sys.modules}))
"""


def test_one_structure_of_a_remote_volume_moves_under_2_percent_of_its_split_masks(hub, packed_release_100, tmp_path):
    rel, packed = packed_release_100
    env = dict(os.environ, **hub.client_env(tmp_path / "hf"), RADGENOME_CACHE=str(tmp_path / "rg"))
    hub.reset_log()
    code = FIRST_STRUCTURE.replace("REPO", repr(REPO)).replace("OUT", repr(str(tmp_path / "m.npy")))
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    # the voxels are the upstream mask file's
    mask = np.load(tmp_path / "m.npy")
    np.testing.assert_array_equal(mask, _source_mask(rel, got["volume"], "anatomy", got["structure"]))
    assert mask.any()
    assert not got["packer_loaded"]  # no mask packing on the client: the rows decode straight from the shards
    # what the server sent for masks: range reads of one shard, a small part of the split's anatomy masks
    shard = got["path"].split("@", 1)[1].split("/", 1)[1]
    assert shard.startswith("masks/train_anatomy/")
    split_bytes = sum(p.stat().st_size for p in (packed / "masks" / "train_anatomy").iterdir())
    all_split = split_bytes + sum(p.stat().st_size for p in (packed / "masks" / "train_region").iterdir())
    sent = hub.downloaded_bytes(REPO, "masks/")
    assert sent == hub.downloaded_bytes(REPO, shard) > 0  # only the one shard was touched
    assert sent <= 0.02 * split_bytes, (sent, split_bytes)
    gets = [r for r in hub.requests if r.kind == "resolve" and r.method == "GET" and "masks/" in r.path]
    assert all(r.bytes_out < (packed / shard).stat().st_size for r in gets)  # ranges, never the whole shard
    print(f"one structure: {sent} B = {100 * sent / split_bytes:.2f}% of the split's anatomy masks "
          f"({100 * sent / all_split:.2f}% of all its masks); {len(gets)} GETs; first row {got['first_row_s']:.2f} s "
          f"after imports ({got['import_s']:.2f} s)")


def test_a_mask_set_reads_only_its_volumes_row_groups_and_equals_the_source(hub, packed_release_100):
    """In process: a segmentation row's MaskSet from the Hub, every structure decoded, against the upstream files."""
    import radgenome_hf
    from radgenome_hf.access import lazymasks, maskshards
    from radgenome_hf.io import ranged_parquet

    rel, packed = packed_release_100
    for cache in (lazymasks._PACKED_CACHE, maskshards._ROWS, ranged_parquet._CACHE):
        cache.clear()
    with hub.patch_client():
        seg = radgenome_hf.load_packed(REPO, "segmentation", split="train", cache_dir=str(packed.parent / "c"))
        row = seg[7]
        hub.reset_log()
        ms = row["masks"]
        assert ms.volume_name == row["volume_name"] and "volume=" in repr(ms)
        names = ms.anatomy.names
        assert names == sorted(names) and len(names) == len([s for s in row["structures"] if s["source"] == "anatomy"])
        for name in names:
            np.testing.assert_array_equal(ms.mask(name), _source_mask(rel, row["volume_name"], "anatomy", name))
        shard = packed / ms.anatomy_path.split("@", 1)[1].split("/", 1)[1]
        md = pq.read_metadata(shard)
        mine = [r for r in range(md.num_row_groups) if md.row_group(r).column(0).statistics.min == row["volume_name"]]
        data = sum(md.row_group(r).column(c).total_compressed_size for r in mine for c in range(md.num_columns))
        sent = hub.downloaded_bytes(REPO, "masks/train_anatomy/")
        footer = int.from_bytes(shard.read_bytes()[-8:-4], "little") + 8
        assert sent == footer + data < shard.stat().st_size  # the footer and this volume's row groups, no more


def test_shard_layout_sorted_small_row_groups_statistics_only_on_keys(packed_release_100):
    from radgenome_hf.access.maskshards import ROWS_PER_GROUP
    from radgenome_hf.access.masks import PackedMasks

    _, packed = packed_release_100
    seen: dict[str, str] = {}
    for kind in ("anatomy", "region"):
        files = sorted((packed / "masks" / f"train_{kind}").glob("*.parquet"))
        assert len(files) >= 8 and all(f.name.endswith(f"-of-{len(files):05d}.parquet") for f in files)
        for f in files:
            md = pq.read_metadata(f)
            table = pq.read_table(f)
            keys = list(zip(table.column("volume_name").to_pylist(), table.column("structure").to_pylist()))
            assert keys == sorted(keys)
            for r in range(md.num_row_groups):
                rg = md.row_group(r)
                assert rg.num_rows <= ROWS_PER_GROUP
                stats = {rg.column(c).path_in_schema: rg.column(c).is_stats_set for c in range(rg.num_columns)}
                assert {k for k, v in stats.items() if v} == {"volume_name", "structure"}
                assert rg.column(0).statistics.min == rg.column(0).statistics.max  # one volume per row group
            for v in set(table.column("volume_name").to_pylist()):
                assert seen.setdefault(f"{kind}:{v}", f.name) == f.name  # a volume lives in one shard
            # one volume's rows are a per-volume packed-masks table: PackedMasks reads them as it always did
            v = keys[0][0]
            pm = PackedMasks.from_arrow(table, v)
            assert pm.names == sorted(pm.names) and pm.volume_name == v


def test_a_local_packed_release_reads_one_volume_not_the_whole_shard(packed_release_100, tmp_path):
    import radgenome_hf
    from radgenome_hf.access import lazymasks, maskshards
    from radgenome_hf.io import ranged_parquet

    rel, packed = packed_release_100
    for cache in (lazymasks._PACKED_CACHE, maskshards._ROWS, ranged_parquet._CACHE):
        cache.clear()
    ds = radgenome_hf.load_packed(packed, "vqa", split="train", cache_dir=str(tmp_path / "c"))
    rows = [r for r in ds.select(range(300)) if r["mask"].source == "anatomy"]
    assert rows
    for r in rows[:20]:
        m = r["mask"]
        assert m.volume_name == r["volume_name"] and m.path.startswith(str(packed))
        np.testing.assert_array_equal(m.array(), _source_mask(rel, r["volume_name"], "anatomy", m.structure))
    f = ranged_parquet.RangedParquet.open(rows[0]["mask"].path)
    assert 0 < f.bytes_read < f.size  # footer and row groups of the volumes asked for, read once per process


def test_rows_written_before_the_volume_name_field_still_decode(tmp_path):
    """A packed release of the earlier layout (one masks file per volume, no ``volume_name`` in the reference)."""
    import datasets

    import radgenome_hf
    from radgenome_hf.access.masks import PackedMasks

    m = np.zeros((8, 8, 4), bool)
    m[1:4, 2:6, 1:3] = True
    PackedMasks.from_arrays({"heart": m}).save(tmp_path / "masks" / "train_1_a_1.masks.parquet")
    ds = datasets.Dataset.from_dict({
        "volume_name": ["train_1_a_1"],
        "mask": [{"path": "masks/train_1_a_1.masks.parquet", "structure": "heart", "source": "anatomy",
                  "shape": [8, 8, 4]}],
        "masks": [{"region": None, "anatomy": "masks/train_1_a_1.masks.parquet"}],
    })
    row = radgenome_hf.lazy(ds, tmp_path)[0]
    assert row["mask"].volume_name is None
    np.testing.assert_array_equal(row["mask"].array(), m)
    np.testing.assert_array_equal(row["masks"].mask("heart"), m)


def test_a_shard_that_lacks_the_volume_is_an_error_naming_it(packed_release_100):
    from radgenome_hf.access.maskshards import read_volume_masks
    from radgenome_hf.errors import MissingVolumeError

    _, packed = packed_release_100
    shard = sorted((packed / "masks" / "train_anatomy").glob("*.parquet"))[0]
    with pytest.raises(MissingVolumeError, match=r"holds no masks of volume 'train_99999_a_1'"):
        read_volume_masks(str(shard), "train_99999_a_1")
    with pytest.raises(KeyError, match="no mask 'no such organ'"):
        first = pq.read_table(shard, columns=["volume_name"]).column(0)[0].as_py()
        read_volume_masks(str(shard), first, "no such organ").mask("no such organ")


def test_ranged_parquet_reads_exactly_the_chunks_asked_for(tmp_path):
    import pyarrow as pa

    from radgenome_hf.errors import MalformedFileError
    from radgenome_hf.io.ranged_parquet import RangedParquet

    path = tmp_path / "t.parquet"
    t = pa.table({"k": [f"v{i // 10:03d}" for i in range(1000)], "x": np.arange(1000), "blob": [b"z" * 500] * 1000})
    pq.write_table(t, path, row_group_size=10, write_page_checksum=True)
    f = RangedParquet.open(path)
    assert f.row_groups("k", ["v042"]) == [42]
    got = f.read([42], ["x"])
    assert got.column("x").to_pylist() == list(range(420, 430)) and got.column_names == ["x"]
    md = pq.read_metadata(path)
    footer = 8 + int.from_bytes(path.read_bytes()[-8:-4], "little")
    assert f.bytes_read == footer + md.row_group(42).column(1).total_compressed_size  # not the 5 KB blob chunk
    path.write_bytes(path.read_bytes()[:-3] + b"XYZ")  # the file changed: opened anew, and refused
    with pytest.raises(MalformedFileError, match="not a parquet file"):
        RangedParquet.open(path)


def test_remote_reads_offline_and_uncached_say_to_download_first(monkeypatch):
    from radgenome_hf.errors import HubAccessError
    from radgenome_hf.io import hub as hub_io

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(HubAccessError, match="radgenome-hf download"):
        hub_io.read_range("hf://datasets/org/none@0123456789abcdef0123456789abcdef01234567/masks/x.parquet", 0, 8)


def test_the_server_counts_exactly_the_bytes_of_range_reads(hub, packed_release_100):
    """The accounting the other tests rely on: the server's count equals what RangedParquet read."""
    from radgenome_hf.io import hub as hub_io
    from radgenome_hf.io import ranged_parquet

    _, packed = packed_release_100
    shard = sorted((packed / "masks" / "train_region").glob("*.parquet"))[3]
    rel = shard.relative_to(packed).as_posix()
    ranged_parquet._CACHE.clear()
    with hub.patch_client():
        hub.reset_log()
        f = ranged_parquet.RangedParquet.open(hub_io.hf_url(REPO, rel))
        table = f.read([0])
    assert hub.downloaded_bytes(REPO, rel) == f.bytes_read < shard.stat().st_size
    assert table.num_rows == pq.read_metadata(shard).row_group(0).num_rows
