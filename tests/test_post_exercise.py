"""Post-exercise insulin sensitivity (config predict.post_exercise): the ``post_exercise`` group of the predictive
file, its figure and table, and the config check of its settings.

The solves use the ``core`` variant (distal-convergence memory on: mem_prime = 3, tau_mem = 20 h) on the Katz 2000
groups, with a synthetic posterior of 3 draws scattered 5 % around the nominal values (no fit), a short delay grid
and one ``predictive_tree`` call per module (two compiled programs: the data conditions and the post-exercise batch).
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DELAYS = [0.0, 2.0, 24.0, 72.0]
GROUPS = ["nonobese", "obese", "t2d"]
SOLVER = {"name": "Kvaerno5", "rtol": 1e-6, "atol": 1e-6}


@pytest.fixture(scope="module")
def tidy(tmp_path_factory) -> Path:
    from myoglucose.data.prepare import prepare_to_dir

    out = tmp_path_factory.mktemp("tidy") / "katz2000_clamp"
    prepare_to_dir(ROOT / "data" / "katz2000_clamp", out, ROOT)
    return out


@pytest.fixture(scope="module")
def problem(tidy):
    from myoglucose.inference.fit import FitJob, load_problem

    job = FitJob(tidy_dir=str(tidy), model_dir=str(ROOT / "models" / "core"), repo_root=str(ROOT), solver=SOLVER,
                 sampler={})
    return load_problem(job)


def near_nominal_posterior(builder, n_draws: int = 3, seed: int = 3) -> xr.DataTree:
    """A posterior DataTree (1 chain) whose estimated parameters scatter 5 % (log scale) around their nominal
    values, per draw and, for group-level parameters, per group."""
    rng = np.random.default_rng(seed)
    G = len(builder.groups)
    data_vars = {}
    for r in builder.estimated:
        if r.id in builder.group_level():
            data_vars[r.id] = (("chain", "draw", "group"), r.nominal * np.exp(0.05 * rng.normal(size=(1, n_draws, G))))
        else:
            data_vars[r.id] = (("chain", "draw"), r.nominal * np.exp(0.05 * rng.normal(size=(1, n_draws))))
    ds = xr.Dataset(data_vars, coords={"chain": [0], "draw": np.arange(n_draws), "group": list(builder.groups)})
    tree = xr.DataTree(children={"posterior": xr.DataTree(ds)})
    tree.attrs.update({"solver": "Kvaerno5", "model_variant": "core"})
    return tree


@pytest.fixture(scope="module")
def pred(problem, tidy) -> xr.DataTree:
    from myoglucose.prediction import predictive_tree

    _, _, builder = problem
    tree = near_nominal_posterior(builder)
    return predictive_tree(tree, tidy, ROOT / "models" / "core", [], 3, SOLVER, ROOT, scenario_draws=3,
                           post_exercise={"delays_h": DELAYS})


def test_post_exercise_group_dims_coords_units(pred):
    assert "post_exercise" in pred.children and "conditions" in pred.children
    ds = pred["post_exercise"].to_dataset()
    assert ds["gir"].dims == ("draw", "group", "delay_h")
    assert ds["ratio"].dims == ("draw", "group", "delay_h")
    assert ds["gir_control"].dims == ("draw", "group")
    assert ds["ok"].dims == ("draw", "group", "delay_h") and ds["ok_control"].dims == ("draw", "group")
    assert ds.sizes["draw"] == 3
    assert list(ds["group"].values) == GROUPS
    assert np.allclose(ds["delay_h"].values, DELAYS)
    # the bout ends at day 0 10:00 (09:00 + 60 min); each clamp starts delay_h later
    assert np.allclose(ds["clamp_start_min"].values, 600.0 + 60.0 * np.asarray(DELAYS))
    assert ds["gir"].attrs["units"] == "mg/kg/min" and ds["gir_control"].attrs["units"] == "mg/kg/min"
    assert ds["ratio"].attrs["units"] == "1" and ds["delay_h"].attrs["units"] == "h"
    assert json.loads(ds.attrs["delays_h"]) == DELAYS
    assert (ds.attrs["intensity"], ds.attrs["exercise_min"], ds.attrs["clamp_rate"], ds.attrs["clamp_min"]) == \
        (0.7, 60.0, 40.0, 120.0)
    assert ds.attrs["exercise_start"] == "day 0 09:00" and ds.attrs["n_failed"] == 0


def test_post_exercise_gir_is_finite_positive_and_ratio_consistent(pred):
    ds = pred["post_exercise"].to_dataset()
    gir, ctrl = ds["gir"].values, ds["gir_control"].values
    assert ds["ok"].values.all() and ds["ok_control"].values.all()
    assert np.isfinite(gir).all() and (gir > 0).all()
    assert np.isfinite(ctrl).all() and (ctrl > 0).all()
    np.testing.assert_allclose(ds["ratio"].values, gir / ctrl[:, :, None], rtol=1e-12)


def test_exercise_raises_the_clamp_gir_and_the_effect_fades_by_72_h(pred):
    """The model's behaviour near its nominal parameters (measured: median ratio ~1.25 right after the bout, ~1.18
    the next day, ~1.05 at 72 h, driven by the distal-convergence memory, tau_mem = 20 h): every group's clamp GIR
    the day after exercise is above the control's, and 72 h after the bout it is closer to the control than at 0 h
    and 24 h."""
    ds = pred["post_exercise"].to_dataset()
    med = ds["ratio"].median("draw")
    for g in GROUPS:
        r = {d: float(med.sel(group=g, delay_h=d)) for d in DELAYS}
        gir = {d: float(ds["gir"].sel(group=g, delay_h=d).median("draw")) for d in DELAYS}
        print(f"{g}: control GIR {float(ds['gir_control'].sel(group=g).median('draw')):.3f} mg/kg/min; "
              + "; ".join(f"{d:g} h: GIR {gir[d]:.3f}, ratio {r[d]:.4f}" for d in DELAYS))
        assert r[24.0] > 1.05, (g, r)  # exercise raises the next-day clamp GIR above the control
        assert (ds["ratio"].sel(group=g, delay_h=24.0) > 1.0).all()  # in every draw
        assert abs(r[72.0] - 1.0) < abs(r[0.0] - 1.0), (g, r)  # the effect fades ...
        assert abs(r[72.0] - 1.0) < abs(r[24.0] - 1.0), (g, r)
        assert r[0.0] > r[24.0] > r[72.0] >= 1.0, (g, r)  # ... monotonically over these delays


def test_failed_solves_are_masked_and_counted(problem, monkeypatch):
    """A failed solve gives NaN and ok = False, never an exception (the solver is replaced by a stub here)."""
    import jax.numpy as jnp

    from myoglucose import prediction
    from myoglucose.model.simulate import SolverSettings

    _, data, builder = problem
    P = len(DELAYS) + 1
    G = len(data.groups)

    def stub(settings, active):
        def run(p, u, ts, t1):  # called with several draws x (G x P) solves at once (prediction._over_draws)
            ok = jnp.ones(G * P, bool).at[1].set(False).at[P - 1].set(False)  # group 0: delay 2 h and the control
            return jnp.full(t1.shape[0], 5.0), jnp.tile(ok, t1.shape[0] // (G * P))
        return run

    monkeypatch.setattr(prediction, "_steady_gir_batch", stub)
    tree = near_nominal_posterior(builder, n_draws=2)
    pop, grp, idx = prediction.posterior_parameter_draws(tree, builder, 2)
    ds = prediction.post_exercise_dataset(builder, data, pop, grp, idx, SolverSettings(name="Kvaerno5"),
                                          {"delays_h": DELAYS}, log=lambda m: None)
    assert ds.attrs["n_failed"] == 2 * 2  # two failures per draw
    assert not ds["ok"].values[:, 0, 1].any() and not ds["ok_control"].values[:, 0].any()
    assert np.isnan(ds["gir"].values[:, 0, 1]).all() and np.isnan(ds["gir_control"].values[:, 0]).all()
    assert np.isnan(ds["ratio"].values[:, 0, :]).all()  # no control, no ratio
    assert np.isfinite(ds["ratio"].values[:, 1:, :]).all() and np.allclose(ds["ratio"].values[:, 1:, :], 1.0)


def test_auto_solves_explicitly_and_re_solves_failed_draws_implicitly(problem, pred, monkeypatch):
    """``solver.name: auto`` after a fit that chose Tsit5: the clamps run the explicit Tsit5 at 1 % of the config's
    tolerances; they agree with the
    implicit Kvaerno5 of the ``pred`` fixture (config tolerances, 1e-6) to 1e-5 relative. A draw whose explicit solve
    failed (here one solve of draw 1 is flagged failed after a real solve) is solved again with Kvaerno5 at the
    config's tolerances: it equals the fixture's Kvaerno5 result, and the attributes say so."""
    from myoglucose import prediction
    from myoglucose.model.simulate import SolverSettings

    _, data, builder = problem
    real = prediction._steady_gir_batch
    B = len(GROUPS) * (len(DELAYS) + 1)

    def flag_one(settings, active):
        run = real(settings, active)
        if settings.name != "Tsit5":
            return run
        assert (settings.rtol, settings.atol) == (1e-8, 1e-8)

        def flagged(p, u, ts, t1):  # all 3 draws x B solves in one call; solve 2 of draw 1 "failed"
            m, ok = run(p, u, ts, t1)
            return m, ok.at[B + 2].set(False)
        return flagged

    monkeypatch.setattr(prediction, "_steady_gir_batch", flag_one)
    tree = near_nominal_posterior(builder)
    pop, grp, idx = prediction.posterior_parameter_draws(tree, builder, 3)
    msgs = []
    auto = SolverSettings(name="auto", rtol=1e-6, atol=1e-6)
    ds = prediction.post_exercise_dataset(builder, data, pop, grp, idx, auto, {"delays_h": DELAYS}, log=msgs.append,
                                          fit_solver="Tsit5")
    ref = pred["post_exercise"].to_dataset()
    print(ds.attrs["solver"], msgs)
    assert ds.attrs["solver"].startswith("Tsit5 (rtol 1e-08, atol 1e-08); Kvaerno5 (rtol 1e-06) re-solved 1 draw")
    assert any("1 explicit solve(s) failed in 1 draw(s)" in m for m in msgs)
    assert ds.attrs["n_failed"] == 0 and ds["ok"].values.all()
    np.testing.assert_allclose(ds["gir"].values[1], ref["gir"].values[1], rtol=1e-12)  # Kvaerno5, as the fixture
    np.testing.assert_allclose(ds["gir_control"].values[1], ref["gir_control"].values[1], rtol=1e-12)
    for d in (0, 2):  # Tsit5 at 1e-8 against Kvaerno5 at 1e-6
        rel = np.abs(ds["gir"].values[d] / ref["gir"].values[d] - 1.0)
        print(f"draw {d}: Tsit5 vs Kvaerno5, largest relative difference {rel.max():.1e}")
        assert rel.max() < 1e-5 and rel.max() > 0.0


def test_scenario_solver_follows_the_config_and_the_fits_stiffness_probe():
    """A named solver is used as is; ``auto`` runs Tsit5 at 1 % of the tolerances (Kvaerno5 for failed draws) only
    after a fit whose probe found its conditions non-stiff, else Kvaerno5 (a stiff fit's scenarios would make the
    explicit solver run out of steps)."""
    from myoglucose.model.simulate import SolverSettings
    from myoglucose.prediction import _scenario_solvers, post_exercise_protocols

    prots, control = post_exercise_protocols([0, 24])
    auto = SolverSettings(name="auto", rtol=1e-6, atol=1e-7, max_steps=100)
    first, fb = _scenario_solvers(auto, [*prots, control], "Tsit5")
    assert (first.name, first.rtol, first.atol, fb.name, fb.rtol, fb.atol) == ("Tsit5", 1e-8, 1e-9, "Kvaerno5", 1e-6,
                                                                                1e-7)
    assert first.max_steps == fb.max_steps > 100 and first.adjoint == "reverse"
    for fit_solver in ("Kvaerno5", None):
        first, fb = _scenario_solvers(auto, prots, fit_solver)
        assert (first.name, first.rtol, fb) == ("Kvaerno5", 1e-6, None)
    first, fb = _scenario_solvers(SolverSettings(name="Kvaerno3", rtol=1e-5, atol=1e-5), prots, "Tsit5")
    assert (first.name, first.rtol, fb) == ("Kvaerno3", 1e-5, None)


def test_protocols_are_built_with_the_protocol_machinery():
    from myoglucose.model.protocol import n_breakpoints
    from myoglucose.prediction import post_exercise_protocols

    prots, control = post_exercise_protocols([0, 1.5, 24], intensity=0.6, exercise_min=45, clamp_rate=80,
                                             clamp_min=90)
    assert [p.name for p in prots] == ["post_exercise_0h", "post_exercise_1.5h", "post_exercise_24h"]
    for p, d in zip(prots, [0, 1.5, 24]):
        ex = [s for s in p.segments if s.kind == "exercise"]
        cl = [s for s in p.segments if s.kind == "clamp"]
        ins = [s for s in p.segments if s.kind == "insulin"]
        assert [(s.start, s.end, s.value) for s in ex] == [(540.0, 585.0, 0.6)]
        assert cl[0].start == 585.0 + 60.0 * d and cl[0].basal_target and p.end == cl[0].end == cl[0].start + 90
        assert ins[0].value == 80.0 and ins[0].unit == "mU/m2/min"
    assert not [s for s in control.segments if s.kind == "exercise"]
    assert [s.start for s in control.segments if s.kind == "clamp"] == [585.0]
    assert max(n_breakpoints(p) for p in [*prots, control]) == 4


@pytest.mark.parametrize(("settings", "words"), [
    ({"delays_h": [0, -1]}, "delays_h: need one or more delays >= 0 h"),
    ({"delays_h": [2, 2]}, "delays must be unique"),
    ({"intensity": 1.5}, "intensity: must be in (0, 1]"),
    ({"clamp_min": 20}, "clamp_min: must be >= 30"),
    ({"delay_h": [1]}, "unknown key(s) ['delay_h']"),
])
def test_library_refuses_bad_settings(settings, words):
    from myoglucose.prediction import post_exercise_settings

    with pytest.raises(ValueError, match=None) as err:
        post_exercise_settings(settings)
    assert words in str(err.value)


@pytest.mark.parametrize(("predict", "message"), [
    ({"post_exercise": {"delays_h": [0, 24, -6]}},
     "predict.post_exercise.delays_h.2: -6 is less than the minimum of 0"),
    ({"post_exercise": {"delays_h": []}}, "predict.post_exercise.delays_h: [] should be non-empty"),
    ({"post_exercise": {"clamp_min": 10}}, "predict.post_exercise.clamp_min: 10 is less than the minimum of 30"),
    ({"post_exercise": {"enabled": "yes"}}, "predict.post_exercise.enabled: 'yes' is not of type 'boolean'"),
])
def test_config_schema_rejects_bad_post_exercise_settings(predict, message):
    from myoglucose.cli import ConfigError
    from myoglucose.config import validate_config

    cfg = {"datasets": ["katz2000_clamp"], "models": ["core"], "predict": predict}
    with pytest.raises(ConfigError) as err:
        validate_config(cfg, "my.yaml")
    assert str(err.value) == f"my.yaml: {message}"


def test_config_defaults_match_the_library():
    from myoglucose.config import config_schema
    from myoglucose.prediction import POST_EXERCISE_DEFAULTS

    props = config_schema()["properties"]["predict"]["properties"]["post_exercise"]["properties"]
    assert {k: v["default"] for k, v in props.items()} == POST_EXERCISE_DEFAULTS


# ----------------------------------------------------------------------------------- figure and table
def synthetic_post_exercise(n_draws: int = 50, seed: int = 1) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    delays = np.asarray([0.0, 1.0, 2.0, 4.0, 8.0, 12.0, 24.0, 36.0, 48.0, 60.0, 72.0])
    effect = 1.0 + 0.25 * np.exp(-delays / 30.0)
    ctrl = rng.normal([9.5, 7.0, 4.0], 0.3, (n_draws, 3))
    gir = ctrl[:, :, None] * effect * rng.normal(1.0, 0.02, (n_draws, 3, delays.size))
    gir[0, 2, 3] = np.nan  # one failed solve
    return xr.Dataset(
        {"gir": (("draw", "group", "delay_h"), gir, {"units": "mg/kg/min"}),
         "gir_control": (("draw", "group"), ctrl, {"units": "mg/kg/min"}),
         "ratio": (("draw", "group", "delay_h"), gir / ctrl[:, :, None], {"units": "1"})},
        coords={"draw": np.arange(n_draws), "group": GROUPS, "delay_h": ("delay_h", delays, {"units": "h"})},
        attrs={"clamp_rate": 40.0, "exercise_min": 60.0, "intensity": 0.7, "steady_state_min": 30.0},
    )


def test_plot_post_exercise_two_panels_bands_and_control():
    from myoglucose.report import plot_post_exercise

    ds = synthetic_post_exercise()
    fig = plot_post_exercise(xr.DataTree(children={"post_exercise": xr.DataTree(ds)}))
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 2
    gir_ax, ratio_ax = fig.axes
    assert gir_ax.get_ylabel() == "steady-state GIR [mg/kg/min]"
    assert ratio_ax.get_ylabel().startswith("GIR / GIR of the control clamp")
    assert all(ax.get_xlabel().startswith("hours from the end of exercise") for ax in fig.axes)
    for ax in fig.axes:
        assert len(ax.collections) == 2 * len(GROUPS)  # 50 % and 90 % band per group
        medians = [ln for ln in ax.get_lines() if ln.get_linestyle() == "-"]
        assert [ln.get_label() for ln in medians] == GROUPS
        assert np.allclose(medians[0].get_xdata(), ds["delay_h"].values)
    dashed = [ln for ln in gir_ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == len(GROUPS)  # the control's median GIR per group
    np.testing.assert_allclose([ln.get_ydata()[0] for ln in dashed], np.median(ds["gir_control"].values, axis=0))
    assert [ln.get_ydata()[0] for ln in ratio_ax.get_lines() if ln.get_linestyle() == "--"] == [1.0]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert any("control" in t and "without exercise" in t for t in legend)
    assert "50 % credible band" in legend and "90 % credible band" in legend
    with pytest.raises(KeyError, match="re-run predict"):
        plot_post_exercise(xr.DataTree())


def test_post_exercise_table_and_files(tmp_path):
    from myoglucose.report import post_exercise_table, save_table

    ds = synthetic_post_exercise()
    df = post_exercise_table(ds)
    assert len(df) == len(GROUPS) * (1 + ds.sizes["delay_h"])
    ctrl = df[df["clamp"] == "control (no exercise)"]
    assert list(ctrl["group"]) == GROUPS and ctrl["delay_h"].isna().all() and (ctrl["ratio_median"] == 1.0).all()
    row = df[(df["group"] == "t2d") & (df["delay_h"] == 4.0)].iloc[0]
    assert row["n_draws"] == 49  # the failed solve is left out
    g = ds["gir"].sel(group="obese", delay_h=24.0).values
    row = df[(df["group"] == "obese") & (df["delay_h"] == 24.0)].iloc[0]
    assert row["gir_median"] == pytest.approx(np.median(g), abs=5e-4)
    assert row["gir_q05"] < row["gir_median"] < row["gir_q95"]
    assert row["ratio_q05"] < row["ratio_median"] < row["ratio_q95"]
    files = save_table(df, tmp_path / "post_exercise_gir", caption="GIR", label="tab:pe")
    assert sorted(p.name for p in files) == ["post_exercise_gir.csv", "post_exercise_gir.tex"]
    assert "ratio\\_median" in (tmp_path / "post_exercise_gir.tex").read_text()


@pytest.mark.parametrize("n_draws, batch", [(7, 6), (1, 128), (4, 3), (5, 128), (5, 12)])
def test_draws_batched_into_one_program_equal_one_call_per_draw(n_draws, batch):
    """``_over_draws`` (several draws per solver call, the last chunk padded) gives what one call per draw gives, in
    draw order, and calls the solver with one shape only (one compiled program)."""
    import jax.numpy as jnp

    from myoglucose.prediction import _over_draws

    B = 3
    shapes = []

    def run(p, u, ts, t1):  # elementwise over the batch, like a vmapped solve
        shapes.append(t1.shape)
        return p["a"] * t1 + ts.sum(-1) + u["w"], (p["a"] > 2.0)[:, None] & (ts > 0.5)

    def params(d):
        return {"a": jnp.arange(B) + 1.5 * d}

    u, ts, t1 = {"w": jnp.asarray([0.1, 0.2, 0.3])}, jnp.linspace(0.0, 1.0, 2 * B).reshape(B, 2), jnp.arange(1.0, 4.0)
    draws = [4, 0, 2, 6, 1, 3, 5][:n_draws]
    m, ok = _over_draws(run, params, draws, u, ts, t1, batch=batch)
    assert m.shape == (n_draws, B) and ok.shape == (n_draws, B, 2)
    for i, d in enumerate(draws):
        m1, ok1 = run(params(d), u, ts, t1)
        np.testing.assert_array_equal(m[i], np.asarray(m1))
        np.testing.assert_array_equal(ok[i], np.asarray(ok1))
    calls = shapes[:-n_draws]  # the reference calls above appended their own shapes
    per_call = max(1, batch // B)  # most draws one call may take
    n_calls = -(-n_draws // per_call)  # the fewest calls that take them all
    assert len(calls) == n_calls and len(set(calls)) == 1
    # the draws shared evenly: the padding is less than one draw per call (5 draws in calls of <= 4: 3 + 2, not
    # 4 + 1 padded to 4)
    chunk = calls[0][0] // B
    assert chunk <= per_call and n_calls * chunk - n_draws < n_calls
