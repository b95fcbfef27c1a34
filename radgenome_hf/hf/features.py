"""datasets feature types whose values decode lazily to this package's volume and mask objects.

* :class:`VolumeFeature` stores a reference to a NIfTI file or a chunked volume (``.zarr``; local path or
  ``hf://`` URL) plus, for CT-RATE v1 volumes whose headers are blank, the spacing and rescale from the metadata
  CSV. It decodes to a lazy :class:`~radgenome_hf.access.volume.Volume`: nothing is read until an array is asked
  for. A remote NIfTI file is fetched whole on first decode; a remote chunked volume never is: a crop fetches the
  chunks it touches.
* :class:`LazyMaskFeature` stores a reference to one structure in a packed-mask file (or the whole scan) and
  decodes to a :class:`LazyMask`.
* :class:`MaskSetFeature` stores references to a volume's packed region and anatomy masks and decodes to a
  :class:`MaskSet`.

Both mask references carry ``volume_name``: null for a file of one volume's masks (the builder's rows), the volume
for a masks shard of a packed release that holds many volumes. Data written before the field existed casts to
these types with the field null.

Storage is plain Arrow structs of strings/numbers, so the Arrow data stays readable without this package;
``import radgenome_hf`` registers the types with datasets so that they decode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import pyarrow as pa

from ..access.lazymasks import LazyMask, MaskSet
from ..errors import MissingVolumeError
from ..io.chunked import is_chunked_volume
from ..io.hub import local_path, parse_hf_url

def resolve(path: str | None, base: str | None) -> str | None:
    """A row's path made usable: relative paths (packed releases) are joined onto ``base`` (a folder or an
    ``hf://datasets/<repo>@<rev>`` URL); absolute paths and URLs are returned as they are."""
    if path is None or base is None or "://" in path or path.startswith("/"):
        return path
    return base.rstrip("/") + "/" + path


_caches: dict[str, Any] = {}


def prepared_cache(where: str | None):
    """The :class:`~radgenome_hf.access.cache.PreparedCache` rows decode through: ``"default"`` is
    ``$RADGENOME_CACHE`` (bounded by ``$RADGENOME_CACHE_MAX_BYTES``), a folder is that folder, ``None`` or
    ``"none"`` is none. One object per folder and process.

    >>> prepared_cache("none") is None
    True
    """
    if where is None or where == "none":
        return None
    from ..access.cache import PreparedCache
    from ..config import cache_root

    root = str(cache_root()) if where == "default" else where
    cache = _caches.get(root)
    if cache is None:
        cache = _caches[root] = PreparedCache(root)
    return cache


def _open_volume(value: dict, token_per_repo_id=None, cache: str | None = None):
    from ..access.volume import Volume

    path = value.get("path")
    if path is None:
        return None
    token = None
    if path.startswith("hf://") and is_chunked_volume(path):
        token = (token_per_repo_id or {}).get(parse_hf_url(path).repo_id)  # read by range requests, lazily
    elif path.startswith("hf://"):
        path = local_path(path, token_per_repo_id)
    else:
        import os

        if not os.path.exists(path):
            raise MissingVolumeError(
                f"volume file {path} does not exist: the release's volume folder is incomplete. Download the missing "
                "volume, or load with ignore_missing_volumes=True to get None for absent volumes."
            )
    spacing = value.get("spacing")
    rescale = value.get("rescale")
    name = value.get("name")
    return Volume.open(
        path,
        spacing=tuple(spacing) if spacing else None,
        rescale=tuple(rescale) if rescale else None,
        name=name,
        cache=prepared_cache(cache),
        token=token,
    )


@dataclass
class VolumeFeature:
    """A CT volume stored by reference; decodes to a lazy :class:`~radgenome_hf.access.volume.Volume`.

    ``cache``: where the decoded volume is kept for later rows, epochs and crops (see :func:`prepared_cache`):
    ``"default"`` (``$RADGENOME_CACHE``), a folder, or ``"none"`` (every decode reads the file).
    """

    decode: bool = True
    id: Optional[str] = field(default=None, repr=False)
    dtype: ClassVar[str] = "radgenome_hf.access.volume.Volume"
    pa_type: ClassVar[Any] = pa.struct(
        {
            "path": pa.string(),
            "name": pa.string(),
            "spacing": pa.list_(pa.float32()),
            "rescale": pa.list_(pa.float32()),
        }
    )
    #: folder or ``hf://datasets/<repo>@<rev>`` that relative paths are relative to (packed releases)
    base: Optional[str] = None
    cache: Optional[str] = "default"
    _type: str = field(default="VolumeFeature", init=False, repr=False)

    def __call__(self):
        return self.pa_type

    def encode_example(self, value) -> dict:
        if isinstance(value, str):
            return {"path": value, "name": None, "spacing": None, "rescale": None}
        if isinstance(value, dict):
            return {k: value.get(k) for k in ("path", "name", "spacing", "rescale")}
        path = getattr(value, "path", None)
        if path is not None:
            return {"path": str(path), "name": getattr(value, "name", None), "spacing": None, "rescale": None}
        raise ValueError(f"a VolumeFeature value must be a path, a dict or a Volume, got {type(value).__name__}")

    def decode_example(self, value, token_per_repo_id=None):
        if value is None or not isinstance(value, dict):
            return value
        return _open_volume({**value, "path": resolve(value.get("path"), self.base)}, token_per_repo_id, self.cache)


