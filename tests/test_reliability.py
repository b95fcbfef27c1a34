"""Issue 18: never serve stale or corrupt data, never fail a read over a cache, never move a branch to a broken
release. Each test reproduces one defect found by an adversarial run; all are bounded (seconds each)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.access.volume import Volume, clear_open_volumes
from radgenome_hf.io.nifti import write_nifti

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _ct(shape=(40, 36, 20), seed=0) -> np.ndarray:
    return np.asfortranarray(np.random.default_rng(seed).integers(-1000, 1500, shape, dtype=np.int16))


def _flip(path: Path, offset: int, bit: int) -> bytes:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1 << bit
    path.write_bytes(bytes(data))
    return bytes(data)


# ------------------------------------------------------------------------------ corruption of cache files (3)
@pytest.mark.parametrize("layout", ["chunked", "frame"])
def test_bit_flips_in_a_cache_file_never_decode_to_wrong_voxels(tmp_path, layout):
    """Before: 279/300 flips of a .b2nd and 277/300 of a .b2f decoded without error to other voxels. Now every
    flip is a miss (the entry is dropped) or, where the byte does not matter (padding), the same voxels."""
    a = _ct()
    cache = PreparedCache(tmp_path, chunks=(16, 16, 16), blocks=(8, 8, 8))
    key = cache.key_for(b"ct")
    path = cache.put_array(key, a, layout=layout)
    good = path.read_bytes()
    rng = np.random.default_rng(18)
    wrong, misses = [], 0
    for offset, bit in zip(rng.integers(0, len(good), 300), rng.integers(0, 8, 300)):
        path.write_bytes(good)
        _flip(path, int(offset), int(bit))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = cache.get_array(key)
            box = cache.crop(key, (3, 5, 2, 30, 33, 18)) if path.exists() else None
        if got is None:
            misses += 1
        elif not np.array_equal(got, a):
            wrong.append(int(offset))
        if box is not None and not np.array_equal(box, a[3:30, 5:33, 2:18]):
            wrong.append(int(offset))
    assert wrong == []
    assert misses > 200  # the flips were seen, not dodged


@pytest.mark.parametrize("layout", ["chunked", "frame"])
def test_a_damaged_cache_entry_is_rebuilt_from_the_source(tmp_path, layout):
    a = _ct()
    src = write_nifti(tmp_path / "train_1_a_1.nii.gz", a, np.eye(4))
    cache = PreparedCache(tmp_path / "cache", layout=layout)
    Volume.open(src, cache=cache).array()
    entry = cache.file_for(Volume.open(src, cache=cache)._cache_key_for())
    size = entry.stat().st_size
    _flip(entry, size - size // 3, 3)  # inside the compressed data
    clear_open_volumes()  # the next reads go to the (damaged) cache, not this process's decoded copy
    np.testing.assert_array_equal(Volume.open(src, cache=cache).array(), a)
    np.testing.assert_array_equal(Volume.open(src, cache=cache).crop((1, 2, 3, 20, 20, 19)), a[1:20, 2:20, 3:19])
    assert entry.is_file()  # re-written from the source
    np.testing.assert_array_equal(cache.get_array(Volume.open(src, cache=cache)._cache_key_for()), a)


# ----------------------------------------------------------------------- a cache never fails a read (2, 6)
_FSIZE_CHILD = """
import resource, signal, sys, warnings
import numpy as np
from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.access.volume import Volume
src, root = sys.argv[1], sys.argv[2]
want = np.load(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    for _ in range(3):
        got = Volume.open(src, cache=PreparedCache(root)).array()
        assert np.array_equal(got, want)
print("warnings", sum("prepared cache" in str(x.message) for x in w))
"""


def test_a_full_disk_under_the_cache_still_returns_the_voxels(tmp_path):
    """Before: ``RuntimeError: Error while creating the NDArray`` (no disk, no path) out of ``Volume.array()``.
    Now: the decoded voxels, and one warning naming the cache folder."""
    a = _ct()
    src = write_nifti(tmp_path / "train_1_a_1.nii", a, np.eye(4))  # uncompressed: bigger than the 4 KiB limit
    np.save(tmp_path / "want.npy", a)
    (tmp_path / "cache").mkdir()
    r = subprocess.run([sys.executable, "-c", _FSIZE_CHILD, str(src), str(tmp_path / "cache"),
                        str(tmp_path / "want.npy")], capture_output=True, text=True, env=_env(), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split() == ["warnings", "1"]


def test_a_failed_cache_write_warns_once_and_returns_the_voxels(tmp_path, monkeypatch):
    import blosc2

    a = _ct()
    src = write_nifti(tmp_path / "train_1_a_1.nii.gz", a, np.eye(4))

    def full(*args, **kwargs):
        raise RuntimeError("Error while creating the NDArray")

    monkeypatch.setattr(blosc2, "asarray", full)
    cache = PreparedCache(tmp_path / "c")
    with pytest.warns(RuntimeWarning, match="prepared cache .*storing .* failed"):
        got = Volume.open(src, cache=cache).array()
    np.testing.assert_array_equal(got, a)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per cache folder
        np.testing.assert_array_equal(Volume.open(src, cache=cache).array(), a)


_RACE_CHILD = """
import sys, warnings
import numpy as np
from radgenome_hf.access.cache import PreparedCache
from radgenome_hf.access.volume import Volume
root, n, srcs = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
warnings.simplefilter("ignore")
cache = PreparedCache(root, max_bytes=1)  # holds at most one entry: every write evicts
for i in range(n):
    for s in srcs:
        v = Volume.open(s, cache=cache)
        v.array()
        v.crop((0, 0, 0, 8, 8, 8))
print("ok")
"""


def test_two_processes_evicting_each_other_never_fail_a_read(tmp_path):
    """Before: ``Volume.array()`` raised ``FileNotFoundError`` when another process evicted the entry between the
    rename and the stat of ``put_array`` (3 runs of 3). Now a read never fails over a cache."""
    srcs = [str(write_nifti(tmp_path / f"train_{i}_a_1.nii", _ct((24, 24, 12), i), np.eye(4))) for i in range(1, 4)]
    procs = [subprocess.Popen([sys.executable, "-c", _RACE_CHILD, str(tmp_path / "cache"), "300", *srcs],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
             for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "ok", err[-3000:]


def test_an_eviction_between_the_rename_and_the_stat_is_not_an_error(tmp_path, monkeypatch):
    """The race of the test above, made certain: the file vanishes the moment it is renamed into place."""
    a = _ct()
    src = write_nifti(tmp_path / "train_1_a_1.nii.gz", a, np.eye(4))
    real = os.replace

    def replace_then_evict(s, d):
        real(s, d)
        if str(d).endswith((".b2nd", ".b2f")):
            os.unlink(d)

    monkeypatch.setattr(os, "replace", replace_then_evict)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(Volume.open(src, cache=PreparedCache(tmp_path / "c", max_bytes=1)).array(), a)


# ------------------------------------------------------------------------------- stale prepared cache (1)
def test_a_nii_rewritten_with_size_and_mtime_restored_is_decoded_again(tmp_path):
    """Before: the old voxels came back from the prepared cache (keyed on path + size + mtime only)."""
    a, b = _ct(seed=1), _ct(seed=2)
    src = write_nifti(tmp_path / "train_1_a_1.nii", a, np.eye(4))
    cache = PreparedCache(tmp_path / "c")
    np.testing.assert_array_equal(Volume.open(src, cache=cache).array(), a)
    st = src.stat()
    with open(src, "r+b") as f:  # in place: same inode, same size
        f.seek(st.st_size - b.nbytes)
        f.write(np.asfortranarray(b).tobytes(order="F"))
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (src.stat().st_size, src.stat().st_mtime_ns) == (st.st_size, st.st_mtime_ns)
    np.testing.assert_array_equal(Volume.open(src, cache=cache).array(), b)


# ----------------------------------------------------------------------------------------- packed masks
from radgenome_hf.access.maskstore import MaskStore  # noqa: E402
from radgenome_hf.access.masks import PackedMasks  # noqa: E402
from radgenome_hf.errors import MalformedFileError, MissingVolumeError, ShapeMismatchError  # noqa: E402
from radgenome_hf.io.release import UpstreamRelease  # noqa: E402
from radgenome_hf.testing.synthetic import SyntheticConfig, write_release  # noqa: E402

SHAPE = (32, 32, 24)


@pytest.fixture()
def folder_release(tmp_path):
    """A private, writable release whose masks are loose ``seg_<volume>/`` folders."""
    return write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=1, n_valid_patients=1, shape=SHAPE,
                                                           mask_layout="folders"), progress=False)


def _seg_dir(rel, stem: str, kind: str = "anatomy") -> Path:
    return rel.radgenome_root / "dataset" / f"train_{kind}_mask" / f"seg_{stem}"


def test_bit_flips_in_a_packed_mask_file_are_errors_never_other_voxels(tmp_path):
    """Before: 53 of ~300 flips of a packed-mask parquet decoded without error to other voxels. Now the pages
    carry CRC32 checksums (pyarrow ``write_page_checksum``) that ``load`` verifies."""
    rng = np.random.default_rng(7)
    masks = {f"s{i}": rng.random(SHAPE) < 0.3 for i in range(4)}
    path = PackedMasks.from_arrays(masks, np.eye(4)).save(tmp_path / "train_1_a_1.masks.parquet")
    good = path.read_bytes()
    wrong, errors = [], 0
    for offset, bit in zip(rng.integers(0, len(good), 300), rng.integers(0, 8, 300)):
        path.write_bytes(good)
        _flip(path, int(offset), int(bit))
        try:
            got = PackedMasks.load(path)
            same = got.names == list(masks) and all(np.array_equal(got.mask(n), m) for n, m in masks.items())
        except (MalformedFileError, ShapeMismatchError, ValueError, KeyError):
            errors += 1
            continue
        if not same:
            wrong.append(int(offset))
    assert wrong == []
    assert errors > 100


def test_a_mask_rewritten_with_size_and_mtime_restored_is_packed_again(folder_release, tmp_path):
    """The mask store's own key: before, path + size + mtime only, so the old pack was served."""
    rel = folder_release
    stem = rel.volumes[0]
    d = _seg_dir(rel, stem)
    gz = sorted(d.glob("*.nii.gz"))[0]
    name = gz.name[: -len(".nii.gz")]
    nii = d / f"{name}.nii"
    a = np.zeros(SHAPE, np.uint8)
    a[2:6, 2:6, 2:6] = 1
    write_nifti(nii, a, np.eye(4))
    gz.unlink()
    release = UpstreamRelease.discover(rel.root)
    first = MaskStore.prepare(release, "train", "anatomy", cache_root=tmp_path / "mc", progress=False)
    first.pack_all(progress=False, workers=1)  # folder sources pack a volume on first use; here all at once
    assert PackedMasks.load(first.path(stem)).voxel_count(name) == 64
    st = nii.stat()
    b = np.zeros(SHAPE, np.uint8)
    b[2:4, 2:4, 2:4] = 1
    with open(nii, "r+b") as f:  # same inode, same size
        f.seek(st.st_size - b.nbytes)
        f.write(b.tobytes(order="F"))
    os.utime(nii, ns=(st.st_atime_ns, st.st_mtime_ns))
    again = MaskStore.prepare(release, "train", "anatomy", cache_root=tmp_path / "mc", progress=False)
    again.pack_all(progress=False, workers=1)
    assert PackedMasks.load(again.path(stem)).voxel_count(name) == 8


def _gz_nifti_claiming(path: Path, shape: tuple[int, int, int]) -> Path:
    """A small .nii.gz whose (valid) header claims ``shape`` uint8 zeros: a gzip bomb of ``prod(shape)`` bytes."""
    import gzip

    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.uint8)
    hdr.set_qform(np.eye(4), 1)
    hdr.set_sform(np.eye(4), 1)
    hdr["vox_offset"] = 352
    head = hdr.binaryblock + b"\0" * 4
    with gzip.open(path, "wb", compresslevel=1) as f:
        f.write(head)
        zeros = bytes(1 << 22)
        total = int(np.prod(shape))
        for _ in range(total // len(zeros)):
            f.write(zeros)
        f.write(bytes(total % len(zeros)))
    return path


def test_a_gzip_bomb_mask_is_refused_from_its_header_before_inflating(folder_release, tmp_path, monkeypatch):
    """Before: a small mask .nii.gz claiming a valid 1024³ grid was inflated whole (2.2 GB peak RSS). Now its header
    is checked against the volume's grid first; the error names that file, and its voxels are never read."""
    from radgenome_hf.io import nifti

    rel = folder_release
    stem = rel.volumes[0]
    bomb = _gz_nifti_claiming(_seg_dir(rel, stem) / "aaa_bomb.nii.gz", (256, 256, 256))  # sorts first
    assert bomb.stat().st_size < 200_000
    inflated = []
    real = nifti.NiftiFile.read_raw

    def spy(self):
        inflated.append(self.where)
        return real(self)

    monkeypatch.setattr(nifti.NiftiFile, "read_raw", spy)
    store = MaskStore.prepare(UpstreamRelease.discover(rel.root), "train", "anatomy", cache_root=tmp_path / "mc",
                              progress=False)  # a folder source: indexed from headers, each volume packed on use
    with pytest.raises(ShapeMismatchError, match=r"aaa_bomb\.nii\.gz.*\(256, 256, 256\).*\(32, 32, 24\)"):
        store.pack_all(progress=False, workers=1)
    assert not any("aaa_bomb" in w for w in inflated)


def test_the_wrong_grid_error_names_the_mask_on_the_wrong_grid_without_a_volume(tmp_path):
    """Before: the first file set the grid, so when it was the odd one out the error named the next, good file."""
    good = np.zeros(SHAPE, np.uint8)
    good[1:3, 1:3, 1:3] = 1
    files = {"a_odd": write_nifti(tmp_path / "a_odd.nii.gz", np.zeros((16, 16, 8), np.uint8), np.eye(4))}
    for n in ("b_good", "c_good"):
        files[n] = write_nifti(tmp_path / f"{n}.nii.gz", good, np.eye(4))
    with pytest.raises(ShapeMismatchError, match=r"a_odd\.nii\.gz.*\(16, 16, 8\)") as e:
        PackedMasks.from_nifti_files({k: str(v) for k, v in files.items()})
    assert "b_good" not in str(e.value)


def test_a_deleted_mask_cache_is_packed_again_on_the_next_load(folder_release, tmp_path):
    """Before: the datasets cache still pointed rows at the deleted packs, and decoding failed with "not a
    packed-masks parquet file … rebuild it" for a file that was simply gone. Now the next load packs again (the
    mask cache's token is part of the rows' cache key), and rows still held from before the deletion fail with a
    MissingVolumeError that names the file and says how to re-pack."""
    import shutil

    import datasets

    import radgenome_hf  # noqa: F401
    from radgenome_hf.access import lazymasks

    kw = dict(data_dir=str(folder_release.root), cache_dir=str(tmp_path / "hf"),
              mask_cache_dir=str(tmp_path / "mc"), split="train")
    held = datasets.load_dataset("radgenome", "segmentation", **kw)[0]
    name = held["structures"][0]["name"]
    assert held["masks"].mask(name).any()
    shutil.rmtree(tmp_path / "mc")
    lazymasks._PACKED_CACHE.clear()
    with pytest.raises(MissingVolumeError, match="load the dataset again") as e:
        held["masks"].mask(name)
    assert ".masks.parquet" in str(e.value)
    row = datasets.load_dataset("radgenome", "segmentation", **kw)[0]
    assert row["masks"].mask(name).any()


def test_a_volume_replaced_by_one_on_another_grid_is_refused_on_the_next_load(folder_release, tmp_path):
    """Before: served with the masks of the old grid (the grid check ran only on a fresh load, and the cache key
    did not follow the volume)."""
    import datasets

    import radgenome_hf  # noqa: F401

    kw = dict(data_dir=str(folder_release.root), cache_dir=str(tmp_path / "hf"),
              mask_cache_dir=str(tmp_path / "mc"), split="train")
    datasets.load_dataset("radgenome", "segmentation", **kw)
    stem = folder_release.volumes[0]
    vol = next((folder_release.radgenome_root / "dataset").glob(f"train_preprocessed/**/{stem}.nii.gz"))
    write_nifti(vol, np.zeros((20, 20, 10), np.int16), np.eye(4))
    with pytest.raises(ShapeMismatchError, match=r"\(20, 20, 10\)"):
        datasets.load_dataset("radgenome", "segmentation", **kw)


# --------------------------------------------------------------------------------------------- publish (4, 5)
@pytest.fixture(scope="module")
def hub():
    from radgenome_hf.testing.hub_server import HubServer

    with HubServer() as server, server.patch_client():
        yield server


def test_a_release_that_fails_verification_never_moves_main(hub, tmp_path):
    """Before: publishing to the default branch ``main`` exited 1 without a tag, but ``main`` pointed at the broken
    commit and ``load_dataset(repo)`` failed for everyone. Now the commit is staged on its own branch and verified
    there; ``main`` moves only to a verified tree."""
    from test_publish import _load_back, make_release

    from radgenome_hf.publish.hub import PublishVerificationError, publish_release

    repo = "radgenome/never-broken"
    folder = make_release(tmp_path / "rel")
    good = publish_release(folder, repo, tag="v1.0", endpoint=hub.endpoint, token=hub.token)
    assert hub.head(repo, "main") == good.commit == hub.head(repo, "v1.0")
    before = hub.files(repo, "main")
    (folder / "vqa" / "train-00000-of-00001.parquet").write_bytes(b"PAR1 this shard does not load PAR1")
    with pytest.raises(PublishVerificationError) as e:
        publish_release(folder, repo, tag="v1.1", endpoint=hub.endpoint, token=hub.token)
    assert hub.head(repo, "main") == good.commit and hub.files(repo, "main") == before
    assert e.value.report.verification.revision != good.commit  # the staged commit was the one checked
    assert "'main' was not moved" in str(e.value)
    assert hub.head(repo, "v1.1") is None
    refs = hub._repos[("dataset", repo)]
    assert set(refs.branches) == {"main"}  # the staging branch is gone
    got = _load_back(hub, tmp_path / "home", repo, "vqa", "main")
    assert len(got["auth"]["train"]) == 5  # users still load the previous, verified release


def test_a_verified_release_moves_the_branch_to_the_verified_tree(hub, tmp_path):
    from test_publish import make_release

    from radgenome_hf.publish.hub import publish_release

    repo = "radgenome/staged-ok"
    r = publish_release(make_release(tmp_path / "rel"), repo, tag="v1.0", endpoint=hub.endpoint, token=hub.token)
    assert r.verification.ok and hub.head(repo, "main") == r.commit == hub.head(repo, "v1.0")
    assert hub.files(repo, "main") == hub.files(repo, r.verification.revision)
    assert set(hub._repos[("dataset", repo)].branches) == {"main"}


def test_an_http_error_listing_the_tree_is_a_hub_error_not_a_name_error(hub, tmp_path):
    """Before: ``_remote_files`` caught ``HfHubHTTPError`` without importing it: ``NameError`` on any 5xx."""
    from test_publish import make_release

    from radgenome_hf.errors import HubAccessError
    from radgenome_hf.publish.hub import publish_release

    repo = "radgenome/tree-500"
    folder = make_release(tmp_path / "rel")
    publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    hub.fail_next("tree", status=400)  # a 5xx takes huggingface_hub ~20 s of retries to reach the same path
    try:
        with pytest.raises(HubAccessError, match="listing the files of radgenome/tree-500"):
            publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    finally:
        hub._failures.clear()


# ------------------------------------------------------------------------------------- hostile inputs (9)
def _tar_with(path: Path, members: dict[str, bytes]) -> Path:
    import io
    import tarfile

    with tarfile.open(path, "w:gz") as tf:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            tf.addfile(ti, io.BytesIO(data))
    return path


@pytest.mark.parametrize("member", [
    "train_anatomy_mask/seg_train_1_a_1/../seg_train_1_a_1/pwned.nii.gz",
    "/train_anatomy_mask/seg_train_1_a_1/absmask.nii.gz",
])
def test_dotdot_and_absolute_members_are_refused_not_packed(tmp_path, member):
    """Before: they became structures (``pwned``, ``absmask``) although the README says they are refused."""
    from radgenome_hf.errors import UnsafeArchiveError
    from radgenome_hf.io.archives import iter_masks

    ok = write_nifti(tmp_path / "m.nii.gz", np.ones((8, 8, 4), np.uint8), np.eye(4)).read_bytes()
    archive = _tar_with(tmp_path / "train_anatomy_mask.tar.gz",
                        {"train_anatomy_mask/seg_train_1_a_1/lung.nii.gz": ok, member: ok})
    with pytest.raises(UnsafeArchiveError) as e:
        list(iter_masks(archive))
    assert e.value.member == member and "train_anatomy_mask.tar.gz" in str(e.value)


def test_build_copy_refuses_a_volume_linked_from_outside_the_release(tmp_path):
    """Before: ``build --copy`` copied the link's target into the packed release, so ``publish`` uploaded it."""
    from radgenome_hf.publish.build import build_release

    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=1, n_valid_patients=1, shape=(16, 16, 8)),
                        progress=False)
    stem = rel.volumes[0]
    vol = next((rel.radgenome_root / "dataset").glob(f"train_preprocessed/**/{stem}.nii.gz"))
    outside = tmp_path / "elsewhere" / "private.nii.gz"
    outside.parent.mkdir()
    os.replace(vol, outside)
    vol.symlink_to(outside)
    with pytest.raises(MalformedFileError, match=r"outside the source release"):
        build_release(rel.root, tmp_path / "out", configs=("segmentation",), link="copy")
    assert not (tmp_path / "out").exists()


