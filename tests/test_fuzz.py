"""Hostile and malformed input, fuzzed with hypothesis: CSV rows, volume names, NIfTI headers, corrupt gzip,
hostile tar members.

Every failure must be an exception of this package (a :class:`RadGenomeError`) whose message names the file;
nothing hangs (pytest-timeout), nothing is half-written, and a hostile header cannot make the package allocate
what the header claims (the size limit is checked before allocating, measured with tracemalloc).
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import tarfile
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from radgenome_hf.io import archives, tables
from radgenome_hf.errors import (
    CorruptVolumeError, MalformedFileError, RadGenomeError, ShapeMismatchError, UnsafeArchiveError, VolumeNameError,
)
from radgenome_hf.names import VolumeName, parse_mask_member
from radgenome_hf.access.volume import Volume

pytestmark = pytest.mark.timeout(120)

FUZZ = settings(
    max_examples=int(os.environ.get("RADGENOME_FUZZ_EXAMPLES", 40)),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=os.environ.get("RADGENOME_FUZZ_RANDOM") is None,  # reproducible in CI; set the env var to explore
)

#: Decoded-size ceiling a hostile header may cause (the files fuzzed here are a few KiB).
ALLOC_CEILING = 8 << 20


def _assert_names_file(exc: BaseException, where: str | os.PathLike) -> None:
    assert isinstance(exc, RadGenomeError), f"{type(exc).__name__} is not a RadGenomeError: {exc!r}"
    assert str(where) in str(exc), f"message does not name the file {where}: {exc}"


# ---------------------------------------------------------------------------------------------------
# CSV rows through every reader
# ---------------------------------------------------------------------------------------------------

READERS = {
    "region_report": (tables.read_region_report, tables.RADGENOME_HEADERS["region_report"]),
    "case_disorders": (tables.read_case_disorders, tables.RADGENOME_HEADERS["case_disorders"]),
    **{
        f"vqa_{k}": ((lambda p, k=k: tables.read_vqa(p, k)), tables.RADGENOME_HEADERS[f"vqa_{k}"])
        for k in tables.VQA_KINDS
    },
    "ctrate_reports": (tables.read_ctrate_reports, tables.CTRATE_REPORT_HEADER),
    "ctrate_metadata": (tables.read_ctrate_metadata, tables.CTRATE_METADATA_HEADER),
    "ctrate_labels": (tables.read_ctrate_labels, tables.CTRATE_LABEL_HEADER),
}

_cell_text = st.one_of(
    st.text(max_size=12),
    st.sampled_from([
        "", '"', '""', ",", "\n", "\r\n", "a,b", 'say "hi"', "nan", "[]", "[0.5, 0.5]", "[1,", "036Y", "1e309",
        "-0", "1", "0.0", "Yes.", "No.", "train_1_a_1.nii.gz", "valid_3_b_2", "train_0_a_1", "../train_1_a_1",
        "train_1_a_1.nii.gz\x00", "\ufeff", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "lung/ lung", "  ", "Not given.",
    ]),
)


@st.composite
def csv_files(draw, header):
    """Raw CSV bytes: the right header (usually) and rows with random cells, quoting and field counts."""
    hdr = list(header)
    mode = draw(st.sampled_from(["ok", "ok", "ok", "swap", "drop", "extra", "empty"]))
    if mode == "swap" and len(hdr) > 1:
        hdr[0], hdr[1] = hdr[1], hdr[0]
    elif mode == "drop":
        hdr = hdr[:-1]
    elif mode == "extra":
        hdr = [*hdr, "Extra"]
    elif mode == "empty":
        return draw(st.sampled_from([b"", b"\n", b"\xef\xbb\xbf", b'"']))
    rows = []
    for _ in range(draw(st.integers(0, 6))):
        n = draw(st.sampled_from([len(header)] * 4 + [0, 1, len(header) - 1, len(header) + 1]))
        cells = [draw(_cell_text) for _ in range(max(0, n))]
        if cells and draw(st.booleans()):
            cells[0] = draw(st.sampled_from(["train_1_a_1.nii.gz", "valid_2_b_3.nii.gz", "train_12_ab_10"]))
        rows.append(cells)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    w.writerow(hdr)
    for r in rows:
        w.writerow(r)
    data = buf.getvalue().encode("utf-8")
    if draw(st.booleans()):  # break quoting / bytes on purpose (after the header)
        cut = draw(st.integers(data.index(b"\n") + 1, len(data)))
        junk = draw(st.sampled_from([b'"', b'"unterminated', b"\xff\xfe", b"\x00", b",,,\n", b"\r"]))
        data = data[:cut] + junk + data[cut:]
    return data


@pytest.mark.parametrize("reader", sorted(READERS))
def test_csv_readers_fail_only_with_package_errors_naming_the_file(reader, tmp_path):
    read, header = READERS[reader]
    path = tmp_path / f"{reader}.csv"
    seen = {"ok": 0, "error": 0}

    @FUZZ
    @given(data=csv_files(header))
    def check(data: bytes) -> None:
        path.write_bytes(data)
        try:
            table = read(path)
        except RadGenomeError as exc:
            _assert_names_file(exc, path)
            seen["error"] += 1
            return
        except Exception as exc:  # noqa: BLE001 - this is the assertion
            pytest.fail(f"{reader}: {type(exc).__name__} escaped for {data!r}: {exc}")
        assert isinstance(table, pa.Table)
        assert table.column_names[0] == "volume_name"
        for stem in table.column("volume_name").to_pylist():
            assert VolumeName.parse(stem).stem == stem
        seen["ok"] += 1

    check()
    assert seen["error"] > 0  # the generator does produce bad files


@pytest.mark.parametrize("reader", ["region_report", "ctrate_metadata"])
def test_csv_non_utf8_header_is_a_malformed_file_error(reader, tmp_path):
    read, header = READERS[reader]
    p = tmp_path / "utf16.csv"
    p.write_bytes(b"\xff\xfe" + ",".join(header).encode() + b"\n")  # a stray UTF-16 BOM: not UTF-8
    with pytest.raises(MalformedFileError) as e:
        read(p)
    assert str(p) in str(e.value)


def test_csv_reader_error_names_row_and_column(tmp_path):
    p = tmp_path / "train_vqa_presence.csv"
    p.write_text("Volumename,Anatomy,Finding,Presence\ntrain_1_a_1.nii.gz,lung,nodule,Yes.\n"
                 "train_1_a_1.nii.gz,lung,nodule,Maybe\n")
    with pytest.raises(MalformedFileError) as e:
        tables.read_vqa(p, "presence")
    assert e.value.row == 2 and e.value.column == "Presence" and str(p) in str(e.value)


# ---------------------------------------------------------------------------------------------------
# Volume names
# ---------------------------------------------------------------------------------------------------

_name_text = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"(train|valid|test|\.\.)_[0-9]{1,4}_[a-z]{0,3}_[0-9]{1,3}(\.nii(\.gz)?)?", fullmatch=True),
    st.sampled_from(["../train_1_a_1", "train_1_a_1/../../x", "train_1_a_1\x00", "/etc/passwd", "train_01_a_1",
                     "train_1_A_1", "train_1_a_1 ", "ｔｒａｉｎ_1_a_1", "train_1_a_1\n", "train_1__1"]),
)


@FUZZ
@given(text=_name_text)
def test_volume_names_parse_or_raise_volume_name_error(text):
    try:
        v = VolumeName.parse(text)
    except VolumeNameError as exc:
        assert repr(text) in str(exc) or "must be a string" in str(exc)
        return
    # what parses is a clean stem: no path separators, dots or whitespace can leak into paths built from it
    assert v.stem.replace("_", "").isalnum() and v.stem.isascii()
    assert VolumeName.parse(v.stem) == v
    assert "/" not in v.stem and ".." not in v.stem


@FUZZ
@given(member=st.one_of(st.text(max_size=60), st.builds(
    lambda pre, stem, name: f"{pre}train_anatomy_mask/seg_{stem}/{name}.nii.gz",
    st.sampled_from(["", "./", "../", "/abs/", "x/"]), _name_text, st.text(max_size=10))))
def test_mask_member_parsing_never_raises_and_never_yields_a_path(member):
    got = parse_mask_member(member)
    if got is not None:
        volume, kind, structure = got
        assert kind in ("region", "anatomy")
        assert "/" not in structure and "\\" not in structure and structure not in ("", ".")


# ---------------------------------------------------------------------------------------------------
# NIfTI headers and gzip streams
# ---------------------------------------------------------------------------------------------------

SHAPE = (8, 8, 4)


def _nifti_bytes(dtype=np.int16) -> bytes:
    arr = (np.arange(np.prod(SHAPE)) % 97).astype(dtype).reshape(SHAPE)
    img = nib.Nifti1Image(arr, np.diag([0.75, 0.75, 1.5, 1.0]))
    img.header.set_slope_inter(1, -1024)
    return img.to_bytes()


GOOD = _nifti_bytes()
GOOD_GZ = gzip.compress(GOOD, mtime=0)


def _patched(fields: dict) -> bytes:
    hdr = nib.Nifti1Header.from_fileobj(io.BytesIO(GOOD), check=False)
    for k, v in fields.items():
        hdr[k] = v
    return hdr.binaryblock + GOOD[348:]


_float = st.one_of(
    st.sampled_from([0.0, -1.0, float("nan"), float("inf"), -float("inf"), 1e30, 1e-30, 1.0]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
)


@st.composite
def header_edits(draw) -> dict:
    edits: dict = {}
    if draw(st.booleans()):
        dim = [3, *SHAPE, 1, 1, 1, 1]
        i = draw(st.integers(0, 7))
        dim[i] = draw(st.one_of(st.integers(-32768, 32767), st.sampled_from([0, -1, 8, 9, 32767, 100000 % 32768])))
        if draw(st.booleans()):  # absurd sizes: 32767^3
            dim[1:4] = [32767, 32767, draw(st.integers(1, 32767))]
        edits["dim"] = dim
    if draw(st.booleans()):
        pix = [1.0, 0.75, 0.75, 1.5, 1, 1, 1, 1]
        pix[draw(st.integers(1, 3))] = draw(_float)
        edits["pixdim"] = pix
    if draw(st.booleans()):
        edits["vox_offset"] = draw(st.one_of(_float, st.integers(-10**6, 10**9).map(float)))
    if draw(st.booleans()):
        edits["datatype"] = draw(st.one_of(st.integers(-32768, 32767),
                                           st.sampled_from([0, 1, 32, 128, 1536, 1792, 2048, 2304])))
    if draw(st.booleans()):
        edits["bitpix"] = draw(st.integers(-32768, 32767))
    if draw(st.booleans()):
        edits["scl_slope"] = draw(_float)
        edits["scl_inter"] = draw(_float)
    if draw(st.booleans()):
        edits["sizeof_hdr"] = draw(st.sampled_from([0, 1, 347, 349, 540, 2**31 - 1, -1]))
    if draw(st.booleans()):
        edits["magic"] = draw(st.sampled_from([b"", b"ni1", b"n+2", b"xxx", b"n+1"]))
    if draw(st.booleans()):
        edits["sform_code"] = 1
        edits["srow_x"] = [draw(_float), 0, 0, 0]
    return edits


def _use_volume(path: Path) -> np.ndarray:
    v = Volume.open(path)
    repr(v)  # never raises
    a = v.array()
    c = Volume.open(path).crop((0, 0, 0, *[min(2, s) for s in v.shape]))
    assert a.dtype != np.float64 and c.dtype != np.float64
    return a


@FUZZ
@given(edits=header_edits(), gz=st.booleans(), cut=st.one_of(st.none(), st.integers(0, len(GOOD) - 1)))
def test_hostile_nifti_headers_fail_cleanly_and_small(tmp_path_factory, edits, gz, cut):
    data = _patched(edits)
    if cut is not None:
        data = data[:cut]
    if gz:
        data = gzip.compress(data, mtime=0)
    path = tmp_path_factory.mktemp("nii") / ("v.nii.gz" if gz else "v.nii")
    path.write_bytes(data)
    tracemalloc.start()
    try:
        a = _use_volume(path)
    except RadGenomeError as exc:
        _assert_names_file(exc, path)
        assert isinstance(exc, (CorruptVolumeError, MalformedFileError)), repr(exc)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} escaped for header edits {edits} cut={cut} gz={gz}: {exc}")
    else:
        assert a.ndim == 3 and a.size * a.itemsize <= ALLOC_CEILING
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < ALLOC_CEILING, f"peak {peak} bytes allocated for header edits {edits}"


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dims", [(1000, 1000, 1000), (32767, 32767, 32767), (4096, 4096, 64)])
def test_size_limit_is_enforced_before_allocating(tmp_path, monkeypatch, gz, dims):
    """A few-KiB file whose header claims gigabytes is refused before any buffer of that size is requested."""
    data = _patched({"dim": [3, *dims, 1, 1, 1, 1]})
    if gz:
        data = gzip.compress(data)
    path = tmp_path / ("big.nii.gz" if gz else "big.nii")
    path.write_bytes(data)
    asked: list[int] = []
    real_empty = np.empty

    def spy(shape, *a, **k):
        asked.append(int(np.prod(shape)))
        return real_empty(shape, *a, **k)

    monkeypatch.setattr(np, "empty", spy)
    with pytest.raises(CorruptVolumeError) as e:
        Volume.open(path).array()
    _assert_names_file(e.value, path)
    assert all(n < ALLOC_CEILING for n in asked), asked


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, len(GOOD_GZ) - 1), st.integers(0, 7)), min_size=1, max_size=4),
       cut=st.one_of(st.none(), st.integers(0, len(GOOD_GZ) - 1)))
def test_corrupt_gzip_is_detected(tmp_path_factory, flips, cut):
    data = bytearray(GOOD_GZ)
    for pos, bit in flips:
        data[pos] ^= 1 << bit
    if cut is not None:
        data = data[:cut]
    path = tmp_path_factory.mktemp("gz") / "v.nii.gz"
    path.write_bytes(bytes(data))
    expected = np.asarray(nib.Nifti1Image.from_bytes(GOOD).get_fdata(), np.float32)
    for source in (path, bytes(data)):
        try:
            a = Volume.open(source).array()
        except RadGenomeError as exc:
            _assert_names_file(exc, path if isinstance(source, Path) else "<bytes>")
            continue
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{type(exc).__name__} escaped for flips {flips} cut {cut}: {exc}")
        # gzip's CRC is verified: whatever decodes without error is the original volume (flips in the gzip
        # header's mtime/OS bytes are harmless)
        np.testing.assert_array_equal(a, expected)


def test_bitflip_in_deflate_data_is_caught_by_the_crc(tmp_path):
    """A stored (uncompressed) deflate block decodes any flipped bit silently: only the CRC catches it."""
    import zlib

    arr = np.zeros((64, 64, 32), np.int16)  # big enough that reading the header does not reach the CRC
    raw = nib.Nifti1Image(arr, np.diag([0.75, 0.75, 1.5, 1.0])).to_bytes()
    co = zlib.compressobj(0, zlib.DEFLATED, 31)  # level 0: stored blocks, gzip wrapper
    data = bytearray(co.compress(raw) + co.flush())
    data[len(data) - 8 - 100] ^= 0x01  # a voxel byte near the end, before the 8-byte trailer
    p = tmp_path / "flipped.nii.gz"
    p.write_bytes(bytes(data))
    with pytest.raises(CorruptVolumeError, match="corrupt"):
        Volume.open(p).array()


@FUZZ
@given(edits=header_edits(), gz=st.booleans(), cut=st.one_of(st.none(), st.integers(0, len(GOOD) - 1)))
def test_hostile_mask_files_raise_package_errors(tmp_path_factory, edits, gz, cut):
    from radgenome_hf.access.masks import PackedMasks

    data = _patched(edits)
    if cut is not None:
        data = data[:cut]
    if gz:
        data = gzip.compress(data, mtime=0)
    path = tmp_path_factory.mktemp("m") / "lung.nii.gz"
    path.write_bytes(data)
    for source in (path, data):
        try:
            PackedMasks.from_nifti_files({"lung": source})
        except ShapeMismatchError:
            pass  # known not to name the file: see test_mask_file_with_bad_dims_names_the_file
        except RadGenomeError as exc:
            _assert_names_file(exc, path if isinstance(source, Path) else "<bytes>")
        except Exception as exc:  # noqa: BLE001
            pytest.fail(f"{type(exc).__name__} escaped from PackedMasks.from_nifti_files for {edits}: {exc}")


@pytest.mark.parametrize("dim", [[0, 8, 8, 4], [1, 8, 8, 4], [2, 8, 8, 4], [3, 0, 8, 4]])
def test_mask_file_with_bad_dims_names_the_file(tmp_path, dim):
    from radgenome_hf.access.masks import PackedMasks

    p = tmp_path / "lung.nii.gz"
    p.write_bytes(gzip.compress(_patched({"dim": [*dim, 1, 1, 1, 1]})))
    with pytest.raises(RadGenomeError) as e:
        PackedMasks.from_nifti_files({"lung": p})
    _assert_names_file(e.value, p)


def test_mask_file_size_limit_is_enforced_before_allocating(tmp_path):
    from radgenome_hf.access.masks import PackedMasks

    data = gzip.compress(_patched({"dim": [3, 1024, 1024, 256, 1, 1, 1, 1], "datatype": 2, "bitpix": 8}))
    tracemalloc.start()
    try:
        with pytest.raises(RadGenomeError):
            PackedMasks.from_nifti_files({"lung": data})
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak < 64 << 20, f"{peak / 2**20:.0f} MiB allocated for a {len(data)}-byte mask file"


# ---------------------------------------------------------------------------------------------------
# Hostile tar members
# ---------------------------------------------------------------------------------------------------

_component = st.sampled_from(["..", ".", "", "a", "seg_train_1_a_1", "x.nii.gz", "C:", "/", "\\", "..\\..",
                              "ü", "a" * 120, "~", "$HOME", "\x00"])
_member_name = st.one_of(
    st.lists(_component, min_size=1, max_size=5).map("/".join),
    st.text(max_size=40),
)
_member_type = st.sampled_from([tarfile.REGTYPE] * 4 + [tarfile.DIRTYPE, tarfile.SYMTYPE, tarfile.LNKTYPE,
                                                        tarfile.CHRTYPE, tarfile.FIFOTYPE, tarfile.BLKTYPE])


def _tar_gz(members: list[tuple[str, bytes, str, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.PAX_FORMAT) as tf:
        for name, kind, link, payload in members:
            ti = tarfile.TarInfo(name)
            ti.type = kind
            ti.linkname = link
            ti.mode = 0o777 if kind == tarfile.REGTYPE else 0o755
            if kind == tarfile.REGTYPE:
                ti.size = len(payload)
                tf.addfile(ti, io.BytesIO(payload))
            else:
                tf.addfile(ti)
    return buf.getvalue()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@FUZZ
@given(members=st.lists(st.tuples(_member_name, _member_type, _member_name, st.binary(max_size=64)),
                        min_size=1, max_size=5),
       plant_link=st.booleans())
def test_hostile_tar_members_never_escape(tmp_path_factory, members, plant_link):
    base = tmp_path_factory.mktemp("x")
    outside = base / "outside"
    outside.mkdir()
    target = base / "target"
    target.mkdir()
    if plant_link:  # a link already in the target, pointing out of it
        (target / "a").symlink_to(outside, target_is_directory=True)
    try:
        blob = _tar_gz([(n, t, l, p) for n, t, l, p in members])
    except (ValueError, UnicodeError, tarfile.TarError):
        return  # tarfile itself refuses to write such a name
    archive = base / "hostile.tar.gz"
    archive.write_bytes(blob)
    before = _tree(base)
    try:
        written = archives.safe_extract(archive, target)
    except (UnsafeArchiveError, MalformedFileError) as exc:
        assert str(archive) in str(exc)
        written = None
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} escaped from safe_extract for {members}: {exc}")
    after = _tree(base)
    new = after - before
    assert all(n.startswith("target/") for n in new), f"wrote outside the target: {sorted(new)}"
    assert not list(outside.iterdir()), "wrote through a link to outside the target"
    assert not [n for n in new if ".part-" in n], f"half-written temp files left: {new}"
    for n in new:
        p = base / n
        assert not p.is_symlink() and (p.is_file() or p.is_dir()), f"{n} is a link or special file"
    if written is not None:
        for p in written:
            assert p.resolve().is_relative_to(target.resolve()) and p.is_file()
    # streaming reads never raise anything but package errors either, and yield regular files only
    try:
        names = [n for n, _ in archives.iter_members(archive)]
    except RadGenomeError as exc:
        assert str(archive) in str(exc)
    else:
        regs = [n for n, t, _, _ in members if t == tarfile.REGTYPE]
        assert len(names) == len(regs)


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 7)), max_size=3),
       cut=st.one_of(st.none(), st.integers(0, 10**6)))
def test_corrupt_archives_raise_malformed_and_leave_no_partial_files(tmp_path_factory, flips, cut):
    blob = bytearray(_tar_gz([(f"train_anatomy_mask/seg_train_1_a_1/s{i}.nii.gz", tarfile.REGTYPE, "",
                               GOOD_GZ + bytes([i]) * 300) for i in range(4)]))
    for pos, bit in flips:
        blob[pos % len(blob)] ^= 1 << bit
    if cut is not None:
        blob = blob[: cut % len(blob)]
    base = tmp_path_factory.mktemp("c")
    archive = base / "valid_anatomy_mask.tar.gz"
    archive.write_bytes(bytes(blob))
    target = base / "out"
    try:
        archives.safe_extract(archive, target)
    except RadGenomeError as exc:
        assert str(archive) in str(exc)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} escaped from safe_extract (flips {flips}, cut {cut}): {exc}")
    assert not [p for p in target.rglob("*") if ".part-" in p.name]
    try:
        for volume, kind, name, data in archives.iter_masks(archive):
            assert volume.stem == "train_1_a_1"
    except RadGenomeError as exc:
        assert str(archive) in str(exc)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"{type(exc).__name__} escaped from iter_masks (flips {flips}, cut {cut}): {exc}")
