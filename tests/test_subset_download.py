"""Subset first: ``radgenome-hf download`` / ``radgenome_hf.download`` / ``load_packed(volumes=…)`` against the local
Hub server (issue #15, part 2): the dry-run plan is exactly what the fetch moves, a second run moves nothing, an
interrupted transfer resumes, and the subset loads offline afterwards."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from radgenome_hf.testing.hub_server import HubServer

REPO = "radgenome-test/packed100"  # conftest.hub_100 publishes packed_release_100 there


@pytest.fixture
def hub(hub_100):
    hub_100.reset_log()
    return hub_100


def _env(hub, home, **extra: str) -> dict[str, str]:
    return {**os.environ, **hub.client_env(home / "hf"), "RADGENOME_CACHE": str(home / "rg"), **extra}


def _cli(hub, home, *args: str) -> subprocess.CompletedProcess:
    env = _env(hub, home)
    return subprocess.run([sys.executable, "-m", "radgenome_hf", "download", REPO, *args], env=env,
                          capture_output=True, text=True, timeout=240)


def _rows(packed, config: str, split: str) -> pa.Table:
    return pa.concat_tables([pq.read_table(f) for f in sorted((packed / config).glob(f"{split}-*.parquet"))])


def _expected(packed, volumes: set[str]) -> dict[str, int]:
    """The files (path -> size) a train-vqa subset of ``volumes`` needs, computed from the release folder itself."""
    t = _rows(packed, "vqa", "train")
    files = {}
    for f in sorted((packed / "vqa").glob("train-*.parquet")):
        if volumes & set(pq.read_table(f, columns=["volume_name"]).column(0).to_pylist()):
            files[f.relative_to(packed).as_posix()] = f.stat().st_size
    for r in t.filter(pa.compute.is_in(t["volume_name"], pa.array(sorted(volumes)))).to_pylist():
        for p in (r["volume"]["path"], r["mask"]["path"]):
            if p and (packed / p).is_dir():  # a chunked volume: a .zarr folder of files
                files.update({f.relative_to(packed).as_posix(): f.stat().st_size
                              for f in (packed / p).rglob("*") if f.is_file()})
            elif p:
                files[p] = (packed / p).stat().st_size
    return files


def _gets(hub) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in hub.requests:
        if r.kind == "resolve" and r.method == "GET":
            path = r.path.split("/resolve/", 1)[1].split("/", 1)[1]
            out[path] = out.get(path, 0) + r.bytes_out
    return out


def test_dry_run_lists_exactly_what_the_download_then_moves(hub, packed_release_100, tmp_path):
    _, packed = packed_release_100
    volumes = {"train_12_a_1", "train_40_b_1"}
    assert volumes <= set(_rows(packed, "vqa", "train").column("volume_name").to_pylist())
    args = ["--config", "vqa", "--split", "train", "--volumes", ",".join(sorted(volumes))]
    hub.reset_log()
    dry = _cli(hub, tmp_path, *args, "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = json.loads(dry.stdout.strip().splitlines()[-1])["plan"]
    planned = {f["path"]: f["size"] for f in plan["files"]}
    assert planned == _expected(packed, volumes)
    assert set(plan["volumes"]) == volumes and plan["rows"]["train"] == sum(
        v in volumes for v in _rows(packed, "vqa", "train").column("volume_name").to_pylist())
    # the dry run read the card and parts of row shards; it fetched no planned file, nor any volume or masks byte
    moved = _gets(hub)
    assert not any(p.startswith(("volumes/", "masks/")) for p in moved)
    assert all(moved.get(p, 0) < n for p, n in planned.items())
    assert sum(moved.values()) == plan["planning_bytes"]

    human = _cli(hub, tmp_path, *args, "--dry-run")  # the saved plan: nothing read again
    assert human.returncode == 0 and "dry run: nothing moved" in human.stdout and "volume" in human.stdout
    hub.reset_log()
    run = _cli(hub, tmp_path, *args, "--json")
    assert run.returncode == 0, run.stderr[-3000:]
    moved = _gets(hub)
    assert moved == planned  # exactly the planned files, each whole, nothing else
    total = sum(planned.values())
    assert abs(sum(moved.values()) - total) <= 0.01 * total
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert (got["fetched_files"], got["fetched_bytes"]) == (len(planned), total)

    hub.reset_log()
    again = _cli(hub, tmp_path, *args, "--json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _gets(hub) == {}  # a second download fetches nothing
    got = json.loads(again.stdout.strip().splitlines()[-1])
    assert (got["fetched_files"], got["cached_files"]) == (0, len(planned))

    # offline, the same subset loads from the cache: exactly its rows, volumes and masks decode
    code = (
        "import json, radgenome_hf\n"
        f"ds = radgenome_hf.load_packed({REPO!r}, 'vqa', split='train', volumes={sorted(volumes)!r})\n"
        f"st = radgenome_hf.load_packed({REPO!r}, 'vqa', split='train', volumes={sorted(volumes)!r}, streaming=True)\n"
        "rows = list(ds)\n"
        "m = next(r['mask'] for r in rows if r['mask'].source == 'anatomy')\n"
        "print(json.dumps({'keys': sorted([r['volume_name'], r['question']] for r in rows),\n"
        "                  'streamed': sum(1 for _ in st), 'voxels': int(m.array().sum()), 'count': m.voxel_count,\n"
        "                  'shape': list(rows[0]['volume'].array().shape)}))\n"
    )
    env = _env(hub, tmp_path, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    hub.reset_log()
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum(hub.counts(REPO).values()) == 0  # offline: the server saw nothing
    out = json.loads(res.stdout.strip().splitlines()[-1])
    t = _rows(packed, "vqa", "train")
    want = t.filter(pa.compute.is_in(t["volume_name"], pa.array(sorted(volumes))))
    assert out["keys"] == sorted([v, q] for v, q in zip(want.column("volume_name").to_pylist(),
                                                        want.column("question").to_pylist()))
    assert out["streamed"] == want.num_rows and out["voxels"] == out["count"] > 0
    assert out["shape"] == [64, 64, 48]


def test_a_failed_run_keeps_what_finished_and_the_next_run_fetches_the_rest(hub, packed_release_100, tmp_path):
    from huggingface_hub import try_to_load_from_cache

    _, packed = packed_release_100
    args = ["--config", "vqa", "--split", "train", "--patients", "7", "--question-type", "presence,size", "--json"]
    dry = _cli(hub, tmp_path, *args, "--dry-run")
    assert dry.returncode == 0, dry.stderr[-3000:]
    plan = json.loads(dry.stdout.strip().splitlines()[-1])["plan"]
    planned = {f["path"]: f["size"] for f in plan["files"]}
    volume = next(p for p in planned if p.startswith("volumes/"))
    shard = next(p for p in planned if p.startswith("masks/"))
    # the connection drops in the middle of a volume (the client retries and gets it whole), and a masks shard
    # answers 500: that run fails, naming the shard
    hub.cut_next(volume, after_bytes=planned[volume] // 3)
    hub.fail_next("resolve_get", status=500, times=1, path_contains=shard)
    hub.reset_log()
    first = _cli(hub, tmp_path, *args)
    assert first.returncode == 1 and shard in first.stderr, first.stderr[-3000:]
    assert _gets(hub)[volume] > planned[volume]  # the dropped transfer was retried
    hub.reset_log()
    second = _cli(hub, tmp_path, *args)
    assert second.returncode == 0, second.stderr[-3000:]
    got = json.loads(second.stdout.strip().splitlines()[-1])
    # what finished in the first run stays cached (the cut volume included): only the failed shard moves now
    assert _gets(hub) == {shard: planned[shard]}
    assert got["fetched_files"] == 1 and got["cached_files"] == len(planned) - 1
    for path in (volume, shard):
        local = try_to_load_from_cache(REPO, path, cache_dir=tmp_path / "hf" / "hub", repo_type="dataset",
                                       revision=plan["revision"])
        assert open(local, "rb").read() == (packed / path).read_bytes()


def _tiny_repo(server, repo: str, volumes: dict[str, bytes]) -> int:
    """A packed-release-shaped repo: a card, one ``reports`` row shard with a row per entry under ``volumes/``
    (a file, or a folder of files), and those files; returns the row shard's size."""
    from huggingface_hub import HfApi

    entries = sorted({"/".join(p.split("/")[:2]) for p in volumes})
    rows = pa.table({
        "volume_name": [f"train_{i + 1}_a_1" for i in range(len(entries))],
        "patient_id": [f"train_{i + 1}" for i in range(len(entries))],
        "volume": [{"path": p} for p in entries],
    })
    buf = io.BytesIO()
    pq.write_table(rows, buf)
    card = ("---\nconfigs:\n- config_name: reports\n  data_files:\n  - split: train\n"
            "    path: reports/train-*.parquet\n---\n# t\n")
    files = {"README.md": card.encode(), "reports/train-abc-00000-of-00001.parquet": buf.getvalue(), **volumes}
    api = HfApi(endpoint=server.endpoint, token=server.token)
    api.create_repo(repo, repo_type="dataset")
    for path, data in files.items():
        api.upload_file(path_or_fileobj=data, path_in_repo=path, repo_id=repo, repo_type="dataset")
    return len(buf.getvalue())


