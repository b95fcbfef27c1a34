"""``radgenome-hf show VOLUME --anatomy NAME``: a PNG of a region (three planes, mask outline, grounded sentence)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "show",
        help="write a PNG of a region: axial/coronal/sagittal slices, its mask outlined, its report sentence",
        description="VOLUME is a .nii/.nii.gz file, or a volume name (train_1_a_1) resolved in --data-dir. The "
        "grounding mask comes from --masks (packed masks parquet or a seg_<stem>/ folder), else from the release "
        "(seg_<stem>/ folders, or the mask archives packed once). The caption is the region_report sentence of "
        "that (volume, anatomy), from --region-report or the release.",
    )
    p.add_argument("volume", help="path to a .nii.gz volume, or a volume name such as train_1_a_1")
    p.add_argument("--anatomy", default="", help="anatomy node name or path (e.g. 'heart', 'lung/lung/right lung'); "
                   "empty = whole scan")
    p.add_argument("--data-dir", type=Path, help="upstream release folder (holding RadGenome-ChestCT/)")
    p.add_argument("--masks", type=Path, help="packed masks (.parquet) or a seg_<stem>/ folder of per-structure masks")
    p.add_argument("--region-report", type=Path, help="a *_region_report.csv for the caption")
    p.add_argument("--out", type=Path, help="output PNG (default: <volume>_<anatomy>.png in the current folder)")
    p.add_argument("--window", type=float, nargs=2, default=(-1000.0, 400.0), metavar=("LO", "HI"),
                   help="display window in HU (default -1000 400)")
    p.set_defaults(func=run)


def _is_path(text: str) -> bool:
    return text.endswith((".nii", ".nii.gz")) or os.sep in text or "/" in text


def _masks_from_option(path: Path, anatomy: str):
    from ..access.masks import PackedMasks
    from ..ontology import normalize_name
    from ..training import resolve_region_mask

    if path.is_dir():
        files = {normalize_name(f): path / f for f in sorted(os.listdir(path)) if f.endswith((".nii", ".nii.gz"))}
        kind = "region" if "_region_mask" in str(path) else "anatomy"
        names = list(files)
        source, name = resolve_region_mask(None, anatomy, **({"region_names": names} if kind == "region" else {"anatomy_names": names}))
        if name is None:
            return None, source, None
        return PackedMasks.from_nifti_files({name: files[name]}, source=kind).mask(name), source, name
    pm = PackedMasks.load(path)
    source, name = resolve_region_mask(pm, anatomy)
    return (None if name is None else pm.mask(name)), source, name


def run(args: argparse.Namespace) -> int:
    from ..errors import MissingVolumeError, ReleaseNotFoundError
    from ..names import VolumeName
    from ..viz import find_region_sentence, load_grounding_mask, render_region

    release = None
    if args.data_dir is not None:
        from ..io.release import UpstreamRelease

        release = UpstreamRelease.discover(args.data_dir)

    # -- the volume ----------------------------------------------------------------------------------------
    text = args.volume
    if _is_path(text) or Path(text).is_file():
        vol_path = Path(text).expanduser()
        if not vol_path.is_file():
            raise MissingVolumeError(f"{vol_path}: no such volume file; give a .nii.gz path or a volume name with --data-dir")
        stem = vol_path.name
        for suffix in (".nii.gz", ".nii"):
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
        try:
            vname: str | None = VolumeName.parse(stem).stem
        except Exception:  # noqa: BLE001 - any file name is fine for a path
            vname = None
        if release is None and vname is not None:
            # a file inside a release (<root>/dataset/<split>_preprocessed/...): use that release for masks/captions
            for parent in vol_path.resolve().parents:
                if parent.name == "dataset":
                    from ..io.release import UpstreamRelease

                    try:
                        release = UpstreamRelease.discover(radgenome_dir=parent.parent)
                    except ReleaseNotFoundError:
                        release = None
                    break
    else:
        vname = VolumeName.parse(text).stem
        if release is None:
            raise ReleaseNotFoundError(
                f"{text!r} is a volume name: pass --data-dir <release folder> (or give the .nii.gz path instead)"
            )
        p = release.radgenome_volume(vname)
        if p is None or not os.path.isfile(p):
            raise MissingVolumeError(f"{p}: volume {vname} is not in the release {args.data_dir}; check the name")
        vol_path = Path(p)

    # -- the mask -----------------------------------------------------------------------------------------
    mask, source, mask_name = None, "whole", None
    if args.masks is not None:
        mask, source, mask_name = _masks_from_option(args.masks, args.anatomy)
    elif release is not None and vname is not None:
        mask, source, mask_name = load_grounding_mask(release, vname, args.anatomy)

    # -- the sentence -------------------------------------------------------------------------------------
    sentence = None
    csv = args.region_report
    if csv is None and release is not None and vname is not None:
        csv = release.radgenome_csv(VolumeName.parse(vname).split, "region_report")
    if csv is not None and vname is not None:
        sentence = find_region_sentence(csv, vname, args.anatomy)

    from ..access.volume import Volume

    volume = Volume.open(vol_path)
    out = args.out or Path(f"{vname or 'volume'}_{(args.anatomy or 'whole').replace('/', '_').replace(' ', '_')}.png")
    label = args.anatomy or "whole scan"
    grounded = f"{source} mask '{mask_name}'" if mask_name else "whole scan"
    title = f"{vname or vol_path.name} — {label} ({grounded})"
    render_region(volume, mask, sentence, out, title=title, window=tuple(args.window))
    print(f"wrote {out}" + ("" if sentence else " (no region_report sentence for this anatomy)"))
    return 0
