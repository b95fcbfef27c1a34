"""Shared fixtures: an isolated Hugging Face environment per session and one small synthetic release."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "radgenome-real-sample"


@pytest.fixture(autouse=True, scope="session")
def _isolated_hf_env(tmp_path_factory: pytest.TempPathFactory):
    """Private HF caches (the datasets stale-cache fallback would otherwise leak between runs) and offline mode."""
    home = tmp_path_factory.mktemp("hf_home")
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_DATASETS_CACHE", "HF_HUB_OFFLINE", "RADGENOME_CACHE")}
    os.environ["HF_HOME"] = str(home)
    os.environ["HF_DATASETS_CACHE"] = str(home / "datasets")
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["RADGENOME_CACHE"] = str(home / "radgenome")
    yield
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def synthetic_release(tmp_path_factory: pytest.TempPathFactory):
    """A small synthetic release in the real layouts (built once per session; treat it as read-only)."""
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    out = tmp_path_factory.mktemp("synthetic_release")
    return write_release(out, SyntheticConfig())


@pytest.fixture(scope="session")
def real_sample_dir() -> Path:
    """The real RadGenome CSV rows in ../shared (skipped with a message when absent, e.g. a plain clone)."""
    if not REAL_SAMPLE.is_dir():
        pytest.skip(f"real RadGenome sample rows not found at {REAL_SAMPLE} (they live in ../shared beside the repo)")
    return REAL_SAMPLE
