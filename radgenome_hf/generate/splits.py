"""Patient-level train/validation splits (stage 5): deterministic, never one patient in two splits.

Patients are ranked by ``sha256("<seed>:<patient_id>")``; the first ``round(n_patients × validation)`` go to
``validation``, the rest to ``train``. Volume names are never renamed: they keep the upstream prefix
(``train_`` / ``valid_``), and the assignment is a separate ``split`` column.

>>> t = assign_splits(["train_1_a_1", "train_1_b_1", "train_2_a_1", "valid_1_a_1"], validation=0.5, seed=0)
>>> sorted(set(zip(t["patient_id"].to_pylist(), t["split"].to_pylist())))
[('train_1', 'validation'), ('train_2', 'validation'), ('valid_1', 'train')]
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from ..errors import RadGenomeError
from ..names import VolumeName

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["SplitReport", "assign_splits", "split_report", "patient_rank", "write_splits", "SPLITS_SCHEMA"]

#: Columns of the split table (plain python types).
SPLITS_SCHEMA = {
    "volume_name": "string", "patient_id": "string", "scan_id": "string", "reconstruction_id": "int32",
    "original_split": "string", "split": "string",
}


def patient_rank(patient_id: str, seed: int = 0) -> str:
    """The hash that orders patients for a seed (hex sha256 of ``"<seed>:<patient_id>"``)."""
    return hashlib.sha256(f"{seed}:{patient_id}".encode()).hexdigest()


def assign_splits(volume_names: Iterable[str], *, validation: float | None = 0.05, seed: int = 0) -> "pa.Table":
    """Split volumes by patient. Returns one row per volume (sorted by name) with the columns of
    :data:`SPLITS_SCHEMA`; ``split`` is ``train`` or ``validation``.

    ``validation`` is the fraction of *patients* put into validation, rounded to the nearest whole patient
    (at least one when there are two or more patients and the fraction is above zero); ``None`` keeps each
    volume in the split its name says.

    >>> assign_splits(["valid_2_a_1", "train_1_a_1"], validation=None)["split"].to_pylist()
    ['train', 'validation']
    """
    import pyarrow as pa

    if validation is not None and not 0.0 <= validation <= 1.0:
        raise RadGenomeError(f"validation fraction must be within [0, 1], got {validation}")
    vols = sorted({VolumeName.parse(v) for v in volume_names})
    if validation is None:
        val = {v.patient_id for v in vols if v.hf_split == "validation"}
    else:
        val = _validation_patients(vols, validation, seed)
    return pa.table({
        "volume_name": pa.array([v.stem for v in vols], pa.string()),
        "patient_id": pa.array([v.patient_id for v in vols], pa.string()),
        "scan_id": pa.array([v.scan_id for v in vols], pa.string()),
        "reconstruction_id": pa.array([v.reconstruction_id for v in vols], pa.int32()),
        "original_split": pa.array([v.hf_split for v in vols], pa.string()),
        "split": pa.array(["validation" if v.patient_id in val else "train" for v in vols], pa.string()),
    })


def _validation_patients(vols: list[VolumeName], validation: float, seed: int) -> set[str]:
    patients = sorted({v.patient_id for v in vols}, key=lambda p: (patient_rank(p, seed), p))
    n_val = round(len(patients) * validation)
    if n_val == 0 and validation > 0 and len(patients) >= 2:
        n_val = 1
    if n_val == len(patients) and validation < 1 and len(patients) >= 2:
        n_val = len(patients) - 1
    return set(patients[:n_val])


@dataclass(frozen=True)
class SplitReport:
    """Counts of a split table."""

    patients: dict[str, int]
    volumes: dict[str, int]
    moved: int  # volumes whose split differs from their name's prefix

    def __str__(self) -> str:
        parts = [f"{s}: {self.patients.get(s, 0)} patients / {self.volumes.get(s, 0)} volumes"
                 for s in ("train", "validation")]
        return "; ".join(parts) + f"; {self.moved} volumes moved from their upstream split"


def split_report(table: "pa.Table") -> SplitReport:
    """Patient and volume counts per split; raises if a patient sits in two splits."""
    patients: dict[str, set[str]] = {}
    volumes: dict[str, int] = {}
    seen: dict[str, str] = {}
    moved = 0
    for row in table.select(["patient_id", "split", "original_split"]).to_pylist():
        p, s = row["patient_id"], row["split"]
        if seen.setdefault(p, s) != s:
            raise RadGenomeError(f"patient {p} is in two splits ({seen[p]} and {s}); rebuild the split table")
        patients.setdefault(s, set()).add(p)
        volumes[s] = volumes.get(s, 0) + 1
        moved += row["original_split"] != s
    return SplitReport({k: len(v) for k, v in patients.items()}, volumes, moved)


def write_splits(path: str | Path, table: "pa.Table") -> Path:
    """Write the split table as CSV (``.csv``) or parquet (anything else), atomically."""
    path = Path(path)
    if path.suffix == ".csv":
        from ..io.tables import write_csv

        return write_csv(path, table.column_names, (tuple(r.values()) for r in table.to_pylist()))
    import pyarrow.parquet as pq

    from ..io.atomic import atomic_path

    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")
    return path
