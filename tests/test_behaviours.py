"""The nine behaviours of shared/MODEL.md, each its own test; every test prints the numbers it checks.

One compiled solver serves every scenario (``behaviours.Simulator``); the simulations run once per session.
"""

from __future__ import annotations

import pytest

from myoglucose.behaviours import check_behaviours


@pytest.fixture(scope="module")
def results(full_spec):
    return check_behaviours(full_spec, None, log=lambda m: None).table


def _check(results, behaviour):
    rows = results[results["behaviour"] == behaviour]
    assert len(rows) > 0
    for r in rows.itertuples():
        print(f"B{behaviour}: {r.check}: {r.value:.4g} (expected [{r.lower:.4g}, {r.upper:.4g}])")
    bad = rows[~rows["passed"]]
    assert bad.empty, "\n".join(f"{r.check}: {r.value:.4g} not in [{r.lower}, {r.upper}]" for r in bad.itertuples())


def test_b1_muscle_dominates_clamp_disposal(results):
    _check(results, 1)


def test_b2_exercise_bypasses_insulin(results):
    _check(results, 2)


def test_b3_exercise_and_insulin_are_additive(results):
    _check(results, 3)


def test_b4_post_exercise_sensitisation_fades(results):
    _check(results, 4)


def test_b5_ampk_intensity_threshold(results):
    _check(results, 5)


def test_b6_il6_kinetics(results):
    _check(results, 6)


def test_b7_training_and_detraining(results):
    _check(results, 7)


def test_b8_seed_table_directions(results):
    _check(results, 8)


def test_b9_insulin_resistant_m_value(results):
    _check(results, 9)
