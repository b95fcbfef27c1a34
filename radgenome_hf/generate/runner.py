"""Where the generation stages run: a local process pool or Ray (a local instance or an existing cluster).

Both are a :class:`concurrent.futures.Executor` (Ray tasks through ``ObjectRef.future()``), so a stage is written
once; :func:`bounded_map` keeps at most ``window`` items in flight, which bounds the memory of a streaming stage
(e.g. the member bytes of a mask archive) whatever the input size.

>>> with make_executor(workers=1) as ex:
...     sorted(r for _, r in bounded_map(ex, abs, [-2, 1, -3], window=2))
[1, 2, 3]
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
from typing import Any, Callable, Iterable, Iterator, TypeVar

from ..config import generate_workers, ray_address
from ..errors import RadGenomeError

T = TypeVar("T")
R = TypeVar("R")

__all__ = ["make_executor", "bounded_map", "init_ray", "RayExecutor", "LOCAL", "worker_setup", "ray_data_context"]

#: the ``ray`` argument that means "start a local Ray instance" (any other string is a cluster address)
LOCAL = "local"

#: glibc's M_TRIM_THRESHOLD and M_MMAP_THRESHOLD (mallopt parameter numbers), and the value a worker sets both to
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEEP_FREED_BYTES = 512 << 20
_SET_UP = False


def worker_setup() -> None:
    """Run once in every worker process (the pool's initializer, Ray's ``worker_process_setup_hook``).

    A worker allocates and frees the same few large arrays per volume (a structure's grid, a decoded volume).
    With glibc's defaults, a freed array above the mmap threshold goes back to the OS and the next one
    page-faults in zeroed pages again: measured on a 320x320x224 mask volume, 172k minor faults and 0.4-0.7 s of
    system time per 53 structures in a pool worker, 45-70 % on top of the packing's own CPU time (the
    long-lived driver process, whose thresholds had adapted, showed 1k). Keeping up to 512 MiB of freed memory
    in the worker removes it (5k faults, 0.03 s). No-op where the C library has no ``mallopt`` (not glibc).
    """
    global _SET_UP
    if _SET_UP:
        return
    _SET_UP = True
    import ctypes
    import ctypes.util

    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or None).mallopt
    except (OSError, AttributeError):  # not glibc
        return
    mallopt(_M_MMAP_THRESHOLD, _KEEP_FREED_BYTES)
    mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (or ``$RADGENOME_RAY_ADDRESS``), else start a local instance.

    A local instance gets ``num_cpus`` CPUs; its workers inherit this process's environment (set ``PYTHONPATH``
    before calling when the package is not installed). Every worker of this job runs :func:`worker_setup` first.
    A running instance is reused (as it is: call this first to get the worker setup).
    """
    try:
        import ray
    except ImportError as exc:
        raise RadGenomeError("running generation on Ray needs Ray Data: pip install 'radgenome-hf[ray]'") from exc
    if ray.is_initialized():
        return
    address = address if address not in (None, LOCAL) else ray_address()
    env = {"worker_process_setup_hook": f"{__name__}.worker_setup"}
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env=env)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, runtime_env=env)


#: DeprecationWarnings that ray 2.60's ``DataContext()`` raises about its own fields while it initialises them
_RAY_OWN_DEPRECATIONS = r"`(use_push_based_shuffle|use_polars|use_arrow_tensor_v2)` is deprecated"


def ray_data_context(progress: bool) -> Any:
    """This driver's Ray Data context, progress bars on or off (without the deprecation warnings that Ray's own
    ``DataContext()`` raises: there is nothing of ours to migrate)."""
    import warnings

    import ray.data

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_RAY_OWN_DEPRECATIONS, category=DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = bool(progress)
    return ctx


class RayExecutor(cf.Executor):
    """Ray tasks as a :class:`concurrent.futures.Executor` (``num_cpus`` per task, default 1)."""

    def __init__(self, num_cpus: float = 1) -> None:
        import ray

        self._ray = ray
        self._num_cpus = num_cpus
        self._remote: dict[Callable, Any] = {}

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> "cf.Future[R]":
        remote = self._remote.get(fn)
        if remote is None:
            remote = self._remote[fn] = self._ray.remote(num_cpus=self._num_cpus)(fn)
        return remote.remote(*args, **kwargs).future()


class _InProcess(cf.Executor):
    """``workers=1``: run in this process (no pickling, easy to debug)."""

    def submit(self, fn: Callable[..., R], /, *args: Any, **kwargs: Any) -> "cf.Future[R]":
        fut: cf.Future = cf.Future()
        try:
            fut.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # noqa: BLE001 - delivered through the future like a pool would
            fut.set_exception(exc)
        return fut


def make_executor(*, ray: str | None = None, workers: int | None = None) -> cf.Executor:
    """A Ray executor when ``ray`` is given (:data:`LOCAL` or a cluster address), else a spawn process pool of
    ``workers`` (default ``$RADGENOME_WORKERS`` / all cores; ``1`` runs in this process)."""
    n = workers or generate_workers()
    if ray is not None:
        init_ray(ray, num_cpus=workers)
        return RayExecutor()
    if n == 1:
        return _InProcess()
    return cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=worker_setup)


def executor_width(ex: cf.Executor) -> int:
    """How many items the executor runs at once (Ray: the cluster's CPUs)."""
    if isinstance(ex, RayExecutor):
        return max(1, int(ex._ray.cluster_resources().get("CPU", 1)))
    return int(getattr(ex, "_max_workers", 1))


def bounded_map(ex: cf.Executor, fn: Callable[[T], R], items: Iterable[T], *,
                window: int | None = None) -> Iterator[tuple[T, "R | BaseException"]]:
    """``(item, fn(item) or the exception it raised)`` in completion order, at most ``window`` in flight
    (default twice the executor's width); ``items`` is consumed lazily."""
    window = window or 2 * executor_width(ex)
    pending: dict[cf.Future, T] = {}
    it = iter(items)
    exhausted = False
    while pending or not exhausted:
        while not exhausted and len(pending) < window:
            try:
                item = next(it)
            except StopIteration:
                exhausted = True
                break
            pending[ex.submit(fn, item)] = item
        if not pending:
            break
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        for fut in done:
            item = pending.pop(fut)
            exc = fut.exception()
            yield item, (exc if exc is not None else fut.result())

