"""The rebuild at scale: a process pool, a local Ray Data pipeline (2 CPUs) and a killed-then-resumed run write
byte-identical releases (every stage, the text stages over shards of patients included: VQA, scene graphs,
anatomy pairs on pool processes or Ray tasks against one process, and tests/test_text_stages.py against the
serial functions)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from radgenome_hf.generate.pipeline import PipelineConfig, rebuild_release

ROOT = Path(__file__).resolve().parents[1]


def _tree(out: Path) -> dict[str, bytes]:
    """Every file of the release (and the packed segmentation outputs); the work folder's manifests and run report
    hold timings, so they are left out."""
    files = {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
             if p.is_file() and ".work" not in p.parts}
    files.update({str(p.relative_to(out)): p.read_bytes() for p in sorted((out / ".work").rglob("*.masks.parquet"))})
    return files


@pytest.fixture(scope="module")
def pool_runs(synthetic_release, tmp_path_factory):
    outs = {}
    for masks_from in ("release", "segment"):
        out = tmp_path_factory.mktemp(f"pool_{masks_from}")
        report = rebuild_release(synthetic_release.root, out,
                                 PipelineConfig(progress=False, workers=2, masks_from=masks_from))
        assert report.problems == [] and not report.skipped
        assert report.run["text"]["shards"] > 1  # the text stages ran over shards of patients in the pool
        outs[masks_from] = out
    return outs


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    from radgenome_hf.generate.runner import init_ray

    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    init_ray("local", num_cpus=2)  # as a rebuild starts it: every worker runs runner.worker_setup first
    yield ray
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("masks_from", ["release", "segment"])
def test_ray_pipeline_matches_the_process_pool(masks_from, synthetic_release, pool_runs, local_ray, tmp_path):
    report = rebuild_release(synthetic_release.root, tmp_path,
                             PipelineConfig(progress=False, ray="local", masks_from=masks_from))
    assert report.run["volumes"]["executor"] == "ray"
    assert report.run["volumes"]["volumes"] == report.volumes > 0
    assert report.run["text"]["shards"] > 1 and report.run["ground"]["shards"] > 1  # text stages as Ray tasks
    expected = _tree(pool_runs[masks_from])
    got = _tree(tmp_path)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []


@pytest.mark.slow
def test_rebuild_script_on_ray_matches_the_process_pool(synthetic_release, pool_runs, local_ray, tmp_path, capsys):
    """The maintainers' script, ``--ray`` (joins the running local instance), writes the pool's release."""
    import runpy

    script = runpy.run_path(str(ROOT / "builder_scripts" / "rebuild_release.py"))
    assert script["main"]([str(synthetic_release.root), str(tmp_path), "--ray", "--masks-from", "release"]) == 0
    assert "rebuilt" in capsys.readouterr().out
    run = json.loads((tmp_path / ".work" / "run_report.json").read_text())
    assert run["executor"] == "ray (local)" and run["volumes"]["executor"] == "ray"
    expected, got = _tree(pool_runs["release"]), _tree(tmp_path)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []


_KILL = textwrap.dedent("""
    import os, signal, sys
    from radgenome_hf.generate import manifest
    from radgenome_hf.generate.pipeline import PipelineConfig, rebuild_release

    stage, n = sys.argv[3], int(sys.argv[4])
    calls = {}
    mark_done = manifest.Manifest.mark_done

    def killing_mark_done(self, *args, **kwargs):
        calls[self.stage] = calls.get(self.stage, 0) + 1
        if self.stage == stage and calls[stage] == n:  # outputs written, not yet recorded: the worst moment
            os.kill(os.getpid(), signal.SIGKILL)
        return mark_done(self, *args, **kwargs)

    manifest.Manifest.mark_done = killing_mark_done
    rebuild_release(sys.argv[1], sys.argv[2], PipelineConfig(progress=False, workers=1, masks_from=sys.argv[5]))
