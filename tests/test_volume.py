"""Volume: laziness, repr, HU/rescale rules (v1 vs *_fixed), isal vs stdlib, crops, tensors, regions, corrupt files."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from radgenome_hf.io import compression as compression_mod
from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.errors import CorruptVolumeError, MalformedFileError, MissingVolumeError, UnknownAnatomyError
from radgenome_hf.access.masks import PackedMasks
from radgenome_hf.access.volume import Volume
from radgenome_hf.io.nifti import apply_rescale

SHAPE = (40, 36, 24)
LPS = np.diag([-0.75, -0.75, 1.5, 1.0])


def _hu() -> np.ndarray:
    rng = np.random.default_rng(3)
    hu = np.full(SHAPE, -1024, np.int16)
    hu[5:35, 4:32, :] = rng.integers(-900, 1200, (30, 28, 24)).astype(np.int16)
    return hu


def write_nifti(
    path: Path, raw: np.ndarray, affine=np.eye(4), slope=None, inter=None, zooms=None, gz=True
) -> Path:
    """Write a NIfTI byte for byte (nibabel's writer would recompute scl_slope/scl_inter)."""
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(raw.dtype)
    hdr.set_data_shape(raw.shape)
    hdr.set_sform(affine, code=1)
    hdr.set_qform(affine, code=1)
    if zooms is not None:
        hdr["pixdim"][1:4] = zooms
    if slope is not None:
        hdr["scl_slope"], hdr["scl_inter"] = slope, inter
    hdr["vox_offset"] = 352
    data = hdr.binaryblock + b"\0" * 4 + raw.tobytes(order="F")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data, 1) if gz else data)
    return path


@pytest.fixture()
def hu_file(tmp_path) -> Path:
    return write_nifti(tmp_path / "train_1_a_1.nii.gz", _hu(), LPS)


def test_lazy_open_and_repr(hu_file):
    v = Volume.open(hu_file)
    assert not v.loaded and v._file._hdr is None  # nothing read at open
    r = repr(v)
    assert r == (
        "Volume(name='train_1_a_1', shape=(40, 36, 24), spacing=(0.75, 0.75, 1.5), orientation='LPS', "
        "dtype=int16, memory=67.5 KiB, loaded=False)"
    )
    assert not v.loaded  # the repr reads the header only
    arr = v.array()
    assert v.loaded and "loaded=True" in repr(v)
    # read-only: the array is shared with every other Volume of the same file in this process
    assert arr.dtype == np.int16 and arr.flags.f_contiguous and not arr.flags.writeable
    np.testing.assert_array_equal(arr, _hu())
    np.testing.assert_array_equal(arr, np.asanyarray(nib.load(hu_file).dataobj))
    assert v.nbytes == arr.nbytes and v.path == str(hu_file)