def test_a_packed_release_rebuilt_in_place_is_not_served_from_the_old_cache(tmp_path, monkeypatch):
    """Before: after ``build --overwrite``, ``load_packed`` and plain ``datasets.load_dataset(folder)`` served the
    old rows (datasets keys a local folder's cache by the card's patterns, which did not change)."""
    import datasets

    import radgenome_hf
    from radgenome_hf.publish.build import build_release

    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=2, n_valid_patients=1, shape=(16, 16, 8)),
                        progress=False)
    out = tmp_path / "out"
    build_release(rel.root, out, configs=("vqa",))
    before = datasets.load_dataset(str(out), "vqa", split="train").num_rows
    csv = rel.radgenome_root / "dataset" / "radgenome_files" / "train_vqa_abnormality.csv"
    lines = csv.read_text(encoding="utf-8").splitlines(keepends=True)
    csv.write_text("".join(lines[:-3]), encoding="utf-8")
    build_release(rel.root, out, configs=("vqa",), overwrite=True)
    assert datasets.load_dataset(str(out), "vqa", split="train").num_rows == before - 3
    assert radgenome_hf.load_packed(str(out), "vqa", split="train").num_rows == before - 3


# ---------------------------------------------------------------------------------- errors that mislead (8)
def test_a_valid_csv_with_a_2_mb_quoted_field_is_read(tmp_path):
    """Before: rejected with pyarrow's block-size message ("straddling object") and no row."""
    from radgenome_hf.io.tables import read_case_disorders

    long = 'a ""quoted"" nodule,\n' * 100_000  # 2 MB, quoted, with escaped quotes: pyarrow needs a bigger block
    p = tmp_path / "train_case_disorders.csv"
    p.write_text(f'Volumename,Disorders\ntrain_1_a_1.nii.gz,"{long}"\ntrain_2_a_1.nii.gz,"no findings"\n',
                 encoding="utf-8")
    t = read_case_disorders(p)
    assert t.num_rows == 2 and t["disorders"][0].as_py() == long.replace('""', '"')


