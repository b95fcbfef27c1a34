"""Opt-in: publish a tiny release to a new branch of a real Hub repo, load it back, clean up.

Runs only with ``RADGENOME_LIVE_HUB_TOKEN`` (a write token) and ``RADGENOME_LIVE_HUB_REPO``
(``org/name`` of a dataset repo you own; it is created if missing). Optional ``RADGENOME_LIVE_HUB_ENDPOINT``
(e.g. a staging Hub). The branch ``radgenome-live-<time>`` is deleted afterwards; ``main`` is never touched.
"""

from __future__ import annotations

import json
import os
import time

import pytest

TOKEN = os.environ.get("RADGENOME_LIVE_HUB_TOKEN")
REPO = os.environ.get("RADGENOME_LIVE_HUB_REPO")
ENDPOINT = os.environ.get("RADGENOME_LIVE_HUB_ENDPOINT") or None

pytestmark = [
    pytest.mark.live_hub,
    pytest.mark.skipif(not (TOKEN and REPO), reason="live Hub test: set RADGENOME_LIVE_HUB_TOKEN (write token) "
                                                    "and RADGENOME_LIVE_HUB_REPO (org/name) to run it"),
]


def test_publish_to_live_hub_branch(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    import pyarrow as pa
    import pyarrow.parquet as pq
    from huggingface_hub import HfApi

    from radgenome_hf.publish.card import ConfigSpec, render_card
    from radgenome_hf.publish.hub import publish_release

    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)  # conftest makes the suite offline
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    folder = tmp_path / "release"
    (folder / "vqa").mkdir(parents=True)
    pq.write_table(pa.table({"volume_name": ["train_1_a_1", "train_2_a_1"], "question": ["q1", "q2"],
                             "answer": ["Yes.", "No."]}), folder / "vqa" / "train-00000-of-00001.parquet")
    (folder / "README.md").write_text(render_card(
        [ConfigSpec("vqa", {"train": "vqa/train-*.parquet"}, default=True)], {"rows": {"vqa": {"train": 2}}}, [],
        repo_id=REPO), encoding="utf-8")
    (folder / "release_manifest.json").write_text(json.dumps({"configs": {"vqa": {"train": 2}}}))

    branch = f"radgenome-live-{int(time.time())}"
    api = HfApi(endpoint=ENDPOINT, token=TOKEN)
    try:
        report = publish_release(folder, REPO, branch=branch, token=TOKEN, endpoint=ENDPOINT, private=None)
        assert report.verification is not None and report.verification.ok, report.summary()
        assert report.verification.rows == {"vqa": {"train": 2}}
        again = publish_release(folder, REPO, branch=branch, token=TOKEN, endpoint=ENDPOINT, verify=False)
        assert again.uploaded_files == 0 and again.commit == report.commit
        assert TOKEN not in json.dumps(report.to_dict())
    finally:
        api.delete_branch(REPO, branch=branch, repo_type="dataset")
