"""Every rejection class of `prepare` gives a DataValidationError naming file, row and column, and leaves no outputs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pandas as pd
import pytest

from myoglucose.data import DataValidationError, read_tables, validate_measurements, write_tables
from myoglucose.data.prepare import prepare_dataset, prepare_to_dir

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- helpers
def copy_dataset(tmp_path: Path, dataset_id: str) -> tuple[Path, Path]:
    """Copy data/<id> and protocols/ into a fresh fake repository under tmp_path."""
    root = tmp_path / "repo"
    shutil.copytree(REPO / "data" / dataset_id, root / "data" / dataset_id)
    shutil.copytree(REPO / "protocols", root / "protocols")
    return root, root / "data" / dataset_id


def resum(ds: Path) -> None:
    lines = []
    for p in sorted((ds / "raw").iterdir()):
        lines.append(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  raw/{p.name}\n")
    (ds / "SHA256SUMS").write_text("".join(lines))


def edit_raw(ds: Path, name: str, new_text: str, *, update_sums: bool = True) -> None:
    (ds / "raw" / name).write_text(new_text)
    if update_sums:
        resum(ds)


def replace_line(ds: Path, name: str, lineno: int, text: str) -> None:
    path = ds / "raw" / name
    lines = path.read_text().splitlines()
    lines[lineno - 1] = text
    edit_raw(ds, name, "\n".join(lines) + "\n")


def yaml_line_of(path: Path, needle: str) -> int:
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not in {path}")


def expect_error(root: Path, ds: Path, tmp_path: Path, *, file: str, row: int, column: str, match: str):
    out = tmp_path / "out"
    with pytest.raises(DataValidationError) as info:
        prepare_to_dir(ds, out, root)
    err = info.value
    assert err.file == file, str(err)
    assert err.row == row, str(err)
    assert err.column == column, str(err)
    assert match in err.message, str(err)
    assert str(err).startswith(f"{file}: row {row}, column '{column}': ")
    assert not out.exists() or not any(out.iterdir()), "prepare left outputs behind"
    return err


KATZ_G = "data/katz2000_clamp/raw/glucose_nonobese.csv"
KATZ_YAML = "data/katz2000_clamp/dataset.yaml"


@pytest.fixture
def katz(tmp_path):
    return copy_dataset(tmp_path, "katz2000_clamp")


@pytest.fixture
def civii(tmp_path):
    return copy_dataset(tmp_path, "sorensen1985_civii")


CIVII = "data/sorensen1985_civii/raw/civii_long.csv"


# ---------------------------------------------------------------------------------------------- columns
def test_missing_column(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 1, "time_min,val")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=1, column="value", match="missing required column")


def test_unknown_column(katz, tmp_path):
    root, ds = katz
    text = (ds / "raw/glucose_nonobese.csv").read_text().splitlines()
    text = [text[0] + ",comment"] + [line + ",x" for line in text[1:]]
    edit_raw(ds, "glucose_nonobese.csv", "\n".join(text) + "\n")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=1, column="comment", match="unknown column")


def test_ragged_row(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 4, "8.8")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=4, column="value", match="1 fields but the header has 2")


# ------------------------------------------------------------------------------------------------- types
def test_wrong_type_value(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 5, "13.6,ninety")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=5, column="value", match="'ninety' is not a number")


def test_wrong_type_time(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 3, "4 min,92.7")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=3, column="time_min", match="'4 min' is not a number")


def test_wrong_type_n(civii, tmp_path):
    root, ds = civii
    lines = (ds / "raw/civii_long.csv").read_text().splitlines()
    lines = [lines[0] + ",n"] + [line + ",11" for line in lines[1:]]
    lines[6] = lines[6].rsplit(",", 1)[0] + ",2.5"
    edit_raw(ds, "civii_long.csv", "\n".join(lines) + "\n")
    expect_error(root, ds, tmp_path, file=CIVII, row=7, column="n", match="'2.5' is not an integer")


def test_wrong_type_in_dataset_yaml(katz, tmp_path):
    root, ds = katz
    y = ds / "dataset.yaml"
    y.write_text(y.read_text().replace("body_weight_kg: 100", "body_weight_kg: heavy", 1))
    line = yaml_line_of(y, "body_weight_kg: heavy")
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="body_weight_kg", match="not a number")


# ---------------------------------------------------------------------------------- units / observables
def test_unknown_unit_long_form(civii, tmp_path):
    root, ds = civii
    replace_line(ds, "civii_long.csv", 3, "10.105,glucose_whole_blood,4.2447,mg/dl")
    expect_error(root, ds, tmp_path, file=CIVII, row=3, column="unit", match="unknown unit 'mg/dl'")


def test_unknown_unit_in_dataset_yaml(katz, tmp_path):
    root, ds = katz
    y = ds / "dataset.yaml"
    y.write_text(y.read_text().replace("unit: mg/min, condition: clamp120_obese", "unit: g/h, condition: clamp120_obese"))
    line = yaml_line_of(y, "unit: g/h")
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="unit", match="unknown unit 'g/h'")


def test_unknown_observable_long_form(civii, tmp_path):
    root, ds = civii
    replace_line(ds, "civii_long.csv", 16, "9.507,insulin,76,pmol/L")
    expect_error(root, ds, tmp_path, file=CIVII, row=16, column="observable_id", match="unknown observable 'insulin'")


def test_unknown_observable_in_dataset_yaml(katz, tmp_path):
    root, ds = katz
    y = ds / "dataset.yaml"
    y.write_text(y.read_text().replace("observable_id: glucose_plasma, unit: mg/dL, condition: clamp120_t2d",
                                       "observable_id: glucose, unit: mg/dL, condition: clamp120_t2d"))
    line = yaml_line_of(y, "observable_id: glucose,")
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="observable_id", match="unknown observable 'glucose'")


# --------------------------------------------------------------------------------------- bad numbers
def test_negative_value(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 6, "19.2,-94.9")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=6, column="value", match="is negative")


@pytest.mark.parametrize("bad", ["nan", "NaN", "inf", "-inf"])
def test_non_finite_value(katz, tmp_path, bad):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 7, f"24.8,{bad}")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=7, column="value", match="not finite")


def test_missing_value(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 7, "24.8,NA")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=7, column="value", match="missing")


def test_non_finite_time(katz, tmp_path):
    root, ds = katz
    replace_line(ds, "glucose_nonobese.csv", 7, "inf,89.2")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=7, column="time_min", match="not finite")


def test_negative_sem(civii, tmp_path):
    root, ds = civii
    lines = (ds / "raw/civii_long.csv").read_text().splitlines()
    lines = [lines[0] + ",sem"] + [line + ",NA" for line in lines[1:]]
    lines[4] = lines[4].rsplit(",", 1)[0] + ",-0.1"
    edit_raw(ds, "civii_long.csv", "\n".join(lines) + "\n")
    expect_error(root, ds, tmp_path, file=CIVII, row=5, column="sem", match="negative")


# ----------------------------------------------------------------------------------- series structure
def test_non_monotone_times(katz, tmp_path):
    root, ds = katz
    lines = (ds / "raw/glucose_nonobese.csv").read_text().splitlines()
    lines[9], lines[10] = lines[10], lines[9]  # file rows 10 and 11
    edit_raw(ds, "glucose_nonobese.csv", "\n".join(lines) + "\n")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=11, column="time_min", match="not increasing")


def test_non_monotone_times_long_form(civii, tmp_path):
    root, ds = civii
    lines = (ds / "raw/civii_long.csv").read_text().splitlines()
    # move the insulin row at 50 min (file row 18) in front of the one at 34.5 min (row 17)
    lines[16], lines[17] = lines[17], lines[16]
    edit_raw(ds, "civii_long.csv", "\n".join(lines) + "\n")
    expect_error(root, ds, tmp_path, file=CIVII, row=18, column="time_min", match="not increasing")


def test_duplicate_row(katz, tmp_path):
    root, ds = katz
    lines = (ds / "raw/glucose_nonobese.csv").read_text().splitlines()
    lines.insert(5, lines[4])  # row 5 repeated as row 6
    edit_raw(ds, "glucose_nonobese.csv", "\n".join(lines) + "\n")
    err = expect_error(root, ds, tmp_path, file=KATZ_G, row=6, column="time_min", match="duplicate row")
    assert "(row 5)" in err.message


def test_duplicate_across_files(katz, tmp_path):
    root, ds = katz
    # point a second file at the same (condition, observable) series
    y = ds / "dataset.yaml"
    y.write_text(y.read_text().replace("observable_id: glucose_plasma, unit: mg/dL, condition: clamp120_obese",
                                       "observable_id: glucose_plasma, unit: mg/dL, condition: clamp120_nonobese"))
    shutil.copy(ds / "raw/glucose_nonobese.csv", ds / "raw/glucose_obese.csv")
    resum(ds)
    expect_error(root, ds, tmp_path, file="data/katz2000_clamp/raw/glucose_obese.csv", row=2, column="time_min",
                 match="duplicate row")


# --------------------------------------------------------------------------------------- references
def test_missing_protocol_file(katz, tmp_path):
    root, ds = katz
    (root / "protocols/katz2000_clamp_120.yaml").unlink()
    line = yaml_line_of(ds / "dataset.yaml", "protocol_file: protocols/katz2000_clamp_120.yaml")
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="protocol_file", match="does not exist")


def test_protocol_without_required_key(katz, tmp_path):
    root, ds = katz
    p = root / "protocols/katz2000_clamp_120.yaml"
    p.write_text("\n".join(line for line in p.read_text().splitlines() if not line.startswith("end:")) + "\n")
    expect_error(root, ds, tmp_path, file="protocols/katz2000_clamp_120.yaml", row=1, column="end", match="'end'")


def test_time_after_protocol_end(katz, tmp_path):
    root, ds = katz
    lines = (ds / "raw/glucose_nonobese.csv").read_text().splitlines()
    lines.append("300,88.9")
    edit_raw(ds, "glucose_nonobese.csv", "\n".join(lines) + "\n")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=len(lines), column="time_min", match="after the end")


def test_unknown_condition_in_long_form(tmp_path):
    root, ds = copy_dataset(tmp_path, "il6_anchors")
    f = "il6_keller2003_cycling.csv"
    replace_line(ds, f, 3, "180,il6,15.6,pg/mL,cycling3h_juice,2.4,8")
    expect_error(root, ds, tmp_path, file=f"data/il6_anchors/raw/{f}", row=3, column="condition_id",
                 match="'cycling3h_juice' is not listed")


def test_forced_condition_without_insulin(katz, tmp_path):
    root, ds = katz
    y = ds / "dataset.yaml"
    lines = y.read_text().splitlines(keepends=True)
    i = next(i for i, line in enumerate(lines) if "path: raw/insulin_t2d.csv" in line)
    del lines[i : i + 2]  # the flow mapping of that file entry spans two lines
    y.write_text("".join(lines))
    (ds / "raw/insulin_t2d.csv").unlink()
    resum(ds)
    line = [i for i, l in enumerate(y.read_text().splitlines(), 1) if "insulin_mode: forced" in l][2]
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="insulin_mode", match="no insulin_plasma")


# ------------------------------------------------------------------------------------- empty / checksum
def test_empty_table(katz, tmp_path):
    root, ds = katz
    edit_raw(ds, "glucose_nonobese.csv", "time_min,value\n")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=2, column="time_min", match="no data rows")


def test_empty_file(katz, tmp_path):
    root, ds = katz
    edit_raw(ds, "glucose_nonobese.csv", "")
    expect_error(root, ds, tmp_path, file=KATZ_G, row=1, column="time_min", match="empty")


def test_checksum_mismatch(katz, tmp_path):
    root, ds = katz
    p = ds / "raw/glucose_nonobese.csv"
    p.write_text(p.read_text().replace("85.9615", "95.9615"))  # SHA256SUMS not updated
    line = yaml_line_of(ds / "SHA256SUMS", "raw/glucose_nonobese.csv")
    expect_error(root, ds, tmp_path, file="data/katz2000_clamp/SHA256SUMS", row=line, column="sha256",
                 match="checksum mismatch for 'raw/glucose_nonobese.csv'")


def test_raw_file_without_checksum(katz, tmp_path):
    root, ds = katz
    (ds / "raw/extra.csv").write_text("time_min,value\n0,1\n")
    n_lines = len((ds / "SHA256SUMS").read_text().splitlines())
    expect_error(root, ds, tmp_path, file="data/katz2000_clamp/SHA256SUMS", row=n_lines + 1, column="file",
                 match="'raw/extra.csv' has no checksum")


def test_raw_file_not_described(katz, tmp_path):
    root, ds = katz
    (ds / "raw/extra.csv").write_text("time_min,value\n0,1\n")
    resum(ds)
    line = yaml_line_of(ds / "dataset.yaml", "files:")
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="files", match="not described")


def test_yaml_unknown_key_and_dataset_id(katz, tmp_path):
    root, ds = katz
    y = ds / "dataset.yaml"
    original = y.read_text()
    y.write_text(original.replace("dataset_id: katz2000_clamp", "dataset_id: katz2000"))
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=1, column="dataset_id", match="folder name")
    y.write_text(original.replace("    insulin_mode: forced\n    notes: isoglycemic clamp at fasting",
                                  "    insulin_mode: forced\n    note: isoglycemic clamp at fasting"))
    line = yaml_line_of(y, "    note: isoglycemic")
    expect_error(root, ds, tmp_path, file=KATZ_YAML, row=line, column="note", match="unknown key 'note'")


def test_no_outputs_and_old_outputs_kept(katz, tmp_path):
    """A failing prepare into a folder with a previous good result leaves that result untouched, adds nothing."""
    root, ds = katz
    out = tmp_path / "out"
    prepare_to_dir(ds, out, root)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    replace_line(ds, "glucose_nonobese.csv", 5, "13.6,-1")
    with pytest.raises(DataValidationError):
        prepare_to_dir(ds, out, root)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


# -------------------------------------------------------------------------------- tidy-table validation
@pytest.fixture
def tidy(katz, tmp_path):
    root, ds = katz
    return prepare_dataset(ds, root), root


def test_tidy_missing_column(tidy):
    t, _ = tidy
    with pytest.raises(DataValidationError) as info:
        validate_measurements(t.measurements.drop(columns=["unit"]), "results/tidy/x/measurements.tsv")
    assert (info.value.row, info.value.column) == (1, "unit")
    assert info.value.file == "results/tidy/x/measurements.tsv"


def test_tidy_non_canonical_unit(tidy):
    t, _ = tidy
    m = t.measurements.astype(object)
    m.loc[3, "unit"] = "mmol/L"
    with pytest.raises(DataValidationError) as info:
        validate_measurements(m, "measurements.tsv")
    assert (info.value.row, info.value.column) == (5, "unit")
    assert "canonical" in info.value.message


def test_tidy_nan_and_duplicates(tidy):
    t, _ = tidy
    m = t.measurements.copy()
    m.loc[2, "value"] = float("nan")
    with pytest.raises(DataValidationError) as info:
        validate_measurements(m, "measurements.tsv")
    assert (info.value.row, info.value.column) == (4, "value")
    m = pd.concat([t.measurements.iloc[:3], t.measurements.iloc[[2]]], ignore_index=True)
    with pytest.raises(DataValidationError) as info:
        validate_measurements(m, "measurements.tsv")
    assert (info.value.row, info.value.column) == (5, "time_min") and "duplicate" in info.value.message


def test_tidy_empty(tidy):
    t, _ = tidy
    with pytest.raises(DataValidationError) as info:
        validate_measurements(t.measurements.iloc[:0], "measurements.tsv")
    assert (info.value.row, info.value.column) == (2, "time_min")


def test_read_tables_rejects_malformed_tsv(tidy, tmp_path):
    t, root = tidy
    out = tmp_path / "tidy"
    write_tables(t, out)
    p = out / "measurements.tsv"
    lines = p.read_text().splitlines()
    cells = lines[10].split("\t")
    cells[6] = "abc"
    lines[10] = "\t".join(cells)
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataValidationError) as info:
        read_tables(out, root)
    assert info.value.file == str(p)
    assert (info.value.row, info.value.column) == (11, "value")


# ---------------------------------------------------------------------------------------------- corrections
FSIVGTT_YAML = "data/katz2000_fsivgtt/dataset.yaml"


@pytest.fixture
def fsivgtt(tmp_path):
    return copy_dataset(tmp_path, "katz2000_fsivgtt")


def _edit_yaml(ds: Path, old: str, new: str) -> None:
    y = ds / "dataset.yaml"
    text = y.read_text()
    assert old in text
    y.write_text(text.replace(old, new, 1))


@pytest.mark.parametrize("old,new,needle,column,match", [
    ("{time_min: 1.422, exclude: true", "{time_min: 1.5, exclude: true", "time_min: 1.5,", "time_min",
     "the correction at 1.5 min matches no row of 'raw/glucose_nonobese.csv'"),
    ("{time_min: 1.422, exclude: true", "{time_min: 1.422, exclude: true, set_time_min: 1", "time_min: 1.422,",
     "set_time_min", "exactly one of 'set_time_min: <min>' and 'exclude: true'"),
], ids=["matches-no-row", "two-actions"])
def test_bad_correction(fsivgtt, tmp_path, old, new, needle, column, match):
    root, ds = fsivgtt
    _edit_yaml(ds, old, new)
    line = yaml_line_of(ds / "dataset.yaml", needle)
    expect_error(root, ds, tmp_path, file=FSIVGTT_YAML, row=line, column=column, match=match)


def test_correction_needs_a_reason(fsivgtt, tmp_path):
    root, ds = fsivgtt
    text = (ds / "dataset.yaml").read_text()
    start = text.index("{time_min: 1.422, exclude: true")
    end = text.index("}", start)
    (ds / "dataset.yaml").write_text(text[:start] + "{time_min: 1.422, exclude: true" + text[end:])
    line = yaml_line_of(ds / "dataset.yaml", "time_min: 1.422,")
    expect_error(root, ds, tmp_path, file=FSIVGTT_YAML, row=line, column="reason", match="missing required key 'reason'")


def test_correction_that_breaks_time_order(fsivgtt, tmp_path):
    """A corrected time goes through the same checks as a raw one (here: the series must stay time-ordered)."""
    root, ds = fsivgtt
    _edit_yaml(ds, "{time_min: 0.405, set_time_min: 0,", "{time_min: 0.405, set_time_min: 5,")
    with pytest.raises(DataValidationError) as info:
        prepare_to_dir(ds, tmp_path / "out", root)
    assert info.value.file == "data/katz2000_fsivgtt/raw/glucose_nonobese.csv"
    assert info.value.column == "time_min"
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
