"""The offline demo: a synthetic release in the real layouts, read with the readers, loaded with every config."""

from __future__ import annotations

import os
import time
from pathlib import Path

from .names import RADGENOME_CSV_SPLIT
from .io.release import UpstreamRelease


def _fmt_row(row: dict, width: int = 100) -> str:
    parts = []
    for k, v in row.items():
        text = repr(v)
        if len(text) > 60:
            text = text[:57] + "..."
        parts.append(f"{k}={text}")
    out, line = [], "    "
    for p in parts:
        if len(line) + len(p) > width:
            out.append(line.rstrip())
            line = "    "
        line += p + "  "
    out.append(line.rstrip())
    return "\n".join(out)


def describe_release(data_dir: str | os.PathLike) -> str:
    """What the readers see in a release folder: files and row counts, one parsed row of each kind,
    one volume's geometry and HU range, one mask's voxel count."""
    from .io import tables
    from .io.archives import list_members

    release = UpstreamRelease.discover(data_dir, need="any")
    lines = [f"release: RadGenome root {release.radgenome_root}", f"         CT-RATE root {release.ctrate_root}"]
    first_rows: dict[str, dict] = {}
    for split in ("train", "valid"):
        for table in tables.RADGENOME_HEADERS:
            path = release.radgenome_csv(split, table)
            if path is None:
                continue
            t = tables.read_radgenome_table(path)
            lines.append(f"  {Path(path).name:<40} {t.num_rows:>6} rows")
            first_rows.setdefault(table, t.slice(0, 1).to_pylist()[0] if t.num_rows else {})
        for label, getter, reader in (
            ("reports", release.ctrate_reports, tables.read_ctrate_reports),
            ("metadata", release.ctrate_metadata, tables.read_ctrate_metadata),
            ("labels", release.ctrate_labels, tables.read_ctrate_labels),
        ):
            path = getter(split)
            if path is None:
                continue
            t = reader(path)
            lines.append(f"  {Path(path).name:<40} {t.num_rows:>6} rows")
            row = t.slice(0, 1).to_pylist()[0] if t.num_rows else {}
            if label == "metadata":
                row = {k: row[k] for k in ("volume_name", "xy_spacing", "z_spacing", "rescale_slope",
                                           "rescale_intercept", "patient_age") if k in row}
            first_rows.setdefault(label, row)
        for kind in ("region", "anatomy"):
            src = release.mask_source(split, kind)
            if src is not None:
                n = len(list_members(src))
                lines.append(f"  {RADGENOME_CSV_SPLIT[split]} {kind} masks: {src.form} ({n} mask files)")
    lines.append("one parsed row of each kind:")
    for kind, row in first_rows.items():
        lines.append(f"  {kind}:")
        lines.append(_fmt_row(row))
    volume_line = _describe_one_volume(release)
    if volume_line:
        lines += volume_line
    return "\n".join(lines)


def _describe_one_volume(release: UpstreamRelease) -> list[str]:
    import numpy as np

    from .access.volume import Volume

    root = release.radgenome_root
    if root is None or "://" in root:
        return []
    vols = sorted(Path(root, "dataset").glob("*_preprocessed/*/*/*.nii.gz"))
    if not vols:
        return []
    vol = Volume.open(vols[0])
    arr = vol.array()
    out = [f"one volume: {vol!r}", f"  HU range [{int(arr.min())}, {int(arr.max())}], mean {float(arr.mean()):.1f}"]
    stem = vols[0].name[: -len(".nii.gz")]
    from .io.archives import iter_masks
    from .access.masks import PackedMasks

    for kind in ("anatomy", "region"):
        src = release.mask_source(stem.split("_")[0], kind)
        if src is None:
            continue
        for volume, _kind, structure, data in iter_masks(src, lambda v, k, s: v.stem == stem):
            packed = PackedMasks.from_nifti_files({structure: data}, source=kind)
            name = packed.names[0]
            out.append(f"  {kind} mask {structure!r} ({src.form}): {packed.voxel_count(name)} voxels of "
                       f"{int(np.prod(packed.shape))}, bbox {packed.bbox(name)}")
            break
        break
    return out


def run_demo(out: Path, *, seed: int = 0) -> None:
    """Write a synthetic upstream release to ``out/upstream``, describe it, run generation stage 2 into
    ``out/release`` (the derived ``scene_graph`` and ``anatomy_pairs`` rows), and load every config from it."""
    from .hf.schema import CONFIG_NAMES
    from .testing.synthetic import SyntheticConfig, write_release

    from .generate.pipeline import PipelineConfig, rebuild_release

    t0 = time.perf_counter()
    upstream = out / "upstream"
    print(f"== writing a synthetic upstream release (real layouts) to {upstream}")
    synthetic = write_release(upstream, SyntheticConfig(seed=seed, mask_layout="archives"), progress=False)
    print(f"   {len(synthetic.volumes)} RadGenome volumes in {time.perf_counter() - t0:.1f} s")
    print("== what the readers see")
    print(describe_release(synthetic.root))
    t1 = time.perf_counter()
    release_dir = out / "release"
    print(f"== generation stage 2 (ground, vqa, scene graphs, anatomy pairs) into {release_dir}")
    report = rebuild_release(upstream, release_dir, PipelineConfig(seed=seed, progress=False))
    print(f"   {report.volumes} volumes in {time.perf_counter() - t1:.1f} s")
    release = type("R", (), {"root": release_dir})
    print("== loading every config with datasets.load_dataset('radgenome', config, data_dir=...)")
    import datasets

    from .hf.loading import register

    register()  # datasets.load_dataset("radgenome", …) resolves to the builder

    cache = out / ".hf_cache"
    failed = []
    for config in CONFIG_NAMES:
        t1 = time.perf_counter()
        try:
            ds = datasets.load_dataset("radgenome", config, data_dir=str(release.root), cache_dir=str(cache))
        except Exception as exc:  # noqa: BLE001 - the demo reports and goes on
            print(f"-- {config}: could not load ({type(exc).__name__}: {exc})")
            failed.append(config)
            continue
        sizes = ", ".join(f"{k} {len(v)}" for k, v in ds.items())
        print(f"-- {config}: {sizes} rows ({time.perf_counter() - t1:.1f} s); first train row:")
        print(_fmt_row(ds["train"][0]))
    print(f"== demo finished in {time.perf_counter() - t0:.1f} s")
    if failed:
        from .errors import RadGenomeError

        raise RadGenomeError(f"the demo could not load: {', '.join(failed)}")