def test_a_dropped_connection_resumes_by_range(tmp_path, monkeypatch):
    """huggingface_hub writes a transfer in 10 MiB chunks and resumes after the last whole one: a 12 MiB volume
    cut at 11 MiB costs 11 + 2 MiB, not 11 + 12."""
    from radgenome_hf.hf.subset import download
    from radgenome_hf.io.hub import cached_file, hf_url

    monkeypatch.setenv("RADGENOME_CACHE", str(tmp_path / "rg"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    data = os.urandom(12 << 20)
    with HubServer() as server, server.patch_client():
        _tiny_repo(server, "radgenome-test/big", {"volumes/train_1_a_1.nii.gz": data})
        server.cut_next("train_1_a_1.nii.gz", after_bytes=11 << 20)
        server.reset_log()
        report = download("radgenome-test/big", "reports", progress=False)
        sent = server.downloaded_bytes("radgenome-test/big", "volumes/")
        local = cached_file(hf_url("radgenome-test/big", "volumes/train_1_a_1.nii.gz", report.plan.revision))
    assert report.fetched_files == 2 and report.plan.by_kind()["volume"] == (1, len(data))
    assert sent == (11 << 20) + (2 << 20)
    assert open(local, "rb").read() == data


def test_plan_lists_a_volume_stored_as_a_folder_file_by_file(tmp_path, monkeypatch):
    """A volume may be a folder (a ``.zarr`` store): the plan lists the repo tree under the row's path."""
    from radgenome_hf.hf.subset import plan_download

    monkeypatch.setenv("RADGENOME_CACHE", str(tmp_path / "rg"))
    repo = "radgenome-test/zarrvol"
    with HubServer() as server, server.patch_client():
        shard = _tiny_repo(server, repo, {"volumes/a.zarr/zarr.json": b"{}" * 50,
                                          "volumes/a.zarr/c/0/0/0": b"x" * 1234, "volumes/b.nii.gz": b"y" * 99})
        plan = plan_download(repo, "reports", split="train", patients=["1"])
    got = {f.path: (f.size, f.kind) for f in plan.files}
    assert got == {"reports/train-abc-00000-of-00001.parquet": (shard, "rows"),
                   "volumes/a.zarr/zarr.json": (100, "volume"), "volumes/a.zarr/c/0/0/0": (1234, "volume")}
    assert plan.volumes == ["train_1_a_1"] and plan.rows == {"train": 1}


def test_a_plan_of_every_split_answers_for_one_split_offline(hub, tmp_path, monkeypatch):
    from radgenome_hf.errors import HubAccessError
    from radgenome_hf.hf.subset import plan_download

    monkeypatch.setenv("RADGENOME_CACHE", str(tmp_path / "rg"))
    with hub.patch_client():
        every = plan_download(REPO, "vqa", patients="train_7,valid_1")
        monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
        train = plan_download(REPO, "vqa", split="train", patients="train_7,valid_1")
        with pytest.raises(HubAccessError, match="no saved plan"):
            plan_download(REPO, "vqa", split="train", patients="train_8")
    assert set(every.splits) == {"train", "validation"} and every.rows["train"] and every.rows["validation"]
    assert train.splits == ["train"] and train.rows == {"train": every.rows["train"]}
    assert {f.path for f in train.files if f.kind == "rows"} == {f.path for f in every.files if f.split == "train"}


def test_load_packed_subset_of_a_local_release(packed_release_100, tmp_path):
    import radgenome_hf

    _, packed = packed_release_100
    ds = radgenome_hf.load_packed(packed, "vqa", split="train", patients=[7], question_types="presence",
                                  cache_dir=str(tmp_path / "c"))
    t = _rows(packed, "vqa", "train")
    keep = [p == "train_7" and q == "presence" for p, q in zip(t.column("patient_id").to_pylist(),
                                                               t.column("question_type").to_pylist())]
    assert sum(keep) > 0 and ds["question"] == [q for q, k in zip(t.column("question").to_pylist(), keep) if k]
    row = next(r for r in ds if r["mask"].source != "whole")
    assert row["mask"].array().sum() == row["mask"].voxel_count > 0


def test_row_filter_rules():
    from radgenome_hf.errors import RadGenomeError
    from radgenome_hf.hf.subset import RowFilter

    t = pa.table({
        "volume_name": ["train_1_a_1", "train_1_b_1", "train_2_a_1", "valid_1_a_1"],
        "patient_id": ["train_1", "train_1", "train_2", "valid_1"],
        "anatomy": ["lung/left lung/left lung upper lobe", "lung", "heart", None],
        "question_type": ["presence", "size", "presence", "location"],
    })
    assert RowFilter.make(volumes="train_1_b_1.nii.gz").mask(t, "train").to_pylist() == [False, True, False, False]
    assert RowFilter.make(patients="1").mask(t, "train").to_pylist() == [True, True, False, False]
    assert RowFilter.make(patients=[1]).mask(t, "validation").to_pylist() == [False, False, False, True]
    assert RowFilter.make(anatomy="Left Lung").mask(t, "train").to_pylist() == [True, False, False, False]
    assert RowFilter.make(anatomy="lung/left lung").mask(t, "train").to_pylist() == [True, False, False, False]
    assert RowFilter.make(anatomy="lung").mask(t, "train").to_pylist() == [True, True, False, False]
    both = RowFilter.make(patients="train_1,train_2", question_types="presence")
    assert both.mask(t, "train").to_pylist() == [True, False, True, False]
    assert not RowFilter.make().active and both.active
    with pytest.raises(RadGenomeError, match="vqa config"):
        RowFilter.make(question_types="size").columns(["volume_name", "anatomy"])
    with pytest.raises(RadGenomeError, match="anatomy path"):
        RowFilter.make(anatomy="lung").columns(["volume_name", "findings"])
    with pytest.raises(Exception, match="not a volume name"):
        RowFilter.make(volumes="lung")
    assert RowFilter.make(question_types="Presence").question_types == ("presence",)
    with pytest.raises(RadGenomeError, match="unknown question type"):
        RowFilter.make(question_types="colour")
