"""Feeding CT volumes into a PyTorch training loop: a DataLoader recipe and a threaded ring loader.

Three pieces:

* :func:`collate_volumes` batches dict samples whose volumes/masks have different shapes (pads to the largest
  with a per-key pad value and records the original shapes, or returns lists); everything that is not an array
  becomes a list. float64 arrays are cast to float32; int16/uint8 stay as they are (normalise on the GPU).
* :func:`make_dataloader` is the recipe for ``datasets`` map-style and streaming (iterable) datasets on one or
  many nodes: each node (rank of ``torch.distributed``, else ``$RANK``/``$WORLD_SIZE``) gets its part with
  ``datasets.distributed.split_dataset_by_node``; each DataLoader worker then reads disjoint shards (``datasets``
  assigns shards to workers), so every row is read exactly once per epoch. With a preset (or no transform) it
  returns a :class:`ThreadedDataLoader`: threads, cached preset outputs decoded into reused batch buffers;
  with any other transform a ``DataLoader`` with worker processes.

  .. code-block:: python

      ds = radgenome_hf.load_dataset("vqa", split="train", streaming=True)
      loader = make_dataloader(ds, batch_size=2, num_workers=4, transform=CTClipd("volume", output="int16"))
      for epoch in range(3):
          loader.dataset.set_epoch(epoch)           # reshuffles streaming shards per epoch
          for batch in loader:
              x = ctclip_normalize(batch["volume"].cuda(non_blocking=True))

* :class:`ThreadedVolumeLoader` skips worker processes altogether for *prepared* (cached, preprocessed) volumes:
  a thread pool decodes into a ring of preallocated buffers that are reused (no per-sample allocation, no
  pickling/IPC copy into shared memory). perf-anchors §7: this is 2–4x faster than multiprocess workers on the
  same cores.
"""

from __future__ import annotations

import collections
import functools
import inspect
import logging
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from torchdata.stateful_dataloader import StatefulDataLoader

from ..config import dist_env
from ..io.nifti import readinto_full
from .collate import collate_volumes

log = logging.getLogger(__name__)

__all__ = ["dist_info", "make_dataloader", "ThreadedDataLoader", "ThreadedVolumeLoader", "read_into"]


def dist_info(rank: int | None = None, world_size: int | None = None) -> tuple[int, int]:
    """(rank, world_size): the arguments if given, else ``torch.distributed`` if initialised, else ``$RANK`` /
    ``$WORLD_SIZE``, else (0, 1)."""
    if rank is not None and world_size is not None:
        r, w = int(rank), int(world_size)
    else:
        r = w = None
        try:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                r, w = dist.get_rank(), dist.get_world_size()
        except Exception:  # noqa: BLE001 - torch.distributed unusable: fall back to the environment
            pass
        if r is None:
            r, w = dist_env()
        r = int(rank) if rank is not None else r
        w = int(world_size) if world_size is not None else w
    if w < 1 or not 0 <= r < w:
        raise ValueError(f"rank {r} / world_size {w}: need world_size >= 1 and 0 <= rank < world_size")
    return r, w


class _TransformCollate:
    """Applies a per-sample transform in the worker, then collates (picklable for worker processes)."""

    def __init__(self, transform: Callable[[dict], dict] | None, collate: Callable[[list], Any]) -> None:
        self.transform, self.collate = transform, collate

    def __call__(self, samples: list) -> Any:
        if self.transform is not None:
            from .inputs import reuse_buffers

            with reuse_buffers():  # one decode buffer per worker process, reused across its samples
                samples = [self.transform(dict(s)) for s in samples]
        return self.collate(samples)


def _worker_init(_: int) -> None:
    import torch

    torch.set_num_threads(1)  # one intra-op thread per worker: the workers are the parallelism


_torch_threads_lock = threading.Lock()


