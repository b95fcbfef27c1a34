"""CPU threshold baseline: lungs, airway and bone from Hounsfield units, no weights (the offline demo's backend).

Steps (all ``scipy.ndimage``; thresholds in HU, sizes in mm so they hold at any spacing):

1. **body**: voxels > ``body_hu`` (−500), largest connected component, holes filled slice by slice (axial).
2. **airway** (trachea + main bronchi): voxels < ``airway_hu`` (−950) in the body. The seed is the largest such
   2D component near the left-right midline in the most superior slice that has one (the trachea enters the field
   of view from the neck); per axial slice, only 2D pieces smaller than ``max_airway_area_mm2`` are kept (a
   lung-sized piece is a leak), and the 3D component connected to the seed is the airway lumen. The wall
   (``airway_wall_mm``) is added in-plane around the lumen, as in the reference masks. The first slice from the
   top where the airway splits into two pieces is the carina: above it ``trachea``, from it down ``bronchie``.
3. **lungs**: voxels < ``air_hu`` (−400) in the body, minus the airway, pieces over ``min_lung_ml``; vessels and
   nodules inside are filled slice by slice. Two large components are the two lungs; one (lungs touching at the
   anterior junction) is cut at the body's left-right midline. Sides come from the world x coordinate of each
   lung's centroid: in nibabel's RAS+ world, x grows towards the patient's right, so the left lung has the
   smaller x, whatever the voxel orientation (LPS, RAS...).
4. **bone**: voxels > ``bone_hu`` (200) in the body, pieces over ``min_bone_mm3``, marrow holes filled in-plane.

Output names are ontology names only: ``left lung``, ``right lung``, ``trachea``, ``bronchie``, ``bone`` (a
region), plus the unions ``lung`` (anatomy and region name) and ``trachea and bronchie`` (region). The body mask
has no ontology node and is not stored.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ...access.masks import PackedMasks
from ._common import masks_with_derived


def _bbox_slices(mask: np.ndarray, margin: int = 0) -> tuple[slice, ...]:
    out = []
    for ax in range(mask.ndim):
        idx = np.flatnonzero(np.any(mask, axis=tuple(a for a in range(mask.ndim) if a != ax)))
        lo, hi = (int(idx[0]), int(idx[-1]) + 1) if idx.size else (0, 0)
        out.append(slice(max(0, lo - margin), min(mask.shape[ax], hi + margin)))
    return tuple(out)


class ThresholdBackend:
    """HU-threshold segmentation of body, lungs, airway and bone (see the module docstring).

    >>> from radgenome_hf.testing.synthetic import make_phantom
    >>> ph = make_phantom((48, 48, 32), None, 0)
    >>> m = ThresholdBackend().segment(ph.ct, ph.affine)
    >>> sorted(m.names)
    ['bone', 'bronchie', 'left lung', 'lung', 'right lung', 'trachea', 'trachea and bronchie']
    """

    name = "threshold"
    version = "1"
    uses_gpu = False

    def __init__(
        self,
        *,
        body_hu: float = -500.0,
        air_hu: float = -400.0,
        airway_hu: float = -950.0,
        bone_hu: float = 200.0,
        airway_wall_mm: float = 2.5,
        max_airway_area_mm2: float = 900.0,
        min_lung_ml: float = 5.0,
        min_bone_mm3: float = 30.0,
    ) -> None:
        self.body_hu = float(body_hu)
        self.air_hu = float(air_hu)
        self.airway_hu = float(airway_hu)
        self.bone_hu = float(bone_hu)
        self.airway_wall_mm = float(airway_wall_mm)
        self.max_airway_area_mm2 = float(max_airway_area_mm2)
        self.min_lung_ml = float(min_lung_ml)
        self.min_bone_mm3 = float(min_bone_mm3)

    def params(self) -> dict[str, Any]:
        return dict(self.__dict__)

    # -- helpers ------------------------------------------------------------------------------------
    @staticmethod
    def _axes(affine: np.ndarray) -> tuple[int, int, int, np.ndarray]:
        """(superior-inferior voxel axis, +1 if the index grows superiorly else -1, left-right axis, spacing)."""
        a = np.asarray(affine, np.float64)[:3, :3]
        spacing = np.sqrt((a**2).sum(axis=0))
        si = int(np.argmax(np.abs(a[2])))
        lr = int(np.argmax(np.abs(a[0])))
        if lr == si:
            lr = [x for x in range(3) if x != si][0]
        return si, (1 if a[2, si] > 0 else -1), lr, spacing

    @staticmethod
    def _inplane(si: int) -> np.ndarray:
        st = np.zeros((3, 3, 3), bool)
        idx: list[Any] = [slice(None)] * 3
        idx[si] = 1
        st[tuple(idx)] = True  # 8-connected within the slice, not across slices
        return st

    @classmethod
    def _fill_inplane(cls, mask: np.ndarray, si: int) -> np.ndarray:
        from scipy import ndimage

        pad = [(0, 0)] * 3
        pad[si] = (1, 1)
        filled = ndimage.binary_fill_holes(np.pad(mask, pad), structure=cls._inplane(si))
        sl: list[Any] = [slice(None)] * 3
        sl[si] = slice(1, -1)
        return filled[tuple(sl)]

    # -- the segmentation ---------------------------------------------------------------------------
    def segment_arrays(self, volume: np.ndarray, affine: np.ndarray) -> dict[str, np.ndarray]:
        """The masks as full-grid boolean arrays (``body`` included, under that key)."""
        from scipy import ndimage

        ct = np.asarray(volume)
        si, sup, lr, spacing = self._axes(affine)
        voxel_mm3 = float(np.prod(spacing))
        inplane_area = float(np.prod([spacing[a] for a in range(3) if a != si]))
        full = np.ones((3, 3, 3), bool)

        # 1. body
        body = ct > self.body_hu
        lab, n = ndimage.label(body)
        if n == 0:
            empty = np.zeros(ct.shape, bool)
            return {k: empty for k in ("body", "left lung", "right lung", "trachea", "bronchie", "bone")}
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        body = lab == int(np.argmax(sizes))
        del lab
        body = self._fill_inplane(body, si)

        # 2. airway lumen
        cand = (ct < self.airway_hu) & body
        airway = self._airway(cand, body, si, sup, lr, inplane_area, voxel_mm3)
        wall = np.zeros_like(airway)
        if airway.any() and self.airway_wall_mm > 0:
            reach = max(self.airway_wall_mm, min(spacing[a] for a in range(3) if a != si))
            sampling = [spacing[a] if a != si else 1e6 for a in range(3)]  # in-plane distance only
            dist = ndimage.distance_transform_edt(~airway, sampling=sampling)
            wall = (dist <= reach + 1e-6) & ~airway & (ct >= self.air_hu) & body
        airway_all = airway | wall
        trachea, bronchie = self._split_carina(airway_all, airway, si, sup)

        # 3. lungs
        lungs = (ct < self.air_hu) & body & ~airway_all
        lab, n = ndimage.label(lungs, structure=full)
        if n:
            sizes = np.bincount(lab.ravel()) * voxel_mm3 / 1000.0
            sizes[0] = 0
            keep = np.flatnonzero(sizes >= self.min_lung_ml)
            lungs = np.isin(lab, keep)
        del lab
        lungs = self._fill_inplane(lungs, si) & ~airway_all
        left, right = self._split_lungs(lungs, body, affine, lr)

        # 4. bone
        bone = (ct > self.bone_hu) & body
        lab, n = ndimage.label(bone, structure=full)
        if n:
            sizes = np.bincount(lab.ravel()) * voxel_mm3
            sizes[0] = 0
            bone = np.isin(lab, np.flatnonzero(sizes >= self.min_bone_mm3))
        del lab
        bone = self._fill_inplane(bone, si) & ~lungs & ~airway_all
        return {"body": body, "left lung": left, "right lung": right, "trachea": trachea, "bronchie": bronchie,
                "bone": bone}

    def _airway(
        self, cand: np.ndarray, body: np.ndarray, si: int, sup: int, lr: int, area: float, voxel_mm3: float
    ) -> np.ndarray:
        from scipy import ndimage

        n_sl = cand.shape[si]
        order = range(n_sl - 1, -1, -1) if sup > 0 else range(n_sl)  # superior first
        inpl = self._inplane(si)
        # drop lung-sized (leaked) pieces slice by slice, in one labelling with in-plane connectivity
        lab2, n2 = ndimage.label(cand, structure=inpl)
        if n2 == 0:
            return np.zeros_like(cand)
        px = np.bincount(lab2.ravel())
        small = px * area <= self.max_airway_area_mm2
        small[0] = False
        cand = small[lab2]
        # seed: the largest piece near the midline in the most superior slice that has one
        body_lr = np.any(body, axis=tuple(a for a in range(3) if a != lr))
        lr_idx = np.flatnonzero(body_lr)
        if lr_idx.size == 0:
            return np.zeros_like(cand)
        mid, half = (lr_idx[0] + lr_idx[-1]) / 2.0, (lr_idx[-1] - lr_idx[0]) / 2.0
        seed_label = 0
        for s in order:
            sl = [slice(None)] * 3
            sl[si] = s
            lab_s = np.where(cand[tuple(sl)], lab2[tuple(sl)], 0)
            ids = np.unique(lab_s)
            ids = ids[ids > 0]
            best, best_px = 0, 0
            lr_2d = lr if lr < si else lr - 1
            for i in ids:
                where = np.nonzero(lab_s == i)
                c = float(np.mean(where[lr_2d]))
                if abs(c - mid) <= 0.25 * half and where[0].size > best_px:
                    best, best_px = int(i), where[0].size
            if best:
                seed_label = best
                seed_slice = s
                break
        if not seed_label:
            return np.zeros_like(cand)
        lab3, _ = ndimage.label(cand, structure=np.ones((3, 3, 3), bool))
        sl = [slice(None)] * 3
        sl[si] = seed_slice
        seed3 = np.unique(lab3[tuple(sl)][lab2[tuple(sl)] == seed_label])
        keep = set(int(x) for x in seed3[seed3 > 0])
        # bridge one-or-two-slice gaps in the lumen (thin lumen at the carina at coarse spacing): add nearby
        # pieces that are big enough not to be lung speckle (>= 3 voxels and >= 50 mm3)
        sizes = np.bincount(lab3.ravel())
        big = (sizes >= 3) & (sizes * voxel_mm3 >= 50.0)
        big[0] = False
        for _ in range(4):
            airway = np.isin(lab3, list(keep))
            box = _bbox_slices(airway, margin=3)
            near = ndimage.binary_dilation(airway[box], iterations=2)
            found = {int(x) for x in np.unique(lab3[box][near]) if x and big[x]} - keep
            if not found:
                break
            keep |= found
        return np.isin(lab3, list(keep))

    def _split_carina(
        self, airway: np.ndarray, lumen: np.ndarray, si: int, sup: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage

        n_sl = airway.shape[si]
        order = list(range(n_sl - 1, -1, -1) if sup > 0 else range(n_sl))
        carina = None
        gap = None  # first empty slice inside the lumen (the lumen can thin out at the carina)
        started = False
        for s in order:
            sl = [slice(None)] * 3
            sl[si] = s
            piece = lumen[tuple(sl)]
            if not piece.any():
                if started and gap is None:
                    gap = s
                continue
            started = True
            _, n = ndimage.label(piece, structure=np.ones((3, 3), bool))
            if n >= 2:
                carina = gap if gap is not None else s
                break
        trachea = airway.copy()
        bronchie = np.zeros_like(airway)
        if carina is not None:
            sl = [slice(None)] * 3
            sl[si] = slice(0, carina + 1) if sup > 0 else slice(carina, None)  # carina and below
            bronchie[tuple(sl)] = airway[tuple(sl)]
            trachea[tuple(sl)] = False
        return trachea, bronchie

    def _split_lungs(
        self, lungs: np.ndarray, body: np.ndarray, affine: np.ndarray, lr: int
    ) -> tuple[np.ndarray, np.ndarray]:
        from scipy import ndimage

        if not lungs.any():
            return lungs, lungs.copy()
        lab, n = ndimage.label(lungs)
        sizes = np.bincount(lab.ravel())
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        a = np.asarray(affine, np.float64)

        def world_x(index_along_lr: float) -> float:
            v = np.zeros(4)
            v[3] = 1.0
            v[lr] = index_along_lr
            return float((a @ v)[0])

        body_lr = np.flatnonzero(np.any(body, axis=tuple(x for x in range(3) if x != lr)))
        mid = (body_lr[0] + body_lr[-1]) / 2.0
        coord = np.arange(lungs.shape[lr], dtype=np.float32)
        shape = [1, 1, 1]
        shape[lr] = -1
        coord = coord.reshape(shape)
        if n >= 2 and sizes[order[1]] >= 0.2 * sizes[order[0]]:
            parts = [lab == order[0], lab == order[1]]
            rest = lungs & ~parts[0] & ~parts[1]
        else:  # one lung mass (or one lung only): cut at the body midline
            parts = [lungs & (coord < mid), lungs & (coord >= mid)]
            rest = np.zeros_like(lungs)
        centres = []
        for p in parts:
            idx = np.nonzero(np.any(p, axis=tuple(x for x in range(3) if x != lr)))[0]
            w = p.sum(axis=tuple(x for x in range(3) if x != lr))[idx]
            centres.append(float((idx * w).sum() / max(1, w.sum())) if idx.size else mid)
        # patient left = smaller RAS x
        xs = [world_x(c) for c in centres]
        li, ri = (0, 1) if xs[0] < xs[1] else (1, 0)
        left, right = parts[li].copy(), parts[ri].copy()
        if rest.any():  # small leftovers go to the side of the midline they are on
            left_is_low = world_x(0.0) < world_x(1.0)
            low = rest & (coord < mid)
            high = rest & (coord >= mid)
            left |= low if left_is_low else high
            right |= high if left_is_low else low
        return left, right

    def segment(self, volume: np.ndarray, affine: np.ndarray) -> PackedMasks:
        arrays = self.segment_arrays(volume, affine)
        arrays.pop("body")
        return masks_with_derived(arrays, affine, source=self.name)
