"""Where to look: patches by voxel labels (uniform, foreground-oversampled, label probabilities) and rows by what
the report says (finding-aware), deterministic for (seed, epoch, rank, worker).

Patch samplers know every structure's bbox and voxel count from the packed masks and draw a voxel of a
structure by reading single bits of its packed form (:meth:`~radgenome_hf.access.masks.PackedMasks.random_voxels`),
so choosing a patch decodes nothing; only the crop reads voxels (:meth:`~radgenome_hf.access.volume.Volume.crop`
reads just the box from the prepared cache). They follow nnU-Net (a fraction of patches forced onto foreground),
TorchIO's ``LabelSampler`` (label probabilities) and MONAI's ``RandCropByPosNegLabeld``.

:class:`FindingAwareSampler` draws rows of the ``vqa`` config: anatomies with findings (rare findings up-weighted)
at a chosen rate, the anatomies the report calls normal otherwise; each drawn row carries its question, answer and
grounding mask, and :class:`CentredPatches` crops around that mask.

>>> import numpy as np
>>> from radgenome_hf.access.masks import PackedMasks
>>> lung = np.zeros((64, 64, 48), bool); lung[10:30, 10:50, 5:40] = True
>>> masks = PackedMasks.from_arrays({"lung": lung})
>>> patch = ForegroundPatches((16, 16, 8), ["lung"], fraction=1.0)((64, 64, 48), masks, np.random.default_rng(0))
>>> patch.kind, patch.structure, bool(masks.crop("lung", patch.box).any())
('foreground', 'lung', True)
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from typing import Any, Hashable, Iterator, Mapping, NamedTuple, Protocol, Sequence

import numpy as np

from .inputs import PresetTransform

__all__ = [
    "CentredPatches", "FindingAwareSampler", "ForegroundPatches", "LabelPatches", "Patch", "PatchSampler",
    "SamplePatchd", "UniformPatches", "patch_box", "sample_rng",
]


class Patch(NamedTuple):
    """A drawn box ``(i0, j0, k0, i1, j1, k1)`` (half-open, inside the grid), how it was drawn and around what."""

    box: tuple[int, int, int, int, int, int]
    kind: str  # "uniform" | "foreground" | "label" | "centred"
    structure: str | None = None


class PatchSampler(Protocol):
    """``sampler(shape, masks, rng) -> Patch``; ``masks`` has ``names``, ``bbox``, ``voxel_count``, ``random_voxels``."""

    def __call__(self, shape: Sequence[int], masks: Any, rng: np.random.Generator) -> Patch: ...


def sample_rng(seed: int, epoch: int = 0, rank: int = 0, worker: int = 0, index: int = 0) -> np.random.Generator:
    """The generator of one draw: a pure function of (seed, epoch, rank, worker, index).

    >>> a = int(sample_rng(0, epoch=1, rank=0, worker=1, index=5).integers(1 << 30))
    >>> b = int(sample_rng(0, epoch=1, rank=0, worker=1, index=5).integers(1 << 30))
    >>> a == b, a == int(sample_rng(0, epoch=2, rank=0, worker=1, index=5).integers(1 << 30))
    (True, False)
    """
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(rank), int(worker), int(index)]))


def patch_box(centre: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[int, int, int, int, int, int]:
    """The box of ``size`` centred on ``centre`` and moved (not cut) to lie inside ``shape``; a size larger than the
    grid is the whole axis.

    >>> patch_box((2, 30, 10), (8, 8, 8), (32, 32, 16))
    (0, 24, 6, 8, 32, 14)
    """
    lo, hi = [], []
    for c, s, n in zip(centre, size, shape):
        s = min(int(s), int(n))
        start = min(max(int(c) - s // 2, 0), int(n) - s)
        lo.append(start)
        hi.append(start + s)
    return (*lo, *hi)  # type: ignore[return-value]


def _uniform(size: Sequence[int], shape: Sequence[int], rng: np.random.Generator) -> tuple[int, ...]:
    s = [min(int(a), int(n)) for a, n in zip(size, shape)]
    start = [int(rng.integers(0, int(n) - a + 1)) for a, n in zip(s, shape)]
    return (*start, *(st + a for st, a in zip(start, s)))


def _names(masks: Any) -> list[str]:
    return list(masks.names)


def _nonempty(masks: Any, names: Sequence[str]) -> list[str]:
    have = set(_names(masks))
    return [n for n in names if n in have and masks.bbox(n) is not None]


class UniformPatches:
    """Patches anywhere in the grid, each position equally likely."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = tuple(int(s) for s in size)

    def __call__(self, shape: Sequence[int], masks: Any, rng: np.random.Generator) -> Patch:
        return Patch(_uniform(self.size, shape, rng), "uniform")  # type: ignore[arg-type]