def _one_torch_thread() -> None:
    """Give the calling loader thread one torch intra-op thread, leaving every other thread's count as it was.

    The loader's threads are the parallelism: with torch's default (all cores) each of them would start an
    OpenMP team per op, oversubscribing the cores (measured: ~6 % slower epoch 1 with 2 threads on 2 cores).
    ``torch.set_num_threads`` sets the calling thread's OpenMP count and a process-wide default that threads
    started later copy; the main thread keeps its own. So the default is put back from a short-lived helper
    thread, whose own count does not matter.
    """
    import torch

    with _torch_threads_lock:
        before = torch.get_num_threads()  # this new thread's count: the process default
        torch.set_num_threads(1)
        helper = threading.Thread(target=torch.set_num_threads, args=(before,), name="radgenome-torch-threads")
        helper.start()
        helper.join()


def make_dataloader(
    dataset: Any,
    batch_size: int = 1,
    num_workers: int = 2,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    shuffle: bool = False,
    sampler: Any = None,
    seed: int = 0,
    shuffle_buffer: int = 64,
    transform: Callable[[dict], dict] | None = None,
    collate_fn: Callable[[list], Any] | None = None,
    pad_values: Mapping[str, float] | None = None,
    pin_memory: bool = False,
    prefetch_factor: int | None = 2,
    persistent_workers: bool = False,
    drop_last: bool = False,
    backend: str = "auto",
    **kwargs: Any,
) -> "StatefulDataLoader | ThreadedDataLoader":
    """A loader over a ``datasets`` (map-style or streaming) or torch dataset: one of two backends.

    * ``backend="threads"`` (:class:`ThreadedDataLoader`): ``num_workers`` threads in this process fetch rows,
      run ``transform`` and batch into a ring of reused buffers; a sample whose preset output is already in the
      prepared cache (``transform.cached_readers``, e.g. :class:`~radgenome_hf.training.CTClipd`) is decoded
      straight into the batch buffer, GIL-free, with no transform at all. A miss (epoch 1) decodes the volume into
      the thread's one reused buffer (:func:`~radgenome_hf.training.inputs.reuse_buffers`) and a preset that can
      (``fill``: :class:`~radgenome_hf.training.CTClipd`) writes its output straight into the batch buffer; each
      thread runs torch ops on one intra-op thread. No fresh memory per volume, no worker fork per epoch, no
      pickling, no shared-memory copy: this is the fast path (benchmarks/bench_natural.py).
      Batches are views of ring slots that are reused once the next batch is asked for (move them to the GPU
      or ``.clone()`` them within the step).
    * ``backend="processes"``: a ``torch.utils.data.DataLoader`` (torchdata's ``StatefulDataLoader``) with
      ``num_workers`` worker processes, for transforms that hold the GIL (pure-Python work) or are not thread-safe.
    * ``"auto"`` (default): threads when ``transform`` is ``None``, one of this package's presets or a MONAI
      ``Compose`` of them (their work runs in torch, numpy, blosc2 and isal, which release the GIL) and no
      ``collate_fn``/``kwargs`` for the DataLoader are given; processes otherwise.

    * Node split: with ``world_size > 1`` (arguments, else ``torch.distributed``, else ``$RANK``/``$WORLD_SIZE``),
      ``datasets`` objects go through ``split_dataset_by_node`` (whole shards per node when the shard count
      divides, else every ``world_size``-th row); a plain torch map-style dataset gets the rows
      ``rank, rank + world_size, …``. Nodes are disjoint and together complete (sizes may differ by one row).
    * Worker split: a streaming dataset hands whole shards to the workers, so ``num_workers`` is capped at the
      node's shard count (more workers would idle). A map-style dataset is indexed by a sampler as usual.
    * ``shuffle``: a seeded ``RandomSampler`` (map-style) or ``IterableDataset.shuffle(seed, shuffle_buffer)``
      (streaming; call ``loader.dataset.set_epoch(epoch)`` each epoch).
    * ``sampler``: your own index sampler of a map-style dataset instead (e.g.
      :class:`~radgenome_hf.training.samplers.FindingAwareSampler`); it indexes the whole dataset and splits the
      nodes itself, so the dataset is not split by node then.
    * ``transform`` (e.g. a preset from :mod:`radgenome_hf.training`) runs per sample in the workers;
      ``collate_fn`` defaults to :func:`collate_volumes` with ``pad_values``.
    * Exact resume: both backends have ``state_dict()`` / ``load_state_dict()`` (the process backend is torchdata's
      ``StatefulDataLoader``). Save the state after any step, build the same loader in a fresh process, load it:
      the samples that follow are the uninterrupted run's, in order. A streaming dataset resumes exactly when its
      shuffle is shard order only (``shuffle_buffer=1``): ``datasets`` does not restore a shuffle buffer's rows,
      and cannot restore a shuffled stream split over worker processes, so use the thread backend for that.
    """
    import torch
    from torch.utils.data import IterableDataset, RandomSampler, Subset

    r, w = (0, 1) if sampler is not None else dist_info(rank, world_size)
    try:
        import datasets as hf_datasets
        from datasets.distributed import split_dataset_by_node

        hf_types: tuple[type, ...] = (hf_datasets.Dataset, hf_datasets.IterableDataset)
    except ImportError:  # pragma: no cover - datasets is a dependency
        hf_datasets, hf_types = None, ()

    is_hf = bool(hf_types) and isinstance(dataset, hf_types)
    iterable = isinstance(dataset, IterableDataset) or (is_hf and isinstance(dataset, hf_datasets.IterableDataset))
    if w > 1:
        if is_hf:
            dataset = split_dataset_by_node(dataset, rank=r, world_size=w)
        elif not iterable:
            dataset = Subset(dataset, range(r, len(dataset), w))
        else:
            raise ValueError(
                f"make_dataloader: cannot split a plain torch IterableDataset ({type(dataset).__name__}) across "
                f"{w} nodes; use a datasets.IterableDataset (split_dataset_by_node) or split it yourself"
            )
    if sampler is not None and iterable:
        raise ValueError("make_dataloader: sampler= indexes a map-style dataset; a streaming dataset has no indices")
    if shuffle and sampler is None:
        if iterable:
            if is_hf:
                dataset = dataset.shuffle(seed=seed, buffer_size=shuffle_buffer)
        else:
            sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(int(seed)))
    if iterable and is_hf:
        n_shards = int(getattr(dataset, "num_shards", 0) or 0)
        if n_shards and num_workers > n_shards:
            log.info("make_dataloader: %d shards on this node; using %d workers instead of %d", n_shards, n_shards, num_workers)
            num_workers = n_shards
    if backend not in ("auto", "threads", "processes"):
        raise ValueError(f"backend must be 'auto', 'threads' or 'processes', got {backend!r}")
    if backend == "auto":
        backend = "threads" if collate_fn is None and not kwargs and _thread_safe(transform) else "processes"
    if backend == "threads":
        return ThreadedDataLoader(
            dataset, batch_size=batch_size, num_threads=max(1, num_workers), sampler=sampler, transform=transform,
            pad_values=pad_values, collate_fn=collate_fn, drop_last=drop_last, pin_memory=pin_memory,
            # two batches per thread in flight: a thread that finishes before the oldest batch is taken finds work
            prefetch=2 * max(1, num_workers),
        )
    if collate_fn is not None:
        collate = collate_fn
    elif pad_values is not None:
        collate = functools.partial(collate_volumes, pad_values=dict(pad_values))
    else:
        collate = collate_volumes
    loader_kwargs: dict[str, Any] = dict(
        batch_size=batch_size,
        num_workers=num_workers,
        collate_fn=_TransformCollate(transform, collate) if transform is not None else collate,
        pin_memory=pin_memory,
        drop_last=drop_last,
        sampler=sampler,
        worker_init_fn=_worker_init if num_workers > 0 else None,
    )
    if num_workers > 0:
        loader_kwargs["prefetch_factor"] = prefetch_factor
        loader_kwargs["persistent_workers"] = persistent_workers
    loader_kwargs.update(kwargs)
    from torchdata.stateful_dataloader import StatefulDataLoader

    return StatefulDataLoader(dataset, **loader_kwargs)


