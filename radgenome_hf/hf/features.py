"""datasets feature types whose values decode lazily to this package's volume and mask objects.

* :class:`CTVolume` stores a reference to a NIfTI file (local path or ``hf://`` URL) plus, for CT-RATE v1 volumes
  whose headers are blank, the spacing and rescale from the metadata CSV. It decodes to a lazy
  :class:`~radgenome_hf.access.volume.Volume`: nothing is read until an array is asked for.
* :class:`StructureMask` stores a reference to one structure in a packed-mask file (or the whole scan) and
  decodes to a :class:`LazyMask`.
* :class:`VolumeMasks` stores references to a volume's packed region and anatomy masks and decodes to a
  :class:`MaskSet`.

Storage is plain Arrow structs of strings/numbers, so the Arrow data stays readable without this package;
``import radgenome_hf`` registers the types with datasets so that they decode.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from threading import Lock
from typing import TYPE_CHECKING, Any, ClassVar, Optional, Sequence

import numpy as np
import pyarrow as pa

from ..errors import MissingVolumeError

if TYPE_CHECKING:
    from ..access.masks import MaskGrid

# -- packed-mask file cache (one process) -------------------------------------------------------------
_PACKED_CACHE: "OrderedDict[str, Any]" = OrderedDict()
_PACKED_LOCK = Lock()
_PACKED_CACHE_SIZE = 16


def load_packed(path: str):
    """Load a packed-mask file, keeping the last few in memory (rows of one volume come together)."""
    from ..access.masks import PackedMasks

    with _PACKED_LOCK:
        hit = _PACKED_CACHE.get(path)
        if hit is not None:
            _PACKED_CACHE.move_to_end(path)
            return hit
    packed = PackedMasks.load(local_path(path))
    with _PACKED_LOCK:
        _PACKED_CACHE[path] = packed
        while len(_PACKED_CACHE) > _PACKED_CACHE_SIZE:
            _PACKED_CACHE.popitem(last=False)
    return packed


class LazyMask:
    """One structure's binary mask, decoded on demand from the packed form.

    ``source`` is ``anatomy`` or ``region`` (which upstream mask grounds it) or ``whole`` (the whole scan).
    """

    def __init__(self, path: str | None, structure: str | None, source: str, shape: Sequence[int] | None) -> None:
        self.path = path
        self.structure = structure
        self.source = source
        self._shape = tuple(shape) if shape is not None else None

    def _packed(self):
        return load_packed(self.path) if self.path else None

    @property
    def shape(self) -> tuple[int, ...] | None:
        if self._shape is None and self.path:
            self._shape = tuple(self._packed().shape)
        return self._shape

    @property
    def bbox(self) -> tuple[int, ...] | None:
        """(i0, j0, k0, i1, j1, k1), half-open; the whole grid for the whole scan."""
        if self.source == "whole" or self.structure is None:
            return None if self.shape is None else (0, 0, 0, *self.shape)
        return self._packed().bbox(self.structure)

    @property
    def voxel_count(self) -> int:
        if self.source == "whole" or self.structure is None:
            return int(np.prod(self.shape)) if self.shape else 0
        return int(self._packed().voxel_count(self.structure))

    def array(self, out: MaskGrid | None = None) -> np.ndarray:
        """The full-grid boolean mask; with ``out=`` a :class:`~radgenome_hf.access.masks.MaskGrid`, a read-only view of
        that reused grid (valid until its next use), which skips the page faults of a fresh grid."""
        if self.source == "whole" or self.structure is None:
            if self.shape is None:
                raise ValueError("whole-scan mask of a row without a known volume shape: decode the volume instead")
            return np.ones(self.shape, dtype=bool) if out is None else out.fill()
        return self._packed().mask(self.structure, out=out)

    def crop(self, bbox: Sequence[int]) -> np.ndarray:
        if self.source == "whole" or self.structure is None:
            i0, j0, k0, i1, j1, k1 = bbox
            return np.ones((i1 - i0, j1 - j0, k1 - k0), dtype=bool)
        return self._packed().crop(self.structure, tuple(bbox))

    def __array__(self, dtype=None, copy=None):
        a = self.array()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:
        if self.source == "whole" or self.structure is None:
            return f"LazyMask(whole scan, shape={self.shape})"
        return f"LazyMask(structure={self.structure!r}, source={self.source!r}, shape={self.shape}, file='{self.path}')"


class MaskSet:
    """A volume's packed masks: ``region`` (10 region masks) and ``anatomy`` (SAT categories), loaded on demand."""

    def __init__(self, region_path: str | None, anatomy_path: str | None) -> None:
        self.region_path = region_path
        self.anatomy_path = anatomy_path

    @property
    def region(self):
        return load_packed(self.region_path) if self.region_path else None

    @property
    def anatomy(self):
        return load_packed(self.anatomy_path) if self.anatomy_path else None

    @property
    def names(self) -> list[str]:
        out: list[str] = []
        for packed in (self.anatomy, self.region):
            if packed is not None:
                out += [n for n in packed.names if n not in out]
        return out

    def _find(self, name: str):
        from ..ontology import normalize_name

        key = normalize_name(name)
        for packed in (self.anatomy, self.region):
            if packed is not None and key in packed:
                return packed, key
        raise KeyError(f"no mask named {name!r}; this volume has {self.names}")

    def mask(self, name: str, out: MaskGrid | None = None) -> np.ndarray:
        """One structure's full-grid mask; ``out=`` as in :meth:`PackedMasks.mask`."""
        packed, key = self._find(name)
        return packed.mask(key, out=out)

    def bbox(self, name: str):
        packed, key = self._find(name)
        return packed.bbox(key)

    def crop(self, name: str, bbox: Sequence[int]) -> np.ndarray:
        """One structure's mask inside ``bbox`` (see :meth:`PackedMasks.crop`); the full grid is never built."""
        packed, key = self._find(name)
        return packed.crop(key, bbox)

    @property
    def shape(self) -> tuple[int, int, int] | None:
        for packed in (self.anatomy, self.region):
            if packed is not None:
                return tuple(packed.shape)  # type: ignore[return-value]
        return None

    def _boxes(self, names: Sequence[str]):
        """(grid shape, [(slices of its bbox, mask inside the bbox) or None per name]): only bboxes are decoded."""
        if not names:
            raise ValueError("no structures named")
        shape, boxes = None, []
        for n in names:
            packed, key = self._find(n)
            shape = shape or packed.shape
            bb = packed.bbox(key)
            boxes.append(None if bb is None else (tuple(slice(bb[a], bb[a + 3]) for a in range(3)), packed.crop(key, bb)))
        return shape, boxes

    def union(self, names: Sequence[str]) -> np.ndarray:
        """Full-grid OR of several structures (anatomy and region masks may be mixed), Fortran order."""
        shape, boxes = self._boxes(names)
        out = np.zeros(shape, dtype=bool, order="F")
        for box in boxes:
            if box is not None:
                out[box[0]] |= box[1]
        return out

    def label_map(self, names: Sequence[str]) -> np.ndarray:
        """Label map with value i+1 for ``names[i]`` (later names win where they overlap), Fortran order."""
        shape, boxes = self._boxes(names)
        out = np.zeros(shape, dtype=np.uint8 if len(names) < 256 else np.uint16, order="F")
        for value, box in enumerate(boxes, start=1):
            if box is not None:
                out[box[0]][box[1]] = value
        return out

    def __repr__(self) -> str:
        n_r = len(self.region.names) if self.region_path else 0
        n_a = len(self.anatomy.names) if self.anatomy_path else 0
        return f"MaskSet(region masks={n_r}, anatomy masks={n_a})"


