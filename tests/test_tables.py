"""CSV readers: real RadGenome rows, CT-RATE files written here with the exact headers, malformed input."""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pytest

from radgenome_hf.io import tables as T
from radgenome_hf.errors import MalformedFileError, ReleaseNotFoundError
from radgenome_hf.names import VolumeName
from radgenome_hf.ontology import get_ontology

REAL_ROWS = {
    "train_case_disorders.csv": 165,
    "train_vqa_abnormality.csv": 3230,
    "train_vqa_location.csv": 1968,
    "train_vqa_presence.csv": 3677,
    "train_vqa_size.csv": 84,
}

# data-formats.md §2.4, verbatim (header + the real first row of validation_metadata.csv)
META_HEADER = ",".join(T.CTRATE_METADATA_HEADER)
META_ROW = (
    'valid_1_a_1.nii.gz,Philips,HRCT,iCT 256,M,036Y,350,,,0,71,CW,622,186,116,YA,,,YA,HFS,,,,,,,,,Z DOM,'
    '7.830488795,"[-166, 9, 56.2998657]","[1, 0, 0, 0, 1, 0]",56.3,1,MONOCHROME2,1024,1024,'
    '"[0.341796875, 0.341796875]",-1024,1,,251,1.5,20210427'
)


def _meta_cells(**over: str) -> str:
    """A second metadata row built from named upstream columns (everything else blank)."""
    cells = {c: "" for c in T.CTRATE_METADATA_HEADER}
    cells.update(over)
    out = []
    for c in T.CTRATE_METADATA_HEADER:
        v = cells[c]
        out.append(f'"{v}"' if "," in v else v)
    return ",".join(out)


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


# -------------------------------------------------------------------------------------------------
# Real RadGenome rows
# -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real(real_sample_dir: Path) -> dict[str, pa.Table]:
    return {name: T.read_radgenome_table(real_sample_dir / name) for name in REAL_ROWS}


def test_real_row_counts_match_line_counts(real, real_sample_dir):
    for name, expected in REAL_ROWS.items():
        with open(real_sample_dir / name, "rb") as f:
            lines = sum(1 for _ in f)
        assert real[name].num_rows == expected == lines - 1, name


def test_real_volume_names_parse_and_columns(real):
    expected_cols = {
        "train_case_disorders.csv": ["volume_name", "disorders", "disorder_list"],
        "train_vqa_abnormality.csv": ["volume_name", "anatomy", "abnormality"],
        "train_vqa_location.csv": ["volume_name", "anatomy", "abnormality"],
        "train_vqa_presence.csv": ["volume_name", "anatomy", "finding", "presence"],
        "train_vqa_size.csv": ["volume_name", "anatomy", "abnormality", "size"],
    }
    for name, table in real.items():
        assert table.column_names == expected_cols[name]
        for v in set(table["volume_name"].to_pylist()):
            assert VolumeName.parse(v).stem == v  # stems, ".nii.gz" stripped
    names = set(real["train_case_disorders.csv"]["volume_name"].to_pylist())
    assert len(names) == 165


def test_real_vqa_anatomy_paths_are_in_ontology(real):
    onto = get_ontology()
    for name in REAL_ROWS:
        if "vqa" not in name:
            continue
        paths = set(real[name]["anatomy"].to_pylist())
        assert paths and "" not in paths
        assert [p for p in paths if p not in onto] == [], name


def test_real_location_is_abnormality_minus_no_findings(real):
    ab = real["train_vqa_abnormality.csv"].to_pylist()
    loc = real["train_vqa_location.csv"].to_pylist()
    key = lambda r: (r["volume_name"], r["anatomy"], r["abnormality"])  # noqa: E731
    no_findings = [r for r in ab if r["abnormality"] == "no findings"]
    assert no_findings, "the sample has negative rows"
    assert Counter(key(r) for r in ab if r["abnormality"] != "no findings") == Counter(key(r) for r in loc)


