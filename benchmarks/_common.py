"""Shared benchmark helpers: interleaved timing rounds, medians, page-cache dropping, a synthetic CT, tables.

Usage from another benchmark::

    from _common import interleaved, Comparison, print_comparisons, drop_page_cache, synthetic_ct

    times = interleaved({"ours": f, "nibabel": g}, rounds=5)      # each op once per round, round-robin
    print_comparisons([Comparison("full volume", "ours", times["ours"], {"nibabel": times["nibabel"]})])

Timings are medians in milliseconds; the ratio printed is baseline median / our median (> 1 means we are faster).
The machine is shared and noisy: only differences of about 2x or more are meaningful.
"""

from __future__ import annotations

import gc
import os
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

__all__ = [
    "timed",
    "interleaved",
    "median_ms",
    "Comparison",
    "print_comparisons",
    "comparisons_markdown",
    "drop_page_cache",
    "synthetic_ct",
    "synthetic_structures",
    "fmt_bytes",
    "emit_json",
]


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """(seconds, result) of one call."""
    gc.collect()
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(
    ops: Mapping[str, Callable[[], object]],
    rounds: int = 5,
    before: Mapping[str, Callable[[], object]] | None = None,
    warmup: bool = True,
) -> dict[str, list[float]]:
    """Run every op once per round, round-robin, so drifting machine load hits all of them alike.

    ``before[name]`` (untimed) runs just before each timed call of ``name`` (e.g. to drop the page cache).
    Returns name -> list of seconds.
    """
    before = before or {}
    if warmup:
        for name, fn in ops.items():
            fn()
    out: dict[str, list[float]] = {name: [] for name in ops}
    for _ in range(rounds):
        for name, fn in ops.items():
            if name in before:
                before[name]()
            dt, res = timed(fn)
            del res
            out[name].append(dt)
    return out


def emit_json(result: object, path: str | os.PathLike | None) -> None:
    """Print a benchmark's result as JSON (its last line) and write it to ``path`` too when given."""
    import json

    print(json.dumps(result))
    if path:
        Path(path).write_text(json.dumps(result, indent=1))


def median_ms(xs: Sequence[float]) -> float:
    return 1000.0 * statistics.median(xs)


@dataclass
class Comparison:
    """One operation: our timing and those of the baselines, measured in the same run."""

    operation: str
    ours_label: str
    ours: Sequence[float]  # seconds per round
    baselines: Mapping[str, Sequence[float]] = field(default_factory=dict)
    note: str = ""


def _rows(comps: Sequence[Comparison]) -> list[tuple[str, str, str, str, str, str]]:
    rows = []
    for c in comps:
        ours = median_ms(c.ours)
        if not c.baselines:
            rows.append((c.operation, c.ours_label, f"{ours:.1f}", "", "", c.note))
        for i, (name, xs) in enumerate(c.baselines.items()):
            base = median_ms(xs)
            rows.append(
                (
                    c.operation if i == 0 else "",
                    c.ours_label if i == 0 else "",
                    f"{ours:.1f}" if i == 0 else "",
                    f"{name}: {base:.1f}",
                    f"{base / ours:.1f}x" if ours > 0 else "inf",
                    c.note if i == 0 else "",
                )
            )
    return rows


HEADER = ("operation", "ours", "ours ms (median)", "baseline ms (median)", "ratio base/ours", "note")


def print_comparisons(comps: Sequence[Comparison]) -> None:
    """A plain-text table: our median, each baseline's median, and the ratio."""
    rows = [HEADER, *_rows(comps)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADER))]
    for n, r in enumerate(rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))


def comparisons_markdown(comps: Sequence[Comparison]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in _rows(comps)]
    return "\n".join(lines)