def _thread_safe(transform: Any) -> bool:
    """Whether ``transform`` is known to run well in threads: None, a preset, or a MONAI Compose of presets."""
    from .inputs import PresetTransform

    if transform is None or isinstance(transform, PresetTransform):
        return True
    inner = getattr(transform, "transforms", None)
    return isinstance(inner, (list, tuple)) and bool(inner) and all(isinstance(t, PresetTransform) for t in inner)


def _single(transform: Any) -> Any:
    """The one step of a one-step Compose, else the transform itself."""
    inner = getattr(transform, "transforms", None)
    return inner[0] if isinstance(inner, (list, tuple)) and len(inner) == 1 else transform


def _cached_readers(transform: Any, row: Mapping) -> dict | None:
    """The preset's readers of a cache hit (``transform.cached_readers``; a Compose only when it has one step)."""
    fn = getattr(_single(transform), "cached_readers", None)
    return fn(row) if callable(fn) else None


def _transform_into(transform: Any, row: Mapping, alloc: Callable[..., np.ndarray]) -> Any:
    """Run ``transform`` on a row, decoding volumes into the thread's reused buffer (:func:`reuse_buffers`) and,
    for a preset that can (``fill``), writing its outputs into ``alloc``'s buffers (the ring)."""
    from .inputs import reuse_buffers

    fill = getattr(_single(transform), "fill", None)
    with reuse_buffers():
        return fill(row, alloc) if callable(fill) else transform(row)