def test_a_truly_malformed_row_after_a_long_field_is_named(tmp_path):
    from radgenome_hf.io.tables import read_case_disorders

    long = 'x ""y""\n' * 200_000
    p = tmp_path / "train_case_disorders.csv"
    p.write_text(f'Volumename,Disorders\ntrain_1_a_1.nii.gz,"{long}"\ntrain_2_a_1.nii.gz,a,b,c\n', encoding="utf-8")
    with pytest.raises(MalformedFileError) as e:
        read_case_disorders(p)
    assert e.value.row == 2 and "straddl" not in str(e.value)


def test_a_million_column_header_is_not_called_empty(tmp_path):
    """Before: "the file is empty". Now: what the header is, briefly (not a million names)."""
    from radgenome_hf.io.tables import read_case_disorders

    p = tmp_path / "train_case_disorders.csv"
    p.write_text(",".join(f"c{i}" for i in range(1_000_000)) + "\n", encoding="utf-8")
    with pytest.raises(MalformedFileError) as e:
        read_case_disorders(p)
    msg = str(e.value)
    assert "empty" not in msg and "Volumename" in msg and len(msg) < 2000


_BUILD_FULL_DISK = """
import resource, signal, sys
from radgenome_hf.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
sys.exit(main(["build", sys.argv[1], "--data-dir", sys.argv[2], "--configs", "vqa", "--copy"]))
"""


