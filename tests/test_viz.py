"""render_region and `radgenome-hf show`."""

from __future__ import annotations

import numpy as np
import pytest

from radgenome_hf.viz import find_region_sentence, region_centre, render_region


def _phantom():
    ct = np.full((40, 36, 24), -1000, np.int16, order="F")
    ct[6:34, 6:30, 2:22] = 40
    m = np.zeros(ct.shape, bool)
    m[10:20, 12:18, 8:14] = True
    return ct, m


def test_render_region_writes_png_of_expected_size(tmp_path):
    import matplotlib.image as mpimg

    ct, m = _phantom()
    out = render_region(ct, m, "A nodule measuring 13 mm is seen in the right lower lobe.", tmp_path / "a" / "r.png",
                        spacing=(1.0, 1.0, 2.0), title="test")
    img = mpimg.imread(out)
    assert img.shape[:2] == (480, 1200)
    # the mask outline is drawn in red somewhere: some pixels are strongly red
    red = (img[..., 0] > 0.8) & (img[..., 1] < 0.4) & (img[..., 2] < 0.4)
    assert red.sum() > 20
    assert not list(tmp_path.glob("a/.*"))  # atomic write left no temporary file
    # without a mask: no red at all
    img2 = mpimg.imread(render_region(ct, None, None, tmp_path / "b.png", figsize=(6, 3), dpi=50))
    assert img2.shape[:2] == (150, 300)
    assert not ((img2[..., 0] > 0.8) & (img2[..., 1] < 0.4)).any()


def test_region_centre():
    _, m = _phantom()
    assert region_centre(m, m.shape) == (14, 14, 10)
    assert region_centre(None, (10, 20, 30)) == (5, 10, 15)


def test_show_cli_on_synthetic_release(synthetic_release, tmp_path, capsys):
    import matplotlib.image as mpimg

    from radgenome_hf.cli import main

    name = synthetic_release.volumes[0]
    out = tmp_path / "show.png"
    rc = main(["show", name, "--anatomy", "heart", "--data-dir", str(synthetic_release.root), "--out", str(out)])
    assert rc == 0 and out.is_file()
    assert mpimg.imread(out).shape[:2] == (480, 1200)
    csv = synthetic_release.radgenome_root / "dataset" / "radgenome_files" / "train_region_report.csv"
    sentence = find_region_sentence(csv, name, "heart")
    import csv as _csv

    with open(csv, newline="") as f:
        rows = [r for r in _csv.DictReader(f) if r["Volumename"] == f"{name}.nii.gz" and r["Anatomy"] == "heart"]
    assert sentence == (rows[0]["Sentence"] if rows else None)
    # an unknown volume name is a clear error, not a traceback
    rc = main(["show", "train_999_a_1", "--anatomy", "heart", "--data-dir", str(synthetic_release.root),
               "--out", str(tmp_path / "x.png")])
    assert rc == 1 and "train_999_a_1" in capsys.readouterr().err


def test_show_cli_with_path_and_mask_folder(tmp_path):
    import matplotlib.image as mpimg
    import nibabel as nib

    from radgenome_hf.cli import main

    ct, m = _phantom()
    vol = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ct, np.diag([1.0, 1.0, 2.0, 1.0])), vol)
    seg = tmp_path / "seg_x"
    seg.mkdir()
    nib.save(nib.Nifti1Image(m.astype(np.uint8), np.diag([1.0, 1.0, 2.0, 1.0])), seg / "heart.nii.gz")
    out = tmp_path / "p.png"
    assert main(["show", str(vol), "--anatomy", "heart/heart", "--masks", str(seg), "--out", str(out)]) == 0
    img = mpimg.imread(out)
    assert img.shape[:2] == (480, 1200) and ((img[..., 0] > 0.8) & (img[..., 1] < 0.4)).sum() > 20
