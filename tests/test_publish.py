"""Publishing a release folder to the local Hub-compatible server: diff, atomic commit, verify, tag, card."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radgenome_hf.errors import HubAccessError, MalformedFileError, RadGenomeError
from radgenome_hf.publish.card import ConfigSpec, check_card, render_card
from radgenome_hf.publish.hub import (
    PublishTargetError,
    PublishVerificationError,
    Verification,
    publish_release,
    validate_target,
)
from radgenome_hf.testing.hub_server import HubServer

ROWS = {"vqa": {"train": 5, "validation": 3}, "reports": {"train": 4, "validation": 2}}
FEATURES = {
    "vqa": [{"name": "volume_name", "dtype": "string"}, {"name": "question", "dtype": "string"},
            {"name": "answer", "dtype": "string"}],
    "reports": [{"name": "volume_name", "dtype": "string"}, {"name": "findings", "dtype": "string"},
                {"name": "spacing", "list": {"dtype": "float32"}}],
}


def _table(cfg: str, split: str, n: int, tweak: str = "") -> pa.Table:
    names = [f"{'train' if split == 'train' else 'valid'}_{i + 1}_a_1" for i in range(n)]
    if cfg == "vqa":
        return pa.table({"volume_name": names, "question": [f"Is there a nodule? {i}{tweak}" for i in range(n)],
                         "answer": ["Yes." if i % 2 else "No." for i in range(n)]})
    return pa.table({"volume_name": names, "findings": [f"finding {i}{tweak}" for i in range(n)],
                     "spacing": pa.array([[0.75, 0.75, 1.5]] * n, pa.list_(pa.float32()))})


def make_release(root: Path, rows: dict = ROWS, manifest: dict | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    specs = []
    for cfg, splits in rows.items():
        for split, n in splits.items():
            (root / cfg).mkdir(exist_ok=True)
            pq.write_table(_table(cfg, split, n), root / cfg / f"{split}-00000-of-00001.parquet")
        specs.append(ConfigSpec(cfg, {s: f"{cfg}/{s}-*.parquet" for s in splits}, FEATURES[cfg],
                                default=cfg == "vqa", description=f"{cfg} rows"))
    stats = {"rows": rows, "question_types": {"presence": 5, "location": 3}}
    (root / "README.md").write_text(render_card(specs, stats, [], repo_id="radgenome/test"), encoding="utf-8")
    (root / "release_manifest.json").write_text(json.dumps({"configs": manifest or rows}))
    return root


@pytest.fixture(scope="module")
def hub():
    with HubServer() as server, server.patch_client():
        yield server


@pytest.fixture(scope="module")
def published(hub, tmp_path_factory):
    """One verified, tagged, gated publish shared by the load-back tests."""
    folder = make_release(tmp_path_factory.mktemp("rel") / "release")
    report = publish_release(folder, "radgenome/main-release", branch="staging", tag="v1.0",
                             endpoint=hub.endpoint, token=hub.token, gated="manual")
    return folder, report


def _load_back(hub: HubServer, home: Path, repo_id: str, config: str, revision: str) -> dict:
    """In a fresh process: load with the token, then without one (separate caches); rows or error per attempt."""
    code = textwrap.dedent(f"""
        import json, sys, datasets
        datasets.config.USE_PARQUET_EXPORT = False
        out = {{}}
        for name, token in (("auth", {hub.token!r}), ("anon", False)):
            try:
                dd = datasets.load_dataset({repo_id!r}, {config!r}, revision={revision!r}, token=token,
                                           cache_dir={str(home)!r} + "/" + name)
                out[name] = {{s: d.to_list() for s, d in dd.items()}}
            except Exception as e:
                out[name] = {{"error": type(e).__name__, "message": str(e)}}
        print(json.dumps(out))
    """)
    env = {**os.environ, **hub.client_env(home)}
    env.pop("HF_TOKEN")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ card
def test_render_card_is_valid_for_datasets(tmp_path):
    specs = [ConfigSpec("reports", {"train": "reports/train-*.parquet"}, FEATURES["reports"]),
             ConfigSpec("vqa", {"train": "vqa/train-*.parquet", "validation": ["vqa/validation-*.parquet"]},
                        None, default=True)]
    stats = {"rows": {"vqa": {"train": 5, "validation": 3}}, "label_prevalence": {"Emphysema": 0.25},
             "structure_frequency": {"lung": 10, "heart": 9}}
    card = render_card(specs, stats, ["figures/rows.png"], repo_id="org/rg", revision="v2.0")
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    data = DatasetCard(card).data
    parsed = MetadataConfigs.from_dataset_card_data(data)
    assert list(parsed) == ["reports", "vqa"] and parsed.get_default_config_name() == "vqa"
    assert parsed["reports"]["features"]["spacing"].feature.dtype == "float32"
    assert data.license == ["cc-by-4.0", "cc-by-nc-sa-4.0"]
    assert "| spacing | list<float32> |" in card and "| Emphysema | 0.25 |" in card
    assert "![rows](figures/rows.png)" in card and 'load_dataset("org/rg", "vqa", revision="v2.0")' in card
    assert "### scene_graph" in card and "_Not included in this release._" in card
    assert "{{" not in card
    # no default marked -> the first config becomes the default (never two: datasets 5.2 push_to_hub bug)
    only = render_card([ConfigSpec("a", {"train": "a/*.parquet"}), ConfigSpec("b", {"train": "b/*.parquet"})], {}, [])
    assert MetadataConfigs.from_dataset_card_data(DatasetCard(only).data).get_default_config_name() == "a"


def test_render_card_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="several default"):
        render_card([ConfigSpec("a", {"train": "a/*"}, default=True), ConfigSpec("b", {"train": "b/*"}, default=True)],
                    {}, [])
    with pytest.raises(ValueError, match="split name"):
        render_card([ConfigSpec("a", {"train-x": "a/*"})], {}, [])
    with pytest.raises(ValueError, match="relative"):
        render_card([ConfigSpec("a", {"train": "../a/*"})], {}, [])
    bad = tmp_path / "t.md"
    bad.write_text("# {{ nope }}\n")
    with pytest.raises(MalformedFileError, match="nope"):
        render_card([ConfigSpec("a", {"train": "a/*"})], {}, [], template_path=bad)
    with pytest.raises(MalformedFileError):
        check_card("---\nconfigs: {a: 1}\n---\nbody\n")


# ------------------------------------------------------------------------------------------------ validation
@pytest.mark.parametrize("repo_id", ["noslash", "a/b/c", "org/bad name", "org/..x", "", "org/x" + "y" * 100])
def test_invalid_repo_ids_rejected(repo_id, tmp_path):
    with pytest.raises(PublishTargetError) as e:
        publish_release(tmp_path, repo_id, endpoint="http://127.0.0.1:9", dry_run=True)
    assert isinstance(e.value, RadGenomeError) and isinstance(e.value, ValueError)


@pytest.mark.parametrize("branch,tag", [("bad branch", None), ("main", "v1..0"), ("refs/heads/x", None),
                                        ("main", "0" * 40), ("x~1", None), ("main", "-v1")])
def test_invalid_revisions_rejected(branch, tag):
    with pytest.raises(PublishTargetError):
        validate_target("org/ok", branch=branch, tag=tag)


# ------------------------------------------------------------------------------------------------ publishing
def test_publish_verifies_tags_and_loads_back(hub, published, tmp_path):
    folder, report = published
    v = report.verification
    assert v is not None and v.ok and v.rows == ROWS and v.decoded_rows == 8, report.summary()
    assert report.tag == "v1.0" and report.uploaded_files == 6 and report.created_repo and report.created_branch
    refs = {t: hub.head("radgenome/main-release", t) for t in ("v1.0", "staging")}
    assert refs["v1.0"] == refs["staging"] == report.commit
    # main untouched: only the initial commit
    assert set(hub.files("radgenome/main-release", "main")) == {".gitattributes"}
    assert set(hub.files("radgenome/main-release", "v1.0")) == {
        ".gitattributes", "README.md", "release_manifest.json",
        *(f"{c}/{s}-00000-of-00001.parquet" for c in ROWS for s in ROWS[c])}

    got = _load_back(hub, tmp_path, "radgenome/main-release", "reports", "v1.0")
    rows = got["auth"]
    assert rows["train"] == _table("reports", "train", 4).to_pylist()
    assert len(rows["validation"]) == 2
    # gated: without a token datasets refuses with its gated-dataset error
    anon = got["anon"]
    assert anon.get("error") == "DatasetNotFoundError" and "gated" in anon["message"], anon


def test_republish_unchanged_uploads_nothing(hub, published):
    folder, first = published
    hub.reset_log()
    r = publish_release(folder, "radgenome/main-release", branch="staging", endpoint=hub.endpoint,
                        token=hub.token, verify=False)
    c = hub.counts("radgenome/main-release")
    assert r.uploaded_files == 0 and r.skipped_files == 6 and r.commit == first.commit
    assert c["lfs_upload"] == 0 and c["commit"] == 0 and c["preupload"] == 0 and c["lfs_batch"] == 0


def test_changing_one_file_uploads_only_it(hub, tmp_path):
    folder = make_release(tmp_path / "rel")
    repo = "radgenome/incremental"
    first = publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    pq.write_table(_table("vqa", "train", 5, tweak="!"), folder / "vqa" / "train-00000-of-00001.parquet")
    (folder / "reports" / "validation-00000-of-00001.parquet").unlink()
    hub.reset_log()
    r = publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False, commit_message="fix vqa")
    c = hub.counts(repo)
    assert (r.uploaded_files, r.deleted_files, r.skipped_files) == (1, 1, 4)
    assert c["lfs_upload"] == 1 and c["commit"] == 1
    files = hub.files(repo)
    assert "reports/validation-00000-of-00001.parquet" not in files and ".gitattributes" in files
    assert files["vqa/train-00000-of-00001.parquet"] == (folder / "vqa" / "train-00000-of-00001.parquet").read_bytes()
    assert r.parent == first.commit and r.commit == hub.head(repo)


def test_interrupted_push_leaves_branch_and_resumes(hub, tmp_path):
    folder = make_release(tmp_path / "rel")
    repo = "radgenome/interrupted"
    base = publish_release(folder, repo, branch="release", endpoint=hub.endpoint, token=hub.token, verify=False)
    for cfg, splits in ROWS.items():
        for split, n in splits.items():
            pq.write_table(_table(cfg, split, n, tweak="v2"), folder / cfg / f"{split}-00000-of-00001.parquet")
    hub.reset_log()
    hub.fail_next("commit", status=500)
    with pytest.raises(HubAccessError, match="nothing was committed"):
        publish_release(folder, repo, branch="release", tag="v2.0", endpoint=hub.endpoint, token=hub.token,
                        verify=False)
    assert hub.counts(repo)["lfs_upload"] == 4  # the large files got uploaded…
    assert hub.head(repo, "release") == base.commit  # …but the branch did not move, no tag
    assert hub.head(repo, "v2.0") is None
    hub.reset_log()
    r = publish_release(folder, repo, branch="release", tag="v2.0", endpoint=hub.endpoint, token=hub.token,
                        verify=False)
    c = hub.counts(repo)
    assert c["lfs_upload"] == 0 and c["commit"] == 1  # re-run reuses the uploaded LFS objects
    assert r.uploaded_files == 4 and hub.head(repo, "v2.0") == r.commit == hub.head(repo, "release")


def test_concurrent_commit_is_not_overwritten(hub, tmp_path):
    """parent_commit: if the branch moved between plan and commit, the push fails instead of clobbering."""
    from huggingface_hub import CommitOperationAdd, HfApi

    folder = make_release(tmp_path / "rel", rows={"vqa": {"train": 2}})
    repo = "radgenome/race"
    api = HfApi(endpoint=hub.endpoint, token=hub.token)

    publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    pq.write_table(_table("vqa", "train", 2, tweak="x"), folder / "vqa" / "train-00000-of-00001.parquet")
    real_create_commit = HfApi.create_commit

    def racing(self, *a, **kw):
        real_create_commit(api, repo, repo_type="dataset", commit_message="other",
                          operations=[CommitOperationAdd("other.txt", b"someone else")])
        return real_create_commit(self, *a, **kw)

    HfApi.create_commit = racing
    try:
        with pytest.raises(HubAccessError, match="moved"):
            publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    finally:
        HfApi.create_commit = real_create_commit
    assert "other.txt" in hub.files(repo)


def test_dry_run_uploads_nothing(hub, tmp_path, capsys):
    folder = make_release(tmp_path / "rel")
    hub.reset_log()
    r = publish_release(folder, "radgenome/dry", endpoint=hub.endpoint, token=hub.token, dry_run=True)
    assert r.dry_run and r.commit is None and r.uploaded_files == 6 and r.plan.counts()["add"]["files"] == 6
    writes = [q for q in hub.requests if q.method in ("POST", "PUT", "DELETE")]
    assert writes == []
    assert ("dataset", "radgenome/dry") not in hub._repos  # not even created
    assert "add" in r.plan.summary() and "vqa/train-00000-of-00001.parquet" in r.plan.summary()


def test_failed_verification_does_not_tag(hub, tmp_path):
    folder = make_release(tmp_path / "rel", rows={"vqa": {"train": 2}}, manifest={"vqa": {"train": 3}})
    repo = "radgenome/badcounts"
    with pytest.raises(PublishVerificationError) as e:
        publish_release(folder, repo, tag="v1.0", endpoint=hub.endpoint, token=hub.token)
    rep = e.value.report
    assert rep.verification.rows == {"vqa": {"train": 2}} and not rep.verification.ok
    assert "3 in release_manifest.json" in str(e.value)
    assert rep.tag is None and hub.head(repo, "v1.0") is None and hub.head(repo) == rep.commit
    # a custom verifier can veto too
    with pytest.raises(PublishVerificationError):
        publish_release(folder, repo, tag="v1.1", endpoint=hub.endpoint, token=hub.token,
                        verify=lambda **kw: Verification(ok=False, revision=kw["revision"], errors=["nope"]))
    assert hub.head(repo, "v1.1") is None


def test_existing_tag_is_refused_before_upload(hub, published):
    folder, _ = published
    (folder / "extra.txt").write_text("new file")
    try:
        hub.reset_log()
        with pytest.raises(PublishTargetError, match="already exists"):
            publish_release(folder, "radgenome/main-release", branch="staging", tag="v1.0", endpoint=hub.endpoint,
                            token=hub.token, verify=False)
        assert hub.counts("radgenome/main-release")["lfs_upload"] == 0
        assert hub.counts("radgenome/main-release")["commit"] == 0
    finally:
        (folder / "extra.txt").unlink()


def test_token_never_in_logs_or_report(hub, tmp_path, caplog, capfd):
    folder = make_release(tmp_path / "rel", rows={"vqa": {"train": 2}})
    secret = "hf_SECRET_token_do_not_log_123"
    hub.add_user("radgenome", secret)  # a user writing to its own namespace
    caplog.set_level(logging.DEBUG)
    r = publish_release(folder, "radgenome/tokencheck", tag="v0.1", endpoint=hub.endpoint, token=secret)
    assert r.verification.ok
    with pytest.raises(HubAccessError) as e:  # an error path too
        publish_release(folder, "someone-else/x", endpoint=hub.endpoint, token=secret, verify=False)
    out = capfd.readouterr()
    blobs = [caplog.text, out.out, out.err, json.dumps(r.to_dict()), r.summary(), str(e.value),
             repr(hub.requests), *(b.decode(errors="replace") for b in hub.files("radgenome/tokencheck").values())]
    assert all(secret not in b for b in blobs)
    assert "write access" in str(e.value) or "token" in str(e.value)


def test_cli_publish(hub, tmp_path, capsys):
    from radgenome_hf.cli import main

    folder = make_release(tmp_path / "rel", rows={"vqa": {"train": 2}})
    common = [str(folder), "--repo", "radgenome/cli", "--endpoint", hub.endpoint, "--token", hub.token]
    assert main(["publish", *common, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "DRY RUN" in out and "vqa/train-00000-of-00001.parquet" in out and hub.token not in out
    assert ("dataset", "radgenome/cli") not in hub._repos
    assert main(["publish", *common, "--branch", "staging", "--tag", "v0.1", "--no-verify", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["tag"] == "v0.1" and hub.head("radgenome/cli", "v0.1") == report["commit"]
    assert main(["publish", str(folder), "--repo", "bad repo", "--dry-run"]) == 1
    assert "invalid repo id" in capsys.readouterr().err


def test_killed_client_leaves_branch_and_rerun_reuses_uploads(hub, tmp_path):
    """SIGKILL the publishing process after its large files are uploaded, before the commit is sent."""
    folder = make_release(tmp_path / "rel")
    repo = "radgenome/killed"
    base = publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    for split, n in ROWS["vqa"].items():
        pq.write_table(_table("vqa", split, n, tweak="v2"), folder / "vqa" / f"{split}-00000-of-00001.parquet")
    (folder / "README.md").write_text((folder / "README.md").read_text() + "\nv2\n")
    hub.reset_log()
    hold = hub.hold("validate_yaml")  # create_commit validates the card right before sending the commit
    code = (f"from radgenome_hf.publish.hub import publish_release; publish_release({str(folder)!r}, {repo!r}, "
            f"endpoint={hub.endpoint!r}, token={hub.token!r}, verify=False)")
    env = {**os.environ, **hub.client_env(tmp_path / "home")}
    child = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert hold.arrived.wait(timeout=120), child.stderr.read().decode()[-2000:] if child.poll() else "no request"
        assert hub.counts(repo)["lfs_upload"] == 2
        child.kill()
        child.wait(timeout=30)
    finally:
        hold.release()
        if child.poll() is None:
            child.kill()
        child.stderr.close()
    assert hub.head(repo) == base.commit and hub.counts(repo)["commit"] == 0
    hub.reset_log()
    r = publish_release(folder, repo, endpoint=hub.endpoint, token=hub.token, verify=False)
    c = hub.counts(repo)
    assert c["lfs_upload"] == 0 and c["commit"] == 1 and r.uploaded_files == 3 and r.parent == base.commit
    assert hub.files(repo)["README.md"].endswith(b"v2\n")