def test_build_on_a_full_disk_is_a_one_line_error(tmp_path):
    """Before: a traceback (OSError, or datasets' DatasetGenerationError around it)."""
    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=2, n_valid_patients=1, shape=(16, 16, 8)),
                        progress=False)
    env = {**_env(), "HF_DATASETS_CACHE": str(tmp_path / "hf"), "RADGENOME_CACHE": str(tmp_path / "rc")}
    r = subprocess.run([sys.executable, "-c", _BUILD_FULL_DISK, str(tmp_path / "out"), str(rel.root)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1, r.stderr[-3000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("radgenome-hf build: error:")]
    assert len(errors) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "File too large" in errors[0] and "unchanged" in errors[0]
    assert not (tmp_path / "out").exists()


def test_the_losing_concurrent_build_overwrite_is_a_clear_error_and_keeps_a_release(tmp_path, monkeypatch):
    """Before: ``OSError: Directory not empty`` as a traceback. Now a RadGenomeError (one CLI line), and ``out``
    holds the winner's complete release."""
    from radgenome_hf.errors import RadGenomeError
    from radgenome_hf.publish import build

    out, tmp = tmp_path / "out", tmp_path / "out.tmp-1"
    out.mkdir()
    (out / "README.md").write_text("old")
    tmp.mkdir()
    (tmp / "README.md").write_text("ours")
    real = os.replace

    def racing(src, dst):
        real(src, dst)
        if Path(dst).name.startswith("out.old-"):  # the other build swaps its release in right after our move
            Path(out).mkdir()
            (out / "README.md").write_text("theirs")

    monkeypatch.setattr(build.os, "replace", racing)
    with pytest.raises(RadGenomeError, match="another build running at the same time"):
        build._swap_in(tmp, out)
    assert (out / "README.md").read_text() == "theirs"


_LOAD_FULL_DISK = """
import resource, signal, sys
import datasets
import radgenome_hf
from radgenome_hf.errors import CacheWriteError
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG, like a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), int(sys.argv[3])))
try:
    datasets.load_dataset("radgenome", "vqa", data_dir=sys.argv[1], cache_dir=sys.argv[2])
except CacheWriteError as e:
    print("CacheWriteError", e.errno, str(e).startswith(sys.argv[2]))
"""


def test_a_full_disk_under_the_datasets_cache_is_named(tmp_path):
    """Before: ``DatasetGenerationError: An error occurred while generating the dataset``."""
    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=3, n_valid_patients=1, shape=(16, 16, 8)),
                        progress=False)
    env = {**_env(), "RADGENOME_CACHE": str(tmp_path / "rc")}
    r = subprocess.run([sys.executable, "-c", _LOAD_FULL_DISK, str(rel.root), str(tmp_path / "hf"), "16000"],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-3:] == ["CacheWriteError", "27", "True"], (r.stdout, r.stderr[-3000:])


