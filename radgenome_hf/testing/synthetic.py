"""Synthetic chest-CT phantoms and a synthetic upstream release in the exact real layouts.

Nothing here comes from real patients: every volume is an analytic phantom rendered on a voxel grid, and every
CSV row is generated from what was placed in it. The release mirrors RadGenome-ChestCT and CT-RATE on disk
(``docs/architecture.md``, "Releases on disk"), with their quirks: ``train_1/train_1a`` folders in RadGenome,
``train_1/train_1_a`` in CT-RATE, blank-header CT-RATE v1 volumes next to ``*_fixed`` ones, a multi-digit
reconstruction id, SAT-cased vertebra mask names (``thoracic vertebrae 5 (T5).nii.gz``), mask archives as
``.tar.gz`` and as one tar.gz cut into ``_aa``, ``_ab``… parts. ``ground_truth.json`` says what was placed where,
so later stages can score themselves.

Geometry. The phantom lives in patient LPS millimetres centred on the grid: ``x`` grows to the patient's left
(voxel axis ``i``), ``y`` to posterior (``j``), ``z`` to superior (``k``). Volumes are written with an LPS affine
(``nib.aff2axcodes`` gives ``('L', 'P', 'S')`` like the real ``*_fixed`` files). By default the spacing is chosen so
the grid covers a 384 x 384 x 288 mm field of view (a whole adult chest): the default 64 x 64 x 48 grid has 6 mm
voxels; ``realistic=True`` gives 512 x 512 x 300 voxels of 0.73 x 0.73 x 1.0 mm (benchmarks only).

>>> ph = make_phantom((32, 32, 24), None, 0, lesions=[{"kind": "nodule", "lobe": "right lung upper lobe",
...                                                    "size_mm": 30}])
>>> ph.ct.dtype.name, ph.ct.shape, ph.lesions[0].anatomy_path
('int16', (32, 32, 24), 'lung/lung/right lung/right lung upper lobe')
>>> bool(ph.ct[ph.structures["right lung upper lobe"] & ~ph.structures["lung nodule"]].mean() < -600)
True
"""

from __future__ import annotations

import io
import json
import math
import os
import tarfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from .. import names
from ..io.atomic import write_bytes
from ..io.compression import compress
from ..ontology import get_ontology, normalize_name
from ..io.tables import (
    CTRATE_LABEL_HEADER,
    CTRATE_LABELS,
    CTRATE_METADATA_HEADER,
    CTRATE_REPORT_HEADER,
    NOT_GIVEN,
    RADGENOME_HEADERS,
    write_csv,
)

__all__ = [
    "SyntheticConfig",
    "Lesion",
    "Phantom",
    "SyntheticRelease",
    "make_phantom",
    "write_release",
    "inject_quality_faults",
    "FOV_MM",
    "REALISTIC_SHAPE",
    "REALISTIC_SPACING",
]

#: Field of view (mm) the default spacing covers: a whole adult chest.
FOV_MM: tuple[float, float, float] = (384.0, 384.0, 288.0)
REALISTIC_SHAPE: tuple[int, int, int] = (512, 512, 300)
REALISTIC_SPACING: tuple[float, float, float] = (0.73, 0.73, 1.0)

# ------------------------------------------------------------------------------------------------------------
# Tissues: (HU, noise sigma in HU)
# ------------------------------------------------------------------------------------------------------------
_TISSUES: dict[str, tuple[int, float]] = {
    "outside": (-1024, 0.0),  # outside the reconstruction circle
    "air": (-1000, 10.0),
    "fat": (-100, 18.0),
    "soft": (40, 22.0),
    "lung": (-860, 28.0),
    "blood": (40, 22.0),
    "airway": (-1000, 14.0),
    "cortical": (800, 60.0),
    "cancellous": (250, 45.0),
    "rib": (550, 60.0),
    "csf": (10, 18.0),
    "fluid": (10, 18.0),
    "nodule": (30, 22.0),
    "vessel": (40, 22.0),
    "liver": (58, 20.0),
    "calcification": (650, 60.0),
    "disc": (80, 22.0),
}
_TISSUE_ID = {name: i for i, name in enumerate(_TISSUES)}
_HU_LUT = np.array([v[0] for v in _TISSUES.values()], np.float32)
_SIGMA_LUT = np.array([v[1] for v in _TISSUES.values()], np.float32)

_LOBES = (
    "left lung upper lobe",
    "left lung lower lobe",
    "right lung upper lobe",
    "right lung middle lobe",
    "right lung lower lobe",
)
_LOBE_PHRASE = {  # "in the upper lobe of the right lung" / "in the right upper lobe"
    "left lung upper lobe": ("upper lobe of the left lung", "left upper lobe"),
    "left lung lower lobe": ("lower lobe of the left lung", "left lower lobe"),
    "right lung upper lobe": ("upper lobe of the right lung", "right upper lobe"),
    "right lung middle lobe": ("middle lobe of the right lung", "right middle lobe"),
    "right lung lower lobe": ("lower lobe of the right lung", "right lower lobe"),
}
_THORACIC_PITCH_MM = 25.0
_T1_Z_MM = 130.0

#: Normal statements: (key, sentence, anatomy paths, lesion kind whose presence replaces it).
_NORMAL_STATEMENTS: tuple[tuple[str, str, tuple[str, ...], str | None], ...] = (
    ("airway", "Trachea and both main bronchi are open.",
     ("trachea and bronchie", "trachea and bronchie/trachea", "trachea and bronchie/bronchie"), None),
    ("mediastinum", "No lymph node in pathological size and appearance was detected in the mediastinum.",
     ("mediastinum", "mediastinum/mediastinal tissue"), None),
    ("aorta", "Calibration of the thoracic aorta is normal.",
     ("mediastinum", "mediastinum/aorta"), "arterial wall calcification"),
    ("heart", "Heart contour and size are normal.", ("heart", "heart/heart"), "cardiomegaly"),
    ("esophagus", "Thoracic esophagus calibration is normal and no significant wall thickening was detected.",
     ("esophagus", "esophagus/esophagus"), None),
    ("lung", "When examined in the lung parenchyma window, no mass or nodule was detected in either lung.",
     ("lung", "lung/lung"), "nodule"),
    ("pleura", "No pleural effusion or pleural thickening was detected.", ("pleura", "pleura/pleura"),
     "pleural effusion"),
    ("bone", "No lytic or destructive lesion was detected in the bone structures within the sections.",
     ("bone", "bone/bone"), None),
)
#: Where each lesion kind's sentence goes in the findings text (after the normal statement with that key).
_KIND_ORDER = {"arterial wall calcification": "aorta", "cardiomegaly": "heart", "nodule": "lung",
               "pleural effusion": "pleura"}
#: CT-RATE label set by each lesion kind.
_KIND_LABEL = {"nodule": "Lung nodule", "pleural effusion": "Pleural effusion", "cardiomegaly": "Cardiomegaly",
               "arterial wall calcification": "Arterial wall calcification"}
#: Negative findings sampled for presence "No." rows, per top-level region; a kind present excludes some.
_NEGATIVE_POOL = {
    "lung": ("mass", "consolidation", "ground glass opacity", "atelectasis", "emphysema", "nodule"),
    "pleura": ("pleural effusion", "pleural thickening"),
    "heart": ("pericardial effusion", "cardiomegaly"),
    "mediastinum": ("lymphadenopathy", "mass", "calcific atheroma plaques"),
    "esophagus": ("hiatal hernia", "tumoral wall thickening"),
    "bone": ("fractures", "lytic lesions"),
    "trachea and bronchie": ("endobronchial lesion", "bronchiectasis"),
}
_EXCLUDES = {"nodule": {"nodule", "mass"}, "pleural effusion": {"pleural effusion"},
             "cardiomegaly": {"cardiomegaly"}, "arterial wall calcification": {"calcific atheroma plaques"}}


# ============================================================================================================
# Public types
# ============================================================================================================
@dataclass
class SyntheticConfig:
    """What :func:`write_release` generates.

    ``spacing=None`` means "cover :data:`FOV_MM`" (6 mm voxels for the default 64 x 64 x 48 grid: the phantom is a
    whole chest at low resolution, so nodules are drawn at least two voxels wide). ``realistic=True`` overrides
    shape and spacing with 512 x 512 x 300 int16 at 0.73 x 0.73 x 1.0 mm, compressing like real CT (benchmarks).
    ``mask_layout``: ``"archives"`` (like the Hub: ``train_region_mask.tar.gz``, train anatomy as one tar.gz cut
    into ``train_anatomy_mask_aa``, ``_ab``…, ``valid_*_mask.tar.gz``), ``"folders"`` (``seg_<stem>/`` folders) or
    ``"both"``.
    """

    n_train_patients: int = 4
    n_valid_patients: int = 2
    shape: tuple[int, int, int] = (64, 64, 48)
    spacing: tuple[float, float, float] | None = None
    seed: int = 0
    mask_layout: str = "archives"
    realistic: bool = False
    anatomy_parts: int = 3  # how many ``_aa``, ``_ab``… parts the train anatomy archive is cut into

    def __post_init__(self) -> None:
        if self.mask_layout not in ("archives", "folders", "both"):
            raise ValueError(f"mask_layout must be 'archives', 'folders' or 'both', got {self.mask_layout!r}")
        if self.n_train_patients < 0 or self.n_valid_patients < 0:
            raise ValueError("patient counts must be >= 0")
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise ValueError(f"shape must be three sizes >= 8, got {self.shape}")

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return REALISTIC_SHAPE if self.realistic else self.shape  # type: ignore[return-value]

    @property
    def grid_spacing(self) -> tuple[float, float, float]:
        if self.realistic:
            return REALISTIC_SPACING
        return _default_spacing(self.shape) if self.spacing is None else tuple(map(float, self.spacing))  # type: ignore[return-value]


