"""For every test and docstring example (``pytest`` and ``pytest --doctest-modules radgenome_hf``): private Hugging
Face and radgenome caches per session, and offline mode (nothing here may reach the network)."""

from __future__ import annotations

import os

import pytest


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