class ForegroundPatches:
    """nnU-Net style: a ``fraction`` of patches is centred on a voxel of one of ``structures`` (the structure
    chosen uniformly among those the volume has), the rest are uniform."""

    def __init__(self, size: Sequence[int], structures: Sequence[str], fraction: float = 0.33) -> None:
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"fraction must be in [0, 1], got {fraction}")
        if not structures:
            raise ValueError("ForegroundPatches needs at least one structure name")
        self.size = tuple(int(s) for s in size)
        self.structures = list(structures)
        self.fraction = float(fraction)

    def __call__(self, shape: Sequence[int], masks: Any, rng: np.random.Generator) -> Patch:
        forced = rng.random() < self.fraction
        present = _nonempty(masks, self.structures) if forced else []
        if not present:
            return Patch(_uniform(self.size, shape, rng), "uniform")  # type: ignore[arg-type]
        name = present[int(rng.integers(len(present)))]
        voxel = masks.random_voxels(name, 1, rng)[0]
        return Patch(patch_box(voxel, self.size, shape), "foreground", name)


class LabelPatches:
    """TorchIO ``LabelSampler`` style: a structure is drawn with its probability (renormalised over those the
    volume has; the key ``None`` stands for a uniform patch), then a patch is centred on one of its voxels."""

    def __init__(self, size: Sequence[int], probabilities: Mapping[str | None, float]) -> None:
        if not probabilities or any(p < 0 for p in probabilities.values()) or sum(probabilities.values()) <= 0:
            raise ValueError(f"probabilities must be non-negative with a positive sum, got {dict(probabilities)}")
        self.size = tuple(int(s) for s in size)
        self.probabilities = dict(probabilities)

    def __call__(self, shape: Sequence[int], masks: Any, rng: np.random.Generator) -> Patch:
        named = _nonempty(masks, [k for k in self.probabilities if k is not None])
        keys: list[str | None] = [*named, *([None] if None in self.probabilities else [])]
        if not keys:
            return Patch(_uniform(self.size, shape, rng), "uniform")  # type: ignore[arg-type]
        p = np.asarray([self.probabilities[k] for k in keys], np.float64)
        choice = keys[int(rng.choice(len(keys), p=p / p.sum()))]
        if choice is None:
            return Patch(_uniform(self.size, shape, rng), "uniform")  # type: ignore[arg-type]
        voxel = masks.random_voxels(choice, 1, rng)[0]
        return Patch(patch_box(voxel, self.size, shape), "label", choice)


class CentredPatches:
    """A patch centred on a voxel of the row's own mask (a ``vqa`` / ``grounded_reports`` row's ``mask``)."""

    def __init__(self, size: Sequence[int]) -> None:
        self.size = tuple(int(s) for s in size)

    def __call__(self, shape: Sequence[int], masks: Any, rng: np.random.Generator) -> Patch:
        voxel = masks.random_voxels(1, rng)[0]
        return Patch(patch_box(voxel, self.size, shape), "centred", getattr(masks, "structure", None))