class ThreadedDataLoader:
    """:func:`make_dataloader`'s thread backend: rows fetched, transformed and batched by a thread pool into a ring
    of reused buffers (see :func:`make_dataloader`). Iterating yields collated batches (the keys of
    :func:`collate_volumes`); ``len()`` is the number of batches of a map-style dataset.

    >>> import numpy as np
    >>> rows = [{"x": np.full((2, 2), i, np.int16), "id": str(i)} for i in range(5)]
    >>> loader = ThreadedDataLoader(rows, batch_size=2, num_threads=2)
    >>> [(tuple(b["x"].shape), b["id"]) for b in loader]
    [((2, 2, 2), ['0', '1']), ((2, 2, 2), ['2', '3']), ((1, 2, 2), ['4'])]
    """

    def __init__(
        self,
        dataset: Any,
        *,
        batch_size: int = 1,
        num_threads: int = 2,
        sampler: Any = None,
        transform: Callable[[dict], dict] | None = None,
        pad_values: Mapping[str, float] | None = None,
        collate_fn: Callable[[list], Any] | None = None,
        drop_last: bool = False,
        pin_memory: bool = False,
        prefetch: int | None = None,
    ) -> None:
        if batch_size < 1 or num_threads < 1:
            raise ValueError(f"batch_size and num_threads must be >= 1, got {batch_size} and {num_threads}")
        self.dataset = dataset
        self.batch_size = int(batch_size)
        self.num_threads = int(num_threads)
        self.sampler = sampler
        self.transform = transform
        self.collate = collate_fn or functools.partial(collate_volumes, pad_values=dict(pad_values or {}))
        self.custom_collate = collate_fn is not None
        self.drop_last = drop_last
        self.prefetch = int(prefetch) if prefetch is not None else 2 * self.num_threads
        self._slots = [_Slot(pin_memory) for _ in range(self.prefetch + 1)]
        self._lock = threading.Lock()
        self._yielded = 0  # batches of the current epoch handed out
        self._generator_at_start: Any = None  # the sampler generator's state when this epoch began
        self._dataset_state: Any = None  # a stream's state right after the last batch handed out
        self._resume: Mapping | None = None

    def state_dict(self) -> dict:
        """Where the iteration stands: after the last batch handed out (or, between epochs, at the next one).

        >>> rows = [{"i": i} for i in range(6)]
        >>> a = ThreadedDataLoader(rows, batch_size=2)
        >>> it = iter(a); first = next(it)["i"]; state = a.state_dict(); it.close()
        >>> b = ThreadedDataLoader(rows, batch_size=2); b.load_state_dict(state)
        >>> first, [batch["i"] for batch in b]
        ([0, 1], [[2, 3], [4, 5]])
        """
        return {"batches_yielded": self._yielded, "sampler_generator": self._generator_at_start,
                "dataset": self._dataset_state}

    def load_state_dict(self, state: Mapping) -> None:
        """Make the next iteration continue from ``state`` (from :meth:`state_dict` of the same loader setup)."""
        self._resume = dict(state)

    def _begin(self) -> int:
        """Apply a loaded state to the sampler or stream; returns the batches to skip (already handed out)."""
        resume, self._resume = self._resume, None
        gen = getattr(self.sampler, "generator", None)
        if resume and gen is not None and resume.get("sampler_generator") is not None:
            gen.set_state(resume["sampler_generator"])
        self._generator_at_start = gen.get_state() if gen is not None else None
        if resume and not self._indexed() and resume.get("dataset") is not None:
            self.dataset.load_state_dict(resume["dataset"])
        self._yielded = int(resume["batches_yielded"]) if resume else 0
        self._dataset_state = resume.get("dataset") if resume else None
        return self._yielded if self._indexed() else 0

    def _indexed(self) -> bool:
        return self.sampler is not None or _is_map_style(self.dataset)

    def __len__(self) -> int:
        if not self._indexed():
            raise TypeError("a streaming dataset has no length")
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    @property
    def allocations(self) -> int:
        """Buffers the ring has allocated so far (flat once every slot has seen the largest batch)."""
        return sum(s.allocations for s in self._slots)

    def _batches(self, skip: int = 0) -> Iterator[tuple[list, Any]]:
        """(chunk, stream state after it): lists of row indices (map-style) or of rows (streaming), ``batch_size``
        each; the first ``skip`` chunks of indices are drawn and dropped without reading a row."""
        if self._indexed():
            source: Any = iter(self.sampler) if self.sampler is not None else iter(range(len(self.dataset)))
        else:
            source = iter(self.dataset)
        stateful = not self._indexed() and hasattr(self.dataset, "state_dict")
        while True:
            chunk = [x for _, x in zip(range(self.batch_size), source)]
            if not chunk or (self.drop_last and len(chunk) < self.batch_size):
                return
            if skip:
                skip -= 1
                continue
            yield chunk, (self.dataset.state_dict() if stateful else None)

    def _sample(self, slot: _Slot, b: int, n: int, item: Any, shapes: dict) -> dict:
        import torch

        row = self.dataset[item] if self._indexed() else item
        if self.transform is None:
            return row

        def alloc(key, shape, dtype, order="C"):  # the batch buffer's row b (a private one for an odd shape)
            want = (tuple(shape), np.dtype(dtype))
            if shapes.setdefault(key, want) != want:
                return slot.alloc(f"{key}#{b}", shape, dtype, order)
            return slot.alloc(key, (n, *shape), dtype, "C")[b]

        readers = _cached_readers(self.transform, row)
        if readers is None:
            return _transform_into(self.transform, row, alloc)

        sample = dict(row)
        for key, reader in readers.items():
            if not callable(getattr(reader, "read_into", None)):  # a side value of the output (a box, indices)
                sample[key] = reader
                continue
            try:
                sample[key] = torch.from_numpy(reader.read_into(alloc, key))
            except Exception:  # noqa: BLE001 - evicted or damaged since the check: a cache never fails a read
                return _transform_into(self.transform, row, alloc)
        return sample

    def _batch(self, slot: _Slot, chunk: list) -> Any:
        import torch

        n = len(chunk)
        shapes: dict = {}
        samples = [self._sample(slot, b, n, item, shapes) for b, item in enumerate(chunk)]
        if self.custom_collate:
            return self.collate(samples)
        out: dict[str, Any] = {}
        for key in list(samples[0]) if samples and isinstance(samples[0], Mapping) else []:
            values = [s.get(key) for s in samples]
            if not all(isinstance(v, torch.Tensor) for v in values):
                continue
            shape, dtype = tuple(values[0].shape), values[0].dtype
            if shape == () or any(tuple(v.shape) != shape or v.dtype != dtype for v in values):
                continue
            buf = torch.from_numpy(slot.alloc(key, (n, *shape), torch.empty((), dtype=dtype).numpy().dtype, "C"))
            for b, v in enumerate(values):
                if v.data_ptr() != buf[b].data_ptr():  # not decoded in place: one copy into the ring
                    buf[b].copy_(v)
            out[key] = buf
            out[f"{key}_shape"] = torch.tensor([shape] * n, dtype=torch.int64)
        rest = self.collate([{k: v for k, v in s.items() if k not in out} for s in samples])
        return {**rest, **out}

    def __iter__(self) -> Iterator[Any]:
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("ThreadedDataLoader: one iteration at a time (its ring buffers are shared)")
        free = collections.deque(self._slots)
        pending: collections.deque[tuple[_Slot, Future, Any]] = collections.deque()
        held: _Slot | None = None
        pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="radgenome-dataloader",
                                  initializer=_one_torch_thread if self.transform is not None else None)
        chunks = self._batches(self._begin())
        exhausted = False
        try:
            while True:
                if held is not None:
                    free.append(held)
                    held = None
                while not exhausted and len(pending) < self.prefetch and free:
                    nxt = next(chunks, None)
                    if nxt is None:
                        exhausted = True
                        break
                    slot = free.pop()  # the slot freed last: its pages are mapped and warm
                    pending.append((slot, pool.submit(self._batch, slot, nxt[0]), nxt[1]))
                if not pending:
                    self._yielded, self._dataset_state = 0, None  # the next iteration is a new epoch
                    gen = getattr(self.sampler, "generator", None)
                    self._generator_at_start = gen.get_state() if gen is not None else None
                    return
                slot, fut, after = pending.popleft()
                result = fut.result()
                held = slot
                self._yielded += 1
                self._dataset_state = after
                yield result
        finally:
            for _, fut, _ in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self._lock.release()


