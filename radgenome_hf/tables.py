"""Readers and writers of the upstream CSV files (RadGenome ``radgenome_files/`` and CT-RATE).

Headers are exact: RadGenome files key volumes by ``Volumename`` (lower-case n), CT-RATE files by
``VolumeName``. Writers produce the real files' dialect: comma separator, ``"`` quoting only where
needed, LF line endings, a header row, no index column.
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Iterable, Sequence

#: Exact headers of the RadGenome CSVs, keyed by the table part of the file name
#: (``train_vqa_presence.csv`` -> ``vqa_presence``).
RADGENOME_HEADERS: dict[str, tuple[str, ...]] = {
    "region_report": ("Volumename", "Anatomy", "Sentence"),
    "case_disorders": ("Volumename", "Disorders"),
    "vqa_abnormality": ("Volumename", "Anatomy", "Abnormality"),
    "vqa_location": ("Volumename", "Anatomy", "Abnormality"),
    "vqa_presence": ("Volumename", "Anatomy", "Finding", "Presence"),
    "vqa_size": ("Volumename", "Anatomy", "Abnormality", "Size"),
}

#: CT-RATE's 18 abnormality labels in the label CSV's column order.
CTRATE_LABELS: tuple[str, ...] = (
    "Medical material", "Arterial wall calcification", "Cardiomegaly", "Pericardial effusion",
    "Coronary artery wall calcification", "Hiatal hernia", "Lymphadenopathy", "Emphysema", "Atelectasis",
    "Lung nodule", "Lung opacity", "Pulmonary fibrotic sequela", "Pleural effusion",
    "Mosaic attenuation pattern", "Peribronchial thickening", "Consolidation", "Bronchiectasis",
    "Interlobular septal thickening",
)

CTRATE_REPORT_HEADER: tuple[str, ...] = (
    "VolumeName", "ClinicalInformation_EN", "Technique_EN", "Findings_EN", "Impressions_EN",
)
CTRATE_LABEL_HEADER: tuple[str, ...] = ("VolumeName", *CTRATE_LABELS)
CTRATE_METADATA_HEADER: tuple[str, ...] = tuple(
    "VolumeName,Manufacturer,SeriesDescription,ManufacturerModelName,PatientSex,PatientAge,"
    "ReconstructionDiameter,DistanceSourceToDetector,DistanceSourceToPatient,GantryDetectorTilt,TableHeight,"
    "RotationDirection,ExposureTime,XRayTubeCurrent,Exposure,FilterType,GeneratorPower,FocalSpots,"
    "ConvolutionKernel,PatientPosition,RevolutionTime,SingleCollimationWidth,TotalCollimationWidth,TableSpeed,"
    "TableFeedPerRotation,SpiralPitchFactor,DataCollectionCenterPatient,ReconstructionTargetCenterPatient,"
    "ExposureModulationType,CTDIvol,ImagePositionPatient,ImageOrientationPatient,SliceLocation,SamplesPerPixel,"
    "PhotometricInterpretation,Rows,Columns,XYSpacing,RescaleIntercept,RescaleSlope,RescaleType,NumberofSlices,"
    "ZSpacing,StudyDate".split(",")
)

#: The literal CT-RATE uses for a missing report section.
NOT_GIVEN = "Not given."


def write_csv(path: str | os.PathLike, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a CSV in the upstream dialect (minimal quoting, LF endings) atomically.

    ``None`` cells are written empty. The file appears under its name only once complete.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if c is None else c for c in row])
    os.replace(tmp, path)
    return path
