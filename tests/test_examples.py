"""The README's demo and the examples run (they are documentation that must not rot)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path, timeout=300):
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), RADGENOME_CACHE=str(tmp_path / "rg"),
               PYTHONUNBUFFERED="1")
    return subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout)


def test_demo_loads_every_config(tmp_path):
    out = _run([sys.executable, "-m", "radgenome_hf", "demo", "--out", str(tmp_path / "demo")], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for config in ("reports", "segmentation", "grounded_reports", "vqa", "scene_graph", "anatomy_pairs"):
        assert f"-- {config}: train " in out.stdout, config
    assert "could not load" not in out.stdout
    assert "HU range" in out.stdout and "voxels of" in out.stdout


@pytest.mark.parametrize("script", ["quickstart.py", "training_loop.py", "finding_aware_training.py",
                                    "publish_local_hub.py"])
def test_example_runs(script, tmp_path):
    path = ROOT / "examples" / script
    if not path.exists():
        pytest.fail(f"examples/{script} is missing")
    out = _run([sys.executable, str(path)], tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert out.stdout.strip()