def test_a_mask_archive_replaced_serves_the_new_masks(tmp_path):
    """Before (package-version cache key): the rows and packs of the old archive came back."""
    import tarfile

    import datasets

    import radgenome_hf  # noqa: F401

    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=1, n_valid_patients=1, shape=SHAPE),
                        progress=False)
    kw = dict(data_dir=str(rel.root), cache_dir=str(tmp_path / "hf"), mask_cache_dir=str(tmp_path / "mc"),
              split="train")
    row = datasets.load_dataset("radgenome", "segmentation", **kw)[0]
    region = {s["name"] for s in row["structures"] if s["source"] == "region"}
    victim = sorted(region)[0]
    archive = rel.radgenome_root / "dataset" / "train_region_mask.tar.gz"
    st = archive.stat()
    new = archive.with_name(".new.tar.gz")
    with tarfile.open(archive, "r:gz") as src, tarfile.open(new, "w:gz") as dst:
        for m in src:  # the same archive without one structure's mask
            if not (m.isreg() and m.name.endswith(f"/{victim}.nii.gz")):
                dst.addfile(m, src.extractfile(m) if m.isreg() else None)
    os.replace(new, archive)
    os.utime(archive, ns=(st.st_atime_ns, st.st_mtime_ns))
    from radgenome_hf.access import lazymasks

    lazymasks._PACKED_CACHE.clear()
    row = datasets.load_dataset("radgenome", "segmentation", **kw)[0]
    names = {s["name"] for s in row["structures"] if s["source"] == "region"}
    assert names == region - {victim}


