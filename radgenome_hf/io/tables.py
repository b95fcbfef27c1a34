r"""Readers and writers of the upstream CSV files (RadGenome ``radgenome_files/`` and CT-RATE).

Headers are exact: RadGenome files key volumes by ``Volumename`` (lower-case n), CT-RATE files by
``VolumeName``. Writers produce the real files' dialect: comma separator, ``"`` quoting only where
needed, LF line endings, a header row, no index column.

Readers return :class:`pyarrow.Table` s with snake_case columns and ``volume_name`` as the stem
(``train_1_a_1``). They parse with ``pyarrow.csv`` (all columns as strings; RFC-4180 quoting, quoted
newlines, a UTF-8 BOM and CRLF are accepted) and validate and convert with ``pyarrow.compute``: no Python
loop over rows, so the 1.3M-row VQA files read in about a second. A wrong header or a bad cell raises
:class:`~radgenome_hf.errors.MalformedFileError` naming the file, the 1-based data row and the column.

>>> import io
>>> csv_bytes = b'Volumename,Anatomy,Abnormality\ntrain_1_a_1.nii.gz,Lung/Lung,"nodule, 3 mm"\n'
>>> read_vqa(io.BytesIO(csv_bytes), "abnormality").to_pylist()
[{'volume_name': 'train_1_a_1', 'anatomy': 'lung/lung', 'abnormality': 'nodule, 3 mm'}]
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import BinaryIO, Iterable, Iterator, Sequence, Union

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv

from ..errors import MalformedFileError, ReleaseNotFoundError
from ..names import _NAME_RE, VolumeName
from ..ontology import normalize_path
from .atomic import atomic_path

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
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        w.writerow(header)
        for row in rows:
            w.writerow(["" if c is None else c for c in row])
    return path


# ==================================================================================================
# Readers
# ==================================================================================================
#
# Every reader parses with pyarrow.csv (all columns read as strings, RFC-4180 quoting, quoted newlines,
# UTF-8 BOM and CRLF tolerated), checks the header exactly, then validates and converts columns with
# pyarrow.compute: no Python loop over rows. Cell errors name the 1-based data row (header excluded)
# and the upstream column name.

Source = Union[str, "os.PathLike[str]", BinaryIO]

#: Volume-name pattern used for vectorised validation (the same pattern as ``names._NAME_RE``).
_STEM_PATTERN = _NAME_RE.pattern
_NAME_GROUPS_PATTERN = (
    r"^(?P<split>train|valid)_(?P<patient>[1-9][0-9]*)_(?P<scan>[a-z]+)_(?P<reconstruction>[1-9][0-9]*)$"
)
_SUFFIX_PATTERN = r"\.nii(?:\.gz)?$"
_NUM = r"[-+]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"
_NUM_RE = rf"^{_NUM}$"
_LIST_RE = rf"^\[\s*{_NUM}(?:\s*,\s*{_NUM})*\s*\]$"
_AGE_RE = r"^[0-9]{1,3}[YMWDymwd]?$"
#: Cells read as missing in numeric / list / label columns (besides the empty string).
_NULL_TOKENS = ("", "nan", "NaN", "NAN", "None", "null", "[]")

#: Upstream RadGenome column -> output column.
_RADGENOME_RENAME = {
    "Volumename": "volume_name",
    "Anatomy": "anatomy",
    "Sentence": "sentence",
    "Disorders": "disorders",
    "Abnormality": "abnormality",
    "Finding": "finding",
    "Presence": "presence",
    "Size": "size",
}
VQA_KINDS: tuple[str, ...] = ("abnormality", "location", "presence", "size")
PRESENCE_VALUES: tuple[str, ...] = ("Yes.", "No.")

CTRATE_REPORT_COLUMNS: dict[str, str] = {
    "VolumeName": "volume_name",
    "ClinicalInformation_EN": "clinical_information",
    "Technique_EN": "technique",
    "Findings_EN": "findings",
    "Impressions_EN": "impressions",
}

#: CT-RATE metadata column -> (output column, kind). kind is one of
#: ``str`` (kept as written, blank -> null), ``float`` (float64), ``int`` (int64), ``list`` (list<float64>),
#: ``age`` (``036Y`` -> int64 years), ``key`` (the volume name).
CTRATE_METADATA_COLUMNS: dict[str, tuple[str, str]] = {
    "VolumeName": ("volume_name", "key"),
    "Manufacturer": ("manufacturer", "str"),
    "SeriesDescription": ("series_description", "str"),
    "ManufacturerModelName": ("manufacturer_model_name", "str"),
    "PatientSex": ("patient_sex", "str"),
    "PatientAge": ("patient_age", "age"),
    "ReconstructionDiameter": ("reconstruction_diameter", "float"),
    "DistanceSourceToDetector": ("distance_source_to_detector", "float"),
    "DistanceSourceToPatient": ("distance_source_to_patient", "float"),
    "GantryDetectorTilt": ("gantry_detector_tilt", "float"),
    "TableHeight": ("table_height", "float"),
    "RotationDirection": ("rotation_direction", "str"),
    "ExposureTime": ("exposure_time", "float"),
    "XRayTubeCurrent": ("xray_tube_current", "float"),
    "Exposure": ("exposure", "float"),
    "FilterType": ("filter_type", "str"),
    "GeneratorPower": ("generator_power", "float"),
    "FocalSpots": ("focal_spots", "str"),
    "ConvolutionKernel": ("convolution_kernel", "str"),
    "PatientPosition": ("patient_position", "str"),
    "RevolutionTime": ("revolution_time", "float"),
    "SingleCollimationWidth": ("single_collimation_width", "float"),
    "TotalCollimationWidth": ("total_collimation_width", "float"),
    "TableSpeed": ("table_speed", "float"),
    "TableFeedPerRotation": ("table_feed_per_rotation", "float"),
    "SpiralPitchFactor": ("spiral_pitch_factor", "float"),
    "DataCollectionCenterPatient": ("data_collection_center_patient", "list"),
    "ReconstructionTargetCenterPatient": ("reconstruction_target_center_patient", "list"),
    "ExposureModulationType": ("exposure_modulation_type", "str"),
    "CTDIvol": ("ctdi_vol", "float"),
    "ImagePositionPatient": ("image_position_patient", "list"),
    "ImageOrientationPatient": ("image_orientation_patient", "list"),
    "SliceLocation": ("slice_location", "float"),
    "SamplesPerPixel": ("samples_per_pixel", "int"),
    "PhotometricInterpretation": ("photometric_interpretation", "str"),
    "Rows": ("rows", "int"),
    "Columns": ("columns", "int"),
    "XYSpacing": ("xy_spacing", "list"),
    "RescaleIntercept": ("rescale_intercept", "float"),
    "RescaleSlope": ("rescale_slope", "float"),
    "RescaleType": ("rescale_type", "str"),
    "NumberofSlices": ("number_of_slices", "int"),
    "ZSpacing": ("z_spacing", "float"),
    "StudyDate": ("study_date", "str"),
}
assert tuple(CTRATE_METADATA_COLUMNS) == CTRATE_METADATA_HEADER


def _label(source: Source) -> str:
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    for attr in ("path", "name"):
        value = getattr(source, attr, None)
        if isinstance(value, str):
            return value
    return "<stream>"


_BLOCK = 1 << 20  # pyarrow's default block size; a row (or the header) must fit in one block
_MAX_BLOCK = 1 << 30


def _csv_options(header: Sequence[str], *, use_threads: bool, handler=None, block_size: int = _BLOCK):
    read = pacsv.ReadOptions(use_threads=use_threads, block_size=block_size)
    parse = pacsv.ParseOptions(newlines_in_values=True, invalid_row_handler=handler)
    convert = pacsv.ConvertOptions(
        column_types={c: pa.string() for c in header},
        strings_can_be_null=False,
        quoted_strings_can_be_null=False,
    )
    return read, parse, convert


def _open_input(source: Source):
    if isinstance(source, (str, os.PathLike)):
        p = os.fspath(source)
        if not os.path.isfile(p):
            raise ReleaseNotFoundError(f"{p}: no such CSV file; check the release folder (see data-formats §1.4/§2)")
        return p
    return source


def _rewind(source: Source) -> bool:
    """Whether ``source`` can be read again from its start (paths always; streams when seekable)."""
    if isinstance(source, (str, os.PathLike)):
        return True
    seek = getattr(source, "seek", None)
    seekable = getattr(source, "seekable", lambda: False)
    if seek is None or not seekable():
        return False
    seek(0)
    return True


def _too_big_for_a_block(msg: str) -> bool:
    # a quoted field longer than the block (escaped quotes in it make pyarrow need the whole field in one block)
    return "straddling" in msg


def _header_too_long(source: Source) -> bool:
    """Whether the first block holds no line end: a header of more than 1 MiB (never one of this release's)."""
    if not _rewind(source):
        return False
    if isinstance(source, (str, os.PathLike)):
        with open(source, "rb") as f:
            head = f.read(_BLOCK)
    else:
        head = source.read(_BLOCK)
    return len(head) >= _BLOCK and b"\n" not in head and b"\r" not in head


def _parse_error_row(source: Source, header: Sequence[str], block_size: int = _BLOCK) -> int | None:
    """Re-parse single-threaded to learn the physical line of a malformed row (error path only)."""
    if not _rewind(source):
        return None
    rows: list[int] = []

    def handler(row) -> str:
        if row.number is not None:
            rows.append(row.number)
        return "error"

    read, parse, convert = _csv_options(header, use_threads=False, handler=handler, block_size=block_size)
    try:
        pacsv.read_csv(_open_input(source), read_options=read, parse_options=parse, convert_options=convert)
    except (pa.ArrowInvalid, OSError):
        pass
    return rows[0] - 1 if rows else None  # physical line (header = line 1) -> data row


def _read_csv(source: Source, header: Sequence[str]) -> tuple[pa.Table, int]:
    """(table, block size used): pyarrow's 1 MiB blocks first; a valid file with a longer row or header is read
    again with blocks 8x larger, up to the file's size (1 GiB for a stream)."""
    block = _BLOCK
    limit = os.path.getsize(source) + 1 if isinstance(source, (str, os.PathLike)) and os.path.isfile(source) \
        else _MAX_BLOCK
    while True:
        read, parse, convert = _csv_options(header, use_threads=True, block_size=block)
        try:
            table = pacsv.read_csv(_open_input(source), read_options=read, parse_options=parse,
                                   convert_options=convert)
            table.column_names  # noqa: B018 - decoded lazily: a non-UTF-8 header fails here
            return table, block
        except pa.ArrowInvalid as e:
            if not _too_big_for_a_block(str(e)) or block >= limit or not _rewind(source):
                e.block_size = block  # type: ignore[attr-defined]
                raise
            block = min(block * 8, limit)


def _read_strings(source: Source, header: Sequence[str], label: str | None = None) -> pa.Table:
    """Read a CSV whose header must be exactly ``header``; every column comes back as a string column."""
    label = label or _label(source)
    try:
        table, _ = _read_csv(source, header)
        names = table.column_names
    except UnicodeDecodeError as e:
        raise MalformedFileError(label, f"the header line is not UTF-8 text ({e.reason} at byte {e.start})") from e
    except pa.ArrowInvalid as e:
        msg = str(e)
        if "Empty CSV file" in msg and _header_too_long(source):
            raise MalformedFileError(
                label, f"the header line is longer than {_BLOCK >> 20} MiB (is this a CSV of this release?); expected "
                f"the header {','.join(header)}"
            ) from e
        if "Empty CSV file" in msg:
            raise MalformedFileError(
                label, f"the file is empty (or its header line is incomplete); expected the header {','.join(header)}"
            ) from e
        row = _parse_error_row(source, header, getattr(e, "block_size", _BLOCK))
        raise MalformedFileError(
            label,
            f"not a valid CSV table ({msg.replace('CSV parse error: ', '')}); every row must have "
            f"{len(header)} fields ({','.join(header)}), fields with commas in double quotes",
            row=row,
        ) from e
    _check_header(label, names, header)
    return table


def _check_header(label: str, names: Sequence[str], header: Sequence[str]) -> None:
    """Raise :class:`MalformedFileError` unless the CSV's column names are exactly ``header``."""
    if tuple(names) != tuple(header):
        missing = [c for c in header if c not in names]
        extra = [c for c in names if c not in header]
        if missing:
            column, what = missing[0], f"column {missing[0]!r} is missing"
        elif extra:
            column, what = extra[0], f"unexpected column {extra[0]!r}"
        else:
            column = next(h for h, n in zip(header, names) if h != n)
            what = "columns are in the wrong order"
        got = ",".join(names[:40]) + (f",… ({len(names)} columns)" if len(names) > 40 else "")
        raise MalformedFileError(
            label,
            f"wrong header: {what}. Expected exactly {','.join(header)!r}, got {got!r} "
            "(is this the right file? RadGenome files key volumes by 'Volumename', CT-RATE files by 'VolumeName')",
            column=column,
        )


def _first_false(mask) -> int | None:
    """Index of the first False (or null) in a boolean array, or None when all are True."""
    mask = pc.fill_null(mask, False)
    if pc.all(mask).as_py() is not False:
        return None
    return pc.index(mask, False).as_py()


def _require(ok, label: str, column: str, values, describe) -> None:
    """Raise :class:`MalformedFileError` at the first row where ``ok`` is False (or null).

    ``describe(value)`` says what is wrong with that row's cell (``values[row]``).
    """
    bad = _first_false(ok)
    if bad is not None:
        raise MalformedFileError(label, describe(values[bad].as_py()), row=bad + 1, column=column)


def _volume_names(label: str, col: pa.ChunkedArray, column: str) -> pa.ChunkedArray:
    """``train_1_a_1.nii.gz`` -> ``train_1_a_1``, validated against the volume-name pattern."""
    stems = pc.replace_substring_regex(col, _SUFFIX_PATTERN, "")
    _require(pc.match_substring_regex(stems, _STEM_PATTERN), label, column, col, lambda v: (
        f"{v!r} is not a volume name: expected <train|valid>_<patient>_<scan letter(s)>_<reconstruction>"
        "[.nii.gz], e.g. 'train_1_a_1.nii.gz'"))
    return stems


def _map_distinct(col: pa.ChunkedArray, fn) -> pa.Array:
    """Apply a Python function to each *distinct* value of a string column (few hundred), then gather."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    encoded = pc.dictionary_encode(arr)
    mapped = pa.array([fn(v) for v in encoded.dictionary.to_pylist()], pa.string())
    return pc.take(mapped, encoded.indices)


def _anatomy(col: pa.ChunkedArray) -> pa.Array:
    """Normalised anatomy paths (``ontology.normalize_path``: lower case, single spaces; blank/NaN -> "")."""
    return _map_distinct(col, normalize_path)


def _null_if(col, tokens: Sequence[str]):
    trimmed = pc.utf8_trim_whitespace(col)
    is_null = pc.is_in(trimmed, value_set=pa.array(list(tokens), pa.string()))
    return trimmed, is_null


def _to_number(label: str, col, column: str, dtype: pa.DataType):
    trimmed, is_null = _null_if(col, _NULL_TOKENS)
    ok = pc.or_(is_null, pc.match_substring_regex(trimmed, _NUM_RE))
    _require(ok, label, column, col, lambda v: f"{v!r} is not a number (expected e.g. 1.5, or a blank cell)")
    values = pc.cast(pc.if_else(is_null, pa.scalar(None, pa.string()), trimmed), pa.float64())
    if pa.types.is_integer(dtype):
        ok = pc.fill_null(pc.equal(pc.floor(values), values), True)
        _require(ok, label, column, col, lambda v: f"{v!r} is not a whole number")
        values = pc.cast(values, dtype)
    return values


def _to_float_list(label: str, col, column: str) -> pa.Array:
    """``"[0.341796875, 0.341796875]"`` -> list<float64>; blank (or ``[]``/``nan``) -> null."""
    trimmed, is_null = _null_if(col, _NULL_TOKENS)
    ok = pc.or_(is_null, pc.match_substring_regex(trimmed, _LIST_RE))
    _require(ok, label, column, col, lambda v: (
        f"{v!r} is not a list of numbers (expected e.g. \"[0.341796875, 0.341796875]\", or a blank cell)"))
    inner = pc.utf8_slice_codeunits(trimmed, 1, -1)
    inner = pc.if_else(is_null, pa.scalar(None, pa.string()), inner)
    if isinstance(inner, pa.ChunkedArray):
        inner = inner.combine_chunks()
    parts = pc.split_pattern_regex(pc.utf8_trim_whitespace(inner), r"\s*,\s*")
    values = pc.cast(parts.values, pa.float64())
    return pa.ListArray.from_arrays(parts.offsets, values, mask=parts.is_null())


def _age_years(label: str, col, column: str) -> pa.Array:
    """DICOM AS ``036Y`` -> 36; ``018M``/``010W``/``200D`` -> completed years (floor); blank -> null."""
    trimmed, is_null = _null_if(col, _NULL_TOKENS)
    ok = pc.or_(is_null, pc.match_substring_regex(trimmed, _AGE_RE))
    _require(ok, label, column, col, lambda v: f"{v!r} is not a DICOM age (expected e.g. '036Y', '018M', or blank)")
    upper = pc.utf8_upper(trimmed)
    number = pc.cast(
        pc.if_else(is_null, pa.scalar(None, pa.string()), pc.replace_substring_regex(upper, r"[YMWD]$", "")),
        pa.float64(),
    )
    per_year = pc.if_else(
        pc.ends_with(upper, "M"), 12.0,
        pc.if_else(pc.ends_with(upper, "W"), 52.1775, pc.if_else(pc.ends_with(upper, "D"), 365.25, 1.0)),
    )
    return pc.cast(pc.floor(pc.divide(number, per_year)), pa.int64())


def _convert_radgenome(label: str, raw: pa.Table, kind: str) -> pa.Table:
    """A RadGenome table of string columns (``kind`` e.g. ``"vqa_presence"``) -> the reader's columns, validated.

    Row by row: any block of a file's rows converts to the same rows as the whole file (cell errors name the row
    within ``raw``).
    """
    header = RADGENOME_HEADERS[kind]
    cols: dict[str, pa.Array | pa.ChunkedArray] = {"volume_name": _volume_names(label, raw["Volumename"], "Volumename")}
    for name in header[1:]:
        out = _RADGENOME_RENAME[name]
        cols[out] = _anatomy(raw[name]) if name == "Anatomy" else raw[name]
    table = pa.table(cols)
    if kind == "vqa_presence":
        ok = pc.is_in(table["presence"], value_set=pa.array(PRESENCE_VALUES))
        _require(ok, label, "Presence", table["presence"], lambda v: f"Presence must be 'Yes.' or 'No.', got {v!r}")
    elif kind == "case_disorders":
        d = pc.utf8_trim_whitespace(table["disorders"])
        parts = pc.split_pattern_regex(d, r"\s*,\s*")
        empty = pa.scalar([], pa.list_(pa.string()))
        table = table.append_column("disorder_list", pc.if_else(pc.equal(d, ""), empty, parts))
    return table


def _radgenome(source: Source, table_kind: str, label: str | None = None) -> pa.Table:
    label = label or _label(source)
    return _convert_radgenome(label, _read_strings(source, RADGENOME_HEADERS[table_kind], label), table_kind)


def read_region_report(path: Source) -> pa.Table:
    """``{train,validation}_region_report.csv`` -> ``volume_name, anatomy, sentence``.

    ``anatomy`` is normalised like :func:`ontology.normalize_path`; an empty/NaN cell is ``""`` (whole scan).
    """
    return _radgenome(path, "region_report")


def read_case_disorders(path: Source) -> pa.Table:
    """``{train,validation}_case_disorders.csv`` -> ``volume_name, disorders, disorder_list``.

    ``disorders`` is kept as written (including the literal ``"no findings"``); ``disorder_list`` splits it
    on commas (``"no findings"`` -> ``["no findings"]``, an empty cell -> ``[]``).
    """
    return _radgenome(path, "case_disorders")


def read_vqa(path: Source, kind: str) -> pa.Table:
    """``{train,validation}_vqa_<kind>.csv`` for kind in abnormality|location|presence|size.

    Columns: ``volume_name, anatomy`` and ``abnormality`` (abnormality, location), ``finding, presence``
    (presence; ``"Yes."``/``"No."`` kept exactly, anything else raises), ``abnormality, size`` (size).
    """
    if kind not in VQA_KINDS:
        raise ValueError(f"vqa kind must be one of {VQA_KINDS}, got {kind!r}")
    return _radgenome(path, f"vqa_{kind}")


_RADGENOME_FILE_RE = re.compile(
    r"^(?:train|valid|validation)_(region_report|case_disorders|vqa_(?:abnormality|location|presence|size))"
    r"\.csv(?:\.gz)?$"
)


def radgenome_table_kind(path: Source) -> str:
    """The table part of a RadGenome file name: ``train_vqa_presence.csv`` -> ``vqa_presence``."""
    base = _label(path).replace("\\", "/").rsplit("/", 1)[-1]
    m = _RADGENOME_FILE_RE.match(base)
    if m is None:
        raise ValueError(
            f"cannot tell the RadGenome table from the file name {base!r}: expected "
            f"<train|validation>_<{'|'.join(RADGENOME_HEADERS)}>.csv; call the specific reader instead"
        )
    return m.group(1)


def read_radgenome_table(path: Source, kind: str | None = None) -> pa.Table:
    """Read any RadGenome CSV, choosing the reader from the file name (or ``kind``, e.g. ``"vqa_presence"``)."""
    kind = kind or radgenome_table_kind(path)
    if kind not in RADGENOME_HEADERS:
        raise ValueError(f"unknown RadGenome table {kind!r}; expected one of {sorted(RADGENOME_HEADERS)}")
    return _radgenome(path, kind)


# ==================================================================================================
# Streaming: blocks of rows, a few MB at a time
# ==================================================================================================
#
# The 1.3M-row VQA files are ~100 MB of CSV; read whole, their Arrow strings plus everything derived from them
# are held at once. These read a file (or a byte range of it, cut at row starts by csv_row_starts) as a stream
# of pyarrow's record batches, converted one by one with the same functions as the whole-file readers.

_STREAM_BLOCK = 4 << 20  # bytes of CSV per streamed batch (~50k VQA rows)
_SCAN_CHUNK = 8 << 20


def _local_file(source: Source) -> str:
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"expected a local CSV path, got {type(source).__name__} (fetch remote files first)")
    return _open_input(source)


def csv_row_starts(source: str | os.PathLike, offsets: Sequence[int]) -> list[int]:
    """For each byte offset, where the first row at or after it starts (the file's size when none does).

    Cuts a CSV into contiguous blocks of rows without parsing it: a row starts after a line end that is outside
    double quotes, and quotes are counted from the file's start (an escaped ``""`` keeps the count even; CRLF
    works; a quoted field may hold line ends). Offset 0 is the header; offset 1 gives the first data row. One
    pass of ``bytes.count`` over the file up to the last offset.

    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "t.csv")
    >>> _ = open(path, "w").write('A,B\\nx,"two\\nlines"\\ny,z\\n')
    >>> csv_row_starts(path, [1, 6, 18, 19])
    [4, 18, 18, 22]
    """
    path = _local_file(source)
    size = os.path.getsize(path)
    order = sorted(range(len(offsets)), key=lambda i: offsets[i])
    out = [0] * len(offsets)
    pos, odd, last = 0, 0, 0  # quotes in [0, pos) are odd?; the last row start found
    with open(path, "rb") as f:
        for i in order:
            target = min(max(int(offsets[i]), 0), size)
            if target <= last:
                out[i] = last
                continue
            # count quotes up to target - 1, then look for the first line end at or after it outside quotes
            f.seek(pos)
            while pos < target - 1:
                chunk = f.read(min(_SCAN_CHUNK, target - 1 - pos))
                odd ^= chunk.count(b'"') & 1
                pos += len(chunk)
            found = size
            while True:
                chunk = f.read(1 << 16)
                if not chunk:
                    break
                j = 0
                while True:
                    nl = chunk.find(b"\n", j)
                    if nl < 0:
                        break
                    odd ^= chunk.count(b'"', j, nl) & 1
                    j = nl + 1
                    if not odd:
                        found = pos + j
                        break
                if found != size or not chunk:
                    break
                odd ^= chunk.count(b'"', j) & 1
                pos += len(chunk)
            if found == size:
                pos = size
            else:
                pos, odd = found, 0
            out[i] = last = found
    return out


def csv_line_count(source: str | os.PathLike) -> int:
    """Line ends in a file (its rows plus the header, plus any line ends inside quoted fields): a cheap estimate of
    a CSV's size in rows, without parsing it."""
    n = 0
    with open(_local_file(source), "rb") as f:
        while chunk := f.read(_SCAN_CHUNK):
            n += chunk.count(b"\n")
    return n


