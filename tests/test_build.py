"""The packed release: native parquet per config, packed masks decodable with numpy, card, manifest, atomic."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from radgenome_hf.publish.build import build_release


@pytest.fixture(scope="module")
def packed(synthetic_release, tmp_path_factory):
    out = tmp_path_factory.mktemp("packed") / "release"
    report = build_release(synthetic_release.root, out)
    return out, report


def test_layout_manifest_and_card(packed):
    out, report = packed
    manifest = json.loads((out / "release_manifest.json").read_text())["configs"]
    assert manifest == report.rows
    assert set(manifest) >= {"reports", "segmentation", "grounded_reports", "vqa"}
    # the synthetic upstream release has no generated rows: those configs are skipped, with the reason
    assert set(report.skipped) == {"scene_graph", "anatomy_pairs"}
    for config, splits in manifest.items():
        for split, n in splits.items():
            files = sorted((out / config).glob(f"{split}-*.parquet"))
            assert files and sum(pq.read_metadata(f).num_rows for f in files) == n
            assert all(f.name.endswith(f"-of-{len(files):05d}.parquet") for f in files)
            assert pq.read_schema(files[0]).metadata is None or b"huggingface" not in pq.read_schema(files[0]).metadata
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    card = DatasetCard.load(out / "README.md")
    configs = MetadataConfigs.from_dataset_card_data(card.data)
    assert set(configs) == set(manifest)
    assert sum(1 for c in configs.values() if c.get("default")) == 1
    assert (out / "figures" / "question_types.png").is_file()


def test_plain_datasets_loads_it_without_this_package(packed, tmp_path):
    out, report = packed
    code = (
        "import sys, datasets\n"
        f"ds = datasets.load_dataset({str(out)!r}, 'vqa', cache_dir={str(tmp_path / 'c')!r})\n"
        "assert 'radgenome_hf' not in sys.modules\n"
        "row = ds['train'][0]\n"
        "print(len(ds['train']), len(ds['validation']), row['volume']['path'], row['mask']['source'])\n"
    )
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    n_train, n_val, vol_path, _ = res.stdout.split()
    assert (int(n_train), int(n_val)) == (report.rows["vqa"]["train"], report.rows["vqa"]["validation"])
    assert (out / vol_path / "zarr.json").is_file() and vol_path.startswith("volumes/") and vol_path.endswith(".zarr")


def test_packed_masks_decode_with_numpy_alone(packed, synthetic_release):
    out, _ = packed
    table = pq.read_table(sorted((out / "vqa").glob("train-*.parquet"))[0])
    row = next(r for r in table.to_pylist() if r["mask"]["source"] == "anatomy")
    ref = row["mask"]
    assert ref["volume_name"] == row["volume_name"]
    # the card's recipe: pyarrow filters on the shard's statistics, then numpy
    recs = pq.read_table(out / ref["path"], filters=[("volume_name", "==", ref["volume_name"]),
                                                     ("structure", "==", ref["structure"])]).to_pylist()
    assert len(recs) == 1
    rec = recs[0]
    i0, j0, k0, i1, j1, k1 = rec["bbox"]
    extent = (i1 - i0, j1 - j0, k1 - k0)
    grid = np.zeros(rec["shape"], bool)
    assert rec["bit_order"] == "F"  # i fastest: the grid's own (NIfTI) order
    bits = np.unpackbits(np.frombuffer(rec["bits"], np.uint8))[: np.prod(extent)]
    grid[i0:i1, j0:j1, k0:k1] = bits.reshape(extent, order=rec["bit_order"])
    assert grid.sum() == rec["voxel_count"] > 0
    # the same voxels as the builder's lazy mask
    import datasets

    import radgenome_hf  # noqa: F401

    ds = datasets.load_dataset("radgenome", "vqa", data_dir=str(synthetic_release.root), split="train")
    lazy = next(r["mask"] for r in ds if r["volume_name"] == row["volume_name"] and r["anatomy"] == row["anatomy"])
    assert np.array_equal(lazy.array(), grid)
    stored = json.loads((out / row["volume"]["path"] / "zarr.json").read_text())["shape"]  # a chunked volume: (k, j, i)
    assert tuple(stored[::-1]) == tuple(rec["shape"])


def test_failed_build_leaves_nothing(synthetic_release, tmp_path, monkeypatch):
    import radgenome_hf.publish.card as card

    def boom(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(card, "render_card", boom)
    out = tmp_path / "release"
    with pytest.raises(OSError, match="No space left"):
        build_release(synthetic_release.root, out, configs=("vqa",))
    assert not out.exists()
    assert not list(tmp_path.glob("release.tmp-*"))


def test_with_the_package_volumes_and_masks_decode_lazily(packed, tmp_path):
    import radgenome_hf
    from radgenome_hf.access.lazymasks import LazyMask, MaskSet
    from radgenome_hf.access.volume import Volume

    out, report = packed
    ds = radgenome_hf.load_dataset("vqa", data_dir=str(out), cache_dir=str(tmp_path / "c"))  # detects a packed release
    assert {k: len(v) for k, v in ds.items()} == report.rows["vqa"]
    row = next(r for r in ds["train"] if r["mask"].source == "anatomy")
    assert isinstance(row["volume"], Volume) and "loaded=False" in repr(row["volume"])
    assert isinstance(row["mask"], LazyMask) and row["mask"].path.startswith(str(out))
    m = row["mask"].array()
    assert m.shape == row["volume"].shape and m.sum() == row["mask"].voxel_count > 0
    seg = radgenome_hf.load_packed(out, "segmentation", split="train", streaming=True, cache_dir=str(tmp_path / "s"))
    first = next(iter(seg))
    assert isinstance(first["masks"], MaskSet) and first["masks"].mask("heart").any()
    # one reused grid for every structure of a volume gives the same masks as fresh arrays
    from radgenome_hf.access.masks import MaskGrid

    grid = MaskGrid(first["masks"].anatomy.shape)
    for name in first["masks"].names:
        np.testing.assert_array_equal(first["masks"].mask(name, out=grid), first["masks"].mask(name))
    np.testing.assert_array_equal(row["mask"].array(out=MaskGrid(m.shape)), m)