@dataclass
class Lesion:
    """One abnormality placed in a phantom, with the report sentence that describes it.

    ``size_mm`` holds the numbers of the size text (``(6,)`` for "6 mm", ``(6, 4)`` for "6x4 mm", ``(12, 14)`` for
    "12-14 mm"; empty when the finding has no size); ``extent_mm`` is the drawn extent along i, j, k.
    """

    kind: str  # "nodule" | "pleural effusion" | "cardiomegaly" | "arterial wall calcification"
    anatomy_path: str
    size_mm: tuple[float, ...]
    center_vox: tuple[int, int, int]
    mask_name: str  # "lung nodule", "lung effusion", "heart", "aorta"
    sentence: str
    finding: str = ""  # the VQA abnormality text ("pulmonary nodule", "pleural effusion", ...)
    size_text: str = ""  # "6 mm", "6x4 mm", "2 cm", "12-14 mm", "6.6 mm"
    side: str = ""
    lesion_id: str = ""  # stable across one patient's scans
    center_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)  # phantom LPS mm (grid centre = 0)
    extent_mm: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def paths(self) -> list[str]:
        """Every anatomy path the finding is reported at: each level of its path and of its alternative
        groupings within the same region (``lung/lung/lung upper lobe/right lung upper lobe``), in ontology order."""
        onto = get_ontology()
        region = onto.region_of(self.anatomy_path)
        leaf = onto.leaf(self.anatomy_path)
        out: list[str] = []
        for p in (self.anatomy_path, *onto.paths_ending_in(leaf)):
            if onto.region_of(p) != region:
                continue
            for a in onto.ancestors(p):
                if a not in out:
                    out.append(a)
        return sorted(out, key=_path_key)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["paths"] = self.paths()
        return d


class _LazyMasks(Mapping[str, np.ndarray]):
    """Masks computed from the label map on access (full-grid bool, Fortran order): no full copies kept."""

    def __init__(self, makers: dict[str, Callable[[], np.ndarray]]) -> None:
        self._makers = makers

    def __getitem__(self, name: str) -> np.ndarray:
        return self._makers[normalize_name(name)]()

    def __iter__(self) -> Iterator[str]:
        return iter(self._makers)

    def __len__(self) -> int:
        return len(self._makers)

    def __repr__(self) -> str:
        return f"<{len(self)} masks: {', '.join(list(self._makers)[:6])}{', ...' if len(self) > 6 else ''}>"


@dataclass
class Phantom:
    """A rendered phantom. ``ct``: int16 HU ``(i, j, k)``; ``affine``: RAS+ 4x4 of an LPS grid.

    ``structures`` maps normalised anatomy-mask names (``right lung upper lobe``, ``thoracic vertebrae 5 (t5)``,
    ``lung nodule``…) *and* region names (``lung``, ``pleura``…) to boolean masks on the same grid; ``regions``
    holds only the region masks. Both compute masks on access from the label map, so keep what you use.
    """

    ct: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    structures: Mapping[str, np.ndarray]
    regions: Mapping[str, np.ndarray]
    lesions: list[Lesion]
    tissue: np.ndarray = field(repr=False)  # uint8 tissue ids (``_TISSUES`` order)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.ct.shape)  # type: ignore[return-value]

    @property
    def anatomy_names(self) -> list[str]:
        return [n for n in self.structures if n not in self.regions]

    def __repr__(self) -> str:
        return (f"Phantom(shape={self.shape}, spacing={tuple(round(s, 3) for s in self.spacing)}, "
                f"anatomy={len(self.anatomy_names)}, regions={list(self.regions)}, "
                f"lesions={[f'{l.kind} {l.size_text} in {l.anatomy_path}'.replace('  ', ' ') for l in self.lesions]})")


@dataclass
class SyntheticRelease:
    """A written synthetic release. ``volumes``: RadGenome volume stems (the ones with masks and QA rows);
    ``ctrate_volumes``: every CT-RATE stem (all reconstructions); ``ground_truth``: also in ``ground_truth.json``."""

    root: Path
    radgenome_root: Path
    ctrate_root: Path
    volumes: list[str]
    ground_truth: dict
    ctrate_volumes: list[str] = field(default_factory=list)
    config: SyntheticConfig | None = None

    @property
    def ground_truth_path(self) -> Path:
        return self.root / "ground_truth.json"

    def lesions(self, volume: str) -> list[dict]:
        return self.ground_truth["volumes"][str(names.VolumeName.parse(volume))]["lesions"]

    def __repr__(self) -> str:
        gt = self.ground_truth["volumes"]
        splits = {s: sum(1 for v in self.volumes if v.startswith(s + "_")) for s in ("train", "valid")}
        n_les = sum(len(gt[v]["lesions"]) for v in self.volumes)
        patients = sorted({gt[v]["patient_id"] for v in self.ctrate_volumes})
        cfg = self.config
        grid = f", shape={cfg.grid_shape}, spacing={cfg.grid_spacing}, masks={cfg.mask_layout!r}" if cfg else ""
        return (f"SyntheticRelease(root='{self.root}', patients={len(patients)}, "
                f"radgenome_volumes={len(self.volumes)} (train {splits['train']}, valid {splits['valid']}), "
                f"ctrate_volumes={len(self.ctrate_volumes)}, lesions={n_les}{grid})")


# ============================================================================================================
# Grid and drawing primitives
# ============================================================================================================
def _default_spacing(shape: Sequence[int]) -> tuple[float, float, float]:
    return tuple(round(f / n, 6) for f, n in zip(FOV_MM, shape))  # type: ignore[return-value]


class _Grid:
    def __init__(self, shape: Sequence[int], spacing: Sequence[float]) -> None:
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.axes = [((np.arange(n, dtype=np.float32) - (n - 1) / 2.0) * s) for n, s in zip(self.shape, self.spacing)]

    def box(self, lo: Sequence[float], hi: Sequence[float]):
        """Slices of the voxels whose centres lie in [lo, hi] mm, and open-grid coordinates over them."""
        sl = []
        coords = []
        for ax, (a, b) in enumerate(zip(lo, hi)):
            c = self.axes[ax]
            i0 = int(np.searchsorted(c, a, "left"))
            i1 = int(np.searchsorted(c, b, "right"))
            sl.append(slice(i0, max(i0, i1)))
            coords.append(c[i0:max(i0, i1)])
        X = coords[0][:, None, None]
        Y = coords[1][None, :, None]
        Z = coords[2][None, None, :]
        return tuple(sl), X, Y, Z

    def vox(self, p_mm: Sequence[float]) -> tuple[int, int, int]:
        return tuple(int(np.clip(round(p / s + (n - 1) / 2.0), 0, n - 1))
                     for p, s, n in zip(p_mm, self.spacing, self.shape))  # type: ignore[return-value]

    def mm(self, v: Sequence[int]) -> tuple[float, float, float]:
        return tuple(float(self.axes[a][int(v[a])]) for a in range(3))  # type: ignore[return-value]


def _empty(sl) -> bool:
    return any(s.stop <= s.start for s in sl)


def _ellipsoid(g: _Grid, c, r):
    sl, X, Y, Z = g.box([c[i] - r[i] for i in range(3)], [c[i] + r[i] for i in range(3)])
    m = ((X - c[0]) / r[0]) ** 2 + ((Y - c[1]) / r[1]) ** 2 + ((Z - c[2]) / r[2]) ** 2 <= 1.0
    return sl, m


def _segment(g: _Grid, p, q, r):
    p = np.asarray(p, np.float32)
    q = np.asarray(q, np.float32)
    lo = np.minimum(p, q) - r
    hi = np.maximum(p, q) + r
    sl, X, Y, Z = g.box(lo, hi)
    d = q - p
    L2 = float(d @ d) or 1e-6
    t = ((X - p[0]) * d[0] + (Y - p[1]) * d[1] + (Z - p[2]) * d[2]) / L2
    t = np.clip(t, 0.0, 1.0)
    m = (X - p[0] - t * d[0]) ** 2 + (Y - p[1] - t * d[1]) ** 2 + (Z - p[2] - t * d[2]) ** 2 <= r * r
    return sl, m


def _polyline(g: _Grid, pts, r) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
    for p, q in zip(pts[:-1], pts[1:]):
        sl, m = _segment(g, p, q, r)
        if not _empty(sl):
            yield sl, m