def drop_page_cache(*paths: str | os.PathLike) -> None:
    """Ask the kernel to drop the cached pages of files (``POSIX_FADV_DONTNEED``), for cold-read timings."""
    for p in paths:
        p = Path(p)
        files = [q for q in p.rglob("*") if q.is_file()] if p.is_dir() else [p]
        for f in files:
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n} B"


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """An int16 HU chest-like phantom of realistic compressibility, F-ordered ``(i, j, k)``.

    Uses ``radgenome_hf.testing.synthetic.make_phantom`` when that exists, else this simple phantom: outside-FOV -1024,
    air, a body ellipse with fat ring and soft tissue, two lungs, heart, spine; spatially correlated noise
    (trilinear-upsampled) plus white noise, so ``gzip`` gives roughly 2-2.5x like real CT.
    """
    try:  # prefer the package's phantom when another engineer has shipped it
        from radgenome_hf.testing.synthetic import make_phantom  # type: ignore

        try:
            vol = make_phantom(shape=shape, seed=seed)
        except TypeError:
            vol = make_phantom(shape, seed)
        arr = np.asarray(getattr(vol, "ct", vol[0] if isinstance(vol, tuple) else vol))
        if arr.shape == tuple(shape) and arr.dtype == np.int16:
            return np.asfortranarray(arr)
    except Exception:
        pass
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    x = (np.arange(X, dtype=np.float32) - X / 2) / (X / 2)
    y = (np.arange(Y, dtype=np.float32) - Y / 2) / (Y / 2)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    fov = xx**2 + yy**2 <= 1.0
    body = (xx / 0.85) ** 2 + (yy / 0.62) ** 2 <= 1.0
    inner = (xx / 0.78) ** 2 + (yy / 0.55) ** 2 <= 1.0
    lung_r = ((xx - 0.35) / 0.3) ** 2 + (yy / 0.42) ** 2 <= 1.0
    lung_l = ((xx + 0.35) / 0.3) ** 2 + (yy / 0.42) ** 2 <= 1.0
    heart = ((xx + 0.05) / 0.22) ** 2 + ((yy + 0.12) / 0.2) ** 2 <= 1.0
    spine = (xx**2 + (yy - 0.45) ** 2) <= 0.09**2
    cortex = spine & ((xx**2 + (yy - 0.45) ** 2) >= 0.07**2)
    table = (yy > 0.7) & (yy < 0.75) & (np.abs(xx) < 0.8)

    base2d = np.full((X, Y), -1024, np.float32)
    base2d[fov] = -1000
    base2d[body] = -100
    base2d[inner] = 40
    base2d[lung_r | lung_l] = -860
    base2d[heart] = 45
    base2d[spine] = 250
    base2d[cortex] = 800
    base2d[table] = 200
    sigma2d = np.where(fov, 6.0, 0.0).astype(np.float32)
    sigma2d[body] = 18
    sigma2d[lung_r | lung_l] = 30

    # correlated noise: low-res Gaussian noise, trilinear upsampling (fast, float32)
    low = torch.from_numpy(rng.standard_normal((1, 1, Z // 4 + 1, Y // 8 + 1, X // 8 + 1)).astype(np.float32))
    corr = F.interpolate(low, size=(Z, Y, X), mode="trilinear", align_corners=False)[0, 0].numpy()  # (k, j, i)
    out = np.empty((Z, Y, X), np.int16)  # C (k, j, i) == F (i, j, k) transposed: no transposing copy needed
    white_rng = np.random.default_rng(seed + 1)
    for k in range(Z):
        taper = 1.0 - 0.3 * abs(k - Z / 2) / (Z / 2)  # lungs shrink towards the ends
        sl = base2d.T.copy()
        if taper < 0.95:
            lungs_k = (((xx - 0.35) / (0.3 * taper)) ** 2 + (yy / (0.42 * taper)) ** 2 <= 1.0) | (
                ((xx + 0.35) / (0.3 * taper)) ** 2 + (yy / (0.42 * taper)) ** 2 <= 1.0
            )
            sl[((lung_r | lung_l) & ~lungs_k).T] = 40
        noise = sigma2d.T * (3.0 * corr[k] + white_rng.standard_normal((Y, X), dtype=np.float32))
        out[k] = np.clip(sl + noise, -1024, 3071).astype(np.int16)
    return out.T  # F-ordered (i, j, k)


def synthetic_structures(shape: tuple[int, int, int], n_blobs: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Binary structures on the grid: lungs, heart, spine and ``n_blobs`` ellipsoid blobs (bool, F order)."""
    rng = np.random.default_rng(seed)
    X, Y, Z = shape
    i = (np.arange(X, dtype=np.float32) - X / 2) / (X / 2)
    j = (np.arange(Y, dtype=np.float32) - Y / 2) / (Y / 2)
    k = (np.arange(Z, dtype=np.float32) - Z / 2) / (Z / 2)
    ii, jj, kk = i[:, None, None], j[None, :, None], k[None, None, :]

    def ell(cx, cy, cz, rx, ry, rz):
        return (((ii - cx) / rx) ** 2 + ((jj - cy) / ry) ** 2 + ((kk - cz) / rz) ** 2) <= 1.0

    out = {
        "right lung": ell(0.35, 0.0, 0.0, 0.3, 0.42, 0.95),
        "left lung": ell(-0.35, 0.0, 0.0, 0.3, 0.42, 0.95),
        "heart": ell(-0.05, -0.12, -0.1, 0.22, 0.2, 0.35),
        "spine": ell(0.0, 0.45, 0.0, 0.09, 0.09, 1.5),
    }
    for b in range(n_blobs):
        c = rng.uniform(-0.6, 0.6, 3)
        r = rng.uniform(0.03, 0.15, 3)
        out[f"blob {b}"] = ell(*c, *r)
    return {name: np.asfortranarray(m) for name, m in out.items()}
