"""Report items for papers (issue #7): data overview, training figure, priors table, methods paragraph, provenance,
and the report checker of scripts/screenshot_report.py (its decoding part; the browser part is in the slow tier of
tests/test_workflow.py). Synthetic inputs only: no ODE solve, no browser."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from myoglucose.diagnostics.synthetic import make_posterior_tree  # noqa: E402
from test_workflow import _report_checker  # noqa: E402  (scripts/screenshot_report.py as a module)
from myoglucose.report import data_summary, methods_paragraph, plot_data_conditions, save_figure  # noqa: E402
from myoglucose.report.tables import prior_table, provenance_markdown  # noqa: E402
from myoglucose.reporting import (  # noqa: E402
    plot_scenarios,
    plot_training,
    training_scenarios,
    write_data_overview,
)

ROOT = Path(__file__).resolve().parents[1]


def _measurements() -> pd.DataFrame:
    rows = []
    for cond, group, subject, obs in (("clamp_a", "nonobese", "s1", "glucose_plasma"), ("clamp_a", "nonobese", "s1",
                                                                                      "gir"),
                                      ("clamp_b", "obese", "s2", "glucose_plasma")):
        for t in (0.0, 30.0, 60.0):
            rows.append({"dataset_id": "d", "subject_id": subject, "group": group, "condition_id": cond,
                         "observable_id": obs, "time_min": t, "value": 90.0 + t / 10,
                         "unit": "mg/dL" if obs == "glucose_plasma" else "mg/kg/min",
                         "sd": 2.0 if obs == "gir" else np.nan, "sem": np.nan, "n": 12, "source_id": f"d:{obs}"})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------- data overview
def test_data_conditions_one_panel_per_observable_and_condition():
    fig = plot_data_conditions(_measurements(), title="Data: d")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 4  # 2 observables x 2 conditions
    labels = {ax.get_ylabel() for ax in fig.axes}
    assert "glucose_plasma [mg/dL]" in labels and "gir [mg/kg/min]" in labels
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert "gir\nnot measured" in texts  # clamp_b has no gir
    assert fig.axes[0].get_title() == "clamp_a\n(nonobese)"
    with pytest.raises(ValueError, match="time_min"):
        plot_data_conditions(_measurements().drop(columns="time_min"))


def test_data_summary_rows_and_sources():
    prov = pd.DataFrame({"source_id": ["d:gir", "d:glucose_plasma"], "figure_or_table": ["Fig. 2", "Fig. 1"]})
    s = data_summary(_measurements(), prov)
    assert len(s) == 3
    gir = s[s["observable"] == "gir"].iloc[0]
    assert gir["n_values"] == 3 and gir["spread"] == "SD" and gir["source"] == "Fig. 2"
    assert gir["time_first_min"] == 0.0 and gir["time_last_min"] == 60.0 and gir["n_subjects"] == 12
    assert s[s["observable"] == "glucose_plasma"]["spread"].tolist() == ["none", "none"]


def test_write_data_overview_files(tmp_path):
    files = write_data_overview(_measurements(), None, tmp_path, {"report": {"formats": ["svg", "png"], "dpi": 50}},
                                dataset="d", log=lambda _: None)
    assert sorted(p.name for p in files) == ["overview.png", "overview.svg", "summary.csv", "summary.tex"]
    assert "\\label{tab:data-d}" in (tmp_path / "summary.tex").read_text()


# ------------------------------------------------------------------------------------------ training figure
def _predictive(markers: bool = True) -> xr.DataTree:
    rng = np.random.default_rng(0)
    names = ["exercise_then_clamp", "training_12w"]
    ends = [2160.0, 140 * 1440.0]
    T, D, G = 25, 5, 2
    time = np.stack([np.linspace(0.0, e, T) for e in ends])
    obs = ["glucose_plasma", "insulin_plasma", "gir", "muscle_uptake"]
    quantities = ["mito", "lipid", "infl", "pgc1a", "sig_efficiency", "fat_share"]
    ds = xr.Dataset(
        {"mean": (("scenario", "draw", "group", "observable", "time_index"), rng.normal(1, 0.1, (2, D, G, 4, T))),
         "slow": (("scenario", "draw", "group", "quantity", "time_index"), rng.normal(1, 0.1, (2, D, G, 6, T))),
         "time": (("scenario", "time_index"), time)},
        coords={"scenario": names, "group": ["nonobese", "obese"], "observable": obs, "quantity": quantities},
    )
    if markers:
        ds.attrs["markers"] = json.dumps({"exercise_then_clamp": [],
                                          "training_12w": [["training", 540.0], ["detraining", 84 * 1440.0]]})
    return xr.DataTree(children={"scenarios": xr.DataTree(ds)})


@pytest.mark.parametrize("markers", [True, False])
def test_training_scenarios_by_marker_or_length(markers):
    assert training_scenarios(_predictive(markers)["scenarios"].to_dataset()) == ["training_12w"]


def test_training_figure_and_scenarios_split():
    pred = _predictive()
    fig = plot_training(pred)
    assert len(fig.axes) == 5  # one scenario x five slow quantities
    assert fig.axes[0].get_xlabel() == "time [day]"
    assert "mitochondrial density" in fig.axes[0].get_ylabel()
    scen = plot_scenarios(pred)
    assert {ax.get_title() for ax in scen.axes} == {"exercise_then_clamp"}  # the training scenario is not here
    old = _predictive()
    old["scenarios"] = xr.DataTree(old["scenarios"].to_dataset().drop_vars("slow"))
    with pytest.raises(ValueError, match="re-run predict"):
        plot_training(old)


# ------------------------------------------------------------------------------------ priors and methods
def _parameters() -> pd.DataFrame:
    return pd.DataFrame({
        "parameterId": ["k_ins_int", "akt_ec50", "r_wb"], "unit": ["1/min", "mU/L", "1"],
        "priorType": ["lognormal", "lognormal", "lognormal"], "priorLoc": [0.05, 165.0, 0.9],
        "priorScale": [0.4, 0.5, 0.1], "lowerBound": [0.005, 10, 0.5], "upperBound": [0.2, 500, 1],
        "estimate": [1, 1, 0], "level": ["population", "group", "fixed"], "reference": ["B1981", "R1981", "x"],
    })


def test_prior_table_rows_and_hierarchy():
    t = prior_table(_parameters(), {"sigma_gir": 0.15}, {"sigma_gir": "proportional"}, {"sigma_gir": "1"})
    assert t["parameter"].tolist() == ["k_ins_int", "akt_ec50", "sigma_gir"]
    assert t.loc[0, "distribution"] == "LogNormal(log 0.05, 0.4)"
    assert "omega ~ HalfNormal(0.25)" in t.loc[1, "distribution"] and t.loc[1, "level"] == "group"
    assert t.loc[2, "distribution"] == "HalfNormal(0.15), proportional noise"


def test_methods_paragraph_has_every_item_of_the_issue():
    """Model variant, priors, solver and tolerances, sampler settings, package versions, git commit, seed, data
    checksums."""
    tree = make_posterior_tree()
    attrs = dict(tree.attrs)
    priors = prior_table(_parameters(), {"sigma_gir": 0.15})
    text = methods_paragraph(attrs, {"chains": 4, "warmup": 500, "draws": 500, "target_accept": 0.9},
                             parameters=_parameters(), priors=priors, n_measurements=16)
    assert attrs["model_variant"] in text
    assert "k_ins_int (log-normal with median 0.05 1/min and log-sd 0.4)" in text
    assert "akt_ec50 (per group, log-normal" in text and "sigma_gir ~ HalfNormal(0.15)" in text
    assert "Kvaerno5" in text and "relative tolerance" in text and "absolute tolerance" in text
    assert "4 chains" in text and "500 warm-up" in text and "target acceptance probability 0.9" in text
    assert "jax" in text and "numpyro" in text
    assert attrs["git_commit"] in text
    assert f"random seed was {attrs['seed']}" in text
    assert "SHA-256" in text
    assert "run until converged" not in text  # a fixed length
    text = methods_paragraph(attrs, {"chains": 4, "warmup": 300, "draws": 500, "max_samples": 2000,
                                     "first_round": 250, "rounds": [{"draws_per_chain": 250},
                                                                    {"draws_per_chain": 500}]})
    assert "500 retained draws per chain" in text and "run until converged: after 250 draws" in text
    assert "up to 2000 draws per chain; this fit kept 250 -> 500 draws per chain in 2 rounds." in text
    auto = dict(attrs, solver="Tsit5", solver_requested="auto",
                solver_choice=json.dumps({"chosen": "Tsit5", "reason": "stability costs few steps"}))
    text = methods_paragraph(auto, {})
    assert "Tsit5 solver" in text and "chosen automatically from a stiffness probe" in text
    assert "(stability costs few steps)" in text
    rev = dict(auto, adjoint="reverse", adjoint_requested="auto", adjoint_choice="6 estimated ODE parameters")
    text = methods_paragraph(rev, {})
    assert "Gradients of the log density used reverse-mode differentiation through the solver (recursive " \
           "checkpointing), chosen automatically (6 estimated ODE parameters)." in text
    text = methods_paragraph(dict(auto, adjoint="sensitivity"), {})  # a mode set by name: no reason given
    assert "used forward sensitivities of the estimated ODE parameters inside a custom vector-Jacobian product." \
           in text


def test_methods_paragraph_names_the_warmup_metric_once_per_setting():
    """The MAP start, the Laplace metric and the shrunk warm-up windows each appear once, as configured; no stray
    ``initialisation:`` clause for a MAP start; the prior-median start is named whatever the shrinkage."""
    attrs = dict(make_posterior_tree().attrs)
    base = {"chains": 4, "warmup": 300, "draws": 250, "dense_mass": True}
    text = methods_paragraph(attrs, dict(base, init="map", map_starts=8, metric_init="laplace", metric_shrinkage=1.0))
    assert "chains initialised at multi-start MAP estimates from 8 optimisation starts" in text
    assert "inverse Hessian of the log posterior at the MAP" in text
    assert "shrunk towards the principal axes of the previous metric (1 pseudo-draw per dimension)" in text
    assert "initialisation:" not in text
    text = methods_paragraph(attrs, dict(base, init="map", metric_shrinkage=0.0))
    assert "shrunk" not in text and "initialisation:" not in text
    text = methods_paragraph(attrs, dict(base, init="median", metric_shrinkage=2.0,
                                         metric_shrinkage_target="initial"))
    assert "chains initialised at the prior medians" in text
    assert "principal axes of the warm-up's starting metric (2 pseudo-draws per dimension)" in text
    text = methods_paragraph(attrs, dict(base, dense_mass=False, init="median", metric_shrinkage=1.0))
    assert "shrunk" not in text  # a diagonal metric is not shrunk


def test_provenance_markdown_lists_full_checksums():
    attrs = dict(make_posterior_tree().attrs)
    attrs["package_versions"] = json.dumps({"jax": "0.12.0", "numpyro": "0.22.0"})
    attrs["model_sha256"] = json.dumps({"models/core/model.yaml": "b" * 64})
    md = provenance_markdown(attrs)
    sums = json.loads(attrs["data_sha256"])
    for name, digest in sums.items():
        assert f"`{name}`: `{digest}`" in md  # full, not truncated
    assert "`models/core/model.yaml`: `" + "b" * 64 in md
    assert "- jax 0.12.0" in md and f"- seed: `{attrs['seed']}`" in md


# ------------------------------------------------------------------------------------------- report checker
def _load_checker():
    return _report_checker()


def _mini_report(tmp_path, entries: dict[str, tuple[str, bytes]]) -> str:
    results = {path: {"name": path, "mime_type": mime,
                      "data_uri": f"data:{mime};charset=utf8;base64,{base64.b64encode(data).decode()}"}
               for path, (mime, data) in entries.items()}
    return ("<html><body><div id='app'></div><script id=\"results\">\n    var results = "
            + json.dumps(results) + ";\n</script></body></html>")


def test_checker_decodes_figures_and_flags_broken_ones(tmp_path):
    chk = _load_checker()
    fig = Figure(figsize=(2, 1))
    fig.subplots().plot([0, 1], [0, 1])
    svg, png = save_figure(fig, tmp_path / "f", formats=("svg", "png"), dpi=50)
    html_text = _mini_report(tmp_path, {
        "results/a.svg": ("image/svg+xml", svg.read_bytes()),
        "results/b.png": ("image/png", png.read_bytes()),
        "results/broken.svg": ("image/svg+xml", b"<svg width='10'"),
        "results/t.csv": ("text/csv", b"a,b\n1,2\n"),
    })
    figs = chk.figure_entries(chk.report_results(html_text))
    assert sorted(figs) == ["results/a.svg", "results/b.png", "results/broken.svg"]  # tables are not figures
    rec = chk.decoded_check(figs)
    assert rec["results/a.svg"]["decoded_ok"] and rec["results/a.svg"]["width"] == pytest.approx(144)
    assert rec["results/b.png"]["decoded_ok"] and rec["results/b.png"]["width"] == 100
    assert not rec["results/broken.svg"]["decoded_ok"] and "ParseError" in rec["results/broken.svg"]["decode_error"]

    report = tmp_path / "report.html"
    report.write_text(html_text)
    summary = chk.check_report(report, tmp_path / "check", browser=False)
    assert summary["failed"] == ["results/broken.svg"] and not summary["ok"]
    assert json.loads((tmp_path / "check" / "figure_check.json").read_text())["n_figures"] == 3
    assert chk.main([str(report), "--out-dir", str(tmp_path / "check2"), "--no-browser"]) == 1
    assert chk.main([str(tmp_path / "missing.html"), "--no-browser"]) == 2


def test_checker_refuses_a_page_that_is_not_a_report():
    chk = _load_checker()
    with pytest.raises(chk.ReportError, match="not a Snakemake HTML report"):
        chk.report_results("<html><body>hello</body></html>")


# ------------------------------------------------------------------------------------------------------ LOO
def test_loo_compare_with_observations_that_do_not_depend_on_the_parameters():
    """A log-likelihood that is the same in every draw (e.g. GIR 0 at the start of a clamp, proportional noise with a
    floor) made PSIS fail ("All tail values are the same"); its LOO density is exactly its likelihood."""
    from myoglucose.report import loo_compare

    tree = make_posterior_tree(seed=15)
    ll = tree["log_likelihood"].to_dataset()
    values = ll["obs"].values.copy()
    values[..., 0] = -1.25
    ll["obs"] = (ll["obs"].dims, values)
    tree["log_likelihood"] = ll
    other = make_posterior_tree(seed=15)
    other["log_likelihood"] = ll.assign(obs=ll["obs"] - 0.5)
    df = loo_compare({"a": tree, "b": other})
    assert list(df["model"]) == ["a", "b"]
    assert df.loc[1, "elpd_diff"] == pytest.approx(-8.0, abs=1e-6)  # 16 observations x 0.5
    assert (df["n_pareto_k_gt_0_7"] == 0).all()
    # the parameter-free observation contributes exactly its log-likelihood
    reduced = make_posterior_tree(seed=15)
    reduced["log_likelihood"] = ll.isel(measurement=slice(1, None))
    ref = loo_compare({"a": reduced})
    assert df.loc[0, "elpd_loo"] == pytest.approx(ref.loc[0, "elpd_loo"] - 1.25, rel=1e-12)


# ------------------------------------------------------------------------------------------ scenario grid
def test_long_scenarios_are_sampled_once_a_day_before_the_sessions():
    from myoglucose.prediction import scenario_grid
    from myoglucose.simulation import load_protocol

    training = load_protocol(ROOT / "protocols/scenarios/training_12w.yaml")
    grid = scenario_grid(training, 241)
    assert grid.shape == (241,) and np.all(np.diff(grid) >= 0) and grid[-1] == training.end
    days = grid[1:][grid[1:] < training.end]
    assert np.allclose(days % 1440.0, 8 * 60.0)  # 08:00 every day, 1 h before the 09:00 sessions
    assert np.allclose(np.diff(days), 1440.0)
    short = load_protocol(ROOT / "protocols/scenarios/exercise_then_clamp.yaml")
    assert np.allclose(scenario_grid(short, 241), np.linspace(0.0, short.end, 241))


# ------------------------------------------------------------------------------------------------------ CLI
def test_cli_report_draws_the_data_overview_or_refuses_mixed_inputs(tmp_path):
    from typer.testing import CliRunner

    from myoglucose.cli import app

    tidy = tmp_path / "tidy" / "d"
    tidy.mkdir(parents=True)
    _measurements().to_csv(tidy / "measurements.tsv", sep="\t", index=False, na_rep="NA")
    runner = CliRunner()
    out = tmp_path / "out"
    res = runner.invoke(app, ["report", "--tidy-dir", str(tidy), "--out-dir", str(out)])  # svg, pdf, png at 300 dpi
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["overview.pdf", "overview.png", "overview.svg", "summary.csv",
                                                     "summary.tex"]
    res = runner.invoke(app, ["report", "--out-dir", str(out)])
    assert res.exit_code == 2 and "give --posterior" in res.output
    res = runner.invoke(app, ["report", "--tidy-dir", str(tidy), "--posterior", "p.nc", "--out-dir", str(out)])
    assert res.exit_code == 2 and "--tidy-dir draws the data overview alone" in res.output
