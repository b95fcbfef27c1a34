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


@pytest.fixture(scope="session")
def packed_release_100(tmp_path_factory: pytest.TempPathFactory):
    """A synthetic upstream release of ~100 train volumes (64 x 64 x 48; masks as ``seg_<volume>/`` folders of
    NIfTI files, the source the tests compare against) and its packed release (vqa and segmentation), built once
    per session: the remote-masks and subset-download tests publish it to a local Hub server.
    Returns ``(upstream release, packed folder)``."""
    from radgenome_hf.publish.build import build_release
    from radgenome_hf.testing.synthetic import SyntheticConfig, write_release

    root = tmp_path_factory.mktemp("release_100")
    rel = write_release(root / "upstream", SyntheticConfig(n_train_patients=66, n_valid_patients=4, shape=(64, 64, 48),
                                                           mask_layout="folders"), progress=False)
    report = build_release(rel.root, root / "packed", configs=("vqa", "segmentation"))
    return rel, report.folder


@pytest.fixture(scope="session")
def hub_100(packed_release_100):
    """A local Hub server holding ``packed_release_100`` as ``radgenome-test/packed100`` (published once)."""
    from radgenome_hf.publish.hub import publish_release
    from radgenome_hf.testing.hub_server import HubServer

    _, packed = packed_release_100
    with HubServer() as server:
        with server.patch_client():
            publish_release(packed, "radgenome-test/packed100", endpoint=server.endpoint, token=server.token,
                            verify=False)
        yield server
