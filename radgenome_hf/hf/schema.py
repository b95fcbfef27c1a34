"""The schema of every config: its datasets features, and the plain specs of the generated configs.

``scene_graph`` and ``anatomy_pairs`` rows are written by the generation module; their columns are declared once
here as plain specs (type names, dicts for structs, one-element lists for lists) that turn into datasets
features (:func:`config_features`) and Arrow schemas (:func:`arrow_schema`) alike.

>>> list(config_features("vqa"))[:6]
['volume_name', 'patient_id', 'scan_id', 'reconstruction_id', 'question_type', 'question']
>>> arrow_schema({"bbox": ["int32"]})
bbox: list<item: int32>
  child 0, item: int32
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

import datasets

from ..io.tables import CTRATE_LABELS
from .features import LazyMaskFeature, MaskSetFeature, VolumeFeature

if TYPE_CHECKING:  # pragma: no cover
    import pyarrow as pa

__all__ = ["ANATOMY_PAIRS_FEATURES", "CONFIG_NAMES", "QUALITY_FEATURES", "SCENE_GRAPH_FEATURES", "VQA_TYPES",
           "arrow_schema", "config_features", "quality_arrow_type", "quality_feature"]

#: The quality stage's checks of a row's volume (``generate/quality.py``), joined into every config's rows;
#: ``null`` when the release has no quality rows (an upstream release that was not rebuilt).
QUALITY_FEATURES: dict[str, Any] = {
    "nonfinite_voxels": "int64",
    "hu_min": "float32",
    "hu_max": "float32",
    "intensity_source": "string",  # header | metadata
    "rescale_applied_twice": "bool",
    "lung_coverage": "float32",  # fraction of axial slices with lung (a non-chest scan is ~0)
    "spacing_ok": "bool",
    "flags": ["string"],  # the failed checks; [] for a clean volume
    # reports rows only (null elsewhere): per CT-RATE label, agrees | disagrees | not_mentioned (generate/label_checks.py)
    "label_checks": {label: "string" for label in CTRATE_LABELS},
}


def quality_feature() -> dict:
    """The ``quality`` column's datasets features (a struct of :data:`QUALITY_FEATURES`)."""
    return _python_schema_to_features(QUALITY_FEATURES)


def quality_arrow_type() -> "pa.DataType":
    """The Arrow type of the ``quality`` column."""
    return arrow_schema({"quality": QUALITY_FEATURES}).field("quality").type

CONFIG_NAMES = ("reports", "segmentation", "grounded_reports", "vqa", "scene_graph", "anatomy_pairs")
VQA_TYPES = ("abnormality", "location", "presence", "size", "disorders")

_DESCRIPTIONS = {
    "reports": "One CT-RATE volume per row with its radiology report, 18 abnormality labels and metadata.",
    "segmentation": "One volume per row with its structures (name, anatomy path, bbox, voxel count) and packed masks.",
    "grounded_reports": "One (volume, anatomy path) sentence group per row, grounded to the mask of its region.",
    "vqa": "One question–answer pair per row (abnormality, location, presence, size, disorders), grounded.",
    "scene_graph": "One volume per row as an anatomy-centred scene graph (objects, attributes, comparisons).",
    "anatomy_pairs": "One (volume, organ) image–text pair per row, fVLM style.",
}


def _id_features() -> dict:
    return {
        "volume_name": datasets.Value("string"),
        "patient_id": datasets.Value("string"),
        "scan_id": datasets.Value("string"),
        "reconstruction_id": datasets.Value("int32"),
    }


def _bbox() -> datasets.List:
    return datasets.List(datasets.Value("int32"))


