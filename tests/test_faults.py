"""Faults: a build, a segmentation run and a cache writer SIGKILLed mid-way (from the test, at a point the test
controls), then re-run; plus a short streaming soak (no row lost or repeated, memory flat).

A child process runs the real function with one hook patched to print a line and sleep at the chosen point; the
test waits for the line and sends SIGKILL. Publishing killed mid-way is covered in tests/test_publish.py; a full
disk during a build in tests/test_build.py.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[1]


def _spawn(code: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=str(ROOT))


def _kill_at(proc: subprocess.Popen, marker: str, timeout: float = 120) -> None:
    """Wait until the child prints ``marker`` (it then sleeps), and SIGKILL it there."""
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if line.strip() == marker:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(30)
            assert proc.returncode == -signal.SIGKILL
            return
    proc.kill()
    raise AssertionError(f"child never reached {marker!r}: {proc.stderr.read()[-3000:] if proc.stderr else ''}")


def _tree(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------------
# build_release killed mid-way
# ---------------------------------------------------------------------------------------------------

CONFIGS = ("vqa", "segmentation")


def test_build_killed_midway_then_rerun_gives_the_same_release(synthetic_release, tmp_path):
    from radgenome_hf.publish.build import build_release

    out = tmp_path / "killed" / "packed"
    out.parent.mkdir()
    proc = _spawn(f"""
        import os, time, sys
        import radgenome_hf.publish.build as b
        real = b.pq.write_table
        n = [0]
        def write_table(*a, **k):
            real(*a, **k)
            n[0] += 1
            if n[0] == 3:            # a few parquet shards written, the rest not
                print("KILL-ME", flush=True)
                time.sleep(600)
        b.pq.write_table = write_table
        b.build_release({str(synthetic_release.root)!r}, {str(out)!r}, configs={CONFIGS!r})
    """)
    _kill_at(proc, "KILL-ME")
    assert not out.exists(), "a killed build left a (partial) release under the final name"
    leftovers = [p.name for p in out.parent.iterdir()]
    assert all(".tmp-" in n for n in leftovers), leftovers

    build_release(synthetic_release.root, out, configs=CONFIGS)
    ref = tmp_path / "ref" / "packed"
    build_release(synthetic_release.root, ref, configs=CONFIGS)
    got, want = _tree(out), _tree(ref)
    assert sorted(got) == sorted(want)
    for rel, p in want.items():
        if rel.endswith(".parquet"):
            assert pq.read_table(got[rel]).equals(pq.read_table(p)), rel
        elif rel.endswith((".json", ".nii.gz", ".md")):
            assert got[rel].read_bytes() == p.read_bytes(), rel
    # what a reader sees under the final name is a complete release
    manifest = json.loads((out / "release_manifest.json").read_text())
    assert set(manifest["configs"]) == set(CONFIGS)


def test_rerun_after_a_killed_build_sweeps_its_temp_folder(synthetic_release, tmp_path):
    from radgenome_hf.publish.build import build_release

    out = tmp_path / "packed"
    proc = _spawn(f"""
        import time
        import radgenome_hf.publish.build as b
        real = b.pq.write_table
        def write_table(*a, **k):
            real(*a, **k); print("KILL-ME", flush=True); time.sleep(600)
        b.pq.write_table = write_table
        b.build_release({str(synthetic_release.root)!r}, {str(out)!r}, configs=("segmentation",))
    """)
    _kill_at(proc, "KILL-ME")
    build_release(synthetic_release.root, out, configs=("segmentation",))
    assert [p.name for p in tmp_path.iterdir()] == ["packed"]


# ---------------------------------------------------------------------------------------------------
# run_segmentation killed mid-way
# ---------------------------------------------------------------------------------------------------


def test_segmentation_killed_midway_resumes_and_matches(synthetic_release, tmp_path):
    from radgenome_hf.generate.backends import get_backend
    from radgenome_hf.generate.segment import MANIFEST_NAME, discover_volumes, run_segmentation
    from radgenome_hf.access.masks import PackedMasks

    inputs = discover_volumes(synthetic_release.root)[:5]
    assert len(inputs) == 5
    out = tmp_path / "seg"
    proc = _spawn(f"""
        import time
        from radgenome_hf.generate.backends import get_backend
        from radgenome_hf.generate.segment import run_segmentation
        from radgenome_hf.access.masks import PackedMasks
        real = PackedMasks.save
        n = [0]
        def save(self, *a, **k):
            r = real(self, *a, **k)
            n[0] += 1
            if n[0] == 3:   # third file written, its manifest record not yet committed
                print("KILL-ME", flush=True)
                time.sleep(600)
            return r
        PackedMasks.save = save
        run_segmentation({[(n, str(p)) for n, p in inputs]!r}, {str(out)!r}, get_backend("threshold"),
                         workers=1, progress=False)
    """)
    _kill_at(proc, "KILL-ME")
    assert (out / MANIFEST_NAME).is_file()

    rep = run_segmentation(inputs, out, get_backend("threshold"), workers=1, progress=False)
    assert rep.ok, rep.summary()
    assert len(rep.skipped) == 2, rep.summary()   # the two recorded as done before the kill
    assert len(rep.done) == 3                      # the third (written, not recorded) and the two never started
    assert sorted(rep.skipped + rep.done) == sorted(n for n, _ in inputs)

    ref = tmp_path / "ref"
    run_segmentation(inputs, ref, get_backend("threshold"), workers=1, progress=False)
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(p.name for p in ref.iterdir())
    assert not [n for n in names if n.endswith(".tmp")], names
    for name, _ in inputs:
        a = PackedMasks.load(out / f"{name}.masks.parquet")
        b = PackedMasks.load(ref / f"{name}.masks.parquet")
        assert a.to_arrow(name).equals(b.to_arrow(name)), name
    # a third run does nothing
    again = run_segmentation(inputs, out, get_backend("threshold"), workers=1, progress=False)
    assert sorted(again.skipped) == sorted(n for n, _ in inputs) and not again.done


# ---------------------------------------------------------------------------------------------------
# The prepared cache: a writer dies, readers carry on
# ---------------------------------------------------------------------------------------------------


def test_cache_readers_keep_working_while_a_writer_is_killed(tmp_path):
    from radgenome_hf.access.cache import PreparedCache

    root = tmp_path / "cache"
    cache = PreparedCache(root, max_bytes=1 << 30)
    good = np.asfortranarray(np.random.default_rng(0).integers(-1024, 2000, (96, 96, 64), dtype=np.int16))
    cache.put_array("existing", good)
    big = "np.asfortranarray(np.random.default_rng(1).integers(-1024, 2000, (256, 256, 192), dtype=np.int16))"
    writer = _spawn(f"""
        import numpy as np
        from radgenome_hf.access.cache import PreparedCache
        c = PreparedCache({str(root)!r}, max_bytes=1 << 30)
        a = {big}
        i = 0
        while True:
            c.put_array(f"newkey-{{i:04d}}", a)
            print(f"WROTE {{i}}", flush=True)
            i += 1
    """)
    reader = _spawn(f"""
        import time, numpy as np
        from radgenome_hf.access.cache import PreparedCache
        c = PreparedCache({str(root)!r}, max_bytes=1 << 30)
        want = np.asfortranarray(np.random.default_rng(0).integers(-1024, 2000, (96, 96, 64), dtype=np.int16))
        t = time.monotonic(); n = 0
        while time.monotonic() - t < 4:
            got = c.get_array("existing")
            assert got is not None and np.array_equal(got, want), "existing key unreadable"
            crop = c.crop("existing", (3, 4, 5, 40, 50, 60))
            assert np.array_equal(crop, want[3:40, 4:50, 5:60])
            n += 1
        print("READS", n, flush=True)
    """)
    assert writer.stdout is not None
    line = writer.stdout.readline()
    assert line.startswith("WROTE"), writer.stderr.read()[-2000:] if writer.stderr else ""
    time.sleep(0.15)  # now somewhere inside the next put_array (each takes much longer than this)
    os.kill(writer.pid, signal.SIGKILL)
    writer.wait(30)
    out, err = reader.communicate(timeout=120)
    assert reader.returncode == 0, err[-3000:]
    assert int(out.split()[-1]) > 0
    # every key the dead writer left is complete, or absent: never a partial file under a final name
    want_big = np.asfortranarray(np.random.default_rng(1).integers(-1024, 2000, (256, 256, 192), dtype=np.int16))
    fresh = PreparedCache(root, max_bytes=1 << 30)
    finals = [p for p in root.rglob("*.b2nd") if ".tmp-" not in p.name]
    assert len(finals) >= 2
    for i in range(50):
        got = fresh.get_array(f"newkey-{i:04d}")
        if got is None:
            continue
        assert np.array_equal(got, want_big), f"newkey-{i:04d} is corrupt"
    assert np.array_equal(fresh.get_array("existing"), good)


# ---------------------------------------------------------------------------------------------------
# Short streaming soak (the long one: benchmarks/soak_streaming.py)
# ---------------------------------------------------------------------------------------------------


def test_streaming_soak_short_loses_no_row_and_holds_memory(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import soak_streaming
    finally:
        sys.path.pop(0)
    root = soak_streaming.make_release(tmp_path / "release", patients=100)
    res = soak_streaming.soak(root, "segmentation", duration=float(os.environ.get("RADGENOME_SOAK_S", 15)),
                              workers=2, cache_dir=str(tmp_path / "hf"), log=lambda *_: None)
    assert res["volumes"] >= 140
    assert len(res["epochs"]) >= 2
    for e in res["epochs"]:
        assert e["lost"] == 0 and e["repeated"] == 0 and e["rows"] == e["expected"], e
        assert e["workers_used"] == 2, e
    assert res["rss_growth_ratio"] < 1.5, res