def test_real_presence_yes_rows_are_location_rows(real):
    pres = real["train_vqa_presence.csv"].to_pylist()
    loc = real["train_vqa_location.csv"].to_pylist()
    assert {r["presence"] for r in pres} == {"Yes.", "No."}
    yes = Counter((r["volume_name"], r["anatomy"], r["finding"]) for r in pres if r["presence"] == "Yes.")
    assert yes == Counter((r["volume_name"], r["anatomy"], r["abnormality"]) for r in loc)


def test_real_case_disorders(real):
    t = real["train_case_disorders.csv"]
    rows = t.to_pylist()
    assert len({r["volume_name"] for r in rows}) == len(rows)  # one row per volume
    assert T.duplicate_volumes(t) == []
    nf = [r for r in rows if r["disorders"] == "no findings"]
    assert nf and all(r["disorder_list"] == ["no findings"] for r in nf)
    first = rows[0]
    assert first["volume_name"] == "train_1_a_1"
    assert first["disorder_list"][:2] == ["venous collaterals in the anterior left chest wall", "left subclavian vein occlusion"]
    assert all(", ".join(r["disorder_list"]) == r["disorders"] for r in rows)


def test_real_size_rows(real):
    rows = real["train_vqa_size.csv"].to_pylist()
    assert rows[0] == {"volume_name": "train_3_b_1", "anatomy": "pleura/pleura", "abnormality": "pleural effusion", "size": "50 mm"}