class _RowRange:
    """A file-like view of a CSV's header followed by the rows in bytes ``[start, stop)`` (pyarrow reads it)."""

    def __init__(self, path: str, start: int | None, stop: int | None) -> None:
        size = os.path.getsize(path)
        stop = size if stop is None else min(int(stop), size)
        header_end = csv_row_starts(path, [1])[0] if start else 0
        self._f = open(path, "rb")
        # (file offset, bytes) pieces to serve: the header (unless the range begins there), then the rows
        self._pieces = [(0, stop)] if not start or start <= header_end else [(0, header_end), (int(start), stop - start)]
        self.closed = False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        out = []
        while self._pieces and n != 0:
            offset, left = self._pieces[0]
            want = left if n is None or n < 0 else min(n, left)
            self._f.seek(offset)
            data = self._f.read(want)
            if len(data) < want or want == left:
                self._pieces.pop(0)
            else:
                self._pieces[0] = (offset + len(data), left - len(data))
            out.append(data)
            if n is not None and n > 0:
                n -= len(data)
            if len(data) < want:  # the file shrank: end here
                self._pieces.clear()
        return b"".join(out)

    def close(self) -> None:
        self._f.close()
        self.closed = True

    def __enter__(self) -> "_RowRange":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _iter_range(path: str, kind: str, start: int | None, stop: int | None, label: str, block_size: int):
    header = RADGENOME_HEADERS[kind]
    done = 0  # rows given out: after a retry with larger blocks, these are skipped
    block, limit = block_size, os.path.getsize(path) + 1
    while True:
        read, parse, convert = _csv_options(header, use_threads=True, block_size=block)
        try:
            with _RowRange(path, start, stop) as stream:
                reader = pacsv.open_csv(stream, read_options=read, parse_options=parse, convert_options=convert)
                _check_header(label, reader.schema.names, header)
                skip = done
                for batch in reader:
                    if skip >= batch.num_rows:
                        skip -= batch.num_rows
                        continue
                    raw = pa.Table.from_batches([batch]).slice(skip)
                    skip = 0
                    table = _convert_radgenome(label, raw, kind)
                    done += raw.num_rows
                    yield table
            return
        except pa.ArrowInvalid as e:
            if not _too_big_for_a_block(str(e)) or block >= limit:
                raise
            block = min(block * 8, limit)


