"""``radgenome_hf.load_dataset`` and the registration that makes ``datasets.load_dataset("radgenome", …)`` work.

datasets 5 has no plugin registry and no loading scripts (see shared/reference/hf-stack.md §2). ``load_dataset``
resolves a name through ``datasets.load.dataset_module_factory``; we wrap that one function so the name
``radgenome`` (when no local folder of that name exists: a local folder always wins, as in datasets) resolves to
this package's builder. ``tests/test_registration.py`` is the contract test that fails loudly if datasets changes
the function we wrap.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import os
import sys
from typing import Any

BUILDER_NAME = "radgenome"
BUILDER_MODULE = "radgenome_hf.hf.builder"
PACKED_MANIFEST = "release_manifest.json"

_registered = False


def register() -> None:
    """Make ``datasets.load_dataset("radgenome", config, …)`` resolve to :class:`radgenome_hf.hf.builder.RadGenome`.

    ``import radgenome_hf`` calls this. When ``datasets`` is not imported yet, nothing heavy happens now: a
    one-shot import hook patches ``datasets.load`` (and registers the feature types) the moment ``datasets`` is
    first imported, so ``import radgenome_hf`` stays cheap and the order of the two imports does not matter.
    """
    global _registered
    if _registered:
        return
    _registered = True
    module = sys.modules.get("datasets.load")
    if module is not None:
        _patch(module)
    else:
        sys.meta_path.insert(0, _PatchOnImport())


def _patch(load: Any) -> None:
    from .features import register_features

    register_features()
    original = load.dataset_module_factory
    if getattr(original, "_radgenome_hf", False):
        return

    @functools.wraps(original)
    def dataset_module_factory(path: str, *args: Any, **kwargs: Any):
        if path == BUILDER_NAME and not os.path.isdir(path):
            from .builder import builder_source_hash

            return load.DatasetModule(BUILDER_MODULE, builder_source_hash(), {"dataset_name": BUILDER_NAME})
        return original(path, *args, **kwargs)

    dataset_module_factory._radgenome_hf = True  # type: ignore[attr-defined]
    load.dataset_module_factory = dataset_module_factory


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: when ``datasets.load`` is imported, wraps its loader so the module is patched
    right after it executes, then leaves ``sys.meta_path``."""

    def find_spec(self, name: str, path: Any, target: Any = None):
        if name != "datasets.load":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:  # pragma: no cover - datasets without datasets.load
            return spec
        spec.loader = _PatchingLoader(spec.loader)
        return spec


class _PatchingLoader(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader) -> None:
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module) -> None:
        self._loader.exec_module(module)
        _patch(module)


def load_dataset(config: str = "vqa", *args: Any, **kwargs: Any):
    """Load a RadGenome config: the stable entry point, same arguments as ``datasets.load_dataset``.

    ``radgenome_hf.load_dataset("vqa", data_dir="release", split="train", streaming=True)`` is
    ``datasets.load_dataset("radgenome", "vqa", data_dir="release", split="train", streaming=True)``.
    Builder options (``ignore_missing_volumes``, ``num_shards``, ``ctrate_dir``, ``token`` …) are
    :class:`radgenome_hf.hf.builder.RadGenomeConfig` fields.

    >>> import tempfile, radgenome_hf
    >>> from radgenome_hf.testing.synthetic import SyntheticConfig, write_release
    >>> rel = write_release(tempfile.mkdtemp(), SyntheticConfig(n_train_patients=1, n_valid_patients=0,
    ...                                                        shape=(32, 32, 24)), progress=False)
    >>> ds = radgenome_hf.load_dataset("vqa", data_dir=str(rel.root), split="train")
    >>> sorted(set(ds["question_type"]))
    ['abnormality', 'disorders', 'location', 'presence', 'size']
    """
    import datasets

    register()
    kwargs.pop("trust_remote_code", None)
    data_dir = kwargs.get("data_dir")
    if data_dir is not None and is_packed_release(data_dir):
        kwargs.pop("data_dir")
        return load_packed(data_dir, config, *args, **kwargs)
    return datasets.load_dataset(BUILDER_NAME, config, *args, **kwargs)


def is_packed_release(path: str | os.PathLike) -> bool:
    """Whether a local folder is a packed release (what ``radgenome-hf build`` writes and the Hub serves)."""
    return os.path.isfile(os.path.join(os.fspath(path), PACKED_MANIFEST))