def _is_map_style(dataset: Any) -> bool:
    try:
        import datasets as hf_datasets

        if isinstance(dataset, hf_datasets.IterableDataset):
            return False
        if isinstance(dataset, hf_datasets.Dataset):
            return True
    except ImportError:  # pragma: no cover
        pass
    from torch.utils.data import IterableDataset

    return not isinstance(dataset, IterableDataset) and hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


Alloc = Callable[..., np.ndarray]  # alloc(key, shape, dtype, order="C") -> a reused buffer of that shape


def _read_npy(path: Path, alloc: Alloc, key: str) -> np.ndarray:
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        out = alloc(key, shape, dtype, "F" if fortran else "C")
        got = readinto_full(f, memoryview(out.reshape(-1, order="A").view(np.uint8)))
    if got < out.nbytes:
        from ..errors import CorruptVolumeError

        raise CorruptVolumeError(path, f"truncated .npy ({got} of {out.nbytes} bytes); re-create the file")
    return out


def _read_b2(path: Path, alloc: Alloc, key: str) -> np.ndarray:
    from ..access.cache import read_file_into

    # PreparedCache files: a .b2f frame decodes in one GIL-free call, a .b2nd NDArray chunk by chunk; both
    # straight into the ring buffer, single-threaded (the loader's threads are the parallelism)
    return read_file_into(path, lambda shape, dtype, order="C": alloc(key, shape, dtype, order), nthreads=1)


