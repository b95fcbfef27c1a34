"""Shared fixtures: one small synthetic release, the real sample rows (the isolated HF environment is in ../conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

REAL_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "radgenome-real-sample"


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
