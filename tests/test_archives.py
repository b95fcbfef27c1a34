"""Mask archives: split-part streams, one-pass member iteration, safe extraction of hostile archives."""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import pytest

from radgenome_hf.io import archives as A
from radgenome_hf.errors import MalformedFileError, ReleaseNotFoundError, UnsafeArchiveError
from radgenome_hf.names import VolumeName


def _members(n: int = 4, size: int = 3000, seed: int = 0) -> dict[str, bytes]:
    rng = random.Random(seed)
    out = {}
    for i in range(1, n + 1):
        for structure in ("lung", "lung nodule", "thoracic vertebrae 12 (T12)"):
            out[f"train_anatomy_mask/seg_train_{i}_a_1/{structure}.nii.gz"] = rng.randbytes(size)
    out["train_anatomy_mask/seg_train_1_a_1.nii.gz"] = b"aggregated label map, not a mask member"
    return out


def _tar_gz(path: Path, members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        d = tarfile.TarInfo("train_anatomy_mask")
        d.type = tarfile.DIRTYPE
        tf.addfile(d)
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            ti.mtime = 1_700_000_000
            tf.addfile(ti, io.BytesIO(data))
        for ti in extra or []:
            tf.addfile(ti, io.BytesIO(b"x" * ti.size) if ti.isreg() else None)
    return path


def _cut(archive: Path, base: Path, n: int = 3, suffixes=("_aa", "_ab", "_ac")) -> list[Path]:
    """What ``split -b`` does: consecutive byte ranges, only the first has the gzip header."""
    raw = archive.read_bytes()
    k = -(-len(raw) // n)
    parts = []
    for i in range(n):
        p = base.with_name(base.name + suffixes[i])
        p.write_bytes(raw[i * k : (i + 1) * k])
        parts.append(p)
    return parts


@pytest.fixture
def members() -> dict[str, bytes]:
    return _members()


@pytest.fixture
def split_release(tmp_path, members):
    ds = tmp_path / "dataset"
    ds.mkdir()
    whole = _tar_gz(tmp_path / "whole.tar.gz", members)
    parts = _cut(whole, ds / "train_anatomy_mask")
    return ds, whole, parts


# -------------------------------------------------------------------------------------------------
# Split streams
# -------------------------------------------------------------------------------------------------


def test_split_stream_reads_the_concatenation(split_release):
    ds, whole, parts = split_release
    raw = whole.read_bytes()
    assert parts[1].read_bytes()[:2] != b"\x1f\x8b" and parts[0].read_bytes()[:2] == b"\x1f\x8b"
    assert A.split_parts(ds / "train_anatomy_mask") == parts
    assert A.split_parts(parts[1]) == parts  # any part finds its siblings
    for source in (ds / "train_anatomy_mask", parts[0], [parts[2], parts[0], parts[1]]):
        with A.open_split_stream(source) as f:
            assert f.read() == raw
    with A.open_split_stream(parts) as f:  # reads across part boundaries, and seeks
        k = len(parts[0].read_bytes())
        f.seek(k - 5)
        assert f.read(10) == raw[k - 5 : k + 5]
        f.seek(-3, io.SEEK_END)
        assert f.read() == raw[-3:] and f.tell() == len(raw)
        f.seek(0)
        chunks = []
        while chunk := f.read(777):
            chunks.append(chunk)
        assert b"".join(chunks) == raw


def test_split_parts_numbered_form_and_gaps(tmp_path, members):
    whole = _tar_gz(tmp_path / "w.tar.gz", members)
    ds = tmp_path / "ds"
    ds.mkdir()
    suffixes = tuple(f".part-{i:02d}" for i in range(3))
    parts = _cut(whole, ds / "train_anatomy_mask.tar.gz", suffixes=suffixes)
    assert A.split_parts(ds / "train_anatomy_mask.tar.gz") == parts
    src = A.find_mask_sources(ds, "train", "anatomy")
    assert src is not None and src.form == "split" and src.paths == tuple(parts)
    assert dict(A.iter_members(src)) == members
    parts[1].unlink()
    with pytest.raises(MalformedFileError, match="missing"):
        A.split_parts(ds / "train_anatomy_mask.tar.gz")


def test_missing_middle_part_is_reported(split_release):
    ds, _, parts = split_release
    parts[1].unlink()
    with pytest.raises(MalformedFileError) as e:
        A.find_mask_sources(ds, "train", "anatomy")
    assert "train_anatomy_mask_ab" in str(e.value)


# -------------------------------------------------------------------------------------------------
# Finding sources, one-pass reading
# -------------------------------------------------------------------------------------------------


def test_find_mask_sources_prefers_folder_then_targz_then_parts(split_release, members):
    ds, whole, parts = split_release
    assert A.find_mask_sources(ds, "valid", "region") is None
    src = A.find_mask_sources(ds.parent, "train", "anatomy")  # repo root holding dataset/ also works
    assert src.form == "split" and src.paths == tuple(parts) and (src.split, src.kind) == ("train", "anatomy")
    assert src.nbytes == whole.stat().st_size
    (ds / "train_anatomy_mask.tar.gz").write_bytes(whole.read_bytes())
    assert A.find_mask_sources(ds, "train", "anatomy").form == "tar.gz"
    (ds / "train_anatomy_mask").mkdir()  # an empty folder does not win
    assert A.find_mask_sources(ds, "train", "anatomy").form == "tar.gz"
    A.safe_extract(src, ds)
    folder = A.find_mask_sources(ds, "train", "anatomy")
    assert folder.form == "folder" and folder.path == ds / "train_anatomy_mask"
    assert dict(A.iter_members(folder)) == members  # folder names match archive member names
    assert sorted(A.list_members(folder)) == sorted(members)
    with pytest.raises(ValueError):
        A.find_mask_sources(ds, "test", "anatomy")


def test_iter_members_one_pass_with_filter(split_release, members):
    ds, whole, parts = split_release
    src = A.find_mask_sources(ds, "train", "anatomy")
    assert dict(A.iter_members(src)) == members
    assert dict(A.iter_members(whole)) == members
    assert A.list_members(parts) == list(members)
    seen = []

    def select(name: str) -> bool:
        seen.append(name)
        return name.endswith("/lung.nii.gz")

    got = dict(A.iter_members(ds / "train_anatomy_mask", select))
    assert seen == list(members)  # asked once per regular member, in archive order
    assert got == {k: v for k, v in members.items() if k.endswith("/lung.nii.gz")}
    with open(whole, "rb") as f:  # an already-open stream
        assert dict(A.iter_members(f)) == members


def test_iter_masks_parses_members(split_release, members):
    ds, _, _ = split_release
    out = list(A.iter_masks(ds / "train_anatomy_mask"))
    assert len(out) == len(members) - 1  # the aggregated seg_<volume>.nii.gz is not a mask member
    v, kind, structure, data = out[2]
    assert (v, kind, structure) == (VolumeName.parse("train_1_a_1"), "anatomy", "thoracic vertebrae 12 (T12)")
    assert data == members["train_anatomy_mask/seg_train_1_a_1/thoracic vertebrae 12 (T12).nii.gz"]
    only = list(A.iter_masks(ds / "train_anatomy_mask", lambda v, k, s: v.patient == 3))
    assert {str(v) for v, *_ in only} == {"train_3_a_1"} and len(only) == 3


def test_read_member(split_release, members):
    ds, whole, _ = split_release
    name = "train_anatomy_mask/seg_train_3_a_1/lung nodule.nii.gz"
    assert A.read_member(ds / "train_anatomy_mask", name) == members[name]
    assert A.read_member(whole, "./" + name) == members[name]
    with pytest.raises(ReleaseNotFoundError):
        A.read_member(whole, "train_anatomy_mask/seg_train_9_a_1/lung.nii.gz")


def test_corrupt_and_truncated_archives_name_the_archive(tmp_path, split_release, members):
    ds, whole, parts = split_release
    garbage = tmp_path / "garbage.tar.gz"
    garbage.write_bytes(b"\x1f\x8b\x08\x00" + os.urandom(2000))
    with pytest.raises(MalformedFileError, match="garbage.tar.gz"):
        list(A.iter_members(garbage))
    not_tar = tmp_path / "plain.tar.gz"
    not_tar.write_bytes(b"this is not an archive at all" * 40)
    with pytest.raises(MalformedFileError, match="plain.tar.gz"):
        A.list_members(not_tar)
    raw = bytearray(whole.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 64] = bytes(64)
    flipped = tmp_path / "flipped.tar.gz"
    flipped.write_bytes(bytes(raw))
    with pytest.raises(MalformedFileError, match="flipped.tar.gz"):
        list(A.iter_members(flipped))
    with pytest.raises(MalformedFileError, match="train_anatomy_mask_aa"):  # last part missing: truncated
        list(A.iter_members(parts[:2]))


# -------------------------------------------------------------------------------------------------
# Safe extraction
# -------------------------------------------------------------------------------------------------


def _hostile(kind: str) -> tarfile.TarInfo:
    if kind == "absolute":
        ti = tarfile.TarInfo("/tmp/radgenome-escape-abs.txt")
        ti.size = 4
    elif kind == "dotdot":
        ti = tarfile.TarInfo("train_anatomy_mask/../../escape.txt")
        ti.size = 4
    elif kind == "symlink":
        ti = tarfile.TarInfo("train_anatomy_mask/link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "../../outside"
    elif kind == "symlink_inside":
        ti = tarfile.TarInfo("train_anatomy_mask/link")
        ti.type, ti.linkname = tarfile.SYMTYPE, "seg_train_1_a_1"
    elif kind == "hardlink":
        ti = tarfile.TarInfo("train_anatomy_mask/hard")
        ti.type, ti.linkname = tarfile.LNKTYPE, "train_anatomy_mask/seg_train_1_a_1/lung.nii.gz"
    elif kind == "device":
        ti = tarfile.TarInfo("train_anatomy_mask/dev")
        ti.type, ti.devmajor, ti.devminor = tarfile.CHRTYPE, 1, 3
    elif kind == "blockdevice":
        ti = tarfile.TarInfo("train_anatomy_mask/blk")
        ti.type = tarfile.BLKTYPE
    elif kind == "fifo":
        ti = tarfile.TarInfo("train_anatomy_mask/fifo")
        ti.type = tarfile.FIFOTYPE
    else:  # pragma: no cover
        raise AssertionError(kind)
    return ti


def _snapshot(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.mark.parametrize(
    "kind", ["absolute", "dotdot", "symlink", "symlink_inside", "hardlink", "device", "blockdevice", "fifo"]
)
def test_safe_extract_refuses_hostile_members(tmp_path, kind):
    work = tmp_path / "work"
    work.mkdir()
    members = _members(n=1)
    archive = _tar_gz(work / "evil.tar.gz", members, extra=[_hostile(kind)])
    target = work / "a" / "target"
    target.parent.mkdir()
    before_outside = _snapshot(tmp_path)
    with pytest.raises(UnsafeArchiveError) as e:
        A.safe_extract(archive, target)
    assert "evil.tar.gz" in str(e.value) and e.value.member == _hostile(kind).name
    after = _snapshot(tmp_path)
    new = {p for p in after - before_outside if not p.startswith("work/a/target")}
    assert new == set(), f"written outside the target: {new}"
    assert not Path("/tmp/radgenome-escape-abs.txt").exists()
    assert not any(p.is_symlink() for p in target.rglob("*"))
    assert not list(target.rglob(".*.part-*"))  # no temporary files left


def test_safe_extract_refuses_writing_through_an_existing_link(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    target = tmp_path / "target"
    target.mkdir()
    (target / "train_anatomy_mask").symlink_to(outside, target_is_directory=True)
    archive = _tar_gz(tmp_path / "a.tar.gz", _members(n=1))
    with pytest.raises(UnsafeArchiveError, match="outside"):
        A.safe_extract(archive, target)
    assert list(outside.iterdir()) == []


def test_safe_extract_split_parts_round_trip(split_release, members, tmp_path):
    ds, _, parts = split_release
    target = tmp_path / "out"
    written = A.safe_extract(ds / "train_anatomy_mask", target)
    assert {p.relative_to(target).as_posix() for p in written} == set(members)
    for name, data in members.items():
        p = target / name
        assert p.read_bytes() == data
        assert int(p.stat().st_mtime) == 1_700_000_000
    only = A.safe_extract(parts, tmp_path / "only", select=lambda n: "seg_train_2_a_1/" in n)
    assert len(only) == 3 and all("seg_train_2_a_1" in str(p) for p in only)


def test_safe_extract_truncated_member_leaves_no_partial_file(tmp_path):
    big = {"train_anatomy_mask/seg_train_1_a_1/small.nii.gz": b"s" * 100,
           "train_anatomy_mask/seg_train_1_a_1/big.nii.gz": random.Random(1).randbytes(3_000_000)}
    whole = _tar_gz(tmp_path / "w.tar.gz", big)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    target = tmp_path / "t"
    with pytest.raises(MalformedFileError, match="cut.tar.gz"):
        A.safe_extract(cut, target)
    folder = target / "train_anatomy_mask" / "seg_train_1_a_1"
    assert (folder / "small.nii.gz").read_bytes() == b"s" * 100
    assert sorted(p.name for p in folder.iterdir()) == ["small.nii.gz"]  # neither big.nii.gz nor its temp file