def test_truncated_and_corrupt_fail_on_read(tmp_path, hu_file):
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    v = Volume.open(empty)  # opening does not read
    assert "unreadable" in repr(v)
    with pytest.raises(CorruptVolumeError) as exc:
        v.array()
    assert str(empty) in str(exc.value)

    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(hu_file.read_bytes()[: hu_file.stat().st_size // 2])
    v = Volume.open(cut)
    assert v.shape == SHAPE  # the header is intact
    with pytest.raises(CorruptVolumeError, match="cut.nii.gz"):
        v.array()

    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti file at all" * 40))
    with pytest.raises(CorruptVolumeError):
        Volume.open(junk).array()

    with pytest.raises(MissingVolumeError):
        Volume.open(tmp_path / "nope.nii.gz")


def test_absurd_header_rejected_before_allocation(tmp_path):
    hdr = nib.Nifti1Header()
    hdr.set_data_dtype(np.int16)
    hdr.set_data_shape((30000, 30000, 30000))
    hdr["vox_offset"] = 352
    p = tmp_path / "huge.nii.gz"
    p.write_bytes(gzip.compress(hdr.binaryblock + b"\0" * 4 + b"\0" * 64))
    with pytest.raises(CorruptVolumeError, match="GiB"):
        Volume.open(p).array()
    z = write_nifti(tmp_path / "zero.nii.gz", _hu(), zooms=(0.0, 0.7, 1.0))
    with pytest.raises(CorruptVolumeError, match="spacing"):
        Volume.open(z).array()
    assert Volume.open(z, spacing=(0.7, 0.7, 1.0)).spacing == (0.7, 0.7, 1.0)


def test_isal_and_stdlib_identical(hu_file, monkeypatch):
    fast = Volume.open(hu_file).array()
    monkeypatch.setattr(compression_mod, "_igzip", None)
    slow = Volume.open(hu_file).array()
    np.testing.assert_array_equal(fast, slow)
    assert slow.dtype == fast.dtype == np.int16
    from_bytes = Volume.open(hu_file.read_bytes()).array()
    np.testing.assert_array_equal(from_bytes, fast)


def test_uncompressed_and_url_sources(tmp_path):
    raw = write_nifti(tmp_path / "plain.nii", _hu(), LPS, gz=False)
    v = Volume.open(raw)
    box = (3, 4, 5, 20, 30, 17)
    np.testing.assert_array_equal(v.crop(box), _hu()[3:20, 4:30, 5:17])
    assert not v.loaded  # memory-mapped crop, no full decode
    np.testing.assert_array_equal(Volume.open(raw.read_bytes()).array(), _hu())
    np.testing.assert_array_equal(Volume.open(f"file://{raw}").array(), _hu())

    import fsspec

    gz = write_nifti(tmp_path / "m.nii.gz", _hu(), LPS)
    with fsspec.open("memory://vols/m.nii.gz", "wb") as f:
        f.write(gz.read_bytes())
    with fsspec.open("memory://vols/plain.nii", "wb") as f:
        f.write(raw.read_bytes())
    rv = Volume.open("memory://vols/plain.nii")
    np.testing.assert_array_equal(rv.crop(box), _hu()[3:20, 4:30, 5:17])
    assert not rv.loaded  # one range read of the k-slab
    mv = Volume.open("memory://vols/m.nii.gz")
    assert mv.shape == SHAPE and mv.orientation == "LPS" and mv.name == "m"
    np.testing.assert_array_equal(mv.array(), _hu())


@pytest.mark.parametrize("kind", ["scaled_header", "hu_data"])
def test_ctrate_v1_equals_fixed_and_no_double_rescale(tmp_path, kind):
    hu = _hu()
    stored = (hu + 1024).astype(np.int16)  # what v1 stores: raw values, blank header
    v1_path = write_nifti(tmp_path / "CT-RATE/dataset/train/train_1/train_1_a/train_1_a_1.nii.gz", stored)
    fixed_dir = tmp_path / "CT-RATE/dataset/train_fixed/train_1/train_1_a/train_1_a_1.nii.gz"
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    if kind == "scaled_header":  # the fix wrote scl_slope/scl_inter
        fixed = write_nifti(fixed_dir, stored, affine, slope=1.0, inter=-1024.0)
    else:  # the fix wrote HU values
        fixed = write_nifti(fixed_dir, hu, affine)
    meta = {"xy_spacing": [0.7, 0.7], "z_spacing": 1.25, "rescale_slope": 1.0, "rescale_intercept": -1024.0}

    v1 = Volume.from_ctrate(v1_path, meta)
    vf = Volume.from_ctrate(fixed, meta)  # metadata must be ignored: never rescale twice
    a1, af = v1.array(), vf.array()
    assert a1.dtype == af.dtype == np.int16
    np.testing.assert_array_equal(a1, hu)
    np.testing.assert_array_equal(af, hu)
    assert v1.spacing == vf.spacing == (0.7, 0.7, 1.25)
    np.testing.assert_allclose(v1.affine, affine)
    assert af.min() == -1024  # air, not -2048

    csv_meta = {"XYSpacing": "[0.7, 0.7]", "ZSpacing": 1.25, "RescaleSlope": 1, "RescaleIntercept": -1024}
    np.testing.assert_array_equal(Volume.from_ctrate(v1_path, csv_meta).array(), hu)
    with pytest.raises(MalformedFileError, match="metadata"):
        Volume.from_ctrate(v1_path, None)


def test_rescale_rules():
    a = np.array([0, 100, 3000], np.int16)
    out = apply_rescale(a.copy(), 1, -1024)
    assert out.dtype == np.int16 and out.tolist() == [-1024, -924, 1976]
    big = apply_rescale(np.array([-32000, 0], np.int16), 1, -1024)  # does not fit int16
    assert big.dtype == np.float32 and big.tolist() == [-33024, -1024]
    u = apply_rescale(np.array([0, 4000], np.uint16), 1, -1024)
    assert u.dtype == np.int16 and u.tolist() == [-1024, 2976]
    f = apply_rescale(np.array([0, 3], np.int16), 0.5, 1.0)
    assert f.dtype == np.float32 and f.tolist() == [1.0, 2.5]
    assert apply_rescale(np.array([1.0], np.float64)).dtype == np.float32
    assert apply_rescale(a.copy()).dtype == np.int16


def test_explicit_rescale_replaces_header(tmp_path):
    stored = (_hu() + 1024).astype(np.int16)
    p = write_nifti(tmp_path / "s.nii.gz", stored, LPS, slope=2.0, inter=0.0)
    header_scaled = Volume.open(p)
    assert header_scaled.dtype == np.float32
    np.testing.assert_array_equal(header_scaled.array(), stored.astype(np.float32) * 2)
    explicit = Volume.open(p, rescale=(1, -1024)).array()
    assert explicit.dtype == np.int16
    np.testing.assert_array_equal(explicit, _hu())


def test_crop_tensor_and_from_array(hu_file):
    v = Volume.open(hu_file)
    box = (2, 3, 4, 30, 20, 21)
    crop = v.crop(box)
    np.testing.assert_array_equal(crop, _hu()[2:30, 3:20, 4:21])
    with pytest.raises(ValueError):
        v.crop((0, 0, 0, 41, 5, 5))
    t = v.tensor()
    arr = v.array()
    assert tuple(t.shape) == SHAPE[::-1] and t.is_contiguous()
    assert t.data_ptr() == arr.ctypes.data  # zero copy
    t[0, 0, 0] = 1234
    assert arr[0, 0, 0] == 1234
    w = Volume.from_array(np.zeros((3, 4, 5)), LPS, name="x")
    assert w.dtype == np.float32 and w.loaded and w.orientation == "LPS"


def test_region_crops_volume_and_mask(hu_file):
    v = Volume.open(hu_file)
    heart = np.zeros(SHAPE, bool)
    heart[10:15, 12:20, 5:9] = True
    lung = np.zeros(SHAPE, bool)
    lung[2:38, 1:30, 0:24] = True
    masks = PackedMasks.from_arrays({"heart": heart, "lung": lung})
    vol, m = v.region(masks, "heart", margin=(2, 3, 1))
    np.testing.assert_array_equal(vol, _hu()[8:17, 9:23, 4:10])
    np.testing.assert_array_equal(m, heart[8:17, 9:23, 4:10])
    # a path: leaf "right lung upper lobe" has no mask here -> region mask of the first node "lung"
    vol2, m2 = v.region(masks, "lung/lung/right lung/right lung upper lobe", margin=0)
    np.testing.assert_array_equal(vol2, _hu()[2:38, 1:30, 0:24])
    assert m2.all()
    whole, wm = v.region(masks, "", margin=0)
    assert whole.shape == SHAPE and wm.all()
    with pytest.raises(UnknownAnatomyError):
        v.region(masks, "hearrt")


def test_cache_used_transparently(hu_file, tmp_path):
    cache = PreparedCache(tmp_path / "cache")
    v = Volume.open(hu_file, cache=cache)
    np.testing.assert_array_equal(v.array(), _hu())
    assert cache.size_bytes() > 0
    w = Volume.open(hu_file, cache=cache)
    w._decode_raw = None  # type: ignore[assignment]  # must not decode the NIfTI again
    box = (1, 2, 3, 20, 30, 10)
    np.testing.assert_array_equal(w.crop(box), _hu()[1:20, 2:30, 3:10])
    assert not w.loaded
    full = w.array()
    np.testing.assert_array_equal(full, _hu())
    assert full.dtype == np.int16 and full.flags.f_contiguous


def test_array_into_a_reused_buffer(hu_file, tmp_path):
    cache = PreparedCache(tmp_path / "cache")
    Volume.open(hu_file, cache=cache).array()  # fill the cache
    buf = np.full(SHAPE, 7, np.int16, order="F")
    w = Volume.open(hu_file, cache=cache)
    w._decode_raw = None  # type: ignore[assignment]  # a cache hit must not decode the NIfTI
    got = w.array(out=buf)
    assert got is buf and not w.loaded  # the caller keeps the buffer; the volume holds nothing
    np.testing.assert_array_equal(buf, _hu())
    # without a cache (and once loaded) the result is copied in
    plain = Volume.open(hu_file)
    buf[...] = 0
    assert plain.array(out=buf) is buf
    np.testing.assert_array_equal(buf, _hu())
    with pytest.raises(ValueError, match="pass a buffer of that shape"):
        plain.array(out=np.zeros((2, 2, 2), np.int16))
    with pytest.raises(ValueError, match="pass a buffer of that shape"):
        Volume.open(hu_file, cache=cache).array(out=np.zeros(SHAPE, np.float32))
    with pytest.raises(ValueError, match="either dtype= or out="):
        plain.array(np.float32, out=buf)
