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

__all__ = ["make_executor", "bounded_map", "init_ray", "RayExecutor", "LOCAL"]

#: the ``ray`` argument that means "start a local Ray instance" (any other string is a cluster address)
LOCAL = "local"


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the Ray cluster at ``address`` (or ``$RADGENOME_RAY_ADDRESS``), else start a local instance.

    A local instance gets ``num_cpus`` CPUs; its workers inherit this process's environment (set ``PYTHONPATH``
    before calling when the package is not installed). A running instance is reused.
    """
    try:
        import ray
    except ImportError as exc:
        raise RadGenomeError("running generation on Ray needs Ray Data: pip install 'radgenome-hf[ray]'") from exc
    if ray.is_initialized():
        return
    address = address if address not in (None, LOCAL) else ray_address()
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False)


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
    return cf.ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"))


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

