"""The local Hub-compatible server, exercised with real huggingface_hub 2.4 calls over HTTP on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io

import pytest

from radgenome_hf.testing.hub_server import HubServer

hh = pytest.importorskip("huggingface_hub")
from huggingface_hub import CommitOperationAdd, CommitOperationDelete, HfApi, HfFileSystem  # noqa: E402
from huggingface_hub.errors import (  # noqa: E402
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

BIN = bytes(range(256)) * 40 + b"\x00tail"  # binary (NUL bytes) -> LFS


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server, server.patch_client():
        yield server


@pytest.fixture()
def api(hub):
    return HfApi(endpoint=hub.endpoint, token=hub.token)


def _repo(api: HfApi, name: str) -> str:
    repo_id = f"radgenome/{name}"
    api.create_repo(repo_id, repo_type="dataset")
    return repo_id


def test_whoami_and_bad_token(hub, api):
    assert api.whoami()["name"] == hub.user
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(endpoint=hub.endpoint, token="hf_wrong").whoami()
    assert e.value.response.status_code == 401


def test_create_info_delete(hub, api):
    repo_id = _repo(api, "crud")
    info = api.dataset_info(repo_id)
    assert info.id == repo_id and len(info.sha) == 40 and [s.rfilename for s in info.siblings] == [".gitattributes"]
    with pytest.raises(HfHubHTTPError) as e:
        api.create_repo(repo_id, repo_type="dataset")
    assert e.value.response.status_code == 409
    api.create_repo(repo_id, repo_type="dataset", exist_ok=True)
    api.delete_repo(repo_id, repo_type="dataset")
    with pytest.raises(RepositoryNotFoundError):
        api.dataset_info(repo_id)
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(_repo(api, "crud2"), revision="nope")


def test_commit_lfs_tree_download_and_ranges(hub, api, tmp_path):
    repo_id = _repo(api, "upload")
    hub.reset_log()
    info = api.create_commit(
        repo_id, repo_type="dataset", commit_message="add",
        operations=[CommitOperationAdd("README.md", b"---\nlicense: cc-by-4.0\n---\n# hi\n"),
                    CommitOperationAdd("data/train-00000.parquet", BIN),
                    CommitOperationAdd("data/sub/x.txt", b"hello")])
    c = hub.counts()
    assert c["lfs_upload"] == 1 and c["commit"] == 1 and c["validate_yaml"] == 1
    assert info.oid == api.dataset_info(repo_id).sha

    top = {e.path: e for e in api.list_repo_tree(repo_id, repo_type="dataset")}
    assert set(top) == {".gitattributes", "README.md", "data"}
    tree = {e.path: e for e in api.list_repo_tree(repo_id, repo_type="dataset", recursive=True, expand=True)}
    pq = tree["data/train-00000.parquet"]
    assert pq.lfs is not None and pq.lfs.sha256 == hashlib.sha256(BIN).hexdigest() and pq.size == len(BIN)
    assert tree["data/sub/x.txt"].lfs is None and tree["data/sub/x.txt"].last_commit.oid == info.oid
    assert "data/sub" in tree
    with pytest.raises(EntryNotFoundError):
        list(api.list_repo_tree(repo_id, "missing_dir", repo_type="dataset"))
    pi = api.get_paths_info(repo_id, ["README.md", "data", "absent"], repo_type="dataset")
    assert [p.path for p in pi] == ["README.md", "data"]

    local = hh.hf_hub_download(repo_id, "data/train-00000.parquet", repo_type="dataset", endpoint=hub.endpoint,
                               token=hub.token, cache_dir=tmp_path)
    assert open(local, "rb").read() == BIN
    with pytest.raises(EntryNotFoundError):
        hh.hf_hub_download(repo_id, "nope.txt", repo_type="dataset", endpoint=hub.endpoint, token=hub.token,
                           cache_dir=tmp_path)

    fs = HfFileSystem(endpoint=hub.endpoint, token=hub.token, skip_instance_cache=True)
    assert sorted(fs.glob(f"datasets/{repo_id}/data/*.parquet")) == [f"datasets/{repo_id}/data/train-00000.parquet"]
    hub.reset_log()
    with fs.open(f"datasets/{repo_id}/data/train-00000.parquet", "rb", block_size=1024) as f:
        f.seek(5000)
        assert f.read(100) == BIN[5000:5100]
    gets = [r for r in hub.requests if r.kind == "resolve" and r.method == "GET"]
    assert gets and all(r.status == 206 for r in gets) and sum(r.bytes_out for r in gets) < len(BIN)
    sent = hub.downloaded_bytes(repo_id, "train-00000.parquet")
    assert sent == sum(r.bytes_out for r in gets) and 100 <= sent < len(BIN)
    assert hub.downloaded_bytes(repo_id, "x.txt") == 0


def test_reupload_skips_present_lfs_and_parent_commit(hub, api):
    repo_id = _repo(api, "parent")
    api.create_commit(repo_id, repo_type="dataset", commit_message="1",
                      operations=[CommitOperationAdd("a.bin", BIN)])
    head = api.dataset_info(repo_id).sha
    hub.reset_log()
    # same content under another path: the LFS object is already present -> no upload
    api.create_commit(repo_id, repo_type="dataset", commit_message="2", parent_commit=head,
                      operations=[CommitOperationAdd("b.bin", BIN)])
    assert hub.counts(repo_id)["lfs_upload"] == 0
    with pytest.raises(HfHubHTTPError) as e:  # stale parent
        api.create_commit(repo_id, repo_type="dataset", commit_message="3", parent_commit=head,
                          operations=[CommitOperationAdd("c.txt", b"c")])
    assert e.value.response.status_code == 412
    api.create_commit(repo_id, repo_type="dataset", commit_message="del",
                      operations=[CommitOperationDelete("a.bin"), CommitOperationAdd("d/e.txt", b"e")])
    api.create_commit(repo_id, repo_type="dataset", commit_message="delfolder",
                      operations=[CommitOperationDelete("d/", is_folder=True)])
    assert sorted(hub.files(repo_id)) == [".gitattributes", "b.bin"]
    commits = api.list_repo_commits(repo_id, repo_type="dataset")
    assert [c.title for c in commits] == ["delfolder", "del", "2", "1", "initial commit"]


def test_branches_tags_refs_pr(hub, api, tmp_path):
    repo_id = _repo(api, "refs")
    api.create_commit(repo_id, repo_type="dataset", commit_message="v1",
                      operations=[CommitOperationAdd("f.txt", b"one")])
    api.create_branch(repo_id, branch="staging", repo_type="dataset")
    api.create_branch(repo_id, branch="staging", repo_type="dataset", exist_ok=True)
    api.create_commit(repo_id, repo_type="dataset", revision="staging", commit_message="v2",
                      operations=[CommitOperationAdd("f.txt", b"two")])
    api.create_tag(repo_id, tag="v2.0", revision="staging", repo_type="dataset")
    with pytest.raises(HfHubHTTPError):
        api.create_tag(repo_id, tag="v2.0", revision="main", repo_type="dataset")
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    assert {b.name for b in refs.branches} == {"main", "staging"} and [t.name for t in refs.tags] == ["v2.0"]

    def read(rev: str) -> bytes:
        p = hh.hf_hub_download(repo_id, "f.txt", repo_type="dataset", revision=rev, endpoint=hub.endpoint,
                               token=hub.token, cache_dir=tmp_path)
        return open(p, "rb").read()

    assert read("main") == b"one" and read("v2.0") == b"two" and read("staging") == b"two"
    pr = api.create_commit(repo_id, repo_type="dataset", commit_message="pr", create_pr=True,
                           operations=[CommitOperationAdd("f.txt", b"three")])
    assert pr.pr_revision == "refs/pr/1" and read("refs/pr/1") == b"three" and read("main") == b"one"
    api.delete_tag(repo_id, tag="v2.0", repo_type="dataset")
    api.delete_branch(repo_id, branch="staging", repo_type="dataset")
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    assert [b.name for b in refs.branches] == ["main"] and refs.tags == []


def test_private_and_gated(hub, api, tmp_path):
    repo_id = _repo(api, "gated")
    api.create_commit(repo_id, repo_type="dataset", commit_message="x",
                      operations=[CommitOperationAdd("f.txt", b"secret")])
    api.update_repo_settings(repo_id, repo_type="dataset", gated="manual")
    assert api.dataset_info(repo_id).gated == "manual"
    anon = dict(repo_id=repo_id, filename="f.txt", repo_type="dataset", endpoint=hub.endpoint, cache_dir=tmp_path)
    with pytest.raises(GatedRepoError):
        hh.hf_hub_download(**anon, token=False)
    hub.add_user("stranger", "hf_stranger")
    with pytest.raises(GatedRepoError):
        hh.hf_hub_download(**anon, token="hf_stranger")
    hub.grant_access(repo_id, "stranger")
    assert open(hh.hf_hub_download(**anon, token="hf_stranger"), "rb").read() == b"secret"
    with pytest.raises(HfHubHTTPError) as e:  # a user may not write into another namespace
        HfApi(endpoint=hub.endpoint, token="hf_stranger").create_commit(
            repo_id, repo_type="dataset", commit_message="no", operations=[CommitOperationAdd("g", b"g")])
    assert e.value.response.status_code == 403

    api.update_repo_settings(repo_id, repo_type="dataset", gated=False, private=True)
    with pytest.raises(RepositoryNotFoundError):
        HfApi(endpoint=hub.endpoint, token=False).dataset_info(repo_id)
    assert api.dataset_info(repo_id).private is True


def test_injected_failure_and_log_has_no_token(hub, api):
    repo_id = _repo(api, "fail")
    hub.fail_next("commit", status=500)
    with pytest.raises(HfHubHTTPError):
        api.create_commit(repo_id, repo_type="dataset", commit_message="x",
                          operations=[CommitOperationAdd("f.txt", b"x")])
    assert sorted(hub.files(repo_id)) == [".gitattributes"]
    api.create_commit(repo_id, repo_type="dataset", commit_message="x", operations=[CommitOperationAdd("f.txt", b"x")])
    assert hub.files(repo_id)["f.txt"] == b"x"
    assert hub.token not in repr(hub.requests)


def test_disk_storage_and_stop():
    with HubServer(storage="disk") as server, server.patch_client():
        api = HfApi(endpoint=server.endpoint, token=server.token)
        repo_id = _repo(api, "disk")
        api.upload_file(path_or_fileobj=io.BytesIO(BIN), path_in_repo="x.bin", repo_id=repo_id, repo_type="dataset")
        assert server.files(repo_id)["x.bin"] == BIN
        blob_dir = server._blob_dir
        assert (blob_dir / hashlib.sha256(BIN).hexdigest()).exists()
    assert not blob_dir.exists()
    with pytest.raises(RuntimeError):
        server.endpoint