def _read_nifti(path: Path, alloc: Alloc, key: str) -> np.ndarray:
    from ..access.volume import Volume

    arr = Volume.open(path).array()
    out = alloc(key, arr.shape, arr.dtype, "F" if arr.flags.f_contiguous else "C")
    np.copyto(out, arr)
    return out


def read_into(source: Any, alloc: Alloc, key: str = "image") -> np.ndarray:
    """Decode one array from a path (:class:`~radgenome_hf.access.cache.PreparedCache` files: ``.b2f`` frames and
    ``.b2nd`` blosc2 NDArrays; ``.npy``; ``.nii``/``.nii.gz``) into a buffer from ``alloc(key, shape, dtype, order)``."""
    p = Path(source)
    name = p.name.lower()
    if name.endswith((".b2nd", ".b2f")):
        return _read_b2(p, alloc, key)
    if name.endswith(".npy"):
        return _read_npy(p, alloc, key)
    if name.endswith((".nii", ".nii.gz")):
        return _read_nifti(p, alloc, key)
    raise ValueError(f"{p}: unsupported file type for ThreadedVolumeLoader (use .b2f, .b2nd, .npy, .nii[.gz] or a callable)")


class _Slot:
    """One ring entry: a reusable byte buffer per key (grown only when a larger array arrives)."""

    def __init__(self, pin_memory: bool) -> None:
        self.buffers: dict[str, Any] = {}  # key -> torch uint8 tensor (possibly pinned)
        self.pin_memory = pin_memory
        self.allocations = 0

    def alloc(self, key: str, shape: Sequence[int], dtype: Any, order: str = "C") -> np.ndarray:
        import torch

        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf = self.buffers.get(key)
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 1), dtype=torch.uint8, pin_memory=self.pin_memory)
            self.buffers[key] = buf
            self.allocations += 1
        flat = buf.numpy()[:nbytes].view(dtype)
        arr = flat.reshape(tuple(shape), order="F" if order == "F" else "C")
        return arr


