"""Protocol files: clock times, composition on one timeline, and impossible protocols refused clearly."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from myoglucose.model.protocol import ProtocolError, build_inputs, parse_protocol, parse_time


def test_clock_times():
    assert parse_time("day 0 09:00", "f", "w") == 540.0
    assert parse_time("day 1 12:30", "f", "w") == 1440.0 + 750.0
    assert parse_time("2 h", "f", "w") == 120.0
    assert parse_time(15, "f", "w") == 15.0


def test_exercise_then_next_day_clamp_inputs(root):
    doc = yaml.safe_load((root / "protocols/scenarios/exercise_then_clamp.yaml").read_text())
    pr = parse_protocol(doc, "exercise_then_clamp.yaml")
    u = build_inputs(pr, body_weight_kg=80.0, bsa_m2=2.0)
    at = lambda t: u.at(np.float64(t))  # noqa: E731
    assert float(at(570).exercise) == pytest.approx(0.70)  # day 0 09:30, during the bout
    assert float(at(700).exercise) == 0.0
    # 40 mU/m2/min x 2.0 m2 / 80 kg = 1.0 mU/kg/min on day 1 09:00-12:00, clamp on
    assert float(at(1440 + 600).insulin_infusion) == pytest.approx(1.0)
    assert float(at(1440 + 600).clamp_active) == 1.0
    assert float(at(1440 + 600).clamp_target_basal) == 1.0
    assert float(at(1440 + 500).insulin_infusion) == 0.0


def test_training_expands_to_sessions(root):
    pr = parse_protocol(yaml.safe_load((root / "protocols/scenarios/training_12w.yaml").read_text()), "t")
    ex = [s for s in pr.segments if s.kind == "exercise"]
    assert len(ex) == 36
    assert ex[0].start == 540.0 and ex[1].start == 540.0 + 2 * 1440.0


def test_glucose_bolus_dose():
    pr = parse_protocol({"name": "ivgtt", "end": 180, "events": [
        {"type": "glucose_bolus", "start": 0, "duration_min": 2, "dose": 0.3, "unit": "g/kg"}]}, "x")
    u = build_inputs(pr, 70, 1.8)
    assert float(u.at(np.float64(1.0)).glucose_infusion) == pytest.approx(150.0)  # 300 mg/kg over 2 min


def test_insulin_bolus_per_kg(root):
    """0.04 U/kg over 3 min (protocols/sorensen1985_ivitt_004.yaml) = 40/3 mU/kg/min from 0 to 3 min."""
    pr = parse_protocol(yaml.safe_load((root / "protocols/sorensen1985_ivitt_004.yaml").read_text()), "t")
    u = build_inputs(pr, 70, 1.83)
    assert float(u.at(np.float64(1.5)).insulin_infusion) * 3.0 == pytest.approx(40.0, rel=1e-6)  # mU/kg
    assert float(u.at(np.float64(3.5)).insulin_infusion) == 0.0
    assert pr.end >= 120.39  # last sample of data/sorensen1985_ivitt


@pytest.mark.parametrize(("dose", "unit", "per_kg_min"), [
    (40.0, "mU/kg", 40.0 / 3),          # 0.04 U/kg over 3 min
    (73.2, "mU/m2", 73.2 * 1.83 / 70 / 3),  # per body surface area, converted with the subject's BSA and weight
    (2800.0, "mU", 2800.0 / 70 / 3),    # a total dose
])
def test_insulin_bolus_dose_equals_the_rate_form(dose, unit, per_kg_min):
    by_dose = parse_protocol({"name": "d", "end": 60, "events": [
        {"type": "insulin_bolus", "start": 0, "duration_min": 3, "dose": dose, "unit": unit}]}, "d.yaml")
    by_rate = parse_protocol({"name": "r", "end": 60, "events": [
        {"type": "insulin_bolus", "start": 0, "duration_min": 3, "rate": dose / 3, "unit": unit + "/min"}]}, "r.yaml")
    for pr in (by_dose, by_rate):
        u = build_inputs(pr, 70, 1.83)
        assert float(u.at(np.float64(1.5)).insulin_infusion) == pytest.approx(per_kg_min, rel=1e-12)
        assert float(u.at(np.float64(3.5)).insulin_infusion) == 0.0


@pytest.mark.parametrize(
    "events, end, message",
    [
        ([{"type": "exercise", "start": 0, "duration_min": 60, "intensity": 0.5},
          {"type": "exercise", "start": 30, "duration_min": 60, "intensity": 0.7}], 200, "overlaps event 1"),
        ([{"type": "exercise", "start": 10, "duration_min": -5, "intensity": 0.5}], 200, "must be > 0"),
        ([{"type": "exercise", "start": 250, "duration_min": 5, "intensity": 0.5}], 200, "after the protocol end"),
        ([{"type": "exercise", "start": 190, "duration_min": 60, "intensity": 0.5}], 200, "after the protocol end"),
        ([{"type": "insulin_infusion", "start": 0, "duration_min": 60, "rate": 40, "unit": "U/h"}], 200,
         "unknown insulin unit"),
        ([{"type": "exercise", "start": 0, "duration_min": 60, "intensity": 1.7}], 200, "must be <= 1"),
        ([{"type": "insulin_bolus", "start": 0, "duration_min": 3, "dose": 40, "unit": "mU/kg/min"}], 200,
         "unknown insulin dose unit 'mU/kg/min' for 'dose'"),
        ([{"type": "insulin_bolus", "start": 0, "duration_min": 3, "rate": 40, "unit": "mU/kg"}], 200,
         "or give 'dose' in"),
        ([{"type": "insulin_bolus", "start": 0, "duration_min": 3, "dose": 40, "rate": 13, "unit": "mU/kg"}], 200,
         "either 'rate' or 'dose'"),
        ([{"type": "sauna", "start": 0}], 200, "unknown event type"),
        ([{"type": "exercise", "start": 0, "duration_min": 60, "intensity": 0.5, "speed": 3}], 200,
         "unknown field"),
    ],
)
def test_impossible_protocols_are_refused(events, end, message):
    with pytest.raises(ProtocolError) as e:
        parse_protocol({"name": "bad", "end": end, "events": events}, "bad.yaml")
    assert "bad.yaml" in str(e.value) and "event" in str(e.value)
    assert message in str(e.value)


def test_every_shipped_protocol_parses(root):
    files = sorted((root / "protocols").rglob("*.yaml"))
    assert len(files) >= 10
    for f in files:
        pr = parse_protocol(yaml.safe_load(f.read_text()), str(f))
        assert pr.end > 0
