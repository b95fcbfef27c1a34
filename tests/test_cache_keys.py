"""The builder's cache follows its sources: edited release files and edited builder code are never served stale."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import pytest

import radgenome_hf  # noqa: F401  (registers the builder)
from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def release(tmp_path):
    """A private, writable release (the tests edit it)."""
    return write_release(tmp_path / "rel", SyntheticConfig(n_train_patients=2, n_valid_patients=1, shape=(32, 32, 24)),
                         progress=False)


def _drop_last_rows(csv: Path, n: int) -> None:
    lines = csv.read_text(encoding="utf-8").splitlines(keepends=True)
    assert len(lines) > n + 1
    csv.write_text("".join(lines[:-n]), encoding="utf-8")


def _load(release, cache, **kw):
    return datasets.load_dataset("radgenome", "vqa", data_dir=str(release.root), cache_dir=str(cache),
                                 split="train", **kw)


def test_csv_edited_in_place_serves_new_rows_in_both_modes(release, tmp_path):
    cache = tmp_path / "hf"
    before = _load(release, cache).num_rows
    _drop_last_rows(release.radgenome_root / "dataset" / "radgenome_files" / "train_vqa_abnormality.csv", 2)
    after = _load(release, cache).num_rows
    streamed = sum(1 for _ in _load(release, cache, streaming=True))
    assert after == before - 2
    assert streamed == after


def test_force_redownload_after_an_edit(release, tmp_path):
    cache = tmp_path / "hf"
    before = _load(release, cache).num_rows
    _drop_last_rows(release.radgenome_root / "dataset" / "radgenome_files" / "train_vqa_presence.csv", 3)
    again = _load(release, cache, download_mode="force_redownload")
    assert again.num_rows == before - 3


def test_edit_with_size_and_mtime_restored_is_still_seen(release, tmp_path):
    cache = tmp_path / "hf"
    csv = release.radgenome_root / "dataset" / "radgenome_files" / "train_vqa_abnormality.csv"
    rows = _load(release, cache)
    st = csv.stat()
    text = csv.read_text(encoding="utf-8")
    old_answer = rows[0]["answer"]
    assert old_answer and text.count(old_answer) >= 1
    new_answer = old_answer[::-1] if old_answer[::-1] != old_answer else old_answer.upper()
    csv.write_text(text.replace(old_answer, new_answer, 1), encoding="utf-8")  # same size
    os.utime(csv, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime restored: only ctime (and content) differ
    assert csv.stat().st_size == st.st_size and csv.stat().st_mtime_ns == st.st_mtime_ns
    fresh = _load(release, cache)
    assert new_answer in {fresh[i]["answer"] for i in range(fresh.num_rows)}


def test_unchanged_release_reuses_the_prepared_arrow_files(release, tmp_path):
    cache = tmp_path / "hf"
    first = _load(release, cache)
    second = _load(release, cache)
    assert [f["filename"] for f in first.cache_files] == [f["filename"] for f in second.cache_files]


def test_builder_code_edit_changes_the_cache_key(tmp_path):
    """An edited builder with an unchanged version must not reuse Arrow files (hash of the package source)."""
    copy = tmp_path / "pkg"
    shutil.copytree(REPO / "radgenome_hf", copy / "radgenome_hf", ignore=shutil.ignore_patterns("__pycache__"))
    code = "from radgenome_hf.hf.builder import builder_source_hash; print(builder_source_hash())"
    env = {**os.environ, "PYTHONPATH": str(copy)}

    def hash_of_copy() -> str:
        return subprocess.run([sys.executable, "-c", code], env=env, cwd=copy, capture_output=True, text=True,
                              check=True).stdout.strip()

    original = hash_of_copy()
    with open(copy / "radgenome_hf" / "hf" / "builder.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit that changes no version number\n")
    edited = hash_of_copy()
    assert original and edited and original != edited
    # the CLI is not part of the rows: editing it keeps the key
    with open(copy / "radgenome_hf" / "cli" / "info.py", "a", encoding="utf-8") as f:
        f.write("\n# cosmetic\n")
    assert hash_of_copy() == edited
    builder = datasets.load_dataset_builder("radgenome", "vqa", data_dir=str(tmp_path))
    from radgenome_hf.hf.builder import builder_source_hash

    assert builder.hash == builder_source_hash() and builder_source_hash() in builder.cache_dir