def _takes_argument(fn: Callable) -> bool:
    try:
        params = [
            p for p in inspect.signature(fn).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.VAR_POSITIONAL) and p.default is p.empty
        ]
    except (TypeError, ValueError):
        return False
    return bool(params)


class ThreadedVolumeLoader:
    """Iterate over prepared volumes in order, decoded by a thread pool into a ring of reused buffers.

    ``sources`` is a sequence of items; an item is

    * a path (:class:`~radgenome_hf.access.cache.PreparedCache` file: ``.b2f`` frame or ``.b2nd`` blosc2 NDArray;
      ``.npy``; ``.nii[.gz]``) → key ``"image"``;
    * ``cache.reader(key, bbox=None)`` (:meth:`~radgenome_hf.access.cache.PreparedCache.reader`): a cached array or a
      crop of it, decoded straight into the ring;
    * a callable ``f(alloc)`` that decodes into buffers it asks for with ``alloc(key, shape, dtype, order="C")``
      and returns an array or a dict of arrays (zero-copy path), or a callable ``f()`` returning an array or a dict
      of arrays (then copied once into the ring; e.g. ``lambda: cache.get_array(key)``);
    * a dict ``{key: path, reader or callable}`` (e.g. ``{"image": cache.reader(k_ct), "label": cache.reader(k_seg)}``).

    Decoding is into reused buffers (no per-sample allocation; :attr:`allocations` stays flat after the first
    pass over the ring) and, for ``.b2f`` frames, with the GIL released, so the threads decode in parallel.

    Each step yields ``{"index": i, key: torch.Tensor, ...}``; the tensors are views of a ring slot that is reused
    once the **next** item is requested: use them (or ``.to("cuda")`` them) within the step, or ``.clone()``.
    ``prefetch`` items (default ``2 * num_threads``) are decoded ahead; the ring has ``prefetch + 1`` slots, so
    memory is bounded by ``(prefetch + 1) × one sample`` whatever the number of volumes. ``pin_memory=True`` puts
    the ring in page-locked memory (fast, asynchronous host-to-GPU copies).

    >>> import numpy as np
    >>> items = [lambda i=i: {"image": np.full((2, 2), i, np.int16)} for i in range(5)]
    >>> [int(s["image"][0, 0]) for s in ThreadedVolumeLoader(items, num_threads=2)]
    [0, 1, 2, 3, 4]
    """

    def __init__(
        self,
        sources: Sequence[Any],
        *,
        num_threads: int = 2,
        prefetch: int | None = None,
        pin_memory: bool = False,
        default_key: str = "image",
    ) -> None:
        if num_threads < 1:
            raise ValueError(f"num_threads must be >= 1, got {num_threads}")
        self.sources = sources
        self.num_threads = int(num_threads)
        self.prefetch = int(prefetch) if prefetch is not None else 2 * self.num_threads
        if self.prefetch < 1:
            raise ValueError(f"prefetch must be >= 1, got {prefetch}")
        self.pin_memory = bool(pin_memory)
        self.default_key = default_key
        self._slots = [_Slot(self.pin_memory) for _ in range(self.prefetch + 1)]
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def allocations(self) -> int:
        """How many buffers the ring has allocated so far (stays flat once every slot has seen the largest sample)."""
        return sum(s.allocations for s in self._slots)

    @property
    def nbytes(self) -> int:
        """Bytes held by the ring."""
        return sum(int(b.numel()) for s in self._slots for b in s.buffers.values())

    # -- one item -------------------------------------------------------------------------------------
    def _fill_one(self, slot: _Slot, key: str, item: Any) -> Any:
        if isinstance(item, (str, os.PathLike)):
            return read_into(item, slot.alloc, key)
        if callable(getattr(item, "read_into", None)):  # e.g. PreparedCache.reader(key, bbox): decodes into the ring
            return item.read_into(slot.alloc, key)
        if callable(item):
            got = item(slot.alloc) if _takes_argument(item) else item()
            return got
        raise TypeError(f"ThreadedVolumeLoader: item of type {type(item).__name__} is not a path or a callable")

    def _to_slot(self, slot: _Slot, key: str, arr: Any) -> np.ndarray:
        import torch

        if isinstance(arr, torch.Tensor):
            arr = arr.numpy()
        arr = np.asarray(arr)
        if any(np.may_share_memory(arr, b.numpy()) for b in slot.buffers.values()):
            return arr  # decoded straight into the ring (alloc path)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        out = slot.alloc(key, arr.shape, arr.dtype, "F" if (arr.flags.f_contiguous and not arr.flags.c_contiguous) else "C")
        np.copyto(out, arr)
        return out

    def _fill(self, slot: _Slot, index: int, item: Any) -> dict[str, Any]:
        import torch

        if isinstance(item, Mapping):
            raw = {k: self._fill_one(slot, k, v) for k, v in item.items()}
        else:
            raw = self._fill_one(slot, self.default_key, item)
        if not isinstance(raw, Mapping):
            raw = {self.default_key: raw}
        out: dict[str, Any] = {"index": index}
        for k, v in raw.items():
            if isinstance(v, (np.ndarray, torch.Tensor)):
                out[k] = torch.from_numpy(self._to_slot(slot, k, v))
            else:
                out[k] = v
        return out

    # -- iteration ------------------------------------------------------------------------------------
    def __iter__(self) -> Iterator[dict[str, Any]]:
        n = len(self.sources)
        if not self._lock.acquire(blocking=False):
            raise RuntimeError("ThreadedVolumeLoader: one iteration at a time (its ring buffers are shared)")
        free = collections.deque(self._slots)
        pending: collections.deque[tuple[_Slot, Future]] = collections.deque()
        held: _Slot | None = None
        pool = ThreadPoolExecutor(max_workers=self.num_threads, thread_name_prefix="radgenome-loader")
        nxt = 0
        try:
            for _ in range(n):
                if held is not None:
                    free.append(held)
                    held = None
                while nxt < n and len(pending) < self.prefetch and free:
                    slot = free.pop()  # the slot freed last: its pages are mapped and warm
                    pending.append((slot, pool.submit(self._fill, slot, nxt, self.sources[nxt])))
                    nxt += 1
                slot, fut = pending.popleft()
                result = fut.result()
                held = slot
                yield result
        finally:
            for _, fut in pending:
                fut.cancel()
            pool.shutdown(wait=True, cancel_futures=True)
            self._lock.release()
