"""Volume names and the upstream folder layouts of CT-RATE and RadGenome-ChestCT.

A volume name is ``<split>_<patient>_<scan>_<reconstruction>``, e.g. ``train_1_a_1`` (training split,
patient 1, scan ``a``, reconstruction 1). Reconstruction ids can have several digits (``train_1022_a_11``).

>>> v = VolumeName.parse("train_1_a_11.nii.gz")
>>> v.patient_id, v.scan_id, v.stem
('train_1', 'train_1_a', 'train_1_a_11')
>>> ctrate_volume_path(v)
'dataset/train/train_1/train_1_a/train_1_a_11.nii.gz'
>>> radgenome_volume_path(v)
'dataset/train_preprocessed/train_1/train_1a/train_1_a_11.nii.gz'
>>> mask_path(v, "anatomy", "lung nodule")
'dataset/train_anatomy_mask/seg_train_1_a_11/lung nodule.nii.gz'
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from .errors import VolumeNameError

Split = Literal["train", "valid"]
MaskKind = Literal["region", "anatomy"]

_NAME_RE = re.compile(r"^(train|valid)_([1-9][0-9]*)_([a-z]+)_([1-9][0-9]*)$")
_SUFFIXES = (".nii.gz", ".nii")

#: The name each layout gives a split (volume-name prefix -> folder / CSV prefix).
RADGENOME_CSV_SPLIT = {"train": "train", "valid": "validation"}
CTRATE_REPORT_SPLIT = {"train": "train", "valid": "validation"}
CTRATE_LABEL_SPLIT = {"train": "train", "valid": "valid"}
#: datasets split names
HF_SPLIT = {"train": "train", "valid": "validation"}


@dataclass(frozen=True, order=True)
class VolumeName:
    """A parsed CT-RATE volume name. ``str(v)`` gives the stem (``train_1_a_1``)."""

    split: Split
    patient: int
    scan: str
    reconstruction: int

    @classmethod
    def parse(cls, text: str) -> "VolumeName":
        """Parse ``train_1_a_1``, ``train_1_a_1.nii.gz`` or a path ending in either."""
        if not isinstance(text, str):
            raise VolumeNameError(f"volume name must be a string, got {type(text).__name__}")
        base = text.replace("\\", "/").rsplit("/", 1)[-1]
        for suffix in _SUFFIXES:
            if base.endswith(suffix):
                base = base[: -len(suffix)]
                break
        m = _NAME_RE.match(base)
        if m is None:
            raise VolumeNameError(
                f"{text!r} is not a volume name: expected <train|valid>_<patient>_<scan letter(s)>_"
                "<reconstruction>, e.g. 'train_1_a_1' or 'valid_53_b_2.nii.gz'"
            )
        return cls(m.group(1), int(m.group(2)), m.group(3), int(m.group(4)))  # type: ignore[arg-type]

    @property
    def stem(self) -> str:
        return f"{self.split}_{self.patient}_{self.scan}_{self.reconstruction}"

    @property
    def filename(self) -> str:
        """``train_1_a_1.nii.gz``: the form used in the CSVs' ``Volumename`` / ``VolumeName``."""
        return self.stem + ".nii.gz"

    @property
    def patient_id(self) -> str:
        return f"{self.split}_{self.patient}"

    @property
    def scan_id(self) -> str:
        return f"{self.split}_{self.patient}_{self.scan}"

    @property
    def reconstruction_id(self) -> int:
        return self.reconstruction

    @property
    def hf_split(self) -> str:
        """The datasets split name: ``train`` or ``validation``."""
        return HF_SPLIT[self.split]

    def __str__(self) -> str:
        return self.stem


def parse_volume_name(text: str) -> VolumeName:
    """Parse a volume name; raises :class:`VolumeNameError` with an example of the right form."""
    return VolumeName.parse(text)


def _v(name: VolumeName | str) -> VolumeName:
    return name if isinstance(name, VolumeName) else VolumeName.parse(name)


def ctrate_volume_path(name: VolumeName | str, *, fixed: bool = False) -> str:
    """CT-RATE path relative to the repo root: ``dataset/train[_fixed]/train_1/train_1_a/train_1_a_1.nii.gz``."""
    v = _v(name)
    folder = v.split + ("_fixed" if fixed else "")
    return f"dataset/{folder}/{v.patient_id}/{v.scan_id}/{v.filename}"


def radgenome_volume_path(name: VolumeName | str) -> str:
    """RadGenome path: ``dataset/train_preprocessed/train_1/train_1a/train_1_a_1.nii.gz`` (no ``_`` before the letter)."""
    v = _v(name)
    return f"dataset/{v.split}_preprocessed/{v.patient_id}/{v.patient_id}{v.scan}/{v.filename}"


def mask_dir(name: VolumeName | str, kind: MaskKind) -> str:
    """Folder of one volume's masks: ``dataset/train_region_mask/seg_train_1_a_1``."""
    v = _v(name)
    if kind not in ("region", "anatomy"):
        raise ValueError(f"mask kind must be 'region' or 'anatomy', got {kind!r}")
    return f"dataset/{v.split}_{kind}_mask/seg_{v.stem}"


def mask_path(name: VolumeName | str, kind: MaskKind, structure: str) -> str:
    """Path of one structure's binary mask: ``dataset/train_anatomy_mask/seg_train_1_a_1/lung nodule.nii.gz``.

    A structure name is one file name: path separators, ``..`` and NUL are refused (a name must never
    address a file outside its volume's mask folder).
    """
    if not structure or "/" in structure or "\\" in structure or "\x00" in structure or structure.strip() in (".", ".."):
        raise ValueError(f"{structure!r} is not a structure name: it must be a single file name, e.g. 'lung nodule'")
    return f"{mask_dir(name, kind)}/{structure}.nii.gz"


def mask_archive_prefix(split: Split, kind: MaskKind) -> str:
    """Member prefix inside a mask archive: ``train_anatomy_mask/`` (archives hold ``<prefix>seg_<stem>/<name>.nii.gz``)."""
    return f"{split}_{kind}_mask/"


_MEMBER_RE = re.compile(r"(?:^|/)(train|valid)_(region|anatomy)_mask/seg_([^/]+)/([^/]+)\.nii(?:\.gz)?$")


def parse_mask_member(member: str) -> tuple[VolumeName, MaskKind, str] | None:
    """Parse an archive member or path ``…/train_anatomy_mask/seg_train_1_a_1/lung nodule.nii.gz``.

    Returns (volume, kind, structure name as written) or ``None`` if the path is not a mask file.
    """
    m = _MEMBER_RE.search(member.replace("\\", "/"))
    if m is None:
        return None
    try:
        v = VolumeName.parse(m.group(3))
    except VolumeNameError:
        return None
    if v.split != m.group(1):
        return None
    return v, m.group(2), m.group(4)  # type: ignore[return-value]


def radgenome_csv_name(split: Split, table: str) -> str:
    """``train_vqa_presence.csv`` / ``validation_region_report.csv``."""
    return f"{RADGENOME_CSV_SPLIT[split]}_{table}.csv"