def iter_radgenome_table(
    source: str | os.PathLike,
    kind: str | None = None,
    *,
    start: int | None = None,
    stop: int | None = None,
    label: str | None = None,
    block_size: int | None = None,
) -> Iterator[pa.Table]:
    """The rows of a local RadGenome CSV as a stream of tables of about ``block_size`` bytes of CSV each, with the
    columns and checks of :func:`read_radgenome_table`: concatenated, they are its table. Memory holds one block.

    ``block_size`` defaults to 4 MiB. ``start``/``stop``: only the rows in that byte range (offsets from :func:`csv_row_starts`; the header is read
    from the file's start either way). ``label`` names the file in errors (e.g. the ``hf://`` URL it came from). A
    malformed file raises the same :class:`MalformedFileError` as the whole-file reader, naming the row within the
    file.

    >>> import io, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "train_vqa_size.csv")
    >>> rows = "".join(f"train_{i}_a_1.nii.gz,lung,nodule,{i} mm\\n" for i in range(1, 5))
    >>> _ = open(path, "w").write("Volumename,Anatomy,Abnormality,Size\\n" + rows)
    >>> cut = csv_row_starts(path, [os.path.getsize(path) // 2])[0]
    >>> [t["size"].to_pylist() for t in iter_radgenome_table(path, start=cut)]
    [['3 mm', '4 mm']]
    """
    path = _local_file(source)
    kind = kind or radgenome_table_kind(path)
    if kind not in RADGENOME_HEADERS:
        raise ValueError(f"unknown RadGenome table {kind!r}; expected one of {sorted(RADGENOME_HEADERS)}")
    label = label or _label(source)
    try:
        yield from _iter_range(path, kind, start, stop, label, block_size or _STREAM_BLOCK)
    except (MalformedFileError, pa.ArrowInvalid, UnicodeDecodeError) as exc:
        # the whole-file reader says what is wrong and on which of the file's rows (a block numbers its own)
        _radgenome(path, kind, label)
        raise MalformedFileError(label, f"not a valid CSV table ({exc})") from exc