class SamplePatchd(PresetTransform):
    """Dict transform: draw a patch with ``sampler`` and crop the volume (and, with ``label_names``, a label map of
    those structures) to it. Adds ``patch_box``, ``patch_kind`` and ``patch_structure`` to the sample.

    Each sample's generator is :func:`sample_rng` of (seed, epoch, the row's identity: ``volume_name``,
    ``anatomy``, ``question``, ``answer``, ``sentence``): the same row gets the same patch in an epoch on any rank,
    worker or thread, whatever the order rows arrive in, and after a resume. Rows without those fields use this
    instance's call count instead (deterministic in one thread). ``set_epoch`` starts an epoch.

    >>> import numpy as np
    >>> from radgenome_hf.access.masks import PackedMasks
    >>> from radgenome_hf.access.volume import Volume
    >>> heart = np.zeros((32, 32, 16), bool); heart[10:14, 12:20, 4:9] = True
    >>> t = SamplePatchd(ForegroundPatches((8, 8, 4), ["heart"], fraction=1.0), label_names=["heart"], seed=3)
    >>> s = t({"volume": Volume.from_array(np.zeros((32, 32, 16), np.int16)), "masks": PackedMasks.from_arrays({"heart": heart})})
    >>> s["volume"].shape, s["label"].dtype, s["patch_kind"], bool(s["label"].any())
    ((8, 8, 4), dtype('uint8'), 'foreground', True)
    """

    def __init__(
        self,
        sampler: PatchSampler,
        keys: Hashable | Sequence[Hashable] = "volume",
        masks_key: Hashable = "masks",
        *,
        label_names: Sequence[str] | None = None,
        label_key: Hashable = "label",
        seed: int = 0,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.sampler = sampler
        self.masks_key = masks_key
        self.label_names = list(label_names) if label_names else None
        self.label_key = label_key
        self.seed = int(seed)
        self.epoch = 0
        self._calls = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self._calls = 0

    def _rng(self, data: Mapping) -> np.random.Generator:
        ident = "\x1f".join(str(data[k]) for k in _IDENTITY if data.get(k) is not None)
        if ident:
            return sample_rng(self.seed, self.epoch, index=zlib.crc32(ident.encode()))
        self._calls += 1
        return sample_rng(self.seed, self.epoch, worker=1, index=self._calls)

    def _sample(self, d: dict) -> dict:
        keys = self._present(d, self.keys)
        masks = d[self.masks_key]
        shape = tuple(int(s) for s in (getattr(d[keys[0]], "shape", None) if keys else masks.shape))
        patch = self.sampler(shape, masks, self._rng(d))
        for key in keys:
            vol = d[key]
            d[key] = vol.crop(patch.box) if hasattr(vol, "crop") else np.asarray(vol)[_slices(patch.box)]
        if self.label_names:
            label = np.zeros(tuple(patch.box[a + 3] - patch.box[a] for a in range(3)), np.uint8, order="F")
            for value, name in enumerate(self.label_names, start=1):
                if name in _names(masks):
                    label[masks.crop(name, patch.box)] = value
            d[self.label_key] = label
        d["patch_box"], d["patch_kind"], d["patch_structure"] = patch.box, patch.kind, patch.structure
        return d


_IDENTITY = ("volume_name", "anatomy", "question", "answer", "sentence")


def _slices(box: Sequence[int]) -> tuple[slice, slice, slice]:
    return tuple(slice(box[a], box[a + 3]) for a in range(3))  # type: ignore[return-value]


class FindingAwareSampler:
    """Row indices of a ``vqa`` split: anatomies with findings at rate ``positive_fraction``, weighted by
    ``count(finding) ** -rarity_power`` (rare findings up-weighted; 0 = every positive row alike), and anatomies
    the report calls normal (``abnormality`` rows answered ``no findings``) otherwise.

    A ``torch.utils.data.Sampler``-compatible iterable (``len``, ``set_epoch``): pass it as ``sampler=`` of a
    DataLoader over the map-style dataset. Each rank draws its own ``num_samples // world_size`` indices from a
    generator of (seed, epoch, rank), so ranks never depend on each other and a resumed epoch repeats exactly.

    >>> rows = {"question_type": ["abnormality"] * 4, "answer": ["nodule", "nodule", "effusion", "no findings"]}
    >>> s = FindingAwareSampler(rows, num_samples=1000, positive_fraction=0.5, rarity_power=1.0, seed=0)
    >>> c = Counter(rows["answer"][i] for i in s)
    >>> round(c["no findings"] / 1000, 1), round(c["effusion"] / (c["nodule"] + c["effusion"]), 1)
    (0.5, 0.5)
    """

    def __init__(
        self,
        rows: Any,
        *,
        num_samples: int | None = None,
        positive_fraction: float = 0.5,
        rarity_power: float = 0.5,
        question_types: Sequence[str] = ("abnormality",),
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> None:
        qtype = list(rows["question_type"])
        answer = list(rows["answer"])
        keep = set(question_types)
        pos = [i for i, (q, a) in enumerate(zip(qtype, answer)) if q in keep and a != "no findings"]
        neg = [i for i, (q, a) in enumerate(zip(qtype, answer)) if q == "abnormality" and a == "no findings"]
        if not pos and not neg:
            raise ValueError(f"no rows of question types {sorted(keep)} to sample from")
        counts = Counter(answer[i] for i in pos)
        w = np.asarray([counts[answer[i]] ** -float(rarity_power) for i in pos], np.float64)
        self.positives = np.asarray(pos, np.int64)
        self.negatives = np.asarray(neg, np.int64)
        self.weights = w / w.sum() if len(w) else w
        self.positive_fraction = float(positive_fraction) if len(neg) else 1.0
        if not len(pos):
            self.positive_fraction = 0.0
        from .loaders import dist_info

        self.rank, self.world_size = dist_info(rank, world_size)
        total = int(num_samples) if num_samples is not None else len(qtype)
        self.num_samples = math.ceil(total / self.world_size)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        rng = sample_rng(self.seed, self.epoch, self.rank)
        positive = rng.random(self.num_samples) < self.positive_fraction
        n_pos = int(positive.sum())
        out = np.empty(self.num_samples, np.int64)
        if n_pos:
            out[positive] = self.positives[rng.choice(len(self.positives), size=n_pos, p=self.weights)]
        if self.num_samples - n_pos:
            out[~positive] = self.negatives[rng.integers(0, len(self.negatives), size=self.num_samples - n_pos)]
        return iter(out.tolist())
