"""Pictures of a region: axial, coronal and sagittal slices through its centre, the mask outlined, the sentence.

>>> import numpy as np, tempfile, os
>>> ct = np.full((32, 32, 24), -1000, np.int16); ct[8:24, 8:24, 4:20] = 40
>>> m = np.zeros(ct.shape, bool); m[12:20, 12:20, 8:16] = True
>>> p = render_region(ct, m, "The heart is enlarged.", os.path.join(tempfile.mkdtemp(), "r.png"))
>>> p.suffix
'.png'
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io.atomic import atomic_path

__all__ = ["render_region", "region_centre", "find_region_sentence", "load_grounding_mask"]

FIGSIZE = (12.0, 4.8)  # inches; with DPI 100 the PNG is 1200 x 480 pixels
DPI = 100


def _as_volume_array(volume: Any, spacing: Sequence[float] | None) -> tuple[np.ndarray, tuple[float, ...], np.ndarray]:
    if isinstance(volume, (str, os.PathLike)):
        from .access.volume import Volume

        volume = Volume.open(volume)
    if hasattr(volume, "array") and hasattr(volume, "spacing") and callable(volume.array):
        arr = volume.array()
        sp = tuple(spacing) if spacing is not None else tuple(float(s) for s in volume.spacing)
        aff = np.asarray(volume.affine, dtype=np.float64)
    else:
        arr = np.asarray(volume)
        if arr.dtype == np.float64:
            arr = arr.astype(np.float32)
        sp = tuple(float(s) for s in spacing) if spacing is not None else (1.0, 1.0, 1.0)
        aff = np.diag([*sp, 1.0])
    if arr.ndim != 3:
        raise ValueError(f"render_region: expected a 3-D volume, got shape {arr.shape}")
    return arr, sp, aff


def region_centre(mask: np.ndarray | None, shape: Sequence[int]) -> tuple[int, int, int]:
    """Voxel (i, j, k) at the centre of a mask's bounding box (the volume's centre without a mask)."""
    if mask is None or not np.any(mask):
        return tuple(int(s) // 2 for s in shape)  # type: ignore[return-value]
    centre = []
    for ax in range(3):
        other = tuple(a for a in range(3) if a != ax)
        nz = np.flatnonzero(np.any(mask, axis=other))
        centre.append(int((nz[0] + nz[-1]) // 2))
    return tuple(centre)  # type: ignore[return-value]


def render_region(
    volume: Any,
    mask: np.ndarray | None,
    sentence: str | None,
    out_path: str | os.PathLike,
    *,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    window: tuple[float, float] = (-1000.0, 400.0),
    centre: Sequence[int] | None = None,
    figsize: tuple[float, float] = FIGSIZE,
    dpi: int = DPI,
) -> Path:
    """Write a PNG: axial, coronal, sagittal slices through the region's centre, its mask outlined, a caption.

    ``volume``: a :class:`~radgenome_hf.access.volume.Volume`, a path to a NIfTI file or an ``(i, j, k)`` HU array (then
    ``spacing`` sets the pixel aspect). ``mask``: a bool array on the volume's grid, or ``None``. The slices are
    shown with the volume's orientation brought to RAS (anterior and superior up; patient's right on the left
    as radiologists read). Written atomically; the PNG is ``figsize × dpi`` pixels (1200 × 480 by default).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import nibabel as nib
    from matplotlib.figure import Figure

    arr, sp, aff = _as_volume_array(volume, spacing)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != arr.shape:
            from .errors import ShapeMismatchError

            raise ShapeMismatchError(f"render_region: mask shape {mask.shape} != volume shape {arr.shape}")
    c = tuple(int(x) for x in centre) if centre is not None else region_centre(mask, arr.shape)

    # bring the axes to RAS with flips/transposes only (views, no resampling)
    ornt = nib.orientations.io_orientation(aff)
    ras = nib.orientations.apply_orientation(arr, ornt)
    mras = nib.orientations.apply_orientation(mask, ornt) if mask is not None else None
    perm = [int(a) for a in ornt[:, 0]]  # output axis of each input axis
    sp_ras = [0.0, 0.0, 0.0]
    c_ras = [0, 0, 0]
    for a in range(3):
        sp_ras[perm[a]] = float(sp[a])
        flip = ornt[a, 1] < 0
        c_ras[perm[a]] = (arr.shape[a] - 1 - c[a]) if flip else c[a]

    lo, hi = float(window[0]), float(window[1])
    fig = Figure(figsize=figsize, dpi=dpi)
    axes = fig.subplots(1, 3)
    views = [
        ("axial", ras[:, :, c_ras[2]], None if mras is None else mras[:, :, c_ras[2]], sp_ras[1] / sp_ras[0]),
        ("coronal", ras[:, c_ras[1], :], None if mras is None else mras[:, c_ras[1], :], sp_ras[2] / sp_ras[0]),
        ("sagittal", ras[c_ras[0], :, :], None if mras is None else mras[c_ras[0], :, :], sp_ras[2] / sp_ras[1]),
    ]
    labels = {"axial": f"axial k={c[2]}", "coronal": f"coronal j={c[1]}", "sagittal": f"sagittal i={c[0]}"}
    for ax, (name, img, msk, aspect) in zip(axes, views):
        ax.imshow(np.asarray(img, dtype=np.float32).T, cmap="gray", vmin=lo, vmax=hi, origin="lower",
                  aspect=aspect, interpolation="nearest")
        if msk is not None and msk.any() and not msk.all():
            ax.contour(msk.T.astype(np.float32), levels=[0.5], colors="#ff3b30", linewidths=1.2, origin="lower")
        if name in ("axial", "coronal"):
            ax.invert_xaxis()  # radiological convention: patient's right on the viewer's left
        ax.set_title(labels[name], fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=11)
    caption = "\n".join(textwrap.wrap(sentence.strip(), width=150)[:4]) if sentence else ""
    fig.subplots_adjust(left=0.02, right=0.98, top=0.86 if title else 0.92, bottom=0.18 if caption else 0.04, wspace=0.05)
    if caption:
        fig.text(0.5, 0.02, caption, ha="center", va="bottom", fontsize=9, wrap=False)
    out = Path(out_path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out


def find_region_sentence(region_report_csv: str | os.PathLike, volume_name: str, anatomy: str) -> str | None:
    """The ``Sentence`` of a (volume, anatomy) row of a ``*_region_report.csv``: the exact path, else the
    shortest path ending in the given node name; ``None`` if the volume has no such row."""
    from .names import VolumeName
    from .ontology import normalize_path
    from .io.tables import read_region_report

    table = read_region_report(region_report_csv)
    stem = VolumeName.parse(volume_name).stem
    import pyarrow.compute as pc

    rows = table.filter(pc.equal(table["volume_name"], stem)).to_pylist()
    want = normalize_path(anatomy)
    exact = [r for r in rows if r["anatomy"] == want]
    if exact:
        return exact[0]["sentence"]
    if want and "/" not in want:
        ending = sorted(
            (r for r in rows if r["anatomy"] and r["anatomy"].rsplit("/", 1)[-1] == want), key=lambda r: len(r["anatomy"])
        )
        if ending:
            return ending[0]["sentence"]
    return None


def load_grounding_mask(
    release: Any, volume_name: str, anatomy: str, *, progress: bool = True
) -> tuple[np.ndarray | None, str, str | None]:
    """The mask grounding ``anatomy`` for one volume of an upstream release: ``(bool mask or None, source, name)``.

    Only that one structure is read: from its ``seg_<stem>/<name>.nii.gz`` file when the release has mask folders,
    else from the packed store of the mask archives (:class:`~radgenome_hf.access.maskstore.MaskStore`, packed once).
    ``None`` with source ``"whole"`` when nothing more specific than the whole scan grounds it.
    """
    from .access.masks import PackedMasks
    from .names import VolumeName
    from .ontology import normalize_name
    from .training import resolve_region_mask

    v = VolumeName.parse(volume_name)
    files: dict[str, dict[str, str]] = {}
    stores: dict[str, Any] = {}
    by_kind: dict[str, list[str]] = {}
    for kind in ("anatomy", "region"):
        folder = release.mask_folder(v, kind)
        if folder is not None and os.path.isdir(folder):
            files[kind] = {
                normalize_name(f): os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith((".nii.gz", ".nii"))
            }
            by_kind[kind] = list(files[kind])
        else:
            from .access.maskstore import MaskStore

            store = MaskStore.prepare(release, v.split, kind, progress=progress)
            if store is not None and v.stem in store:
                stores[kind] = store
                by_kind[kind] = [normalize_name(n) for n in store.names(v.stem)]
    source, name = resolve_region_mask(
        None, anatomy, anatomy_names=by_kind.get("anatomy", []), region_names=by_kind.get("region", [])
    )
    if name is None:
        return None, "whole", None
    if source in files and name in files[source]:
        pm = PackedMasks.from_nifti_files({name: files[source][name]}, source=source)
    else:
        pm = PackedMasks.load(stores[source].path(v.stem))
    return pm.mask(name), source, name