def read_ctrate_reports(path: Source) -> pa.Table:
    """``radiology_text_reports/{train,validation}_reports.csv`` ->
    ``volume_name, clinical_information, technique, findings, impressions``.

    The literal ``"Not given."`` (:data:`NOT_GIVEN`) and empty cells become null; other text is kept as written.
    """
    label = _label(path)
    raw = _read_strings(path, CTRATE_REPORT_HEADER)
    cols: dict[str, object] = {"volume_name": _volume_names(label, raw["VolumeName"], "VolumeName")}
    for name in CTRATE_REPORT_HEADER[1:]:
        col = raw[name]
        trimmed = pc.utf8_trim_whitespace(col)
        missing = pc.or_(pc.equal(trimmed, ""), pc.equal(trimmed, NOT_GIVEN))
        cols[CTRATE_REPORT_COLUMNS[name]] = pc.if_else(missing, pa.scalar(None, pa.string()), col)
    return pa.table(cols)


def read_ctrate_metadata(path: Source) -> pa.Table:
    """``metadata/{train,validation}_metadata.csv`` -> ``volume_name`` + the 43 other columns in snake_case.

    Types (see :data:`CTRATE_METADATA_COLUMNS`): list-valued strings (``XYSpacing``, ``ImagePositionPatient``,
    ``ImageOrientationPatient``, ``DataCollectionCenterPatient``, ``ReconstructionTargetCenterPatient``) ->
    list<float64>; numeric columns -> float64 / int64 (``Rows``, ``Columns``, ``NumberofSlices``,
    ``SamplesPerPixel``); ``PatientAge`` (DICOM AS, ``036Y``) -> int64 completed years (``M``/``W``/``D``
    suffixes are converted and floored: ``018M`` -> 1); text columns and ``StudyDate`` stay strings. Blank
    cells are null everywhere. A malformed cell raises :class:`MalformedFileError` with its row and column.
    """
    label = _label(path)
    raw = _read_strings(path, CTRATE_METADATA_HEADER)
    cols: dict[str, object] = {}
    for name, (out, kind) in CTRATE_METADATA_COLUMNS.items():
        col = raw[name]
        if kind == "key":
            cols[out] = _volume_names(label, col, name)
        elif kind == "str":
            cols[out] = pc.if_else(pc.equal(pc.utf8_trim_whitespace(col), ""), pa.scalar(None, pa.string()), col)
        elif kind == "float":
            cols[out] = _to_number(label, col, name, pa.float64())
        elif kind == "int":
            cols[out] = _to_number(label, col, name, pa.int64())
        elif kind == "list":
            cols[out] = _to_float_list(label, col, name)
        elif kind == "age":
            cols[out] = _age_years(label, col, name)
    return pa.table(cols)


