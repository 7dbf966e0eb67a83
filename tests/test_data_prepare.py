"""Shipped datasets prepare cleanly and carry the right numbers; units; atomic writing."""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import pandas as pd
import pytest
import yaml

from myoglucose.data import (
    DataValidationError,
    PreparedTables,
    prepare_dataset,
    read_tables,
    validate_measurements,
    write_tables,
)
from myoglucose.data.schemas import CONDITION_COLUMNS, MEASUREMENT_COLUMNS, PROVENANCE_COLUMNS
from myoglucose.data.units import CANONICAL_UNITS, UnitConversionError, conversion_for

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "data"
SHIPPED = sorted(p.parent.name for p in DATA.glob("*/dataset.yaml"))

EXPECTED_ROWS = {
    "bergman1981_ivgtt": 172,
    "il6_anchors": 5,
    "katz2000_clamp": 212,
    "katz2000_fsivgtt": 147,
    "roy2007_exercise": 36,
    "sorensen1978_clamp": 104,
    "sorensen1985_civii": 22,
    "sorensen1985_ivitt": 23,
}

_CACHE: dict[str, PreparedTables] = {}


def prepared(dataset_id: str) -> PreparedTables:
    if dataset_id not in _CACHE:
        _CACHE[dataset_id] = prepare_dataset(DATA / dataset_id, REPO)
    return _CACHE[dataset_id]


def series(t: PreparedTables, condition: str, observable: str) -> pd.DataFrame:
    m = t.measurements
    return m[(m.condition_id == condition) & (m.observable_id == observable)].sort_values("time_min")


def test_all_expected_datasets_are_shipped():
    assert set(EXPECTED_ROWS) <= set(SHIPPED)


@pytest.mark.parametrize("dataset_id", SHIPPED)
def test_shipped_dataset_prepares(dataset_id):
    t = prepared(dataset_id)
    assert list(t.measurements.columns) == list(MEASUREMENT_COLUMNS)
    assert list(t.conditions.columns) == list(CONDITION_COLUMNS)
    assert list(t.provenance.columns) == list(PROVENANCE_COLUMNS)
    if dataset_id in EXPECTED_ROWS:
        assert len(t.measurements) == EXPECTED_ROWS[dataset_id]
    m = t.measurements
    assert (m.dataset_id == dataset_id).all()
    assert all(CANONICAL_UNITS[o] == u for o, u in zip(m.observable_id, m.unit))
    assert set(m.condition_id) == set(t.conditions.condition_id)
    assert set(m.source_id) == set(t.provenance.source_id)
    for row in t.provenance.itertuples():
        raw = REPO / row.raw_file
        assert hashlib.sha256(raw.read_bytes()).hexdigest() == row.sha256
        assert row.citation and row.how_obtained and row.figure_or_table
    for row in t.conditions.itertuples():
        assert (REPO / row.protocol_file).is_file()
        assert row.insulin_mode in ("kinetic", "forced")
        assert "covariates:" in row.notes


@pytest.mark.parametrize("dataset_id", SHIPPED)
def test_write_and_read_back(dataset_id, tmp_path):
    t = prepared(dataset_id)
    out = tmp_path / "tidy"
    write_tables(t, out)
    assert sorted(p.name for p in out.iterdir()) == ["conditions.tsv", "measurements.tsv", "provenance.tsv"]
    back = read_tables(out, REPO)
    pd.testing.assert_frame_equal(back.measurements, t.measurements, check_exact=False, rtol=1e-10)
    pd.testing.assert_frame_equal(back.conditions, t.conditions)
    text = (out / "measurements.tsv").read_text()
    assert "\tNA\t" in text  # missing sd/sem/n written as NA
    assert "\tnan" not in text.lower() and "<na>" not in text.lower()