def test_file_like_fsspec_bom_crlf_inputs_give_the_same_table(real, real_sample_dir, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    name = "train_vqa_presence.csv"
    expected = real[name]
    with open(real_sample_dir / name, "rb") as f:
        assert T.read_vqa(f, "presence").equals(expected)
    with fsspec.open(str(real_sample_dir / name), "rb") as f:
        assert T.read_radgenome_table(f).equals(expected)  # kind inferred from the opened file's name
    raw = (real_sample_dir / name).read_bytes()
    crlf = tmp_path / name
    crlf.write_bytes(b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"))
    assert T.read_radgenome_table(crlf).equals(expected)
    assert T.read_vqa(io.BytesIO(raw), "presence").equals(expected)


def test_table_kind_inference():
    assert T.radgenome_table_kind("a/b/train_vqa_presence.csv") == "vqa_presence"
    assert T.radgenome_table_kind("validation_region_report.csv") == "region_report"
    assert T.radgenome_table_kind("validation_case_disorders.csv") == "case_disorders"
    with pytest.raises(ValueError, match="cannot tell"):
        T.radgenome_table_kind("train_reports.csv")
    with pytest.raises(ValueError):
        T.read_vqa("x.csv", "disorders")


# -------------------------------------------------------------------------------------------------
# RadGenome files written here
# -------------------------------------------------------------------------------------------------


def test_region_report_normalises_anatomy_and_keeps_text(tmp_path):
    p = T.write_csv(
        tmp_path / "train_region_report.csv",
        T.RADGENOME_HEADERS["region_report"],
        [
            ["train_1_a_1.nii.gz", "", "When examined in the lung window; nodules, 3 mm."],
            ["train_1_a_1.nii.gz", "Lung/Lung/Right  Lung", 'Quoted "text"\nacross lines.'],
            ["train_1022_a_11.nii.gz", "bone/bone/vertebrae/thoracic vertebrae/thoracic vertebrae 12 (T12)", "x"],
            ["valid_3_b_2", "NaN", "y"],
        ],
    )
    t = T.read_region_report(p)
    assert t.column_names == ["volume_name", "anatomy", "sentence"]
    assert t["volume_name"].to_pylist() == ["train_1_a_1", "train_1_a_1", "train_1022_a_11", "valid_3_b_2"]
    assert t["anatomy"].to_pylist() == [
        "",
        "lung/lung/right lung",
        "bone/bone/vertebrae/thoracic vertebrae/thoracic vertebrae 12 (t12)",
        "",
    ]
    assert t["sentence"].to_pylist()[:2] == ["When examined in the lung window; nodules, 3 mm.", 'Quoted "text"\nacross lines.']
    assert t["anatomy"].null_count == 0
    named = T.with_name_columns(t)
    assert named["patient_id"].to_pylist() == ["train_1", "train_1", "train_1022", "valid_3"]
    assert named["scan_id"].to_pylist() == ["train_1_a", "train_1_a", "train_1022_a", "valid_3_b"]
    assert named["reconstruction_id"].to_pylist() == [1, 1, 11, 2]
    assert named.schema.field("reconstruction_id").type == pa.int32()


def test_bad_volume_name_names_row_and_column(tmp_path):
    p = T.write_csv(
        tmp_path / "train_vqa_size.csv",
        T.RADGENOME_HEADERS["vqa_size"],
        [["train_1_a_1.nii.gz", "lung", "nodule", "3 mm"], ["train_1_a_1.nii.gz", "lung", "nodule", "4 mm"],
         ["train_0_a_1.nii.gz", "lung", "nodule", "5 mm"]],
    )
    with pytest.raises(MalformedFileError) as e:
        T.read_radgenome_table(p)
    assert (e.value.row, e.value.column) == (3, "Volumename")
    assert "train_0_a_1.nii.gz" in str(e.value) and str(p) in str(e.value)


def test_bad_presence_value(tmp_path):
    p = T.write_csv(tmp_path / "x.csv", T.RADGENOME_HEADERS["vqa_presence"],
                    [["train_1_a_1.nii.gz", "lung", "mass", "No."], ["train_1_a_1.nii.gz", "lung", "mass", "yes"]])
    with pytest.raises(MalformedFileError) as e:
        T.read_vqa(p, "presence")
    assert (e.value.row, e.value.column) == (2, "Presence")


@pytest.mark.parametrize(
    "header, column",
    [
        ("Volumename,Anatomy", "Abnormality"),  # missing
        ("VolumeName,Anatomy,Abnormality", "Volumename"),  # CT-RATE spelling in a RadGenome file
        ("Volumename,Anatomy,Abnormality,Extra", "Extra"),  # extra
        ("Anatomy,Volumename,Abnormality", "Volumename"),  # order
    ],
)
def test_wrong_header_names_the_column(tmp_path, header, column):
    ncols = header.count(",") + 1
    p = _write(tmp_path / "train_vqa_abnormality.csv", header + "\n" + ",".join(["train_1_a_1.nii.gz"] + ["x"] * (ncols - 1)) + "\n")
    with pytest.raises(MalformedFileError) as e:
        T.read_vqa(p, "abnormality")
    assert e.value.column == column and "header" in str(e.value)


def test_ragged_row_empty_and_missing_files(tmp_path):
    p = _write(tmp_path / "a.csv", "Volumename,Disorders\ntrain_1_a_1.nii.gz,x\ntrain_2_a_1.nii.gz\ntrain_3_a_1.nii.gz,y\n")
    with pytest.raises(MalformedFileError) as e:
        T.read_case_disorders(p)
    assert e.value.row == 2
    with pytest.raises(MalformedFileError, match="empty"):
        T.read_case_disorders(_write(tmp_path / "b.csv", ""))
    with pytest.raises(ReleaseNotFoundError):
        T.read_case_disorders(tmp_path / "missing.csv")


# -------------------------------------------------------------------------------------------------
# Streaming: byte ranges cut at row starts, a block of rows at a time
# -------------------------------------------------------------------------------------------------


def _tricky_presence(tmp_path: Path, crlf: bool = False) -> Path:
    """A presence CSV whose cells hold commas, escaped quotes and line ends (inside quotes), with a BOM."""
    rows = []
    for i in range(1, 121):
        finding = ['nodule', 'mass, "spiculated"', 'opacity\nacross two lines', '""', 'a,b,"c"\nd'][i % 5]
        rows.append([f"train_{i}_a_1.nii.gz", ["Lung/Lung", "Heart", ""][i % 3], finding, "Yes." if i % 2 else "No."])
    path = T.write_csv(tmp_path / "train_vqa_presence.csv", T.RADGENOME_HEADERS["vqa_presence"], rows)
    raw = path.read_bytes()
    path.write_bytes(b"\xef\xbb\xbf" + (raw.replace(b"\n", b"\r\n") if crlf else raw))
    return path


@pytest.mark.parametrize("crlf", [False, True])
def test_any_cut_at_row_starts_streams_the_whole_files_rows(tmp_path, crlf):
    path = _tricky_presence(tmp_path, crlf)
    whole = T.read_radgenome_table(path)
    size = path.stat().st_size
    offsets = list(range(0, size + 3, 7))
    starts = T.csv_row_starts(path, offsets[::-1])[::-1]  # any order
    assert starts == sorted(starts) and starts[-1] == size
    # every cut is a row start: the row blocks between consecutive cuts, concatenated, are the file's table
    cuts = sorted(set(starts) - {0})
    blocks = [t for a, b in zip(cuts, cuts[1:]) for t in T.iter_radgenome_table(path, start=a, stop=b, block_size=256)]
    assert sum(t.num_rows for t in blocks) == whole.num_rows > 100
    assert pa.concat_tables(blocks).equals(whole)
    # no cut lands inside a quoted field: each block's first row is one of the file's rows
    firsts = {tuple(t.slice(0, 1).to_pylist()[0].values()) for t in blocks if t.num_rows}
    assert firsts <= {tuple(r.values()) for r in whole.to_pylist()}
    # the whole file as a stream, in small blocks
    streamed = list(T.iter_radgenome_table(path, block_size=512))
    assert len(streamed) > 3 and pa.concat_tables(streamed).equals(whole)


def test_a_field_longer_than_the_block_is_read_in_larger_blocks(tmp_path):
    long = 'x ""y"", ' * 3000  # 27 KB quoted, escaped quotes: pyarrow needs it in one block
    p = _write(tmp_path / "train_case_disorders.csv", "Volumename,Disorders\n" + "".join(
        f'train_{i}_a_1.nii.gz,"{long if i == 40 else "no findings"}"\n' for i in range(1, 80)))
    streamed = pa.concat_tables(T.iter_radgenome_table(p, block_size=1024))
    assert streamed.equals(T.read_case_disorders(p))
    assert streamed["disorders"][39].as_py() == long.replace('""', '"')


def test_a_bad_cell_in_a_later_block_names_the_files_row(tmp_path):
    rows = [["train_1_a_1.nii.gz", "lung", "mass", "Yes."]] * 500 + [["train_1_a_1.nii.gz", "lung", "mass", "Maybe"]]
    p = T.write_csv(tmp_path / "train_vqa_presence.csv", T.RADGENOME_HEADERS["vqa_presence"], rows)
    cut = T.csv_row_starts(p, [p.stat().st_size // 2])[0]
    with pytest.raises(MalformedFileError) as e:
        list(T.iter_radgenome_table(p, start=cut, block_size=1024, label="hf://datasets/o/r/x.csv"))
    assert (e.value.row, e.value.column) == (501, "Presence")
    assert "hf://datasets/o/r/x.csv" in str(e.value) and "Maybe" in str(e.value)
    bad = _write(tmp_path / "train_vqa_size.csv", "Volumename,Anatomy\ntrain_1_a_1.nii.gz,lung\n")
    with pytest.raises(MalformedFileError, match="header") as e:
        list(T.iter_radgenome_table(bad))
    assert e.value.column == "Abnormality"


def test_csv_line_count(tmp_path):
    path = _tricky_presence(tmp_path)
    quoted_line_ends = sum(r["finding"].count("\n") for r in T.read_radgenome_table(path).to_pylist())
    assert T.csv_line_count(path) == 1 + 120 + quoted_line_ends


# -------------------------------------------------------------------------------------------------
# CT-RATE
# -------------------------------------------------------------------------------------------------


def test_ctrate_reports_not_given_and_blank_become_null(tmp_path):
    p = T.write_csv(
        tmp_path / "validation_reports.csv",
        T.CTRATE_REPORT_HEADER,
        [
            ["valid_1_a_1.nii.gz", "Not given.", "Non-contrast, thin slices.", "Lungs: clear, no nodule.", "Normal."],
            ["valid_1_a_2.nii.gz", "", "Not given.", 'Trachea "patent".\nHeart normal.', ""],
        ],
    )
    t = T.read_ctrate_reports(p)
    assert t.column_names == ["volume_name", "clinical_information", "technique", "findings", "impressions"]
    assert t.to_pylist() == [
        {"volume_name": "valid_1_a_1", "clinical_information": None, "technique": "Non-contrast, thin slices.",
         "findings": "Lungs: clear, no nodule.", "impressions": "Normal."},
        {"volume_name": "valid_1_a_2", "clinical_information": None, "technique": None,
         "findings": 'Trachea "patent".\nHeart normal.', "impressions": None},
    ]


def test_ctrate_metadata_real_row(tmp_path):
    second = _meta_cells(
        VolumeName="train_7_b_12.nii.gz", PatientAge="018M", XYSpacing="[0.7, 0.7]", ZSpacing="1",
        RescaleSlope="1", RescaleIntercept="-8192", Rows="512", Columns="512", NumberofSlices="303",
        DataCollectionCenterPatient="[0.0, -150.5, 1.2e2]", StudyDate="20200101",
    )
    p = _write(tmp_path / "validation_metadata.csv", f"{META_HEADER}\n{META_ROW}\n{second}\n")
    t = T.read_ctrate_metadata(p)
    assert t.num_rows == 2 and t.num_columns == 44
    assert t.column_names[0] == "volume_name"
    for col in ("xy_spacing", "z_spacing", "rescale_slope", "rescale_intercept", "patient_age", "number_of_slices",
                "image_position_patient", "ctdi_vol", "study_date"):
        assert col in t.column_names
    s = t.schema
    assert s.field("xy_spacing").type == pa.list_(pa.float64())
    assert s.field("z_spacing").type == pa.float64()
    assert s.field("rows").type == pa.int64() and s.field("number_of_slices").type == pa.int64()
    assert s.field("patient_age").type == pa.int64()
    assert s.field("study_date").type == pa.string()

    r = T.metadata_row(t, "valid_1_a_1.nii.gz")
    assert r["volume_name"] == "valid_1_a_1"
    assert r["manufacturer"] == "Philips" and r["manufacturer_model_name"] == "iCT 256"
    assert r["patient_sex"] == "M" and r["patient_age"] == 36
    assert r["reconstruction_diameter"] == 350.0
    assert r["distance_source_to_detector"] is None and r["generator_power"] is None
    assert r["exposure_modulation_type"] == "Z DOM"
    assert r["ctdi_vol"] == pytest.approx(7.830488795)
    assert r["image_position_patient"] == [-166.0, 9.0, 56.2998657]
    assert r["image_orientation_patient"] == [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert r["data_collection_center_patient"] is None and r["reconstruction_target_center_patient"] is None
    assert r["slice_location"] == 56.3 and r["samples_per_pixel"] == 1
    assert r["photometric_interpretation"] == "MONOCHROME2"
    assert (r["rows"], r["columns"]) == (1024, 1024)
    assert r["xy_spacing"] == [0.341796875, 0.341796875]
    assert (r["rescale_intercept"], r["rescale_slope"]) == (-1024.0, 1.0)
    assert r["rescale_type"] is None
    assert (r["number_of_slices"], r["z_spacing"], r["study_date"]) == (251, 1.5, "20210427")

    r2 = T.metadata_row(t, VolumeName.parse("train_7_b_12"))
    assert r2["patient_age"] == 1  # 18 months -> 1 completed year
    assert r2["data_collection_center_patient"] == [0.0, -150.5, 120.0]
    assert r2["manufacturer"] is None and r2["ctdi_vol"] is None
    with pytest.raises(KeyError):
        T.metadata_row(t, "valid_2_a_1")


@pytest.mark.parametrize(
    "column, value, message",
    [
        ("XYSpacing", "[0.7; 0.7]", "list of numbers"),
        ("XYSpacing", "0.7, 0.7", "list of numbers"),
        ("ImagePositionPatient", "[1, 2,]", "list of numbers"),
        ("ZSpacing", "1.5mm", "not a number"),
        ("Rows", "512.5", "whole number"),
        ("PatientAge", "36 years", "DICOM age"),
    ],
)
def test_ctrate_metadata_malformed_cell_names_row_and_column(tmp_path, column, value, message):
    bad = _meta_cells(VolumeName="valid_2_a_1.nii.gz", **{column: value})
    p = _write(tmp_path / "m.csv", f"{META_HEADER}\n{META_ROW}\n{bad}\n")
    with pytest.raises(MalformedFileError, match=message) as e:
        T.read_ctrate_metadata(p)
    assert (e.value.row, e.value.column) == (2, column)
    assert "m.csv" in str(e.value) and "row 2" in str(e.value)


def test_ctrate_labels(tmp_path):
    header = T.CTRATE_LABEL_HEADER
    assert len(header) == 19
    row1 = ["valid_1_a_1.nii.gz"] + ["0"] * 18
    row1[3] = "1"  # Cardiomegaly
    row2 = ["valid_1_a_2.nii.gz"] + ["1.0"] + [""] * 16 + ["0.0"]
    p = T.write_csv(tmp_path / "valid_predicted_labels.csv", header, [row1, row2])
    t = T.read_ctrate_labels(p)
    assert t.column_names == ["volume_name", *T.CTRATE_LABELS]
    assert all(t.schema.field(c).type == pa.int8() for c in T.CTRATE_LABELS)
    a, b = t.to_pylist()
    assert a["Cardiomegaly"] == 1 and sum(a[c] for c in T.CTRATE_LABELS) == 1
    assert b["Medical material"] == 1 and b["Interlobular septal thickening"] == 0
    assert b["Emphysema"] is None and t["Emphysema"].null_count == 1


def test_ctrate_labels_bad_value_names_row_and_column(tmp_path):
    rows = [["valid_1_a_1.nii.gz"] + ["0"] * 18, ["valid_1_a_2.nii.gz"] + ["0"] * 18]
    rows[1][8] = "2"  # Emphysema
    p = T.write_csv(tmp_path / "l.csv", T.CTRATE_LABEL_HEADER, rows)
    with pytest.raises(MalformedFileError) as e:
        T.read_ctrate_labels(p)
    assert (e.value.row, e.value.column) == (2, "Emphysema")


def test_ctrate_labels_wrong_header(tmp_path):
    header = list(T.CTRATE_LABEL_HEADER)
    header[5] = "Coronary calcification"
    p = T.write_csv(tmp_path / "l.csv", header, [["valid_1_a_1.nii.gz"] + ["0"] * 18])
    with pytest.raises(MalformedFileError) as e:
        T.read_ctrate_labels(p)
    assert e.value.column == "Coronary artery wall calcification"


# -------------------------------------------------------------------------------------------------
# Helpers
# -------------------------------------------------------------------------------------------------


def test_join_filter_and_duplicates():
    left = pa.table({"volume_name": ["b", "a", "c"], "x": [1, 2, 3]})
    right = pa.table({"volume_name": ["a", "b"], "y": [20, 10]})
    j = T.join_on_volume(left, right)
    assert j.column_names == ["volume_name", "x", "y"]
    assert j.to_pylist() == [
        {"volume_name": "b", "x": 1, "y": 10},
        {"volume_name": "a", "x": 2, "y": 20},
        {"volume_name": "c", "x": 3, "y": None},
    ]
    assert T.join_on_volume(left, right, how="inner")["volume_name"].to_pylist() == ["b", "a"]
    t = pa.table({"volume_name": ["train_1_a_1", "train_2_a_1", "train_1_a_1"], "v": [1, 2, 3]})
    assert T.filter_volumes(t, ["train_1_a_1.nii.gz"])["v"].to_pylist() == [1, 3]
    assert T.duplicate_volumes(t) == ["train_1_a_1"]
