"""The rebuild at scale: a process pool, a local Ray Data pipeline (2 CPUs) and a killed-then-resumed run write
byte-identical releases."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

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
        outs[masks_from] = out
    return outs


@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.mark.parametrize("masks_from", ["release", "segment"])
def test_ray_pipeline_matches_the_process_pool(masks_from, synthetic_release, pool_runs, local_ray, tmp_path):
    report = rebuild_release(synthetic_release.root, tmp_path,
                             PipelineConfig(progress=False, ray="local", masks_from=masks_from))
    assert report.run["volumes"]["executor"] == "ray"
    assert report.run["volumes"]["volumes"] == report.volumes > 0
    expected = _tree(pool_runs[masks_from])
    got = _tree(tmp_path)
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
