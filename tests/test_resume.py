"""Exact mid-epoch resume: 2 ranks as 2 processes (gloo, CPU) x 2 DataLoader workers, map-style and streaming.

Each rank runs an epoch uninterrupted, then the same epoch stopped after a few steps (the loader's state_dict
saved to disk, the processes ended), then resumed in fresh processes from that state: the samples seen equal
the uninterrupted run's, in order, none lost or repeated; the ranks are disjoint and together complete.
"""

from __future__ import annotations

import json
import os
import socket
from collections import Counter
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
import torch.multiprocessing as mp  # noqa: E402

STOP_AFTER = 3  # batches


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, root: str, cache: str, streaming: bool, backend: str, phase: str,
               out: str):
    import torch.distributed as dist

    import radgenome_hf
    from radgenome_hf.training import make_dataloader

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), HF_HUB_OFFLINE="1")
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        ds = radgenome_hf.load_dataset("vqa", data_dir=root, split="train", cache_dir=cache, streaming=streaming)
        ds = ds.select_columns(["volume_name", "question_type", "question", "anatomy"])
        # a stream resumes exactly with a shard-order shuffle; worker processes cannot restore a shuffled stream
        shuffle = not (streaming and backend == "processes")

        def loader():
            return make_dataloader(ds, batch_size=2, num_workers=2, shuffle=shuffle, seed=5, shuffle_buffer=1,
                                   backend=backend)

        def keys(batch) -> list[str]:
            return [f"{v}|{q}|{a}" for v, q, a in zip(batch["volume_name"], batch["question"], batch["anatomy"])]

        state_file = Path(out) / f"state-{rank}.pt"
        if phase == "full+stop":  # one uninterrupted epoch, then the same epoch stopped after STOP_AFTER batches
            (Path(out) / f"full-{rank}.json").write_text(json.dumps([k for b in loader() for k in keys(b)]))
            stopped, seen = loader(), []
            for step, batch in enumerate(stopped):
                seen += keys(batch)
                if step + 1 == STOP_AFTER:
                    torch.save(stopped.state_dict(), state_file)
                    break
            (Path(out) / f"stop-{rank}.json").write_text(json.dumps(seen))
        else:  # a fresh process: the same loader, its state loaded
            resumed = loader()
            resumed.load_state_dict(torch.load(state_file, weights_only=False))
            (Path(out) / f"resume-{rank}.json").write_text(json.dumps([k for b in resumed for k in keys(b)]))
    finally:
        dist.destroy_process_group()


def _spawn(phase: str, **kw) -> None:
    mp.start_processes(_rank_main, args=(2, _free_port(), kw["root"], kw["cache"], kw["streaming"], kw["backend"], phase,
                                         kw["out"]), nprocs=2, start_method="spawn", join=True)


@pytest.mark.parametrize("streaming,backend", [(False, "threads"), (True, "threads"), (False, "processes"),
                                               (True, "processes")],
                         ids=["map-style-threads", "streaming-threads", "map-style-processes", "streaming-processes"])
def test_resume_mid_epoch_across_two_ranks_and_two_workers(synthetic_release, tmp_path, streaming, backend):
    import radgenome_hf

    cache = str(tmp_path / "hf")
    rows = radgenome_hf.load_dataset("vqa", data_dir=str(synthetic_release.root), split="train", cache_dir=cache)
    every = Counter(f"{r['volume_name']}|{r['question']}|{r['anatomy']}"  # prepared once, before the ranks start
                    for r in rows.select_columns(["volume_name", "question", "anatomy"]))
    kw = dict(root=str(synthetic_release.root), cache=cache, streaming=streaming, backend=backend, out=str(tmp_path))
    for phase in ("full+stop", "resume"):
        _spawn(phase, **kw)
    seen = {}
    for rank in (0, 1):
        full = json.loads((tmp_path / f"full-{rank}.json").read_text())
        stop = json.loads((tmp_path / f"stop-{rank}.json").read_text())
        resume = json.loads((tmp_path / f"resume-{rank}.json").read_text())
        assert len(stop) == 2 * STOP_AFTER
        assert stop + resume == full, f"rank {rank}: resumed sequence differs"
        seen[rank] = full
    assert Counter(seen[0]) + Counter(seen[1]) == every  # disjoint and together complete