def lazy(dataset, base: str | os.PathLike | None = None):
    """Make a packed release's ``volume`` / ``mask`` / ``masks`` columns decode lazily, like the builder's.

    Works on ``Dataset``, ``IterableDataset`` and their dicts, however they were loaded (plain
    ``datasets.load_dataset(repo, "vqa")`` included). ``base`` is what the rows' relative paths are relative to:
    the release folder, or ``hf://datasets/<repo>@<revision>`` (files are then fetched on first decode).
    """
    import datasets

    from .features import VolumeFeature, LazyMaskFeature, MaskSetFeature

    if isinstance(dataset, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(dataset)({k: lazy(v, base) for k, v in dataset.items()})
    base = None if base is None else (os.fspath(base) if "://" in os.fspath(base) else os.path.abspath(base))
    for column, feature in (("volume", VolumeFeature), ("mask", LazyMaskFeature), ("masks", MaskSetFeature)):
        if dataset.features is not None and column in dataset.features:
            dataset = dataset.cast_column(column, feature(base=base))
    return dataset


def load_packed(path_or_repo: str | os.PathLike, config: str = "vqa", *args: Any, revision: str | None = None,
                volumes: Any = None, patients: Any = None, anatomy: Any = None, question_types: Any = None,
                **kwargs: Any):
    """Load a packed release (a local folder, or a Hub repo id) with volumes and masks decoding lazily.

    Same arguments as ``datasets.load_dataset``, plus a subset: ``volumes=`` / ``patients=`` / ``anatomy=`` /
    ``question_types=`` (see :class:`radgenome_hf.hf.subset.RowFilter`) keep only those rows, normal and
    streaming. From the Hub a subset reads only the row shards that hold its rows (the plan of
    :func:`radgenome_hf.download`); after that download it works offline (``HF_HUB_OFFLINE=1``). Example::

        ds = radgenome_hf.load_packed("org/radgenome-chestct", "vqa", revision="v1.0", split="train")
        ds[0]["volume"]     # Volume(...), downloaded on first decode
        sub = radgenome_hf.load_packed("org/radgenome-chestct", "vqa", split="train", volumes=["train_1_a_1"])
    """
    import datasets
    import pyarrow.dataset as pds

    from .subset import RowFilter

    register()
    path = os.fspath(path_or_repo)
    rf = RowFilter.make(volumes, patients, anatomy, question_types)
    # the release's shards carry page checksums (publish/build.py): verify them, so a damaged shard is an error
    kwargs.setdefault("fragment_scan_options", pds.ParquetFragmentScanOptions(page_checksum_verification=True))
    local = os.path.isdir(path)
    try:
        if rf.active and not local:
            ds, base = _load_subset(path, config, rf, revision, args, kwargs)
        else:
            ds = datasets.load_dataset(path, config, *args, revision=revision, **kwargs)
            base = os.path.abspath(path) if local else f"hf://datasets/{path}@{revision or 'main'}"
    except datasets.exceptions.DatasetGenerationError as exc:
        damaged = _damaged_shard(path, config, exc)
        if damaged is None:
            raise
        raise damaged from exc
    if rf.active:
        ds = _filter(ds, rf)
    return lazy(ds, base)


def _load_subset(repo: str, config: str, rf, revision: str | None, args: tuple, kwargs: dict):
    """(the row shards of a subset's plan loaded as parquet, the hf:// base of its commit); the rows are filtered
    afterwards. Shards already in the Hugging Face cache are read there (offline too); others are streamed from
    the Hub, or fetched into the cache first when not streaming."""
    import datasets

    from ..errors import RadGenomeError
    from ..io.hub import cached_file, fetch
    from .subset import plan_download

    split = kwargs.get("split")
    plan = plan_download(repo, config, split=split if isinstance(split, str) else None, revision=revision,
                         **rf.as_dict())
    splits = [s for s in plan.splits if plan.rows.get(s)]
    if not splits:
        raise RadGenomeError(f"{repo}@{plan.revision[:12]} {config}: no rows match {rf.as_dict()}")
    streaming = kwargs.get("streaming", False)
    data_files = {s: [cached_file(u) or (u if streaming else fetch(u)) for u in plan.urls("rows", s)] for s in splits}
    ds = datasets.load_dataset("parquet", *args, data_files=data_files, **kwargs)
    return ds, f"hf://datasets/{repo}@{plan.revision}"


def _filter(ds, rf):
    """Only the rows ``rf`` keeps (Dataset, IterableDataset and their dicts)."""
    import datasets
    import pyarrow as pa

    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        return type(ds)({k: _filter(v, rf) for k, v in ds.items()})
    split = str(ds.split) if ds.split is not None else ""
    columns = list(dict.fromkeys(["volume_name", *rf.columns(list(ds.features))]))

    def keep(*cols):
        return rf.mask(pa.table(dict(zip(columns, cols))), split).to_pylist()

    return ds.filter(keep, batched=True, input_columns=columns)


def _damaged_shard(path: str, config: str, exc: BaseException) -> Exception | None:
    """A MalformedFileError naming the shard that does not read (a page checksum or its decompression fails),
    or ``None`` when no shard is to blame. The error of datasets names no file: each is read again to find it."""
    from ..errors import MalformedFileError

    cause = exc.__cause__
    if not isinstance(cause, OSError):
        return None
    if "checksum" in str(cause).lower() and not os.path.isdir(path):
        return MalformedFileError(f"{path} ({config} shards)", f"damaged: a page fails its checksum ({cause}); "
                                  "download the release again")
    import glob

    import pyarrow.parquet as pq

    for f in sorted(glob.glob(os.path.join(path, config, "*.parquet"))):
        try:
            pq.read_table(f, page_checksum_verification=True)
        except OSError as bad:
            return MalformedFileError(f, f"damaged ({bad}); download or build the release again")
    return None


def load_dataset_builder(config: str = "vqa", **kwargs: Any):
    """The builder of a config (``download_and_prepare()``, ``as_dataset()``, ``as_streaming_dataset()``)."""
    import datasets

    register()
    return datasets.load_dataset_builder(BUILDER_NAME, config, **kwargs)
