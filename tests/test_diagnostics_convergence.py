"""Known-answer tests for myoglucose.diagnostics (synthetic DataTrees, ARCHITECTURE.md section 4)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from myoglucose.diagnostics import Thresholds, convergence_table, sampler_summary, verdict
from myoglucose.diagnostics.synthetic import make_posterior_tree

EXPECTED_PARAMS = ["v_max", "k_ins[nonobese]", "k_ins[obese]", "sigma_glucose_plasma", "sigma_gir"]


@pytest.fixture(scope="module")
def clean_tree():
    return make_posterior_tree(n_chains=4, n_draws=200, seed=1)


def test_table_layout(clean_tree):
    table = convergence_table(clean_tree)
    assert list(table.columns) == [
        "parameter", "mean", "sd", "q05", "q95", "r_hat", "ess_bulk", "ess_tail", "mcse_mean",
    ]
    assert list(table["parameter"]) == EXPECTED_PARAMS
    assert table.drop(columns="parameter").dtypes.map(lambda d: d.kind == "f").all()


def test_iid_chains_rhat_one_and_ess_near_n(clean_tree):
    table = convergence_table(clean_tree).set_index("parameter")
    n = 4 * 200
    assert np.all(np.abs(table["r_hat"] - 1.0) < 0.01)
    assert np.all(table["ess_bulk"].between(0.6 * n, 1.4 * n))
    assert np.all(table["ess_tail"].between(0.6 * n, 1.4 * n))
    # known moments of the synthetic posterior: v_max ~ N(2, 0.1), k_ins ~ N([0.4, 0.8], 0.1)
    assert table.loc["v_max", "mean"] == pytest.approx(2.0, abs=0.02)
    assert table.loc["k_ins[obese]", "mean"] == pytest.approx(0.8, abs=0.02)
    assert table.loc["v_max", "sd"] == pytest.approx(0.1, rel=0.1)
    assert table.loc["v_max", "q05"] == pytest.approx(2.0 - 1.645 * 0.1, abs=0.03)
    assert table.loc["v_max", "mcse_mean"] == pytest.approx(0.1 / np.sqrt(n), rel=0.35)


def test_shifted_chain_flags_rhat():
    tree = make_posterior_tree(chain_offsets=(0.0, 0.0, 0.0, 1.0), seed=2)
    table = convergence_table(tree).set_index("parameter")
    assert table.loc["v_max", "r_hat"] > 1.1
    assert table.loc["k_ins[obese]", "r_hat"] < 1.01
    result = verdict(table.reset_index(), sampler_summary(tree, max_tree_depth=10), Thresholds())
    assert not result["passed"]
    assert any("R-hat" in f and "v_max" in f for f in result["failures"])
    assert not any("R-hat" in f and "k_ins" in f for f in result["failures"])


def test_clean_run_passes(clean_tree):
    summary = sampler_summary(clean_tree, max_tree_depth=10)
    result = verdict(convergence_table(clean_tree), summary, Thresholds())
    assert result["passed"], result["failures"]
    assert result["failures"] == []
    json.dumps(result)
    json.dumps(summary)


def test_sampler_summary_counts():
    tree = make_posterior_tree(n_divergent=5, n_ode_failed=3, tree_depth=10, seed=3)
    s = sampler_summary(tree, max_tree_depth=10)
    assert s["n_chains"] == 4 and s["n_draws"] == 200 and s["n_samples"] == 800
    assert s["divergences"] == 5
    assert sum(s["divergences_per_chain"]) == 5 and len(s["divergences_per_chain"]) == 4
    assert s["ode_failures"] == 3
    assert s["ode_failure_fraction"] == pytest.approx(3 / 800)
    assert s["treedepth_saturated"] == 800
    assert s["treedepth_saturation_fraction"] == 1.0
    assert len(s["e_bfmi"]) == 4
    # iid energy: E-BFMI = E[(dE)^2] / Var(E) ~ 2
    assert all(1.5 < v < 2.5 for v in s["e_bfmi"])
    assert sampler_summary(tree, max_tree_depth=11)["treedepth_saturated"] == 0


def test_verdict_reports_each_failure():
    tree = make_posterior_tree(n_divergent=2, n_ode_failed=40, tree_depth=10, seed=4)
    # random-walk energy gives a tiny E-BFMI
    rng = np.random.default_rng(0)
    stats = tree["sample_stats"].to_dataset()
    stats["energy"] = (("chain", "draw"), np.cumsum(rng.normal(size=(4, 200)), axis=1))
    tree["sample_stats"] = stats
    result = verdict(convergence_table(tree), sampler_summary(tree, 10), Thresholds())
    text = "\n".join(result["failures"])
    assert not result["passed"]
    assert "2 divergent transition(s)" in text
    assert "E-BFMI" in text
    assert "maximum tree depth" in text
    assert "ODE solver failed in 40 draw(s)" in text


def test_thresholds_from_dict():
    th = Thresholds.from_dict({"r_hat_max": "1.05", "max_divergences": 3, "ess_bulk_min": None})
    assert th.r_hat_max == 1.05 and th.max_divergences == 3 and th.ess_bulk_min == 400
    assert Thresholds.from_dict(None) == Thresholds()
    assert Thresholds.from_dict({"fail_on_bad": True, "e_bfmi_min": 0.2}).e_bfmi_min == 0.2
    with pytest.raises(ValueError, match="rhat_max"):
        Thresholds.from_dict({"rhat_max": 1.0})
    with pytest.raises(ValueError, match="number"):
        Thresholds.from_dict({"r_hat_max": "abc"})
    with pytest.raises(dataclasses.FrozenInstanceError):
        th.r_hat_max = 2.0  # type: ignore[misc]


def test_relaxed_thresholds_pass():
    tree = make_posterior_tree(n_divergent=2, seed=5)
    table, summary = convergence_table(tree), sampler_summary(tree, 10)
    assert not verdict(table, summary, Thresholds())["passed"]
    assert verdict(table, summary, Thresholds(max_divergences=2))["passed"]


def test_low_ess_is_flagged(clean_tree):
    table = convergence_table(clean_tree)
    result = verdict(table, sampler_summary(clean_tree, 10), Thresholds(ess_bulk_min=10_000))
    assert any(f.startswith("bulk ESS < 10000 for 5 parameter(s)") for f in result["failures"])

