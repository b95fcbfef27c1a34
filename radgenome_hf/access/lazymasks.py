"""The mask objects a row decodes to: :class:`LazyMask` (one structure) and :class:`MaskSet` (a volume's masks).

Both hold file references only; a packed-mask file is read on the first mask asked for, through a small
per-process LRU (:func:`open_packed_masks`) so that the many rows of one volume parse it once. A reference that
names its volume (``volume_name``) points into a masks shard of a packed release (:mod:`.maskshards`): only that
volume's row groups are read, by byte ranges when the shard is on the Hub. Reprs never read.

>>> import numpy as np, tempfile, os
>>> from radgenome_hf.access.masks import PackedMasks
>>> m = np.zeros((8, 8, 4), bool); m[2:5, 2:6, 1:3] = True
>>> path = os.path.join(tempfile.mkdtemp(), "train_1_a_1.masks.parquet")
>>> _ = PackedMasks.from_arrays({"heart": m}, np.eye(4)).save(path)
>>> lm = LazyMask(path, "heart", "anatomy", (8, 8, 4))
>>> lm.bbox, lm.voxel_count
((2, 2, 1, 5, 6, 3), 24)
>>> MaskSet(None, path)
MaskSet(region=None, anatomy='train_1_a_1.masks.parquet')
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from ..io.hub import local_path
from ..io.lru import LRU
from ..ontology import normalize_name
from .masks import PackedMasks
from .maskshards import read_volume_masks

if TYPE_CHECKING:  # pragma: no cover
    from .masks import MaskGrid

__all__ = ["LazyMask", "MaskSet", "open_packed_masks"]

# -- packed-mask file cache (one process) -------------------------------------------------------------
_PACKED_CACHE: "LRU[tuple[str, str | None, str | None], PackedMasks]" = LRU(16)


def open_packed_masks(path: str, volume_name: str | None = None, structure: str | None = None) -> "PackedMasks":
    """A volume's packed masks, keeping the last few open (rows of one volume come together, so each is read once
    for all of them).

    Without ``volume_name``, ``path`` is one volume's packed-mask file (local path or ``hf://`` URL, fetched
    whole). With it, ``path`` is a masks shard of a packed release and only that volume's rows are read (by byte
    ranges from the Hub); with ``structure`` too, only the row group holding it (what one :class:`LazyMask` needs).
    """
    keys = [(path, volume_name, None)] + ([(path, volume_name, structure)] if structure is not None else [])
    for key in keys:  # the whole volume, read for a MaskSet, serves every structure's LazyMask
        hit = _PACKED_CACHE.get(key)
        if hit is not None:
            return hit
    if volume_name is not None:
        packed = read_volume_masks(path, volume_name, structure)
    else:
        local = local_path(path)
        if not os.path.exists(local):  # a folder source's volume, packed on its first use
            from .maskstore import pack_on_demand

            pack_on_demand(local)
        packed = PackedMasks.load(local)
    _PACKED_CACHE.put(keys[-1], packed)
    return packed


class LazyMask:
    """One structure's binary mask, decoded on demand from the packed form.

    ``source`` is ``anatomy`` or ``region`` (which upstream mask grounds it) or ``whole`` (the whole scan).
    ``volume_name`` is set when ``path`` is a masks shard holding many volumes (a packed release).
    """

    def __init__(self, path: str | None, structure: str | None, source: str, shape: Sequence[int] | None,
                 volume_name: str | None = None) -> None:
        self.path = path
        self.structure = structure
        self.source = source
        self._shape = tuple(shape) if shape is not None else None
        self.volume_name = volume_name

    def _packed(self):
        return open_packed_masks(self.path, self.volume_name, self.structure) if self.path else None

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

    def random_voxels(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` voxels drawn uniformly from the mask (the whole grid for the whole scan), ``(n, 3)`` ints."""
        if self.source == "whole" or self.structure is None:
            if self.shape is None:
                raise ValueError("whole-scan mask of a row without a known volume shape: decode the volume instead")
            return rng.integers(0, self.shape, size=(n, 3))
        return self._packed().random_voxels(self.structure, n, rng)

    def crop(self, bbox: Sequence[int]) -> np.ndarray:
        if self.source == "whole" or self.structure is None:
            i0, j0, k0, i1, j1, k1 = bbox
            return np.ones((i1 - i0, j1 - j0, k1 - k0), dtype=bool)
        return self._packed().crop(self.structure, tuple(bbox))

    def __array__(self, dtype=None, copy=None):
        a = self.array()
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:  # never reads the file: the shape shows once known
        if self.source == "whole" or self.structure is None:
            return f"LazyMask(whole scan, shape={self._shape})"
        volume = f", volume={self.volume_name!r}" if self.volume_name else ""
        return (f"LazyMask(structure={self.structure!r}, source={self.source!r}, shape={self._shape}, "
                f"file='{self.path}'{volume})")


class MaskSet:
    """A volume's packed masks: ``region`` (10 region masks) and ``anatomy`` (SAT categories), loaded on demand.
    ``volume_name`` is set when the paths are masks shards holding many volumes (a packed release)."""

    def __init__(self, region_path: str | None, anatomy_path: str | None, volume_name: str | None = None) -> None:
        self.region_path = region_path
        self.anatomy_path = anatomy_path
        self.volume_name = volume_name

    @property
    def region(self):
        return open_packed_masks(self.region_path, self.volume_name) if self.region_path else None

    @property
    def anatomy(self):
        return open_packed_masks(self.anatomy_path, self.volume_name) if self.anatomy_path else None

    @property
    def names(self) -> list[str]:
        out: list[str] = []
        for packed in (self.anatomy, self.region):
            if packed is not None:
                out += [n for n in packed.names if n not in out]
        return out

    def _find(self, name: str):
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

    def random_voxels(self, name: str, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` voxels drawn uniformly from one structure (see :meth:`PackedMasks.random_voxels`)."""
        packed, key = self._find(name)
        return packed.random_voxels(key, n, rng)

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

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        """``np.asarray(mask_set)`` (what ``ds.with_format("numpy" | "torch")`` convert): the label map of the
        anatomy masks (the region masks when there are none), value ``i + 1`` for the ``i``-th name."""
        anatomy = self.anatomy
        names = list(anatomy.names) if anatomy is not None and len(anatomy.names) else list(
            self.region.names if self.region is not None else ())
        if not names:
            raise ValueError(f"{self!r} holds no structures: there is no label map to convert")
        a = self.label_map(names)
        return a if dtype is None else a.astype(dtype)

    def __repr__(self) -> str:  # names the files; reading them is left to the first mask asked for
        def name(path: str | None) -> str | None:
            return None if path is None else path.rsplit("/", 1)[-1]

        volume = f", volume={self.volume_name!r}" if self.volume_name else ""
        return f"MaskSet(region={name(self.region_path)!r}, anatomy={name(self.anatomy_path)!r}{volume})"