def test_protocol_files_have_required_keys():
    for path in sorted((REPO / "protocols").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        for key in ("name", "description", "end", "events"):
            assert key in doc, f"{path.name} lacks {key}"
        assert isinstance(doc["events"], list)


# ------------------------------------------------------------------------------------------- spot checks
def test_katz_clamp_numbers():
    t = prepared("katz2000_clamp")
    g = series(t, "clamp120_nonobese", "glucose_plasma")
    assert g.time_min.iloc[0] == 0
    assert g.value.iloc[0] == pytest.approx(86.0, abs=0.5)  # nonobese basal glucose ~86 mg/dL
    assert series(t, "clamp120_t2d", "glucose_plasma").value.iloc[0] == pytest.approx(163.7, abs=0.5)
    ins = series(t, "clamp120_nonobese", "insulin_plasma")
    assert ins.value.iloc[0] == pytest.approx(6.63, abs=0.05)
    assert 270 < ins[ins.time_min > 100].value.mean() < 300
    gir = series(t, "clamp120_nonobese", "gir")
    steady = gir[gir.time_min >= 180].value.mean()
    assert 12.0 < steady < 13.5  # ~880 mg/min at the assumed 70 kg
    assert gir.value.iloc[0] == pytest.approx(270.5882 / 70, rel=1e-9)  # mg/min -> mg/kg/min
    obese = series(t, "clamp120_obese", "gir")
    assert obese.value.iloc[-1] == pytest.approx(835.3659 / 100, rel=1e-6)
    cond = t.conditions.set_index("condition_id")
    assert cond.loc["clamp120_nonobese", "body_weight_kg"] == 70
    assert (cond.insulin_mode == "forced").all()
    assert set(t.measurements.n) == {28, 13, 15}
    prov = t.provenance.set_index("source_id")
    assert "body_weight_kg (70 kg)" in prov.loc["katz2000_clamp:gir_mg_per_min_nonobese", "conversion"]
    assert prov.loc["katz2000_clamp:gir_mg_per_min_nonobese", "units_as_published"] == "mg/min"


def test_katz_fsivgtt_numbers():
    t = prepared("katz2000_fsivgtt")
    assert (t.conditions.insulin_mode == "kinetic").all()
    g = series(t, "fsivgtt_nonobese", "glucose_plasma")
    assert g.value.max() == pytest.approx(245.7, abs=0.5)
    ins = series(t, "fsivgtt_nonobese", "insulin_plasma")
    late_peak = ins[(ins.time_min > 20) & (ins.time_min < 30)].value.max()
    assert late_peak == pytest.approx(145.9, abs=0.5)  # exogenous insulin from t = 20 min


def test_katz_fsivgtt_curation_corrections():
    """dataset.yaml moves each curve's pre-bolus basal sample to t = 0 and leaves out the glucose samples taken during
    the 2-min injection; the provenance table records each decision with its reason."""
    t = prepared("katz2000_fsivgtt")
    for cond, basal, dropped in (("fsivgtt_nonobese", 85.2647, [1.422]), ("fsivgtt_obese", 87.0741, [0.639, 1.878]),
                                 ("fsivgtt_t2d", 164.3836, [1.216])):
        g = series(t, cond, "glucose_plasma")
        assert g.time_min.iloc[0] == 0.0 and g.value.iloc[0] == pytest.approx(basal)
        assert not ((g.time_min > 0) & (g.time_min < 2.0)).any(), cond  # nothing left inside the injection
        for tm in dropped:
            assert not (g.time_min - tm).abs().lt(1e-3).any()
    ins = series(t, "fsivgtt_obese", "insulin_plasma")
    assert ins.time_min.iloc[0] == 0.0 and ins.value.iloc[0] == pytest.approx(16.8519)
    assert ins.time_min.iloc[1] == pytest.approx(1.689)  # insulin during the injection is kept (first phase)
    prov = t.provenance.set_index("source_id")
    how = prov.loc["katz2000_fsivgtt:glucose_obese", "how_obtained"]
    assert "row at 0.639 min excluded (sampled during the 2-min glucose injection" in how
    assert "row at 0.372 min time set to 0 min (pre-bolus basal sample" in how


def test_sorensen_whole_blood_and_conditions():
    t = prepared("sorensen1978_clamp")
    obs = set(t.measurements.observable_id)
    assert obs == {"glucose_whole_blood", "insulin_plasma"}
    cond = t.conditions.set_index("condition_id")
    assert cond.loc["eugc", "insulin_mode"] == "forced"
    assert cond.loc["ivgtt_05", "insulin_mode"] == "kinetic"
    eugc_ins = series(t, "eugc", "insulin_plasma")
    assert 95 < eugc_ins[eugc_ins.time_min > 30].value.mean() < 110  # ~100 mU/L plateau
    iv = series(t, "ivgtt_05", "glucose_whole_blood")
    assert iv.time_min.iloc[0] < 0 and iv.value.iloc[0] == pytest.approx(74.0)
    assert set(t.measurements[t.measurements.condition_id == "ivgtt_05"].n) == {110}
    # one typical healthy subject for the four cohort curves (a per-cohort EC50 is not identifiable), each curve
    # keeping its own cohort size
    assert set(t.conditions.subject_id) == {"healthy_typical"}
    n_of = t.measurements.groupby("condition_id")["n"].unique().map(lambda v: sorted(v.tolist()))
    assert n_of.to_dict() == {"eugc": [11], "cii_25": [5], "cii_40": [6], "ivgtt_05": [110]}


def test_sorensen1985_long_form_unit_conversion():
    t = prepared("sorensen1985_civii")
    g = series(t, "civii_025", "glucose_whole_blood")
    assert g.value.iloc[0] == pytest.approx(4.2447 * 18.0)  # mmol/L -> mg/dL
    i = series(t, "civii_025", "insulin_plasma")
    assert i.value.iloc[0] == pytest.approx(74.6667 / 6.0)  # pmol/L -> mU/L
    assert i.time_min.max() < 200  # the duplicated t = 300 row of the source was dropped
    assert set(t.measurements.unit) == {"mg/dL", "mU/L"}


def test_sorensen1985_ivitt_long_form_unit_conversion():
    t = prepared("sorensen1985_ivitt")
    g = series(t, "ivitt_004", "glucose_whole_blood")
    assert g.value.iloc[0] == pytest.approx(4.585631660997733 * 18.0)  # 82.54 mg/dL: mmol/L -> mg/dL
    nadir = g.loc[g.value.idxmin()]
    assert nadir.value == pytest.approx(43.352, abs=1e-3)  # 2.4085 mmol/L
    assert 25 < nadir.time_min < 35
    i = series(t, "ivitt_004", "insulin_plasma")
    assert i.value.iloc[0] == pytest.approx(79.99999 / 6.0)  # 13.33 mU/L: pmol/L -> mU/L
    assert i.value.max() == pytest.approx(537.7778, abs=1e-3)  # 3226.6668 pmol/L at 3.6 min
    assert i.time_min.iloc[i.value.argmax()] == pytest.approx(3.630435)
    cond = t.conditions.set_index("condition_id")
    assert cond.loc["ivitt_004", "insulin_mode"] == "forced"
    assert cond.loc["ivitt_004", "protocol_file"] == "protocols/sorensen1985_ivitt_004.yaml"
    assert set(t.measurements.unit) == {"mg/dL", "mU/L"}


def test_roy_exercise_numbers():
    t = prepared("roy2007_exercise")
    up = series(t, "exercise40", "delta_uptake")
    assert up.value.max() == pytest.approx(1.185, abs=0.01)
    assert 50 < up.loc[up.value.idxmax(), "time_min"] < 62
    assert len(series(t, "exercise40", "delta_egp")) == 9
    assert t.measurements.n.isna().all()


def test_bergman_groups():
    t = prepared("bergman1981_ivgtt")
    n = t.measurements.groupby("group").n.first().to_dict()
    assert n == {"lean_normal": 5, "lean_low": 3, "obese_normal": 3, "obese_low": 7}
    basal = series(t, "ivgtt_obese_low", "glucose_plasma").value.iloc[0]
    assert basal == pytest.approx(131.6, abs=0.1)


def test_il6_anchors():
    t = prepared("il6_anchors")
    m = series(t, "marathon", "il6")
    assert list(m.value) == [1.5, 94.4, 22.1]
    assert list(m["sem"]) == [0.7, 12.6, 3.8]
    placebo = series(t, "cycling3h_placebo", "il6")
    assert placebo.value.item() == 26.0 and placebo.n.item() == 8
    assert set(t.provenance.citation.str.slice(0, 8)) == {"Ostrowsk", "Keller C"}


# ------------------------------------------------------------------------------------------------ units
@pytest.mark.parametrize(
    "obs,unit,bw,bsa,factor",
    [
        ("glucose_plasma", "mmol/L", None, None, 18.0),
        ("glucose_whole_blood", "mg/dL", None, None, 1.0),
        ("insulin_plasma", "pmol/L", None, None, 1 / 6.0),
        ("insulin_plasma", "uU/mL", None, None, 1.0),
        ("gir", "mg/min", 80.0, None, 1 / 80.0),
        ("rd", "mg/m2/min", 70.0, 1.8, 1.8 / 70.0),
        ("egp", "umol/kg/min", None, None, 0.18016),
        ("il6", "pg/mL", None, None, 1.0),
    ],
)
def test_conversion_factors(obs, unit, bw, bsa, factor):
    assert conversion_for(obs, unit, bw, bsa).factor == pytest.approx(factor)


def test_conversion_rejects_unknown():
    with pytest.raises(UnitConversionError, match="unknown unit 'mg/dl'"):
        conversion_for("glucose_plasma", "mg/dl")
    with pytest.raises(UnitConversionError, match="unknown observable"):
        conversion_for("glucose", "mg/dL")
    with pytest.raises(UnitConversionError, match="body_weight_kg"):
        conversion_for("gir", "mg/min")


def test_error_string_format():
    err = DataValidationError("data/x/raw/a.csv", 7, "unit", "unknown unit 'mg/dl'")
    assert str(err) == "data/x/raw/a.csv: row 7, column 'unit': unknown unit 'mg/dl'"
    assert isinstance(err, ValueError)
    assert (err.file, err.row, err.column) == ("data/x/raw/a.csv", 7, "unit")


# --------------------------------------------------------------------------------------- atomic writing
def test_write_tables_failure_leaves_nothing(tmp_path, monkeypatch):
    t = prepared("roy2007_exercise")
    out = tmp_path / "new_out"
    calls = {"n": 0}
    real = pd.DataFrame.to_csv

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        return real(self, *a, **k)

    monkeypatch.setattr(pd.DataFrame, "to_csv", flaky)
    with pytest.raises(OSError, match="disk full"):
        write_tables(t, out)
    assert not out.exists()  # created by the call, removed again; no temp files left


def test_write_tables_failure_keeps_previous_outputs(tmp_path, monkeypatch):
    t = prepared("roy2007_exercise")
    write_tables(t, tmp_path)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def boom(src, dst):
        raise OSError("rename failed")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_tables(t, tmp_path)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no temp files, old complete set untouched


def test_validate_measurements_on_tidy_table():
    m = prepared("roy2007_exercise").measurements
    typed = validate_measurements(m.astype(object), "measurements.tsv")
    assert len(typed) == len(m)
    assert math.isclose(typed.value.sum(), m.value.sum())