class _Canvas:
    """Tissue ids + an exclusive anatomy label map, painted in order (later paint wins)."""

    def __init__(self, g: _Grid) -> None:
        self.g = g
        self.tissue = np.full(g.shape, _TISSUE_ID["air"], np.uint8, order="F")
        self.label = np.zeros(g.shape, np.uint8, order="F")
        self.labels: dict[str, int] = {}
        self.bboxes: dict[str, list[int]] = {}

    def lid(self, name: str) -> int:
        if name not in self.labels:
            self.labels[name] = len(self.labels) + 1
            if self.labels[name] > 255:
                raise RuntimeError("too many structures for a uint8 label map")
        return self.labels[name]

    def paint(self, sl, m, tissue: str | None, label: str | None | int = None, where=None) -> None:
        if _empty(sl):
            return
        if where is not None:
            m = m & where(sl)
        if not m.any():
            return
        if tissue is not None:
            self.tissue[sl][m] = _TISSUE_ID[tissue]
        if label is not None:
            self.label[sl][m] = label if isinstance(label, int) else self.lid(label)
            if isinstance(label, str):
                self._grow(label, sl, m)

    def _grow(self, name, sl, m) -> None:
        idx = [np.flatnonzero(m.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
        lo = [sl[a].start + int(idx[a][0]) for a in range(3)]
        hi = [sl[a].start + int(idx[a][-1]) + 1 for a in range(3)]
        if name in self.bboxes:
            b = self.bboxes[name]
            lo = [min(lo[a], b[a]) for a in range(3)]
            hi = [max(hi[a], b[a + 3]) for a in range(3)]
        self.bboxes[name] = lo + hi

    def copy(self) -> "_Canvas":
        c = _Canvas.__new__(_Canvas)
        c.g = self.g
        c.tissue = self.tissue.copy(order="F")
        c.label = self.label.copy(order="F")
        c.labels = dict(self.labels)
        c.bboxes = {k: list(v) for k, v in self.bboxes.items()}
        return c

    def mask(self, name: str) -> np.ndarray:
        out = np.zeros(self.g.shape, bool, order="F")
        if name in self.labels and name in self.bboxes:
            b = self.bboxes[name]
            sl = tuple(slice(b[a], b[a + 3]) for a in range(3))
            out[sl] = self.label[sl] == self.labels[name]
        return out


# ============================================================================================================
# Anatomy
# ============================================================================================================
def _vertebra_name(n: int) -> str:
    """1-based level from T1 downwards: 1..12 thoracic, 13.. lumbar."""
    return f"thoracic vertebrae {n} (t{n})" if n <= 12 else f"lumbar vertebrae {n - 12} (l{n - 12})"


def _sat_case(name: str) -> str:
    """SAT's casing of vertebra names: ``thoracic vertebrae 5 (T5)``."""
    if name.endswith(")") and "(" in name:
        head, _, code = name.rpartition("(")
        return f"{head}({code.upper()}"
    return name


def _anatomy_params(rng: np.random.Generator, cardiomegaly: bool) -> dict:
    return {
        "s": float(rng.uniform(0.92, 1.04)),
        "heart_dx": float(rng.uniform(-5, 5)),
        "heart_dz": float(rng.uniform(-6, 6)),
        "heart_scale": 1.22 if cardiomegaly else float(rng.uniform(0.95, 1.03)),
        "lung_z": float(rng.uniform(-5, 5)),
        "vessel_seed": int(rng.integers(1 << 30)),
    }


def _render_anatomy(g: _Grid, p: dict) -> tuple[_Canvas, dict]:
    """Paint the chest; returns the canvas and geometric facts used to place lesions."""
    s = p["s"]
    cv = _Canvas(g)
    big = 1e4
    T = _TISSUE_ID
    # body: elliptic cylinder with a fat ring
    sl, X, Y, Z = g.box([-big] * 3, [big] * 3)
    body = (X / (160 * s)) ** 2 + (Y / (115 * s)) ** 2 <= 1.0
    inner = (X / (145 * s)) ** 2 + (Y / (100 * s)) ** 2 <= 1.0
    body = np.broadcast_to(body, g.shape)
    inner_b = np.broadcast_to(inner, g.shape)
    cv.tissue[body] = T["fat"]
    cv.tissue[inner_b] = T["soft"]
    # liver under the right dome
    sl, m = _ellipsoid(g, (-50 * s, 0, -150), (85 * s, 80 * s, 70))
    cv.paint(sl, m, "liver", "liver", where=lambda sl: cv.tissue[sl] == T["soft"])
    # lungs split into lobes by an oblique fissure (both) and a horizontal fissure (right)
    lz = p["lung_z"]
    for side, sx in (("left", 1.0), ("right", -1.0)):
        c = (sx * 75 * s, 5 * s, 5 + lz)
        sl, X, Y, Z = g.box([c[0] - 57 * s, c[1] - 82 * s, c[2] - 120], [c[0] + 57 * s, c[1] + 82 * s, c[2] + 120])
        if _empty(sl):
            continue
        m = ((X - c[0]) / (57 * s)) ** 2 + ((Y - c[1]) / (82 * s)) ** 2 + ((Z - c[2]) / 120) ** 2 <= 1.0
        dome = (-80.0 if side == "right" else -90.0) + lz - 0.005 * ((X - c[0]) ** 2 + (Y - c[1]) ** 2)
        m &= (Z > dome) & (sx * X > 18 * s)
        m &= ((X / (145 * s)) ** 2 + (Y / (100 * s)) ** 2 <= 1.0)
        lower = Z < (-15 + lz) + 1.08 * (Y - 0)
        if side == "left":
            parts = {"left lung lower lobe": m & lower, "left lung upper lobe": m & ~lower}
        else:
            middle = ~lower & (Z < -5 + lz) & (Y < 10 * s)
            parts = {"right lung lower lobe": m & lower, "right lung middle lobe": m & middle,
                     "right lung upper lobe": m & ~lower & ~middle}
        for name, pm in parts.items():
            cv.paint(sl, pm, "lung", name)
    # heart
    hs = p["heart_scale"] * s
    hc = (15 * s + p["heart_dx"], -30 * s, -40 + p["heart_dz"])
    sl, m = _ellipsoid(g, hc, (52 * hs, 42 * hs, 48 * hs))
    cv.paint(sl, m, "blood", "heart")
    # aorta: ascending, arch, descending
    aorta = [(5, -30 * s, hc[2] + 35), (5, -30 * s, 55), (12, -22 * s, 72), (24, -2 * s, 76), (30, 24 * s, 62),
             (30, 30 * s, 40), (30, 30 * s, -200)]
    for i, (sl, m) in enumerate(_polyline(g, aorta, 13.0)):
        cv.paint(sl, m, "blood", "aorta")
    # esophagus (tube with a small air lumen)
    eso = [(4, 18 * s, 200), (6, 18 * s, 60), (10, 16 * s, -40), (24, 6 * s, -110)]
    for sl, m in _polyline(g, eso, 8.0):
        cv.paint(sl, m, "soft", "esophagus")
    for sl, m in _polyline(g, eso, 2.5):
        cv.paint(sl, m, "airway", "esophagus")
    # trachea and main bronchi
    carina = (0, -5 * s, 45 + lz)
    trachea = [(0, -5 * s, 200), carina]
    for sl, m in _polyline(g, trachea, 10.0):
        cv.paint(sl, m, "soft", "trachea")
    for sl, m in _polyline(g, trachea, 7.5):
        cv.paint(sl, m, "airway", "trachea")
    hila = {}
    for sx in (1.0, -1.0):
        br = [carina, (sx * 40 * s, 0, 22 + lz), (sx * 58 * s, 4 * s, 8 + lz)]
        hila[sx] = br[-1]
        for sl, m in _polyline(g, br, 7.0):
            cv.paint(sl, m, "soft", "bronchie")
        for sl, m in _polyline(g, br, 4.5):
            cv.paint(sl, m, "airway", "bronchie")
    # spinal canal, vertebrae with discs, posterior elements
    for sl, m in _polyline(g, [(0, 78 * s, 300), (0, 78 * s, -300)], 9.0):
        cv.paint(sl, m, "csf", "spinal canal")
    zmin, zmax = float(g.axes[2][0]), float(g.axes[2][-1])
    levels = []
    for n in range(1, 18):
        zc = _T1_Z_MM - _THORACIC_PITCH_MM * (n - 1)
        if zc + 14 < zmin or zc - 14 > zmax:
            continue
        name = _vertebra_name(n)
        levels.append((n, zc))
        vc = (0.0, 50 * s, zc)
        sl, X, Y, Z = g.box([-21 * s, 32 * s, zc - 11], [21 * s, 68 * s, zc + 11])
        outer = ((X / (20 * s)) ** 2 + ((Y - vc[1]) / (17 * s)) ** 2 <= 1.0) & (np.abs(Z - zc) <= 11)
        innr = ((X / (17 * s)) ** 2 + ((Y - vc[1]) / (14 * s)) ** 2 <= 1.0) & (np.abs(Z - zc) <= 8.5)
        cv.paint(sl, outer, "cortical", name)
        cv.paint(sl, innr, "cancellous", name)
        # disc below
        sl2, X2, Y2, Z2 = g.box([-21 * s, 32 * s, zc - 14], [21 * s, 68 * s, zc - 11])
        disc = ((X2 / (20 * s)) ** 2 + ((Y2 - vc[1]) / (17 * s)) ** 2 <= 1.0) & np.ones_like(Z2, bool)
        cv.paint(sl2, disc, "disc", None)
        # arch around the canal + spinous process
        sl3, X3, Y3, Z3 = g.box([-17 * s, 60 * s, zc - 9], [17 * s, 96 * s, zc + 9])
        r2 = X3 ** 2 + (Y3 - 78 * s) ** 2
        arch = (r2 <= (16 * s) ** 2) & (r2 > (9 * s) ** 2) & (np.abs(Z3 - zc) <= 9)
        cv.paint(sl3, arch, "cortical", name)
        sl4, m4 = _segment(g, (0, 92 * s, zc), (0, 104 * s, zc - 8), 4.0)
        cv.paint(sl4, m4, "cortical", name)
    # ribs: arcs just inside the body wall, descending anteriorly
    ar, brr = 138 * s, 96 * s
    for n, zc in ((n, _T1_Z_MM - _THORACIC_PITCH_MM * (n - 1)) for n in range(1, 13)):
        theta_end = 2.6 if n <= 10 else 1.7
        drop = 55.0 if n > 1 else 30.0
        ths = np.linspace(0.25, theta_end, 10)
        for sx, side in ((1.0, "left"), (-1.0, "right")):
            pts = [(sx * ar * math.sin(t), brr * math.cos(t) - 4 * s, zc - drop * (t - 0.25) / 2.35) for t in ths]
            pts.insert(0, (sx * 22 * s, 60 * s, zc))
            r = max(5.0, 0.55 * max(g.spacing))
            for sl, m in _polyline(g, pts, r):
                cv.paint(sl, m, "rib", f"{side} rib {n}")
    # sternum (body + manubrium)
    sl, X, Y, Z = g.box([-14 * s, -112 * s, -70], [14 * s, -96 * s, 45])
    cv.paint(sl, np.ones((X.shape[0], Y.shape[1], Z.shape[2]), bool), "cortical", "sternum")
    sl, X, Y, Z = g.box([-22 * s, -110 * s, 45], [22 * s, -94 * s, 82])
    cv.paint(sl, np.ones((X.shape[0], Y.shape[1], Z.shape[2]), bool), "cortical", "manubrium of sternum")
    # pulmonary vessels: branches from the hila, painted into lung tissue only (lobe labels kept)
    vr = np.random.default_rng(p["vessel_seed"])
    lung_id = T["lung"]
    for sx, hilum in hila.items():
        for _ in range(14):
            d = vr.normal(size=3) * np.array([0.8, 1.0, 1.6])
            d[0] = sx * abs(d[0]) + sx * 0.6
            d /= np.linalg.norm(d)
            L1, L2 = vr.uniform(25, 45), vr.uniform(20, 45)
            mid = np.asarray(hilum) + d * L1
            d2 = d + vr.normal(size=3) * 0.35
            d2 /= np.linalg.norm(d2)
            tip = mid + d2 * L2
            for (a, b, r) in ((hilum, mid, 4.0), (mid, tip, 2.2)):
                sl, m = _segment(g, a, b, r)
                cv.paint(sl, m, "vessel", None, where=lambda sl: cv.tissue[sl] == lung_id)
    facts = {"s": s, "heart_center": hc, "levels": levels, "body_inner": (145 * s, 100 * s)}
    return cv, facts


# ============================================================================================================
# Lesions
# ============================================================================================================
def _article(size_text: str) -> str:
    lead = size_text.split()[0].split("x")[0].split("-")[0].split(".")[0]
    return "An" if lead.startswith("8") or lead in ("11", "18") or (len(lead) == 2 and lead.startswith("8")) else "A"


def _fmt_num(v: float) -> str:
    return f"{v:g}"


def _nodule_size(style: str, base: float, min_mm: float) -> tuple[tuple[float, ...], str, tuple[float, float, float]]:
    """(size_mm, size_text, extent along i,j,k) for a nodule of about ``base`` mm in the given text style."""
    d = max(base, min_mm)
    if style == "cm":
        cm = max(1, math.ceil(d / 10))
        d = cm * 10.0
        return (d,), f"{cm} cm", (d, d, d)
    if style == "decimal":
        d = math.floor(d) + 0.6
        return (d,), f"{_fmt_num(d)} mm", (d, d, d)
    if style == "axb":
        a = float(math.ceil(d * 1.3))
        b = float(math.ceil(d))
        return (a, b), f"{_fmt_num(a)}x{_fmt_num(b)} mm", (a, b, b)
    d = float(math.ceil(d))
    return (d,), f"{_fmt_num(d)} mm", (d, d, d)


def _nodule_sentence(size_text: str, lobe: str, phrase_style: int, change: str) -> str:
    long, short = _LOBE_PHRASE[lobe]
    where = long if phrase_style % 2 == 0 else short
    if change == "grown":
        return f"The nodule in the {where} has grown and now measures {size_text}."
    if change == "shrunk":
        return f"The nodule in the {where} has decreased in size and now measures {size_text}."
    if phrase_style % 2 == 0:
        return f"{_article(size_text)} {size_text} nodule is observed in the {where}."
    return f"A nodule measuring {size_text} is seen in the {where}."


def _lobe_path(lobe: str) -> str:
    side = "left" if lobe.startswith("left") else "right"
    return f"lung/lung/{side} lung/{lobe}"


def _effusion_mask(cv: _Canvas, side: str, thickness_mm: float) -> np.ndarray:
    """Dependent (posterior) fluid in the lower half of one pleural space, ``thickness_mm`` thick along j."""
    g = cv.g
    ids = [cv.labels[n] for n in _LOBES if n.startswith(side) and n in cv.labels]
    lung = np.isin(cv.label, ids)
    n_vox = max(2, int(round(thickness_mm / g.spacing[1])))
    nj = g.shape[1]
    has = lung.any(axis=1)  # (i, k)
    jmax = nj - 1 - np.argmax(lung[:, ::-1, :], axis=1)
    jj = np.arange(nj)[None, :, None]
    eff = lung & (jj > (jmax - n_vox)[:, None, :]) & has[:, None, :]
    zlim = 0.0
    eff &= (g.axes[2] < zlim)[None, None, :]
    return eff


def _plan_patient(rng: np.random.Generator, pattern: int, g: _Grid, split: str, patient: int,
                  style_counter: list[int], multi_digit: bool) -> list[dict]:
    """Scans of one patient: letter, CT-RATE reconstructions, the one RadGenome keeps, and lesion specs."""
    min_mm = 2.0 * max(g.spacing)
    lobe = _LOBES[int(rng.integers(len(_LOBES)))]
    styles = ("mm", "axb", "cm", "decimal")

    def nod_style() -> str:
        st = styles[style_counter[0] % len(styles)]
        style_counter[0] += 1
        return st

    def eff_style() -> str:
        st = ("mm", "range")[style_counter[1] % 2]
        style_counter[1] += 1
        return st

    side = ("left", "right")[int(rng.integers(2))]
    base = float(rng.uniform(max(6.0, min_mm), max(6.0, min_mm) + 6.0))
    eff_t = float(round(rng.uniform(max(10.0, min_mm), max(10.0, min_mm) + 10.0)))
    if pattern == 0:  # nodule grows; effusion appears in b
        return [
            {"scan": "a", "recons": [1, 2], "keep": 1,
             "lesions": [{"kind": "nodule", "lobe": lobe, "base": base, "style": nod_style(), "change": ""}]},
            {"scan": "b", "recons": [1], "keep": 1,
             "lesions": [{"kind": "nodule", "lobe": lobe, "base": base * 1.4, "style": nod_style(), "change": "grown"},
                         {"kind": "pleural effusion", "side": side, "thickness": eff_t, "style": eff_style()}]},
        ]
    if pattern == 1:  # cardiomegaly, calcified aorta, a nodule; reconstructions 1 and 11 (or 2)
        recons = [1, 11] if multi_digit else [1, 2]
        return [{"scan": "a", "recons": recons, "keep": recons[-1] if multi_digit else 1,
                 "lesions": [{"kind": "cardiomegaly"}, {"kind": "arterial wall calcification"},
                             {"kind": "nodule", "lobe": lobe, "base": base, "style": nod_style(), "change": ""}]}]
    if pattern == 2:  # normal
        return [{"scan": "a", "recons": [1], "keep": 1, "lesions": []}]
    # pattern 3: nodule shrinks; effusion resolves
    return [
        {"scan": "a", "recons": [1], "keep": 1,
         "lesions": [{"kind": "nodule", "lobe": lobe, "base": base * 1.5, "style": nod_style(), "change": ""},
                     {"kind": "pleural effusion", "side": side, "thickness": eff_t, "style": eff_style()}]},
        {"scan": "b", "recons": [1], "keep": 1,
         "lesions": [{"kind": "nodule", "lobe": lobe, "base": base, "style": nod_style(), "change": "shrunk"}]},
    ]


def _choose_nodule_center(cv: _Canvas, lobe: str, radius_mm: float, avoid: np.ndarray | None,
                          rng: np.random.Generator) -> tuple[float, float, float]:
    from scipy import ndimage

    g = cv.g
    m = cv.mask(lobe)
    if not m.any():
        raise RuntimeError(f"the phantom has no voxels of {lobe!r} at shape {g.shape}; use a larger grid")
    if avoid is not None:
        m &= ~avoid
    b = cv.bboxes[lobe]
    sl = tuple(slice(max(0, b[a] - 1), min(g.shape[a], b[a + 3] + 1)) for a in range(3))
    dist = ndimage.distance_transform_edt(m[sl], sampling=g.spacing)
    # keep away from the posterior (dependent) half, where effusions go
    jj = np.nonzero(m[sl])[1]
    jmid = np.median(jj) if jj.size else 0
    ant = (np.arange(dist.shape[1]) <= jmid)[None, :, None]
    need = radius_mm + 0.5 * max(g.spacing)
    cand = np.argwhere((dist >= need) & ant)
    if len(cand) == 0:
        cand = np.argwhere(dist >= dist.max() - 1e-3)
    v = cand[int(rng.integers(len(cand)))]
    v = [int(v[a]) + sl[a].start for a in range(3)]
    return g.mm(v)


def _apply_lesions(cv: _Canvas, facts: dict, specs: Sequence[dict], centers: dict, patient_key: str,
                   rng: np.random.Generator, phrase_style: int) -> tuple[list[Lesion], dict[str, np.ndarray]]:
    """Paint lesions into a copy-owned canvas; returns the lesions and their masks (lesion-mask name -> bool)."""
    g = cv.g
    T = _TISSUE_ID
    lesions: list[Lesion] = []
    lmasks: dict[str, np.ndarray] = {}
    min_mm = 2.0 * max(g.spacing)
    # effusion first (it replaces lung), then nodules
    for spec in sorted(specs, key=lambda s: s["kind"] != "pleural effusion"):
        kind = spec["kind"]
        if kind == "pleural effusion":
            t = float(max(spec.get("thickness", 12.0), min_mm))
            side = spec.get("side", "left")
            eff = _effusion_mask(cv, side, t)
            cv.tissue[eff] = T["fluid"]
            cv.label[eff] = 0
            lmasks["lung effusion"] = lmasks.get("lung effusion", np.zeros(g.shape, bool, order="F")) | eff
            n_vox = max(2, int(round(t / g.spacing[1])))
            t_drawn = n_vox * g.spacing[1]
            if spec.get("style") == "range":
                lo, hi = math.floor(t_drawn) - 1, math.floor(t_drawn) + 1
                size, text = (float(lo), float(hi)), f"{lo}-{hi} mm"
                sentence = f"Pleural effusion measuring {text} in thickness is seen on the {side}."
            else:
                size, text = (float(round(t_drawn)),), f"{round(t_drawn)} mm"
                sentence = f"Pleural effusion measuring {text} is seen on the {side}."
            idx = np.argwhere(eff)
            cvox = tuple(int(x) for x in idx[len(idx) // 2]) if len(idx) else g.vox((0, 0, 0))
            lesions.append(Lesion(kind, "pleura/pleura", size, cvox, "lung effusion", sentence,
                                  finding="pleural effusion", size_text=text, side=side,
                                  lesion_id=f"{patient_key}:effusion:{side}", center_mm=g.mm(cvox),
                                  extent_mm=(0.0, float(t_drawn), 0.0)))
        elif kind == "nodule":
            lobe = normalize_name(spec["lobe"])
            if lobe not in _LOBES:
                raise ValueError(f"nodule lobe must be one of {_LOBES}, got {spec['lobe']!r}")
            if "size_mm" in spec:
                sz = spec["size_mm"]
                sz = (float(sz),) if np.isscalar(sz) else tuple(float(x) for x in sz)
                sz = tuple(max(x, min_mm) for x in sz)
                ext = (sz[0], sz[-1], sz[-1])
                text = "x".join(_fmt_num(x) for x in sz) + " mm"
            else:
                sz, text, ext = _nodule_size(spec.get("style", "mm"), spec["base"], min_mm)
            key = f"{patient_key}:nodule:{lobe}"
            c = centers.get(key)
            if c is None:
                c = _choose_nodule_center(cv, lobe, max(ext) / 2, None, rng)
            sl, m = _ellipsoid(g, c, [e / 2 for e in ext])
            full = np.zeros(g.shape, bool, order="F")
            full[sl] = m
            full &= cv.mask(lobe)
            cv.tissue[full] = T["nodule"]
            lmasks["lung nodule"] = lmasks.get("lung nodule", np.zeros(g.shape, bool, order="F")) | full
            sentence = _nodule_sentence(text, lobe, phrase_style, spec.get("change", ""))
            lesions.append(Lesion(kind, _lobe_path(lobe), sz, g.vox(c), "lung nodule", sentence,
                                  finding="pulmonary nodule", size_text=text,
                                  side="left" if lobe.startswith("left") else "right", lesion_id=key,
                                  center_mm=tuple(float(x) for x in c), extent_mm=ext))
        elif kind == "cardiomegaly":
            hc = facts["heart_center"]
            lesions.append(Lesion(kind, "heart/heart", (), g.vox(hc), "heart",
                                  "The heart is enlarged and cardiomegaly is observed.", finding="cardiomegaly",
                                  lesion_id=f"{patient_key}:cardiomegaly", center_mm=tuple(map(float, hc))))
        elif kind == "arterial wall calcification":
            from scipy import ndimage

            a = cv.mask("aorta")
            wall = a & ~ndimage.binary_erosion(a)
            wall &= (g.axes[2] < 30)[None, None, :]
            idx = np.argwhere(wall)
            if len(idx) == 0:
                idx = np.argwhere(a)
            pick = idx[np.sort(rng.choice(len(idx), size=min(3, len(idx)), replace=False))]
            for v in pick:
                cv.tissue[tuple(v)] = T["calcification"]
            cvox = tuple(int(x) for x in pick[0])
            lesions.append(Lesion(kind, "mediastinum/aorta", (), cvox, "aorta",
                                  "Calcific atheroma plaques are observed in the wall of the thoracic aorta.",
                                  finding="calcific atheroma plaques",
                                  lesion_id=f"{patient_key}:aortic calcification", center_mm=g.mm(cvox)))
        else:
            raise ValueError(f"unknown lesion kind {kind!r}; use nodule, pleural effusion, cardiomegaly or "
                             "arterial wall calcification")
    order = {"arterial wall calcification": 0, "cardiomegaly": 1, "nodule": 2, "pleural effusion": 3}
    lesions.sort(key=lambda l: order[l.kind])
    return lesions, lmasks


# ============================================================================================================
# Masks and intensities
# ============================================================================================================
_COMPOSITES = {
    "left lung": ("left lung upper lobe", "left lung lower lobe"),
    "right lung": ("right lung upper lobe", "right lung middle lobe", "right lung lower lobe"),
    "sternum": ("sternum", "manubrium of sternum"),
}


def _mask_makers(cv: _Canvas, lmasks: dict[str, np.ndarray], facts: dict) -> tuple[dict, dict]:
    """(anatomy makers, region makers): name -> callable returning a full-grid bool mask."""
    g = cv.g
    lab = cv.label

    def ids(names_):
        return [cv.labels[n] for n in names_ if n in cv.labels]

    def of(names_):
        return lambda: np.isin(lab, ids(names_))

    anatomy: dict[str, Callable[[], np.ndarray]] = {}
    for n in cv.labels:
        if n in _COMPOSITES:
            continue
        anatomy[n] = (lambda n=n: cv.mask(n))
    for n, parts in _COMPOSITES.items():
        if ids(parts):
            anatomy[n] = of(parts)
    for n, m in lmasks.items():
        anatomy[n] = (lambda m=m: m.copy(order="F"))
    bones = [n for n in cv.labels if "vertebrae" in n or " rib " in f" {n} " or n in ("sternum", "manubrium of sternum")]

    def pleura():
        from scipy import ndimage

        lungs = np.isin(lab, ids(_LOBES))
        eff = lmasks.get("lung effusion")
        both = lungs | eff if eff is not None else lungs
        shell = ndimage.binary_dilation(both) & ~both & (lab == 0)
        return shell | eff if eff is not None else shell

    def mediastinum():
        sl, X, Y, Z = g.box([-32 * facts["s"], -100 * facts["s"], -60], [40 * facts["s"], 42 * facts["s"], 140])
        out = np.zeros(g.shape, bool, order="F")
        sub = lab[sl]
        tis = cv.tissue[sl]
        out[sl] = (sub == 0) & ((tis == _TISSUE_ID["soft"]) | (tis == _TISSUE_ID["fat"]) | (tis == _TISSUE_ID["blood"]))
        out |= np.isin(lab, ids(["aorta"]))
        return out

    def abdomen():
        ax, by = facts["body_inner"]
        sl, X, Y, Z = g.box([-ax, -by, -1e4], [ax, by, -85])
        out = np.zeros(g.shape, bool, order="F")
        inside = ((X / ax) ** 2 + (Y / by) ** 2 <= 1.0) & np.ones_like(Z, bool)
        sub = lab[sl]
        out[sl] = inside & ((sub == 0) | (sub == cv.labels.get("liver", -1)))
        out[sl] &= cv.tissue[sl] != _TISSUE_ID["fluid"]
        return out

    regions: dict[str, Callable[[], np.ndarray]] = {
        "lung": of(_LOBES),
        "trachea and bronchie": of(["trachea", "bronchie"]),
        "heart": of(["heart"]),
        "esophagus": of(["esophagus"]),
        "mediastinum": mediastinum,
        "pleura": pleura,
        "bone": of(bones),
        "abdomen": abdomen,
    }
    regions = {k: v for k, v in regions.items() if k in ("mediastinum", "pleura", "abdomen") or ids(
        {"lung": _LOBES, "trachea and bronchie": ["trachea", "bronchie"], "heart": ["heart"],
         "esophagus": ["esophagus"], "bone": bones}[k])}
    return anatomy, regions


def _correlated_noise(shape, rng: np.random.Generator, sigma: float) -> np.ndarray:
    from scipy import ndimage

    w = rng.standard_normal(shape, dtype=np.float32)
    w = np.asfortranarray(w)
    if sigma > 0:
        w = ndimage.gaussian_filter(w, sigma, output=np.float32, mode="wrap")
    sd = float(w.std()) or 1.0
    w *= np.float32(1.0 / sd)
    return w


def _render_ct(tissue: np.ndarray, g: _Grid, rng: np.random.Generator, *, sharp: bool, realistic: bool) -> np.ndarray:
    """HU int16 from tissue ids: base values, tissue-scaled correlated noise, lung texture, circular FOV."""
    from scipy import ndimage

    base = _HU_LUT[tissue]
    if realistic:  # partial-volume edges
        base = ndimage.gaussian_filter(base, 0.7, output=np.float32)
    sig = _SIGMA_LUT[tissue]
    noise = _correlated_noise(g.shape, rng, 0.6 if sharp else 1.0)
    noise *= np.float32(1.4 if sharp else 1.0)
    hu = base
    hu += sig * noise
    del noise, sig
    lung = tissue == _TISSUE_ID["lung"]
    tex = _correlated_noise(g.shape, rng, max(1.0, 3.0 / max(1.0, max(g.spacing))) if not realistic else 4.0)
    hu += np.float32(30.0) * tex * lung
    del tex
    # circular reconstruction field of view
    x = g.axes[0][:, None, None]
    y = g.axes[1][None, :, None]
    rad = min(-g.axes[0][0], -g.axes[1][0]) + 0.5 * min(g.spacing[:2])
    outside = np.broadcast_to((x ** 2 + y ** 2) > rad ** 2, g.shape)
    hu[outside] = -1024.0
    np.clip(hu, -1024, 3071, out=hu)
    out = np.empty(g.shape, np.int16, order="F")
    np.rint(hu, out=hu)
    out[...] = hu
    return out


def _affine(g: _Grid, offset_lps: Sequence[float] = (0.0, 0.0, 0.0)) -> np.ndarray:
    """RAS+ affine of the LPS grid; voxel (0,0,0) sits at LPS ``axes[.][0] + offset``."""
    ipp = [float(g.axes[a][0]) + float(offset_lps[a]) for a in range(3)]
    A = np.diag([-g.spacing[0], -g.spacing[1], g.spacing[2], 1.0])
    A[:3, 3] = [-ipp[0], -ipp[1], ipp[2]]
    return A


def make_phantom(
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] | None = None,
    rng_or_seed: np.random.Generator | int = 0,
    lesions: Sequence[Mapping[str, Any]] | str | None = "random",
    *,
    realistic: bool = False,
) -> Phantom:
    """Render one chest phantom.

    ``lesions``: ``"random"`` (a nodule in a random lobe, maybe an effusion), ``None``/``[]`` (normal), or specs
    such as ``{"kind": "nodule", "lobe": "right lung upper lobe", "size_mm": 6}`` (or ``(6, 4)``),
    ``{"kind": "pleural effusion", "side": "left", "thickness": 12}``, ``{"kind": "cardiomegaly"}``,
    ``{"kind": "arterial wall calcification"}``. Nodules and effusions are drawn at least two voxels wide (sizes
    are raised, and reported, accordingly).
    """
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    g = _Grid(shape, spacing if spacing is not None else _default_spacing(shape))
    if lesions == "random":
        specs: list[dict] = [{"kind": "nodule", "lobe": _LOBES[int(rng.integers(5))],
                              "base": float(rng.uniform(6, 14)), "style": "mm"}]
        if rng.random() < 0.5:
            specs.append({"kind": "pleural effusion", "side": ("left", "right")[int(rng.integers(2))],
                          "thickness": float(round(rng.uniform(10, 20)))})
    else:
        specs = [dict(s) for s in (lesions or [])]
    params = _anatomy_params(rng, any(s["kind"] == "cardiomegaly" for s in specs))
    cv, facts = _render_anatomy(g, params)
    les, lmasks = _apply_lesions(cv, facts, specs, {}, "phantom", rng, 0)
    ct = _render_ct(cv.tissue, g, rng, sharp=False, realistic=realistic)
    anat, regs = _mask_makers(cv, lmasks, facts)
    return Phantom(ct=ct, affine=_affine(g), spacing=g.spacing, structures=_LazyMasks({**regs, **anat}),
                   regions=_LazyMasks(regs), lesions=les, tissue=cv.tissue)


# ============================================================================================================
# Writing
# ============================================================================================================
_HEADER_CACHE: dict[tuple, bytes] = {}


def _nifti_header(shape, dtype, affine: np.ndarray, slope_inter, blank: bool) -> bytes:
    """The 352 bytes (header + empty extension flag) nibabel writes before the voxels; cached per grid."""
    import nibabel as nib

    key = (tuple(shape), np.dtype(dtype).str, np.asarray(affine, np.float64).tobytes(), slope_inter, blank)
    hdr = _HEADER_CACHE.get(key)
    if hdr is None:
        img = nib.Nifti1Image(np.zeros((1, 1, 1), dtype), affine)
        h = img.header
        h.set_data_shape(shape)
        h.set_data_dtype(dtype)
        if blank:  # CT-RATE v1: identity geometry, unit zooms, no scaling
            h.set_qform(np.eye(4), code=0)
            h.set_sform(np.eye(4), code=2)
        else:
            h.set_qform(affine, code=1)
            h.set_sform(affine, code=1)
            h.set_xyzt_units("mm")
        if slope_inter is None and not blank:
            slope_inter = (1.0, 0.0)  # what nibabel writes for unscaled data
        if slope_inter is not None:
            h["scl_slope"], h["scl_inter"] = slope_inter
        h["vox_offset"] = 352
        hdr = h.binaryblock + b"\x00\x00\x00\x00"
        if len(_HEADER_CACHE) > 256:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[key] = hdr
    return hdr


def _nifti_bytes(arr: np.ndarray, affine: np.ndarray, *, slope_inter: tuple[float, float] | None = None,
                 blank: bool = False, level: int = 2) -> bytes:
    """A gzip'd single-file NIfTI-1 (the bytes ``nibabel`` would write; header built once per grid)."""
    hdr = _nifti_header(arr.shape, arr.dtype, affine, slope_inter, blank)
    data = np.asfortranarray(arr).tobytes(order="F")
    return compress(hdr + data, level)


def _tar_gz(members: list[tuple[str, bytes | None]]) -> bytes:
    """A reproducible tar.gz (GNU format, zero mtimes, root owner) of (name, bytes or None for a directory)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in members:
            ti = tarfile.TarInfo(name)
            ti.mtime = 0
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if data is None:
                ti.type = tarfile.DIRTYPE
                ti.mode = 0o755
                tf.addfile(ti)
            else:
                ti.mode = 0o644
                ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
    return compress(buf.getvalue(), 3)


def _split_suffixes() -> Iterator[str]:
    a = "abcdefghijklmnopqrstuvwxyz"
    for x in a:
        for y in a:
            yield x + y


def _path_key(path: str) -> tuple:
    onto = get_ontology()
    idx = {p: i for i, p in enumerate(onto.paths)}
    return tuple(idx.get(a, 10 ** 6) for a in onto.ancestors(path)) if path else ()


def _fmt_list(vals: Sequence[float]) -> str:
    return "[" + ", ".join(format(float(v), ".10g") for v in vals) + "]"


def _patient_seed(seed: int, split: str, patient: int, what: int = 0) -> np.random.Generator:
    return np.random.default_rng([int(seed), 0 if split == "train" else 1, int(patient), what])


def write_release(out_dir: str | os.PathLike, config: SyntheticConfig | None = None, *,
                  progress: bool = True) -> SyntheticRelease:
    """Write a synthetic RadGenome-ChestCT + CT-RATE release under ``out_dir``; deterministic for a seed.

    >>> import tempfile
    >>> rel = write_release(tempfile.mkdtemp(), SyntheticConfig(n_train_patients=1, n_valid_patients=0,
    ...                                                        shape=(32, 32, 24)), progress=False)
    >>> rel.volumes
    ['train_1_a_1', 'train_1_b_1']
    """
    from tqdm.auto import tqdm

    cfg = config or SyntheticConfig()
    root = Path(out_dir)
    rg_root = root / "RadGenome-ChestCT"
    ct_root = root / "CT-RATE"
    g = _Grid(cfg.grid_shape, cfg.grid_spacing)
    level = 3 if cfg.realistic else 2
    onto = get_ontology()

    # ---- plan -------------------------------------------------------------------------------------------------
    style_counter = [0, 0]
    plan: list[tuple[str, int, int, list[dict]]] = []  # (split, patient, pattern, scans)
    multi_digit_done = False
    for split, n in (("train", cfg.n_train_patients), ("valid", cfg.n_valid_patients)):
        for p in range(1, n + 1):
            pattern = (p - 1) % 4
            md = pattern == 1 and split == "train" and not multi_digit_done
            multi_digit_done |= md
            scans = _plan_patient(_patient_seed(cfg.seed, split, p, 1), pattern, g, split, p, style_counter, md)
            plan.append((split, p, pattern, scans))

    gt_vols: dict[str, dict] = {}
    rows: dict[str, dict[str, list]] = {s: {k: [] for k in ("reports", "metadata", "labels", *RADGENOME_HEADERS)}
                                        for s in ("train", "valid")}
    mask_members: dict[tuple[str, str], list[tuple[str, bytes | None]]] = {}
    write_folders = cfg.mask_layout in ("folders", "both")
    write_archives = cfg.mask_layout in ("archives", "both")
    radgenome_stems: list[str] = []
    ctrate_stems: list[str] = []
    n_scans = sum(len(s) for *_, s in plan)
    bar = tqdm(total=n_scans, desc="synthetic scans", unit="scan", disable=None if progress else True)
    blank_label_done = False
    odd_intercept_done = False
    scl_fixed_done = False

    for split, p, pattern, scans in plan:
        prng = _patient_seed(cfg.seed, split, p, 2)
        patient_key = f"{split}_{p}"
        cardio = any(l["kind"] == "cardiomegaly" for sc in scans for l in sc["lesions"])
        params = _anatomy_params(prng, cardio)
        anat, facts = _render_anatomy(g, params)
        # effusion regions over all scans (nodules keep away from them), and fixed nodule centres
        avoid = np.zeros(g.shape, bool, order="F")
        for sc in scans:
            for l in sc["lesions"]:
                if l["kind"] == "pleural effusion":
                    avoid |= _effusion_mask(anat, l["side"], max(l["thickness"], 2 * max(g.spacing)) + 10)
        centers: dict[str, tuple] = {}
        for sc in scans:
            for l in sc["lesions"]:
                if l["kind"] == "nodule":
                    key = f"{patient_key}:nodule:{l['lobe']}"
                    ext = max(_nodule_size(l["style"], l["base"], 2 * max(g.spacing))[2])
                    r = max(ext / 2, centers.get(key + "/r", 0))
                    centers[key + "/r"] = r
        for key in [k for k in centers if k.endswith("/r")]:
            lobe_key = key[:-2]
            centers[lobe_key] = _choose_nodule_center(anat, lobe_key.rsplit(":", 1)[1], centers[key], avoid, prng)
        sex = ("M", "F")[int(prng.integers(2))]
        age = int(prng.integers(25, 86))
        manufacturer, model, kernels = [("Philips", "iCT 256", ("YA", "YB")),
                                        ("SIEMENS", "SOMATOM Definition Edge", ("Br40d", "Bl64d")),
                                        ("GE MEDICAL SYSTEMS", "Revolution EVO", ("STANDARD", "LUNG")),
                                        ("TOSHIBA", "Aquilion ONE", ("FC08", "FC52"))][int(prng.integers(4))]
        for si, sc in enumerate(scans):
            srng = _patient_seed(cfg.seed, split, p, 10 + si)
            cv = anat.copy()
            lesions, lmasks = _apply_lesions(cv, facts, sc["lesions"], centers, patient_key, srng, phrase_style=p + si)
            anat_makers, region_makers = _mask_makers(cv, lmasks, facts)
            kinds = {l.kind for l in lesions}
            # report sentences
            sentences: list[dict] = []
            for key, sent, paths, replaced_by in _NORMAL_STATEMENTS:
                if replaced_by is not None and replaced_by in kinds:
                    for l in lesions:
                        if _KIND_ORDER[l.kind] == key:
                            sentences.append({"sentence": l.sentence, "paths": l.paths(), "lesion": l.lesion_id,
                                              "kind": l.kind})
                else:
                    sentences.append({"sentence": sent, "paths": list(paths), "lesion": None, "kind": None})
            findings = " ".join(s["sentence"] for s in sentences)
            impressions_parts = []
            for l in lesions:
                impressions_parts.append({
                    "nodule": f"Pulmonary nodule in the {onto.leaf(l.anatomy_path)}.",
                    "pleural effusion": f"{l.side.capitalize()} pleural effusion.",
                    "cardiomegaly": "Cardiomegaly.",
                    "arterial wall calcification": "Aortic atherosclerosis.",
                }[l.kind])
            impressions = " ".join(impressions_parts) or "No significant pathology was detected."
            clinical = NOT_GIVEN if (p + si) % 2 == 0 else ("Follow-up of pulmonary nodule." if si else "Cough.")
            technique = NOT_GIVEN if (pattern == 2) else "Non-contrast thorax CT, axial sections."
            disorders = {"nodule": "pulmonary nodule", "pleural effusion": None, "cardiomegaly": "cardiomegaly",
                         "arterial wall calcification": "aortic atherosclerosis"}
            dis = [disorders[l.kind] or f"{l.side} pleural effusion" for l in lesions]
            labels = {lab: 0 for lab in CTRATE_LABELS}
            for l in lesions:
                labels[_KIND_LABEL[l.kind]] = 1
            study_date = f"2021{(3 + 2 * si):02d}{(10 + p % 18):02d}"
            z_off = float(-200.0 - 40.0 * si + prng.uniform(-20, 20))
            table_y = float(round(prng.uniform(-10, 10), 1))
            offset = (0.0, table_y, z_off)
            affine = _affine(g, offset)
            ipp = [float(g.axes[a][0]) + offset[a] for a in range(3)]

            for r in sc["recons"]:
                vn = names.VolumeName(split, p, sc["scan"], r)  # type: ignore[arg-type]
                stem = vn.stem
                ctrate_stems.append(stem)
                rrng = _patient_seed(cfg.seed, split, p, 1000 + 100 * si + r)
                sharp = r != sc["recons"][0]
                ct = _render_ct(cv.tissue, g, rrng, sharp=sharp, realistic=cfg.realistic)
                intercept = -1024.0
                if not odd_intercept_done and split == "valid":
                    intercept, odd_intercept_done = -1000.0, True
                stored = (ct.astype(np.int32) - int(intercept)).astype(np.int16)
                write_bytes(ct_root / names.ctrate_volume_path(vn),
                              _nifti_bytes(stored, np.eye(4), blank=True, level=level))
                if not scl_fixed_done and r > 1:  # one fixed file keeps stored values + scl_slope/scl_inter
                    fixed = _nifti_bytes(stored, affine, slope_inter=(1.0, intercept), level=level)
                    fixed_scl, scl_fixed_done = True, True
                else:
                    fixed = _nifti_bytes(ct, affine, level=level)
                    fixed_scl = False
                write_bytes(ct_root / names.ctrate_volume_path(vn, fixed=True), fixed)
                kernel = kernels[0] if not sharp else kernels[1]
                meta = {
                    "VolumeName": vn.filename, "Manufacturer": manufacturer,
                    "SeriesDescription": "HRCT" if sharp else "THORAX", "ManufacturerModelName": model,
                    "PatientSex": sex, "PatientAge": f"{age + (1 if si else 0):03d}Y",
                    "ReconstructionDiameter": _fmt_num(round(g.shape[0] * g.spacing[0])),
                    "GantryDetectorTilt": "0", "TableHeight": _fmt_num(round(150 + table_y)),
                    "RotationDirection": "CW", "ExposureTime": "622", "XRayTubeCurrent": str(150 + 7 * p),
                    "Exposure": "116", "FilterType": "YA" if manufacturer == "Philips" else "",
                    "ConvolutionKernel": kernel, "PatientPosition": "HFS",
                    "CTDIvol": format(6.5 + 0.37 * p, ".9g"),
                    "ImagePositionPatient": _fmt_list(ipp), "ImageOrientationPatient": "[1, 0, 0, 0, 1, 0]",
                    "SliceLocation": format(ipp[2], ".10g"), "SamplesPerPixel": "1",
                    "PhotometricInterpretation": "MONOCHROME2", "Rows": str(g.shape[1]), "Columns": str(g.shape[0]),
                    "XYSpacing": "[" + ", ".join(repr(float(v)) for v in g.spacing[:2]) + "]", "RescaleIntercept": _fmt_num(intercept),
                    "RescaleSlope": "1", "RescaleType": "HU" if manufacturer == "TOSHIBA" else "",
                    "NumberofSlices": str(g.shape[2]), "ZSpacing": repr(float(g.spacing[2])), "StudyDate": study_date,
                }
                rows[split]["metadata"].append([meta.get(h, "") for h in CTRATE_METADATA_HEADER])
                rows[split]["reports"].append([vn.filename, clinical, technique, findings, impressions])
                lab_row: list[Any] = [vn.filename, *[labels[l] for l in CTRATE_LABELS]]
                gt_labels: dict[str, int | None] = dict(labels)
                if not blank_label_done and not lesions:
                    i = 1 + CTRATE_LABELS.index("Hiatal hernia")
                    lab_row[i] = ""
                    gt_labels["Hiatal hernia"] = None
                    blank_label_done = True
                rows[split]["labels"].append(lab_row)

                in_rg = r == sc["keep"]
                entry: dict[str, Any] = {
                    "split": split, "patient_id": vn.patient_id, "scan_id": vn.scan_id, "reconstruction_id": r,
                    "in_radgenome": in_rg, "shape": list(g.shape), "spacing": list(g.spacing),
                    "affine": affine.tolist(), "rescale": {"slope": 1.0, "intercept": intercept},
                    "fixed_uses_scl": fixed_scl, "study_date": study_date,
                    "lesions": [l.to_dict() for l in lesions], "report_sentences": sentences,
                    "findings": findings, "impressions": impressions, "labels": gt_labels,
                    "disorders": dis, "hu_range": [int(ct.min()), int(ct.max())],
                }
                if in_rg:
                    radgenome_stems.append(stem)
                    write_bytes(rg_root / names.radgenome_volume_path(vn), _nifti_bytes(ct, affine, level=level))
                    counts = {}
                    for kind, makers in (("region", region_makers), ("anatomy", anat_makers)):
                        prefix = names.mask_archive_prefix(split, kind)  # type: ignore[arg-type]
                        members = mask_members.setdefault((split, kind), [(prefix, None)])
                        members.append((f"{prefix}seg_{stem}/", None))
                        for name in sorted(makers):
                            m = makers[name]()
                            counts[f"{kind}:{name}"] = int(np.count_nonzero(m))
                            fname = _sat_case(name) if "vertebrae" in name else name
                            data = _nifti_bytes(m.view(np.uint8), affine, level=level)
                            if write_folders:
                                write_bytes(rg_root / names.mask_path(vn, kind, fname), data)  # type: ignore[arg-type]
                            if write_archives:
                                members.append((f"{prefix}seg_{stem}/{fname}.nii.gz", data))
                    entry["structures"] = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("anatomy:")}
                    entry["regions"] = {k.split(":", 1)[1]: v for k, v in counts.items() if k.startswith("region:")}
                    entry["mask_files"] = {"anatomy": {n: (_sat_case(n) if "vertebrae" in n else n) + ".nii.gz"
                                                       for n in sorted(anat_makers)},
                                           "region": {n: n + ".nii.gz" for n in sorted(region_makers)}}
                    _radgenome_rows(rows[split], vn, lesions, sentences, dis,
                                    _patient_seed(cfg.seed, split, p, 5000 + 100 * si + r))
                gt_vols[stem] = entry
            # every reconstruction of a scan shares its geometry: give all of them the kept one's voxel counts
            kept = gt_vols.get(names.VolumeName(split, p, sc["scan"], sc["keep"]).stem, {})  # type: ignore[arg-type]
            for r in sc["recons"]:
                e = gt_vols[names.VolumeName(split, p, sc["scan"], r).stem]  # type: ignore[arg-type]
                for k in ("structures", "regions"):
                    e.setdefault(k, dict(kept.get(k, {})))
            bar.update(1)
    bar.close()

    # ---- CSVs ------------------------------------------------------------------------------------------------
    ds_rg = rg_root / "dataset"
    ds_ct = ct_root / "dataset"
    for split in ("train", "valid"):
        R = rows[split]
        if split == "train" and not cfg.n_train_patients or split == "valid" and not cfg.n_valid_patients:
            continue
        for table, header in RADGENOME_HEADERS.items():
            write_csv(ds_rg / "radgenome_files" / names.radgenome_csv_name(split, table), header, R[table])  # type: ignore[arg-type]
        rs = names.CTRATE_REPORT_SPLIT[split]
        write_csv(ds_ct / "radiology_text_reports" / f"{rs}_reports.csv", CTRATE_REPORT_HEADER, R["reports"])
        write_csv(ds_ct / "metadata" / f"{rs}_metadata.csv", CTRATE_METADATA_HEADER, R["metadata"])
        write_csv(ds_ct / "multi_abnormality_labels" / f"{names.CTRATE_LABEL_SPLIT[split]}_predicted_labels.csv",
                  CTRATE_LABEL_HEADER, R["labels"])

    # ---- mask archives ---------------------------------------------------------------------------------------
    archives: list[str] = []
    if write_archives:
        for (split, kind), members in sorted(mask_members.items()):
            blob = _tar_gz(members)
            if split == "train" and kind == "anatomy":
                part = max(1, math.ceil(len(blob) / max(2, cfg.anatomy_parts)))
                for suffix, start in zip(_split_suffixes(), range(0, len(blob), part)):
                    name = f"{split}_{kind}_mask_{suffix}"
                    write_bytes(ds_rg / name, blob[start:start + part])
                    archives.append(f"dataset/{name}")
            else:
                name = f"{split}_{kind}_mask.tar.gz"
                write_bytes(ds_rg / name, blob)
                archives.append(f"dataset/{name}")

    gt = {
        "format": 1,
        "config": {**asdict(cfg), "grid_shape": list(g.shape), "grid_spacing": list(g.spacing)},
        "volumes": gt_vols,
        "radgenome_volumes": radgenome_stems,
        "ctrate_volumes": ctrate_stems,
        "mask_archives": archives,
        "patients": {f"{s}_{p}": {"pattern": pat, "scans": [f"{s}_{p}_{sc['scan']}" for sc in scans]}
                     for s, p, pat, scans in plan},
    }
    write_bytes(root / "ground_truth.json", json.dumps(gt, indent=1, sort_keys=True).encode())
    return SyntheticRelease(root=root, radgenome_root=rg_root, ctrate_root=ct_root, volumes=radgenome_stems,
                            ground_truth=gt, ctrate_volumes=ctrate_stems, config=cfg)


def _radgenome_rows(R: dict[str, list], vn: names.VolumeName, lesions: list[Lesion], sentences: list[dict],
                    disorders: list[str], rng: np.random.Generator) -> None:
    """Append this volume's rows to the six RadGenome tables, keeping the real invariants."""
    fn = vn.filename
    # region report: whole-scan row (normal statements), then one row per path with every sentence at that path
    normal = [s["sentence"] for s in sentences if s["lesion"] is None]
    R["region_report"].append([fn, "", " ".join(normal)])
    by_path: dict[str, list[str]] = {}
    abn: dict[str, list[str]] = {}
    for s in sentences:
        for p in s["paths"]:
            by_path.setdefault(p, []).append(s["sentence"])
    for l in lesions:
        for p in l.paths():
            if l.finding not in abn.setdefault(p, []):
                abn[p].append(l.finding)
    paths = sorted(by_path, key=_path_key)
    for p in paths:
        R["region_report"].append([fn, p, " ".join(by_path[p])])
    # vqa: abnormality (with "no findings"), location (= abnormality minus "no findings"), presence, size
    ab_rows = [[fn, p, ", ".join(abn[p]) if p in abn else "no findings"] for p in paths]
    R["vqa_abnormality"].extend(ab_rows)
    loc = [r for r in ab_rows if r[2] != "no findings"]
    R["vqa_location"].extend([list(r) for r in loc])
    R["vqa_presence"].extend([[r[0], r[1], r[2], "Yes."] for r in loc])
    present = set()
    for l in lesions:
        present |= _EXCLUDES[l.kind]
    onto = get_ontology()
    for region in sorted({onto.region_of(p) for p in paths}, key=_path_key):
        pool = [f for f in _NEGATIVE_POOL.get(region, ()) if f not in present]
        if not pool or rng.random() < 0.35:
            continue
        neg = pool[int(rng.integers(len(pool)))]
        for p in (region, f"{region}/{region}" if f"{region}/{region}" in onto else None):
            if p is not None and p in by_path:
                R["vqa_presence"].append([fn, p, neg, "No."])
    for l in lesions:
        if not l.size_text:
            continue
        if l.kind == "nodule":
            leaf = onto.leaf(l.anatomy_path)
            alt = [q for q in onto.paths_ending_in(leaf) if q != l.anatomy_path and onto.region_of(q) == "lung"]
            for p in (alt[0] if alt else l.anatomy_path, "lung/lung"):
                R["vqa_size"].append([fn, p, l.finding, l.size_text])
        else:
            R["vqa_size"].append([fn, l.anatomy_path, l.finding, l.size_text])
    R["case_disorders"].append([fn, ", ".join(disorders) if disorders else "no findings"])


def inject_quality_faults(release: SyntheticRelease, *, nonfinite: str | None = None,
                          rescaled_twice: str | None = None, non_chest: str | None = None) -> None:
    """Overwrite RadGenome volumes of a written release with the faults the quality stage must flag.

    ``nonfinite``: float32 HU with NaN and inf voxels. ``rescaled_twice``: the HU values stored with
    ``scl_inter = -1024`` (a reader adds the intercept to data that are already HU). ``non_chest``: an abdomen-like
    volume (soft tissue, no air-filled lungs) whose anatomy masks lose every lung structure; this one needs a
    release written with ``mask_layout="folders"`` (archives are not rewritten).

    >>> import tempfile
    >>> rel = write_release(tempfile.mkdtemp(), SyntheticConfig(n_train_patients=1, n_valid_patients=0,
    ...                     shape=(24, 24, 16), mask_layout="folders"), progress=False)
    >>> inject_quality_faults(rel, nonfinite="train_1_a_1", non_chest="train_1_b_1")
    """
    import nibabel as nib

    def path_of(stem: str) -> Path:
        return release.radgenome_root / names.radgenome_volume_path(stem)

    def read(stem: str) -> tuple[np.ndarray, np.ndarray]:
        img = nib.load(str(path_of(stem)))
        return np.asarray(img.dataobj), img.affine

    if nonfinite is not None:
        ct, affine = read(nonfinite)
        bad = ct.astype(np.float32)
        bad[0, 0, : max(1, bad.shape[2] // 4)] = np.nan
        bad[-1, -1, 0] = np.inf
        write_bytes(path_of(nonfinite), _nifti_bytes(bad, affine))
    if rescaled_twice is not None:
        ct, affine = read(rescaled_twice)
        write_bytes(path_of(rescaled_twice), _nifti_bytes(ct.astype(np.int16), affine, slope_inter=(1.0, -1024.0)))
    if non_chest is not None:
        seg = release.radgenome_root / names.mask_dir(non_chest, "anatomy")
        if not seg.is_dir():
            raise ValueError(f"non_chest needs a release with mask folders ({seg} not found): "
                             "write it with SyntheticConfig(mask_layout='folders')")
        ct, affine = read(non_chest)
        body = np.zeros(ct.shape, bool)
        i, j = np.ogrid[: ct.shape[0], : ct.shape[1]]
        ci, cj = (ct.shape[0] - 1) / 2, (ct.shape[1] - 1) / 2
        body[((i - ci) / (0.45 * ct.shape[0])) ** 2 + ((j - cj) / (0.35 * ct.shape[1])) ** 2 <= 1] = True
        abdomen = np.where(body, 40, -1000).astype(np.int16)
        write_bytes(path_of(non_chest), _nifti_bytes(abdomen, affine))
        for f in sorted(seg.iterdir()):
            if "lung" in f.name:
                f.unlink()