def resolve(path: str | None, base: str | None) -> str | None:
    """A row's path made usable: relative paths (packed releases) are joined onto ``base`` (a folder or an
    ``hf://datasets/<repo>@<rev>`` URL); absolute paths and URLs are returned as they are."""
    if path is None or base is None or "://" in path or path.startswith("/"):
        return path
    return base.rstrip("/") + "/" + path


def local_path(path: str, token_per_repo_id=None) -> str:
    """A local file for a path or ``hf://`` URL (downloaded once into the Hugging Face cache)."""
    return _fetch_from_hub(path, token_per_repo_id) if path.startswith("hf://") else path


def _open_volume(value: dict, token_per_repo_id=None):
    from ..access.volume import Volume

    path = value.get("path")
    if path is None:
        return None
    if path.startswith("hf://"):
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
    )


def _fetch_from_hub(url: str, token_per_repo_id=None) -> str:
    """Download one file of an hf:// URL into the Hugging Face cache (resumable) and return its local path."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.utils import HfHubHTTPError

    from ..errors import HubAccessError

    rest = url[len("hf://"):]
    if not rest.startswith("datasets/"):
        raise HubAccessError(f"{url}: only hf://datasets/… volume URLs are supported")
    rest = rest[len("datasets/"):]
    org, name_rev, filename = rest.split("/", 2)
    name, _, revision = name_rev.partition("@")
    repo_id = f"{org}/{name}"
    token = (token_per_repo_id or {}).get(repo_id)
    try:
        return hf_hub_download(repo_id, filename, repo_type="dataset", revision=revision or None, token=token)
    except HfHubHTTPError as exc:
        from ..io.release import _hub_error

        raise _hub_error(url, exc) from exc


@dataclass
class CTVolume:
    """A CT volume stored by reference; decodes to a lazy :class:`~radgenome_hf.access.volume.Volume`."""

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
    _type: str = field(default="CTVolume", init=False, repr=False)

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
        raise ValueError(f"a CTVolume value must be a path, a dict or a Volume, got {type(value).__name__}")

    def decode_example(self, value, token_per_repo_id=None):
        if value is None or not isinstance(value, dict):
            return value
        return _open_volume({**value, "path": resolve(value.get("path"), self.base)}, token_per_repo_id)


@dataclass
class StructureMask:
    """A reference to one structure's packed mask (or the whole scan); decodes to :class:`LazyMask`."""

    decode: bool = True
    id: Optional[str] = field(default=None, repr=False)
    dtype: ClassVar[str] = "radgenome_hf.hf.features.LazyMask"
    pa_type: ClassVar[Any] = pa.struct(
        {
            "path": pa.string(),
            "structure": pa.string(),
            "source": pa.string(),
            "shape": pa.list_(pa.int32()),
        }
    )
    #: folder or ``hf://datasets/<repo>@<rev>`` that relative paths are relative to (packed releases)
    base: Optional[str] = None
    _type: str = field(default="StructureMask", init=False, repr=False)

    def __call__(self):
        return self.pa_type

    def encode_example(self, value) -> dict:
        if isinstance(value, LazyMask):
            return {"path": value.path, "structure": value.structure, "source": value.source,
                    "shape": list(value._shape) if value._shape else None}
        if isinstance(value, dict):
            return {k: value.get(k) for k in ("path", "structure", "source", "shape")}
        raise ValueError(f"a StructureMask value must be a dict or LazyMask, got {type(value).__name__}")

    def decode_example(self, value, token_per_repo_id=None):
        if value is None or not isinstance(value, dict):
            return value
        return LazyMask(resolve(value.get("path"), self.base), value.get("structure"), value.get("source") or "whole",
                        value.get("shape"))