@pytest.mark.parametrize("where", ["page payload", "a third in"])
def test_a_damaged_shard_of_a_packed_release_is_an_error_naming_it(tmp_path, monkeypatch, where):
    """Before: pyarrow's "Invalid number of indices: 0" or "ZSTD decompression failed" inside datasets' "An error
    occurred while generating the dataset", naming no file (the page checksums were never verified)."""
    import datasets
    import pyarrow.parquet as pq

    import radgenome_hf
    from radgenome_hf.publish.build import build_release

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf")
    rel = write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=2, n_valid_patients=1, shape=(16, 16, 8)),
                        progress=False)
    out = tmp_path / "out"
    build_release(rel.root, out, configs=("vqa",), num_shards=1)
    shard = next((out / "vqa").glob("train-*.parquet"))
    col = pq.read_metadata(shard).row_group(0).column(1)  # the question strings
    end = (col.dictionary_page_offset or col.data_page_offset) + col.total_compressed_size
    clean = pq.read_table(shard).to_pylist()
    _flip(shard, end - 3 if where == "page payload" else len(shard.read_bytes()) // 3, 2)
    if where == "page payload":  # inside a checksummed page: always an error naming the shard
        with pytest.raises(MalformedFileError, match="damaged") as e:
            radgenome_hf.load_packed(str(out), "vqa", split="train")
        assert e.value.path == str(shard)
        return
    # anywhere else (a page header, statistics, the footer): an error naming the shard, or the very same rows
    try:
        rows = radgenome_hf.load_packed(str(out), "vqa", split="train").with_format("arrow")[:]
    except MalformedFileError as exc:
        assert exc.path == str(shard)
    else:
        assert rows.to_pylist() == clean
