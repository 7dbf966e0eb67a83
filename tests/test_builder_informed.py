"""Which parameters a fit samples: the variant's estimated ones, less those no condition of the data can inform.

With measured insulin as forcing (every Katz clamp) the insulin-kinetic parameters have no effect on the solution
(tests/test_equations.py checks the Jacobian is exactly zero), so ``ModelBuilder`` holds them at their nominal values;
with one kinetic-insulin condition (the FSIVGTT) they are sampled.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from myoglucose.model.equations import INSULIN_KINETIC_PARAMS

ROOT = Path(__file__).resolve().parents[1]
SOLVER = {"name": "Kvaerno5", "rtol": 1e-6, "atol": 1e-6}  # a named solver: no stiffness probe, nothing compiled


def _problem(tmp_path, dataset: str):
    from myoglucose.data.prepare import prepare_to_dir
    from myoglucose.inference.fit import FitJob, load_problem

    out = tmp_path / dataset
    prepare_to_dir(ROOT / "data" / dataset, out, ROOT)
    return load_problem(FitJob(tidy_dir=str(out), model_dir=str(ROOT / "models/core_ivgtt"), repo_root=str(ROOT),
                               solver=SOLVER, sampler={}))


def test_forced_insulin_fit_holds_insulin_kinetics_at_nominal(tmp_path):
    spec, data, b = _problem(tmp_path, "katz2000_clamp")
    assert set(data.covariates["insulin_mode"]) == {"forced"}
    variant_kinetic = [r.id for r in spec.estimated if r.id in INSULIN_KINETIC_PARAMS]
    assert variant_kinetic, "the core_ivgtt variant estimates insulin-kinetic parameters"
    assert b.not_informed == variant_kinetic
    sampled = {r.id for r in b.estimated}
    assert not sampled & set(INSULIN_KINETIC_PARAMS)
    for k in variant_kinetic:
        assert float(b.fixed[k]) == pytest.approx(spec.params[k].nominal)
    assert {"gb", "akt_ec50", "k1", "k2", "v_g"} <= sampled  # the rest is unchanged


def test_kinetic_insulin_fit_samples_insulin_kinetics(tmp_path):
    spec, data, b = _problem(tmp_path, "katz2000_fsivgtt")
    assert b.not_informed == []
    sampled = {r.id for r in b.estimated}
    assert {"ib", "sec_glc_power", "k1", "k2", "v_g"} <= sampled
    assert "ib" in b.group_level() and "sec_glc_power" in b.group_level()
