"""Every report plot returns a Figure with the expected panels (synthetic DataTrees)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from myoglucose.diagnostics.synthetic import make_posterior_tree  # noqa: E402
from myoglucose.report import (  # noqa: E402
    plot_data_overview,
    plot_forest_groups,
    plot_pairs,
    plot_ppc,
    plot_prior_posterior,
    plot_rank,
)


@pytest.fixture(scope="module")
def tree():
    return make_posterior_tree(n_chains=2, n_draws=100, n_divergent=3, seed=7)


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


def test_ppc_one_panel_per_observable_condition(tree):
    fig = plot_ppc(tree)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # 2 observables x 2 conditions
    titles = _titles(fig)
    assert any("gir" in t and "clamp_obese" in t for t in titles)
    ylabels = {ax.get_ylabel() for ax in fig.axes}
    assert "glucose_plasma [mg/dL]" in ylabels and "gir [mg/kg/min]" in ylabels
    assert all(ax.get_xlabel() == "time [min]" for ax in fig.axes)
    # two bands per panel, observed points present
    assert all(len(ax.collections) >= 2 for ax in fig.axes)


def test_ppc_uses_predictive_tree_with_its_own_grid(tree):
    times = np.linspace(0, 120, 25)
    keys = [(o, c) for o in ("glucose_plasma", "gir") for c in ("clamp_nonobese", "clamp_obese")]
    obs_ids = np.repeat([k[0] for k in keys], times.size)
    cond_ids = np.repeat([k[1] for k in keys], times.size)
    t = np.tile(times, len(keys))
    draws = np.random.default_rng(0).normal(size=(2, 50, t.size)) + t
    pred = xr.Dataset(
        {"obs": (("chain", "draw", "measurement"), draws)},
        coords={
            "measurement": np.arange(t.size),
            "measurement_observable": ("measurement", obs_ids),
            "measurement_condition": ("measurement", cond_ids),
            "measurement_time": ("measurement", t),
        },
    )
    ptree = xr.DataTree.from_dict({"posterior_predictive": pred})
    fig = plot_ppc(tree, ptree)
    assert len(fig.axes) == 4
    median_lines = [ln for ax in fig.axes for ln in ax.lines if ln.get_label() == "median"]
    assert len(median_lines) == 4 and all(len(ln.get_xdata()) == 25 for ln in median_lines)


def test_ppc_falls_back_to_constant_data(tree):
    stripped = tree.copy()
    for g in ("observed_data", "posterior_predictive"):
        ds = stripped[g].to_dataset()
        stripped[g] = ds.drop_vars([c for c in ds.coords if str(c).startswith("measurement_")])
    assert len(plot_ppc(stripped).axes) == 4


def test_rank_panels(tree):
    fig = plot_rank(tree)
    assert isinstance(fig, Figure)
    assert _titles(fig) == ["v_max", "k_ins[nonobese]", "k_ins[obese]", "sigma_glucose_plasma", "sigma_gir"]
    assert len(plot_rank(tree, var_names=["k_ins"]).axes) == 2
    # one step line per chain
    from matplotlib.patches import StepPatch

    assert sum(isinstance(p, StepPatch) for p in fig.axes[0].patches) == 2


def test_rank_into_given_axes(tree):
    fig = Figure()
    axes = fig.subplots(1, 2)
    out = plot_rank(tree, var_names=["k_ins"], axes=axes)
    assert out is fig and len(fig.axes) == 2


def test_pairs_lower_triangle(tree):
    fig = plot_pairs(tree, ["v_max", "k_ins"])
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 6  # 3 elements -> 3 diagonal + 3 lower
    labels = [ax.get_label() for ax in fig.axes]
    assert labels  # figure built
    assert len(plot_pairs(tree, ["v_max", "k_ins[obese]"]).axes) == 3
    with pytest.raises(KeyError):
        plot_pairs(tree, ["nope"])


def test_forest_groups(tree):
    fig = plot_forest_groups(tree)
    assert isinstance(fig, Figure)
    assert _titles(fig) == ["k_ins"]
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["nonobese", "obese"]
    no_groups = tree.copy()
    no_groups["posterior"] = tree["posterior"].to_dataset().drop_vars("k_ins")
    assert len(plot_forest_groups(no_groups).axes) == 1


def test_prior_posterior(tree):
    fig = plot_prior_posterior(tree)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 5
    assert len(plot_prior_posterior(tree, var_names=["v_max"]).axes) == 1


def test_data_overview():
    df = pd.DataFrame(
        {
            "dataset_id": ["a"] * 8 + ["b"] * 4,
            "subject_id": ["s1", "s1", "s2", "s2"] * 3,
            "group": ["nonobese", "nonobese", "obese", "obese"] * 3,
            "condition_id": ["c"] * 12,
            "observable_id": ["glucose_plasma"] * 4 + ["gir"] * 4 + ["insulin_plasma"] * 4,
            "time_min": [0.0, 60.0] * 6,
            "value": np.arange(12.0),
            "unit": ["mg/dL"] * 4 + ["mg/kg/min"] * 4 + ["mU/L"] * 4,
            "sd": [1.0] * 4 + [np.nan] * 8,
            "sem": [np.nan] * 8 + [0.5] * 4,
        }
    )
    fig = plot_data_overview(df)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3
    assert "insulin_plasma [mU/L]" in {ax.get_ylabel() for ax in fig.axes}
    with pytest.raises(ValueError, match="value"):
        plot_data_overview(df.drop(columns="value"))


def test_pairs_svg_size_does_not_grow_with_draws(tmp_path):
    """The joint densities are images of binned draws: 4 chains x 1000 draws give an SVG about as small as 2 x 100
    (a scatter of every draw made a 47 MB SVG for the 20 elements of `full` on Bergman 1981). Divergent draws stay
    visible as red dots."""
    from myoglucose.report.export import save_figure

    sizes = {}
    for n_chains, n_draws in ((2, 100), (4, 1000)):
        t = make_posterior_tree(n_chains=n_chains, n_draws=n_draws, n_divergent=3, seed=7)
        fig = plot_pairs(t, ["v_max", "k_ins"])
        red = [c for ax in fig.axes for c in ax.collections if c.get_label() == "divergent"]
        assert len(red) == 3 and all(len(c.get_offsets()) == 3 for c in red)
        assert sum(len(ax.images) for ax in fig.axes) == 3  # one density image per lower panel
        (path,) = save_figure(fig, tmp_path / f"pairs{n_draws}", formats=("svg",))
        sizes[n_draws] = path.stat().st_size
    print("pairs SVG bytes by draws per chain:", sizes)
    assert sizes[1000] < 1.5 * sizes[100]