def read_ctrate_labels(path: Source) -> pa.Table:
    """``multi_abnormality_labels/{train,valid}_predicted_labels.csv`` -> ``volume_name`` + 18 int8 columns.

    Label columns keep CT-RATE's names (:data:`CTRATE_LABELS`). Cells are ``0``/``1`` (``0.0``/``1.0`` as a
    pandas round trip writes them are accepted); blank -> null; anything else raises with row and column.
    """
    label = _label(path)
    raw = _read_strings(path, CTRATE_LABEL_HEADER)
    cols: dict[str, object] = {"volume_name": _volume_names(label, raw["VolumeName"], "VolumeName")}
    allowed = pa.array(["0", "1", "0.0", "1.0", ""], pa.string())
    for name in CTRATE_LABELS:
        trimmed = pc.utf8_trim_whitespace(raw[name])
        _require(pc.is_in(trimmed, value_set=allowed), label, name, raw[name],
                 lambda v: f"label value {v!r} is not 0, 1 or blank")
        values = pc.cast(pc.starts_with(trimmed, "1"), pa.int8())
        cols[name] = pc.if_else(pc.equal(trimmed, ""), pa.scalar(None, pa.int8()), values)
    return pa.table(cols)


# ==================================================================================================
# Helpers on read tables
# ==================================================================================================