@dataclass
class VolumeMasks:
    """References to a volume's packed region and anatomy mask files; decodes to :class:`MaskSet`."""

    decode: bool = True
    id: Optional[str] = field(default=None, repr=False)
    dtype: ClassVar[str] = "radgenome_hf.hf.features.MaskSet"
    pa_type: ClassVar[Any] = pa.struct({"region": pa.string(), "anatomy": pa.string()})
    #: folder or ``hf://datasets/<repo>@<rev>`` that relative paths are relative to (packed releases)
    base: Optional[str] = None
    _type: str = field(default="VolumeMasks", init=False, repr=False)

    def __call__(self):
        return self.pa_type

    def encode_example(self, value) -> dict:
        if isinstance(value, MaskSet):
            return {"region": value.region_path, "anatomy": value.anatomy_path}
        if isinstance(value, dict):
            return {"region": value.get("region"), "anatomy": value.get("anatomy")}
        raise ValueError(f"a VolumeMasks value must be a dict or MaskSet, got {type(value).__name__}")

    def decode_example(self, value, token_per_repo_id=None):
        if value is None or not isinstance(value, dict):
            return value
        if value.get("region") is None and value.get("anatomy") is None:
            return None
        return MaskSet(resolve(value.get("region"), self.base), resolve(value.get("anatomy"), self.base))


def register_features() -> None:
    """Make datasets know these feature types (idempotent)."""
    from datasets.features import features as F

    for cls in (CTVolume, StructureMask, VolumeMasks):
        if F._FEATURE_TYPES.get(cls.__name__) is not cls:
            F._FEATURE_TYPES[cls.__name__] = cls