@dataclass
class LazyMaskFeature:
    """A reference to one structure's packed mask (or the whole scan); decodes to :class:`LazyMask`."""

    decode: bool = True
    id: Optional[str] = field(default=None, repr=False)
    dtype: ClassVar[str] = "radgenome_hf.access.lazymasks.LazyMask"
    pa_type: ClassVar[Any] = pa.struct(
        {
            "path": pa.string(),
            "structure": pa.string(),
            "source": pa.string(),
            "shape": pa.list_(pa.int32()),
            "volume_name": pa.string(),  # the volume's rows in a masks shard; null for a one-volume file
        }
    )
    #: folder or ``hf://datasets/<repo>@<rev>`` that relative paths are relative to (packed releases)
    base: Optional[str] = None
    _type: str = field(default="LazyMaskFeature", init=False, repr=False)

    def __call__(self):
        return self.pa_type

    def encode_example(self, value) -> dict:
        if isinstance(value, LazyMask):
            return {"path": value.path, "structure": value.structure, "source": value.source,
                    "shape": list(value._shape) if value._shape else None, "volume_name": value.volume_name}
        if isinstance(value, dict):
            return {k: value.get(k) for k in self.pa_type.names}
        raise ValueError(f"a LazyMaskFeature value must be a dict or LazyMask, got {type(value).__name__}")

    def cast_storage(self, storage: pa.StructArray) -> pa.StructArray:
        return _cast_struct(storage, self.pa_type)

    def decode_example(self, value, token_per_repo_id=None):
        if value is None or not isinstance(value, dict):
            return value
        return LazyMask(resolve(value.get("path"), self.base), value.get("structure"), value.get("source") or "whole",
                        value.get("shape"), value.get("volume_name"))


@dataclass
class MaskSetFeature:
    """References to a volume's packed region and anatomy mask files; decodes to :class:`MaskSet`."""

    decode: bool = True
    id: Optional[str] = field(default=None, repr=False)
    dtype: ClassVar[str] = "radgenome_hf.access.lazymasks.MaskSet"
    pa_type: ClassVar[Any] = pa.struct({"region": pa.string(), "anatomy": pa.string(), "volume_name": pa.string()})
    #: folder or ``hf://datasets/<repo>@<rev>`` that relative paths are relative to (packed releases)
    base: Optional[str] = None
    _type: str = field(default="MaskSetFeature", init=False, repr=False)

    def __call__(self):
        return self.pa_type

    def encode_example(self, value) -> dict:
        if isinstance(value, MaskSet):
            return {"region": value.region_path, "anatomy": value.anatomy_path, "volume_name": value.volume_name}
        if isinstance(value, dict):
            return {k: value.get(k) for k in self.pa_type.names}
        raise ValueError(f"a MaskSetFeature value must be a dict or MaskSet, got {type(value).__name__}")

    def cast_storage(self, storage: pa.StructArray) -> pa.StructArray:
        return _cast_struct(storage, self.pa_type)

    def decode_example(self, value, token_per_repo_id=None):
        if value is None or not isinstance(value, dict):
            return value
        if value.get("region") is None and value.get("anatomy") is None:
            return None
        return MaskSet(resolve(value.get("region"), self.base), resolve(value.get("anatomy"), self.base),
                       value.get("volume_name"))


def _cast_struct(storage: pa.Array, pa_type: pa.StructType) -> pa.StructArray:
    """``storage`` as ``pa_type``: fields it lacks (data written before they existed) become null; a field it has
    that the type lacks is an error, never a silent drop."""
    extra = [f.name for f in storage.type if f.name not in pa_type.names] if pa.types.is_struct(storage.type) else []
    if not pa.types.is_struct(storage.type) or extra:
        raise TypeError(f"cannot cast {storage.type} to {pa_type}" + (f" (unknown fields {extra})" if extra else ""))
    children = [storage.field(f.name).cast(f.type) if f.name in storage.type.names
                else pa.nulls(len(storage), f.type) for f in pa_type]
    return pa.StructArray.from_arrays(children, fields=list(pa_type), mask=storage.is_null())


_registered = False


def register_features() -> None:
    """Make datasets know these feature types (idempotent; ``datasets.features.register_feature``)."""
    global _registered
    if _registered:
        return
    import warnings

    from datasets.features.features import register_feature

    with warnings.catch_warnings():  # datasets marks the function experimental and warns on every call
        warnings.simplefilter("ignore")
        for cls in (VolumeFeature, LazyMaskFeature, MaskSetFeature):
            register_feature(cls, cls.__name__)
    _registered = True