def _stem(volume_name: object) -> str:
    return VolumeName.parse(str(volume_name)).stem


def with_name_columns(table: pa.Table) -> pa.Table:
    """Add ``patient_id`` (``train_1``), ``scan_id`` (``train_1_a``) and ``reconstruction_id`` (int32),
    derived from ``volume_name`` without a Python loop."""
    parts = pc.extract_regex(table["volume_name"], _NAME_GROUPS_PATTERN)
    if isinstance(parts, pa.ChunkedArray):
        parts = parts.combine_chunks()
    split, patient, scan, rec = (parts.field(i) for i in range(4))
    patient_id = pc.binary_join_element_wise(split, patient, "_")
    scan_id = pc.binary_join_element_wise(patient_id, scan, "_")
    return (
        table.append_column("patient_id", patient_id)
        .append_column("scan_id", scan_id)
        .append_column("reconstruction_id", pc.cast(rec, pa.int32()))
    )


def metadata_row(table: pa.Table, volume_name: str | VolumeName) -> dict:
    """The first row of ``table`` whose ``volume_name`` is ``volume_name`` (stem, file name or VolumeName), as a dict.

    Raises ``KeyError`` if the volume is not in the table.
    """
    stem = _stem(volume_name)
    i = pc.index(table["volume_name"], stem).as_py()
    if i < 0:
        raise KeyError(f"volume {stem!r} is not in this table ({table.num_rows} rows)")
    return table.slice(i, 1).to_pylist()[0]


