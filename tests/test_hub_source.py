"""The builder reads an upstream release straight from a Hub repo (hf://), against the local Hub server:
CSVs at prepare time, mask archives fetched once and packed, volumes fetched on first decode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from radgenome_hf.testing.hub_server import HubServer

CODE = r"""
import json, sys
from huggingface_hub import HfApi
api = HfApi()
api.create_repo(REPO, repo_type="dataset")
api.upload_folder(repo_id=REPO, repo_type="dataset", folder_path=ROOT,
                  allow_patterns=["dataset/radgenome_files/*", "dataset/*_preprocessed/**", "dataset/*_mask*"])
import radgenome_hf
out = {}
for streaming in (False, True):
    ds = radgenome_hf.load_dataset("vqa", data_dir="hf://datasets/" + REPO, split="train", streaming=streaming,
                                   cache_dir=CACHE + str(streaming))
    rows = list(ds)
    vol = rows[0]["volume"]
    out[str(streaming)] = {"n": len(rows), "volume": repr(vol), "shape": list(vol.array().shape),
                           "types": sorted({r["question_type"] for r in rows}),
                           "sources": sorted({r["mask"].source for r in rows}),
                           "voxels_ok": all(r["mask"].array().sum() == r["mask"].voxel_count
                                            for r in rows[:40] if r["mask"].source != "whole")}
print(json.dumps(out))
"""


def test_vqa_from_an_hf_url_normal_and_streaming(synthetic_release, tmp_path):
    import csv

    root = str(synthetic_release.radgenome_root)
    files = os.path.join(root, "dataset", "radgenome_files")
    expected = 0
    for name in ("train_vqa_abnormality.csv", "train_vqa_location.csv", "train_vqa_presence.csv",
                 "train_vqa_size.csv", "train_case_disorders.csv"):
        with open(os.path.join(files, name), newline="") as f:
            expected += sum(1 for _ in csv.DictReader(f))
    with HubServer() as hub:
        env = dict(os.environ, **hub.client_env(tmp_path / "hf"), RADGENOME_CACHE=str(tmp_path / "rg"))
        code = CODE.replace("REPO", repr("radgenome-test/rg")).replace("ROOT", repr(root)).replace(
            "CACHE", repr(str(tmp_path / "c")))
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    for streaming, got in out.items():
        assert got["n"] == expected, streaming
        assert got["types"] == ["abnormality", "disorders", "location", "presence", "size"]
        assert got["shape"] == list(synthetic_release.config.grid_shape)
        assert "train_1_a_1" in got["volume"]
        # mask archives (tar.gz and split _aa/_ab parts) were fetched once and packed: rows ground to real masks
        assert got["sources"] == ["anatomy", "region", "whole"] and got["voxels_ok"]


LAZY = r"""
import json, radgenome_hf
ds = radgenome_hf.load_packed(REPO, "vqa", revision="v0.1", split="train", cache_dir=CACHE)
row = next(r for r in ds if r["mask"].source != "whole")
print(json.dumps({"n": len(ds), "volume": repr(row["volume"]), "shape": list(row["volume"].array().shape),
                  "mask": row["mask"].path, "voxels": int(row["mask"].array().sum()), "count": row["mask"].voxel_count}))
"""


def test_packed_release_from_the_hub_decodes_lazily(synthetic_release, tmp_path):
    from radgenome_hf.publish.build import build_release
    from radgenome_hf.publish.hub import publish_release

    packed = build_release(synthetic_release.root, tmp_path / "packed")
    repo = "radgenome-test/packed"
    with HubServer() as hub:
        with hub.patch_client():  # in-process client: no Xet, this server
            publish_release(packed.folder, repo, tag="v0.1", endpoint=hub.endpoint, token=hub.token, verify=False)
        env = dict(os.environ, **hub.client_env(tmp_path / "hf"), RADGENOME_CACHE=str(tmp_path / "rg"))
        code = LAZY.replace("REPO", repr(repo)).replace("CACHE", repr(str(tmp_path / "c")))
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got["n"] == packed.rows["vqa"]["train"]
    assert got["mask"].startswith(f"hf://datasets/{repo}@v0.1/masks/")
    assert got["voxels"] == got["count"] > 0
    assert got["shape"] == list(synthetic_release.config.grid_shape)



def test_fetch_resolves_the_revision_once_and_cached_files_cost_no_request(synthetic_release, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from radgenome_hf.io import hub as hub_io

    repo = "radgenome-test/fetch"
    files = os.path.join(str(synthetic_release.radgenome_root), "dataset", "radgenome_files")
    monkeypatch.setattr(hub_io, "_commits", {})
    monkeypatch.setattr(hub_io, "_fetched", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", False)
    with HubServer() as hub, hub.patch_client():
        api = HfApi(endpoint=hub.endpoint, token=hub.token)
        api.create_repo(repo, repo_type="dataset")
        api.upload_folder(repo_id=repo, repo_type="dataset", folder_path=files, path_in_repo="csv")
        urls = [f"hf://datasets/{repo}/csv/{n}" for n in ("train_region_report.csv", "train_vqa_size.csv")]
        urls.append(f"hf://datasets/{repo}@main/csv/train_vqa_presence.csv")
        hub.reset_log()
        paths = [hub_io.fetch(u) for u in urls]
        first = hub.counts(repo)
        assert first["repo_info"] == 2  # once for the default branch, once for "main"; not once per file
        hub.reset_log()
        again = [hub_io.fetch(u) for u in urls * 5]  # e.g. 15 rows of the same volumes
        assert again == paths * 5 and sum(hub.counts(repo).values()) == 0, hub.counts(repo)
    with open(paths[0], "rb") as got, open(os.path.join(files, "train_region_report.csv"), "rb") as want:
        assert got.read() == want.read()
