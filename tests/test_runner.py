"""generate/runner.py: the executors' worker setup."""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import ctypes.util
import multiprocessing
import resource

import pytest

from radgenome_hf.generate.runner import make_executor


def _refaults(_: int) -> int:
    """Minor page faults of allocating and filling 64 MiB a second time (the first one freed)."""
    size = 64 << 20
    first = b"\x01" * size
    del first
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    second = b"\x01" * size
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del second
    return after - before


def test_pool_workers_keep_freed_memory():
    """A pool worker reuses a freed large block instead of page-faulting fresh pages (worker_setup's mallopt)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):
        pytest.skip("not glibc: worker_setup does nothing here")
    with make_executor(workers=2) as ex:
        tuned = ex.submit(_refaults, 0).result()
    with cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as plain:
        default = plain.submit(_refaults, 0).result()
    assert default > 8000  # 16,384 pages of 4 KiB come back from the kernel, zeroed, one fault each
    assert tuned < default / 8