def filter_volumes(table: pa.Table, volume_names: Iterable[str | VolumeName]) -> pa.Table:
    """Rows whose ``volume_name`` is one of ``volume_names`` (stems or file names), in table order."""
    stems = pa.array(sorted({_stem(v) for v in volume_names}), pa.string())
    return table.filter(pc.is_in(table["volume_name"], value_set=stems))


def join_on_volume(left: pa.Table, right: pa.Table, *, how: str = "left outer") -> pa.Table:
    """Join two tables on ``volume_name`` (pyarrow hash join), keeping ``left``'s row order.

    Columns of ``right`` that clash with ``left``'s get the suffix ``_right``.
    """
    order = "__row_order__"
    left = left.append_column(order, pa.array(range(left.num_rows), pa.int64()))
    joined = left.join(right, keys="volume_name", join_type=how, right_suffix="_right", coalesce_keys=True)
    if how.startswith("left") or how == "inner":
        joined = joined.sort_by(order)
    return joined.drop_columns([order])


def duplicate_volumes(table: pa.Table) -> list[str]:
    """Volume names that occur on more than one row (sorted); tables keyed by volume should return ``[]``."""
    counts = table.group_by("volume_name").aggregate([("volume_name", "count")])
    dup = counts.filter(pc.greater(counts["volume_name_count"], 1))
    return sorted(dup["volume_name"].to_pylist())
