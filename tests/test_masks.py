"""PackedMasks: packbits round trips, Arrow/parquet/NIfTI forms, label maps and crops against plain numpy."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pyarrow as pa
import pytest

from radgenome_hf.errors import ShapeMismatchError
from radgenome_hf.access.masks import PackedMasks, masks_schema, tight_bbox

SHAPE = (23, 19, 11)


def _masks() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    out = {}
    blob = np.zeros(SHAPE, bool)
    blob[3:12, 4:9, 2:8] = rng.random((9, 5, 6)) > 0.4
    out["Random Blob.nii.gz"] = blob
    out["empty"] = np.zeros(SHAPE, bool)
    single = np.zeros(SHAPE, bool)
    single[5, 6, 7] = True
    out["single"] = single
    border = np.zeros(SHAPE, np.uint8)  # touches every face; 0/1 uint8 like upstream files
    border[0, :, 3] = 1
    border[-1, 2, :] = 1
    border[4, -1, 0] = 1
    border[:, 0, -1] = 1
    out["border"] = border
    full = np.ones(SHAPE, bool)
    out["full"] = full
    return out


AFFINE = np.diag([0.75, 0.75, 1.5, 1.0])


@pytest.fixture()
def packed() -> PackedMasks:
    return PackedMasks.from_arrays(_masks(), AFFINE, source="anatomy")


def _check_same(pm: PackedMasks, ref: dict[str, np.ndarray]) -> None:
    assert pm.shape == SHAPE
    assert pm.names == ["random blob", "empty", "single", "border", "full"]
    for raw, m in ref.items():
        name = raw.lower().replace(".nii.gz", "")
        got = pm.mask(name)
        assert got.dtype == bool and got.shape == SHAPE
        np.testing.assert_array_equal(got, m != 0)
        assert pm.voxel_count(name) == int(np.count_nonzero(m))


def test_tight_bbox_matches_argwhere():
    for m in _masks().values():
        bb = tight_bbox(np.asarray(m, bool))
        idx = np.argwhere(m)
        if idx.size == 0:
            assert bb is None
        else:
            assert bb == (*map(int, idx.min(0)), *map(int, idx.max(0) + 1))


def test_roundtrip_packbits(packed):
    _check_same(packed, _masks())
    assert packed.bbox("empty") is None and packed.voxel_count("empty") == 0
    assert packed.bbox("single") == (5, 6, 7, 6, 7, 8)
    assert packed.bbox("border") == (0, 0, 0, SHAPE[0], SHAPE[1], SHAPE[2])
    assert packed.packed_bytes("single") == 1
    assert "Random  Blob" in packed and "nope" not in packed
    assert packed.sources["single"] == "anatomy"
    assert packed.mask("single").flags.f_contiguous


def test_arrow_and_parquet_roundtrip(packed, tmp_path):
    table = packed.to_arrow("train_1_a_1")
    assert table.schema.equals(masks_schema())
    assert table.num_rows == 5
    assert table.column("bbox").to_pylist()[1] is None
    back = PackedMasks.from_arrow(table)
    assert back == packed and back.volume_name == "train_1_a_1"
    np.testing.assert_allclose(back.affine, AFFINE)
    _check_same(back, _masks())

    path = packed.save(tmp_path / "sub" / "masks.parquet", volume_name="train_1_a_1")
    assert [p.name for p in path.parent.iterdir()] == ["masks.parquet"]  # no temp file left
    import pyarrow.parquet as pq

    assert pq.ParquetFile(path).metadata.row_group(0).column(0).compression == "ZSTD"
    loaded = PackedMasks.load(path)
    assert loaded == packed
    _check_same(loaded, _masks())


def test_from_arrow_selects_volume(packed):
    other = PackedMasks.from_arrays({"x": np.ones(SHAPE, bool)})
    table = pa.concat_tables([packed.to_arrow("v1"), other.to_arrow("v2")])
    with pytest.raises(ValueError, match="volume_name"):
        PackedMasks.from_arrow(table)
    assert PackedMasks.from_arrow(table, "v2").names == ["x"]


def test_nifti_folder_roundtrip_paths_and_bytes(packed, tmp_path):
    files = packed.to_nifti_folder(tmp_path / "seg_train_1_a_1")
    assert sorted(f.name for f in files) == sorted(f"{n}.nii.gz" for n in packed.names)
    assert sorted(p.name for p in (tmp_path / "seg_train_1_a_1").iterdir()) == sorted(f.name for f in files)
    img = nib.load(files[0])
    assert img.get_data_dtype() == np.uint8
    np.testing.assert_allclose(img.affine, AFFINE)
    from_paths = PackedMasks.from_nifti_files({f.name: f for f in files})
    assert set(from_paths.names) == set(packed.names)
    for n in packed.names:
        np.testing.assert_array_equal(from_paths.mask(n), packed.mask(n))
    np.testing.assert_allclose(from_paths.affine, AFFINE)
    # raw .nii.gz bytes, as they come out of a tar member, and plain .nii bytes
    raw = {f.name: f.read_bytes() for f in files}
    raw["plain.nii"] = gzip.decompress(files[0].read_bytes())
    from_bytes = PackedMasks.from_nifti_files(raw, source="region")
    np.testing.assert_array_equal(from_bytes.mask("plain"), packed.mask(files[0].name))
    assert from_bytes.sources["plain"] == "region"


def test_shape_mismatch_names_structure(tmp_path):
    a = tmp_path / "lung.nii.gz"
    b = tmp_path / "heart.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.uint8), np.eye(4)), a)
    nib.save(nib.Nifti1Image(np.ones((4, 4, 5), np.uint8), np.eye(4)), b)
    with pytest.raises(ShapeMismatchError, match="heart"):
        PackedMasks.from_nifti_files({"lung": a, "heart": b})
    pm = PackedMasks.from_arrays({"lung": np.ones((4, 4, 4), bool)})
    with pytest.raises(ShapeMismatchError, match="aorta"):
        pm.add("aorta", np.ones((4, 4, 3), bool))


def test_union_label_map_crop_against_numpy(packed):
    ref = {k.lower().replace(".nii.gz", ""): np.asarray(v, bool) for k, v in _masks().items()}
    names = ["random blob", "single", "border", "empty"]
    np.testing.assert_array_equal(packed.union(names), np.logical_or.reduce([ref[n] for n in names]))

    lm = packed.label_map(names)
    expected = np.zeros(SHAPE, np.uint8)
    for i, n in enumerate(names, start=1):  # later names win
        expected[ref[n]] = i
    assert lm.dtype == np.uint8
    np.testing.assert_array_equal(lm, expected)
    lm_rev = packed.label_map(names[::-1])
    assert lm_rev[0, 0, 3] == 2  # reversed: empty=1, border=2, single=3, random blob=4
    assert not np.array_equal(lm, lm_rev)

    for box in [(2, 3, 1, 14, 10, 9), (0, 0, 0, *SHAPE), (4, 5, 6, 7, 8, 9), (-3, -2, -1, 5, 25, 4)]:
        for n in ref:
            got = packed.crop(n, box)
            padded = np.zeros(tuple(s + 20 for s in SHAPE), bool)
            padded[10:-10, 10:-10, 10:-10] = ref[n]
            want = padded[box[0] + 10 : box[3] + 10, box[1] + 10 : box[4] + 10, box[2] + 10 : box[5] + 10]
            np.testing.assert_array_equal(got, want, err_msg=f"{n} {box}")


def test_label_map_uint16_for_many_names():
    masks = {f"s{i}": np.zeros((4, 4, 20), bool) for i in range(300)}
    for i in range(300):
        masks[f"s{i}"][i % 4, (i // 4) % 4, i // 16] = True
    pm = PackedMasks.from_arrays(masks)
    lm = pm.label_map()
    assert lm.dtype == np.uint16 and lm.max() == 300
    assert lm[299 % 4, (299 // 4) % 4, 299 // 16] == 300


def test_from_label_map_and_merge():
    lm = np.zeros(SHAPE, np.uint8)
    lm[1:5, 2:4, 3:6] = 3
    lm[10, 10, 10] = 9
    pm = PackedMasks.from_label_map(lm, {3: "Lung", 9: "heart", 4: "absent"}, AFFINE, source="totalseg")
    np.testing.assert_array_equal(pm.mask("lung"), lm == 3)
    assert pm.bbox("heart") == (10, 10, 10, 11, 11, 11)
    assert pm.bbox("absent") is None and pm.sources["lung"] == "totalseg"
    extra = PackedMasks.from_arrays({"heart": lm == 3, "aorta": lm == 9})
    merged = pm.merge(extra)
    assert merged.names == ["lung", "heart", "absent", "aorta"]
    np.testing.assert_array_equal(merged.mask("heart"), lm == 3)  # other wins
    with pytest.raises(ShapeMismatchError):
        pm.merge(PackedMasks((2, 2, 2)))


def test_unknown_structure_message(packed):
    with pytest.raises(KeyError, match="random blob"):
        packed.mask("spleen")


# -- MaskGrid: decoding into one reused grid -----------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from radgenome_hf.access.masks import MaskGrid  # noqa: E402

_NAMES = ["random blob", "empty", "single", "border", "full", "column"]


def _grid_masks() -> dict[str, np.ndarray]:
    column = np.zeros(SHAPE, bool)  # one voxel wide in i, long in j: the grid clears its box row by row
    column[2, 1:15, 3:5] = True
    return {**_masks(), "column": column}


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.lists(st.lists(st.sampled_from(_NAMES), min_size=1, max_size=3), min_size=1, max_size=8))
def test_mask_grid_sequence_matches_fresh_arrays(calls):
    """Any sequence of mask/union calls through one grid gives exactly what fresh arrays give: nothing a
    previous call wrote survives into the next one."""
    pm = PackedMasks.from_arrays(_grid_masks(), AFFINE)
    grid = MaskGrid(pm.shape)
    for names in calls:
        if len(names) == 1:
            got, want = pm.mask(names[0], out=grid), pm.mask(names[0])
        else:
            got, want = pm.union(names, out=grid), pm.union(names)
        assert got.shape == SHAPE and got.dtype == bool and got.flags.f_contiguous
        np.testing.assert_array_equal(got, want)
    grid.clear()
    assert not grid._array.any() and grid._dirty is None


def test_mask_grid_view_is_read_only_and_reused(packed):
    grid = MaskGrid(packed.shape)
    first = packed.mask("single", out=grid)
    assert not first.flags.writeable
    with pytest.raises(ValueError):
        first[0, 0, 0] = True
    second = packed.mask("random blob", out=grid)
    assert np.shares_memory(first, second)  # the documented contract: a view valid until the next use
    assert not first[5, 6, 7] or _masks()["Random Blob.nii.gz"][5, 6, 7]
    assert "dirty box=(3, 4, 2" in repr(grid) and "memory=" in repr(grid)
    np.testing.assert_array_equal(grid.fill((1, 1, 1, 3, 3, 3)), np.pad(np.ones((2, 2, 2), bool), [(1, 20), (1, 16), (1, 8)]))
    past_edge = grid.fill((20, -4, 9, 40, 2, 99))  # clipped to the grid like numpy slicing
    assert past_edge.sum() == 3 * 2 * 2 and past_edge[20:, :2, 9:].all()
    assert not grid.fill((5, 5, 5, 5, 9, 9)).any()  # an empty box leaves an empty grid


def test_mask_grid_errors(packed):
    with pytest.raises(ShapeMismatchError, match="one MaskGrid per grid shape"):
        packed.mask("single", out=MaskGrid((4, 4, 4)))
    with pytest.raises(TypeError, match="MaskGrid"):
        packed.mask("single", out=np.zeros(SHAPE, bool))
    with pytest.raises(ShapeMismatchError):
        MaskGrid((4, 4))
    grid = MaskGrid(packed.shape)
    packed.mask("single", out=grid)
    with pytest.raises(KeyError):
        packed.union(["single", "nope"], out=grid)
    assert grid._dirty == (5, 6, 7, 6, 7, 8)  # a failed call leaves the grid as it was


def test_files_with_c_ordered_bits_still_decode(packed, tmp_path):
    """Packs written before the bit_order column (bits of mask[bbox] in C order, no column) read as before."""
    import pyarrow.parquet as pq

    table = packed.to_arrow("v")
    assert set(table["bit_order"].to_pylist()) == {"F"}
    ref = _masks()
    legacy_bits = []
    for name, raw in zip(table["structure"].to_pylist(), ref.values()):
        bb = packed.bbox(name)
        crop = np.asarray(raw, bool)[bb[0]:bb[3], bb[1]:bb[4], bb[2]:bb[5]] if bb else np.zeros(0, bool)
        legacy_bits.append(np.packbits(crop, axis=None).tobytes() if bb else b"")
    legacy = table.drop_columns(["bit_order"]).set_column(
        table.schema.get_field_index("bits"), "bits", pa.array(legacy_bits, pa.binary())
    )
    pq.write_table(legacy, tmp_path / "legacy.parquet")
    old = PackedMasks.load(tmp_path / "legacy.parquet")
    _check_same(old, ref)
    assert old == packed  # same voxels, whichever order the bits are in
    grid = MaskGrid(SHAPE)
    np.testing.assert_array_equal(old.mask("random blob", out=grid), ref["Random Blob.nii.gz"])
    np.testing.assert_array_equal(old.union(["single", "border"]), packed.union(["single", "border"]))
    np.testing.assert_array_equal(old.label_map(), packed.label_map())
    np.testing.assert_array_equal(old.crop("random blob", (2, 2, 2, 9, 9, 9)), packed.crop("random blob", (2, 2, 2, 9, 9, 9)))
    with pytest.raises(ValueError, match="bit_order"):
        old.add_packed("x", (0, 0, 0, 1, 1, 1), b"\x80", 1, bit_order="K")