""")


@pytest.mark.parametrize("masks_from,stage", [("release", "pack"), ("segment", "volumes")])
def test_kill_and_resume_gives_the_same_release(masks_from, stage, synthetic_release, pool_runs, tmp_path):
    from radgenome_hf.generate.manifest import Manifest

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", _KILL, str(synthetic_release.root), str(tmp_path), stage, "3",
                           masks_from], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    manifests = list((tmp_path / ".work").rglob(f"{stage}.manifest.sqlite"))
    done_at_kill = sum(len(Manifest(p, stage).entries("done")) for p in manifests)
    assert done_at_kill == 2  # killed part-way: two volumes recorded, the third written but not recorded

    report = rebuild_release(synthetic_release.root, tmp_path,
                             PipelineConfig(progress=False, workers=1, masks_from=masks_from))
    assert report.problems == [] and not report.skipped
    stage_report = report.run["pack" if stage == "pack" else "volumes"]
    assert stage_report["volumes"] < report.volumes * (2 if stage == "pack" else 1)  # the recorded ones were not redone
    expected = _tree(pool_runs[masks_from])
    got = _tree(tmp_path)
    assert sorted(got) == sorted(expected)
    assert [k for k in expected if got[k] != expected[k]] == []


# -- the GPU path, run on the CPU: the real wholeBody_ct_segmentation architecture, random weights ----------------
WHOLEBODY_NET = {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 105,
                 "init_filters": 32, "blocks_down": [1, 2, 2, 4], "blocks_up": [1, 1, 1], "dropout_prob": 0.2}


@pytest.fixture(scope="module")
def wholebody_backend(tmp_path_factory):
    """The bundle's SegResNet (105 channels) randomly initialised and saved as a checkpoint; 12 mm voxels and a
    32^3 window keep a volume to one window on the CPU (throughput, not accuracy, is what this path is about)."""
    import torch
    from monai.bundle import ConfigParser

    from radgenome_hf.generate.backends import get_backend

    root = tmp_path_factory.mktemp("wholebody")
    torch.manual_seed(0)
    net = ConfigParser({"net": WHOLEBODY_NET}).get_parsed_content("net")
    torch.save(net.state_dict(), root / "model.pt")
    channels = {0: "background", 1: "spleen", 2: "kidney_right", 3: "kidney_left", 13: "lung_upper_lobe_left",
                14: "lung_lower_lobe_left", 15: "lung_upper_lobe_right", 16: "lung_middle_lobe_right",
                17: "lung_lower_lobe_right", 44: "heart_ventricle_left", 58: "rib_left_1"}
    return get_backend("monai", checkpoint=root / "model.pt", network_config=WHOLEBODY_NET, channel_def=channels,
                       pixdim=12.0, roi_size=(32, 32, 32), device="cpu")


def test_wholebody_weights_load_once_and_labels_are_uint8(wholebody_backend, synthetic_release, tmp_path,
                                                           monkeypatch):
    from radgenome_hf.generate.backends import monai_bundle
    from radgenome_hf.generate.segment import discover_volumes, load_volume
    from radgenome_hf.generate.volumes import VolumeJob, run_volume_stages

    loads = []
    real_load = monai_bundle._load_state_dict
    monkeypatch.setattr(monai_bundle, "_load_state_dict", lambda p: loads.append(p) or real_load(p))
    vols = discover_volumes(synthetic_release.root)[:3]
    hu, aff = load_volume(vols[0][1])
    labels = wholebody_backend.predict_labels(hu, aff)
    assert labels.dtype == np.uint8 and labels.shape == hu.shape
    jobs = [VolumeJob(n, str(p), out=str(tmp_path / f"{n}.masks.parquet")) for n, p in vols]
    report = run_volume_stages(jobs, tmp_path, wholebody_backend, workers=1, progress=False)
    assert report.done == [n for n, _ in vols] and not report.failed
    assert len(loads) == 1  # one model for every volume
    assert report.stage_seconds["segment"] > 0 and report.stage_seconds["pack"] > 0


@pytest.mark.slow
def test_wholebody_on_ray_actors_matches_the_pool(wholebody_backend, synthetic_release, local_ray, tmp_path):
    from radgenome_hf.generate.segment import discover_volumes
    from radgenome_hf.generate.volumes import VolumeJob, run_volume_stages

    vols = discover_volumes(synthetic_release.root)[:3]
    runs = {}
    for how in ("pool", "ray"):
        d = tmp_path / how
        jobs = [VolumeJob(n, str(p), out=str(d / f"{n}.masks.parquet")) for n, p in vols]
        d.mkdir()
        rep = run_volume_stages(jobs, d, wholebody_backend, ray="local" if how == "ray" else None, workers=1,
                                segment_batch=2, progress=False)
        assert not rep.failed, rep.failed
        runs[how] = {n: (d / f"{n}.masks.parquet").read_bytes() for n, _ in vols}
        runs[how + "_quality"] = rep.quality
    assert runs["pool"] == runs["ray"] and runs["pool_quality"] == runs["ray_quality"]