def config_features(name: str) -> datasets.Features:
    """The features of a config (documented in ``cards/``)."""
    f = _id_features()
    if name == "reports":
        f.update(
            volume=VolumeFeature(),
            clinical_information=datasets.Value("string"),
            technique=datasets.Value("string"),
            findings=datasets.Value("string"),
            impressions=datasets.Value("string"),
            labels={label: datasets.Value("int8") for label in CTRATE_LABELS},
            spacing=datasets.List(datasets.Value("float32")),
            fixed_header=datasets.Value("bool"),
            manufacturer=datasets.Value("string"),
            patient_sex=datasets.Value("string"),
            patient_age=datasets.Value("float32"),
            study_date=datasets.Value("string"),
        )
    elif name == "segmentation":
        f.update(
            volume=VolumeFeature(),
            masks=MaskSetFeature(),
            shape=datasets.List(datasets.Value("int32")),
            structures=datasets.List(
                {
                    "name": datasets.Value("string"),
                    "source": datasets.Value("string"),
                    "anatomy_path": datasets.Value("string"),
                    "bbox": _bbox(),
                    "voxel_count": datasets.Value("int64"),
                }
            ),
        )
    elif name == "grounded_reports":
        f.update(
            anatomy=datasets.Value("string"),
            depth=datasets.Value("int8"),
            region=datasets.Value("string"),
            node=datasets.Value("string"),
            sentence=datasets.Value("string"),
            volume=VolumeFeature(),
            mask=LazyMaskFeature(),
        )
    elif name == "vqa":
        f.update(
            question_type=datasets.Value("string"),
            question=datasets.Value("string"),
            answer=datasets.Value("string"),
            anatomy=datasets.Value("string"),
            region=datasets.Value("string"),
            finding=datasets.Value("string"),
            manually_verified=datasets.Value("bool"),
            volume=VolumeFeature(),
            mask=LazyMaskFeature(),
        )
    elif name == "scene_graph":
        f.update(_python_schema_to_features(SCENE_GRAPH_FEATURES, skip=set(f)))
        f["volume"] = VolumeFeature()
    elif name == "anatomy_pairs":
        f.update(_python_schema_to_features(ANATOMY_PAIRS_FEATURES, skip=set(f)))
        f["volume"] = VolumeFeature()
        f["mask"] = LazyMaskFeature()
    else:
        raise ValueError(f"unknown config {name!r}; choose one of {CONFIG_NAMES}")
    f["quality"] = quality_feature()
    return datasets.Features(f)


def _python_schema_to_features(schema, skip=frozenset()):
    """Turn a plain description (type names, dicts, one-element lists) into datasets features."""
    names = {"str": "string", "string": "string", "int": "int64", "float": "float32", "bool": "bool",
             "int32": "int32", "int64": "int64", "float32": "float32", "float64": "float32", "int8": "int8"}

    def conv(t):
        if isinstance(t, dict):
            return {k: conv(v) for k, v in t.items()}
        if isinstance(t, list):
            return datasets.List(conv(t[0]))
        if isinstance(t, type):
            t = t.__name__
        return datasets.Value(names.get(str(t), str(t)))

    return {k: conv(v) for k, v in schema.items() if k not in skip}


SCENE_GRAPH_FEATURES: dict[str, Any] = {
    "volume_name": "string",
    "patient_id": "string",
    "scan_id": "string",
    "reconstruction_id": "int32",
    "prior_volume_name": "string",  # null for a patient's first scan
    "objects": [{
        "object_id": "string",  # "<volume_name>_<structure>"
        "name": "string",
        "anatomy_path": "string",
        "bbox": ["int32"],  # 6: i0, j0, k0, i1, j1, k1 (half-open voxel indices)
        "bbox_mm": ["float32"],  # 6: x0, y0, z0, x1, y1, z1 in world mm (voxel edges)
        "volume_ml": "float32",
        "voxel_count": "int64",
    }],
    "attributes": [{
        "object_id": "string",
        "name": "string",
        "attributes": ["string"],  # "category|yes/no|label"
        "phrases": ["string"],
        "abnormal": "bool",
    }],
    "relationships": [{
        "subject_id": "string",  # the prior scan's object (null for "new")
        "object_id": "string",  # the current scan's object (null for "resolved")
        "name": "string",
        "predicate": "string",  # improved | worsened | no change | new | resolved
        "relationship_names": ["string"],  # "comparison|yes|improved" ...
        "phrase": "string",
        "volume_ml_before": "float32",
        "volume_ml_after": "float32",
        "change_percent": "float32",
    }],
}


ANATOMY_PAIRS_FEATURES: dict[str, Any] = {
    "volume_name": "string",
    "patient_id": "string",
    "scan_id": "string",
    "reconstruction_id": "int32",
    "organ": "string",
    "anatomy_path": "string",
    "caption": "string",
    "conclusion": "string",  # conc (impressions part, or the template)
    "description": "string",  # desc (findings part)
    "abnormal": "bool",
    "labels": [{"name": "string", "value": "int8"}],
    "mask_name": "string",  # null when no mask grounds the organ
    "mask_source": "string",  # anatomy | region | whole
    "bbox": ["int32"],  # 6 ints, or null
}


def arrow_schema(spec: Mapping[str, Any] = SCENE_GRAPH_FEATURES) -> "pa.Schema":
    """The Arrow schema of a plain-type spec such as :data:`SCENE_GRAPH_FEATURES`."""
    import pyarrow as pa

    def conv(x: Any) -> pa.DataType:
        if isinstance(x, str):
            return {"string": pa.string(), "int32": pa.int32(), "int64": pa.int64(), "float32": pa.float32(),
                    "float64": pa.float64(), "bool": pa.bool_(), "int8": pa.int8()}[x]
        if isinstance(x, list):
            return pa.list_(conv(x[0]))
        return pa.struct([pa.field(k, conv(v)) for k, v in x.items()])

    return pa.schema([pa.field(k, conv(v)) for k, v in spec.items()])
