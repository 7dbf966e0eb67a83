"""Known-answer tests for myoglucose.report.tables."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from myoglucose.diagnostics.synthetic import make_posterior_tree
from myoglucose.report import loo_compare, methods_paragraph, posterior_contraction, to_latex
from myoglucose.report.tables import group_differences


def test_contraction_zero_when_posterior_is_prior():
    tree = make_posterior_tree(posterior_equals_prior=True, n_draws=500, seed=11)
    df = posterior_contraction(tree)
    assert list(df["parameter"]) == ["v_max", "k_ins[nonobese]", "k_ins[obese]", "sigma_glucose_plasma",
                                     "sigma_gir"]
    assert np.all(np.abs(df["contraction"]) < 0.15)
    assert df.set_index("parameter").loc["v_max", "prior_sd"] == pytest.approx(1.0, rel=0.1)


def test_contraction_one_when_posterior_is_tight():
    df = posterior_contraction(make_posterior_tree(posterior_sd=0.01, seed=12)).set_index("parameter")
    assert np.all(df["contraction"] > 0.999)
    assert df.loc["k_ins[obese]", "posterior_sd"] == pytest.approx(0.01, rel=0.15)


def test_group_differences_known_ratio():
    """k_ins is shifted by +log(2) in the obese group: the ratio to nonobese is about 2 with probability 1 of being
    larger, and it is flagged as a difference; the population parameter v_max has no rows."""
    tree = make_posterior_tree(posterior_sd=0.05, seed=21)
    post = tree["posterior"].to_dataset()
    k = post["k_ins"].copy()
    k.loc[{"group": "nonobese"}] = np.exp(np.random.default_rng(0).normal(0.0, 0.05, k.sel(group="obese").shape))
    k.loc[{"group": "obese"}] = 2.0 * np.exp(np.random.default_rng(1).normal(0.0, 0.05, k.sel(group="obese").shape))
    post["k_ins"] = k
    tree["posterior"] = post
    df = group_differences(tree)
    print(df.to_string())
    assert list(df["parameter"]) == ["k_ins"] and list(df["group"]) == ["obese"]
    row = df.iloc[0]
    assert row["reference"] == "nonobese"
    assert row["ratio_median"] == pytest.approx(2.0, rel=0.02)
    assert row["ratio_q05"] > 1.7 and row["prob_greater"] == 1.0 and bool(row["differs_90"])
    same = make_posterior_tree(posterior_equals_prior=True, n_draws=400, seed=3)
    d2 = group_differences(same)
    assert not d2["differs_90"].any()


def test_loo_compare_two_models():
    good = make_posterior_tree(seed=13)
    bad = make_posterior_tree(seed=13)
    ll = bad["log_likelihood"].to_dataset()
    ll["obs"] = ll["obs"] - 1.0  # uniformly worse fit: elpd lower by 16
    bad["log_likelihood"] = ll
    df = loo_compare({"good": good, "bad": bad})
    assert list(df.columns) == ["model", "rank", "elpd_loo", "se", "p_loo", "elpd_diff", "dse", "weight",
                                "n_pareto_k_gt_0_7", "n_data_points"]
    assert list(df["model"]) == ["good", "bad"]
    assert df.loc[0, "elpd_diff"] == 0
    assert df.loc[1, "elpd_diff"] == pytest.approx(-16.0, abs=0.5)
    assert df["weight"].sum() == pytest.approx(1.0)
    assert (df["n_pareto_k_gt_0_7"] == 0).all()
    assert (df["n_data_points"] == 16).all()


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_loo_counts_high_pareto_k():
    tree = make_posterior_tree(seed=14)
    ll = tree["log_likelihood"].to_dataset()
    values = ll["obs"].values.copy()
    rng = np.random.default_rng(0)
    values[..., 0] = -0.5 * rng.normal(0.0, 3.0, size=values.shape[:2]) ** 2  # influential point
    ll["obs"] = (ll["obs"].dims, values)
    tree["log_likelihood"] = ll
    df = loo_compare({"m": tree})
    assert len(df) == 1 and df.loc[0, "weight"] == 1.0
    assert df.loc[0, "n_pareto_k_gt_0_7"] >= 1


def test_to_latex_caption_label_escaping():
    df = pd.DataFrame({"parameter": ["k_ins[obese]"], "r_hat": [1.0012345], "ess_bulk": [1523.7]})
    tex = to_latex(df, caption="Convergence of the $\\hat{R}$ table", label="tab:conv")
    assert "\\caption{Convergence of the $\\hat{R}$ table}" in tex
    assert "\\label{tab:conv}" in tex
    assert "k\\_ins[obese]" in tex and "ess\\_bulk" in tex
    assert "1.001" in tex and "1524" in tex
    assert tex.count("\\begin{table}") == 1 and "\\toprule" in tex


def test_methods_paragraph_from_attrs():
    tree = make_posterior_tree()
    attrs = dict(tree.attrs)
    text = methods_paragraph(attrs, {"chains": 4, "num_warmup": 1500, "target_accept_prob": 0.95,
                                     "dense_mass": True, "max_tree_depth": 10})
    assert str(attrs["seed"]) in text
    assert attrs["git_commit"] in text
    assert "base" in text and "katz2000_clamp" in text
    assert "Kvaerno5" in text and "1e-06" in text and "1e-09" in text and "8192 steps" in text
    assert "MAP estimates from 8 optimisation starts" in text
    assert "4 chains" in text and "1500 warm-up" in text  # sampler dict overrides config_yaml
    assert "1000 retained draws" in text  # from config_yaml
    assert "0.95" in text and "dense mass matrix" in text
    for pkg in ("jax", "diffrax", "numpyro", "arviz"):
        assert pkg in text
    assert "aaaaaaaaaaaa" in text and "measurements.tsv" in text
    assert "installed when this report was generated" in text


def test_methods_paragraph_names_the_members_of_a_joint_dataset():
    attrs = dict(make_posterior_tree().attrs, dataset_id="katz2000", source_datasets="katz2000_clamp,katz2000_fsivgtt")
    text = methods_paragraph(attrs, {"chains": 4})
    assert "jointly to the data sets katz2000_clamp, katz2000_fsivgtt (joint data set \u201ckatz2000\u201d)" in text
    one = methods_paragraph(dict(attrs, source_datasets="katz2000"), {"chains": 4})
    assert "to the data set \u201ckatz2000\u201d" in one and "jointly" not in one


def test_methods_paragraph_counts_every_level():
    params = pd.DataFrame({"parameterId": ["a", "b", "c", "d"], "estimate": [1, 1, 1, 1],
                           "level": ["population", "population", "subject", "group"],
                           "priorType": ["lognormal"] * 4, "parameterScale": ["log"] * 4})
    text = methods_paragraph(dict(make_posterior_tree().attrs), {"chains": 4, "n_groups": 3}, parameters=params)
    assert "4 parameters were estimated (2 population-level, 1 group-level and 1 subject-level" in text
    assert "over 3 groups" in text


def test_methods_paragraph_recorded_versions_and_parameters():
    attrs = dict(make_posterior_tree().attrs)
    attrs["package_versions"] = json.dumps(
        {"jax": "0.12.0", "diffrax": "0.7.2", "numpyro": "0.22.0", "arviz": "1.3.0"}
    )
    params = pd.DataFrame(
        {
            "parameterId": ["v_max", "k_ins", "sigma_gir", "r_wb"],
            "priorType": ["lognormal", "lognormal", "halfnormal", "lognormal"],
            "level": ["population", "group", "population", "fixed"],
            "estimate": [1, 1, 1, 0],
        }
    )
    text = methods_paragraph(attrs, {"n_groups": 2}, parameters=params, n_measurements=16)
    assert "installed when" not in text
    assert "jax 0.12.0" in text
    assert "3 parameters were estimated" in text
    assert "2 lognormal, 1 halfnormal" in text
    assert "16 observations" in text
