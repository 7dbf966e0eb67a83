"""solver.name: auto -- the stiffness probe (model/stiffness.py) and the choice it makes.

Fast: the decision rule on given spectral radii. Slow: the probe on the Katz 2000 clamp fit against an independent
numpy computation (finite-difference Jacobian of the vector field, numpy eigenvalues), and the explicit solver it
chooses against the implicit one on the same conditions.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from myoglucose.model.simulate import SolverSettings
from myoglucose.model.stiffness import IMPLICIT, STABILITY_INTERVAL, choose

ROOT = Path(__file__).resolve().parents[1]


def test_choose_explicit_when_stability_is_cheap() -> None:
    s = SolverSettings(name="auto", max_steps=4096)
    rho = np.array([[0.9, 0.8], [1.0, 0.7]])  # [draws, conditions] 1/min
    rep = choose(s, rho, np.ones_like(rho, bool), np.array([245.0, 245.0]))
    assert rep.chosen == "Tsit5"
    assert rep.stability_steps == pytest.approx(1.0 * 245.0 / STABILITY_INTERVAL)
    assert "not stiff" in rep.reason


def test_choose_implicit_when_stiff_or_long() -> None:
    s = SolverSettings(name="auto", max_steps=4096)
    ok = np.ones((1, 1), bool)
    # a 12-week programme at the same spectral radius: 0.8/min x 120960 min needs ~27600 explicit steps
    assert choose(s, np.array([[0.8]]), ok, np.array([120960.0])).chosen == IMPLICIT
    # a fast mode (1000/min) over a 4-h clamp
    assert choose(s, np.array([[1000.0]]), ok, np.array([240.0])).chosen == IMPLICIT
    # the boundary is max_steps / 8 explicit steps
    limit_rho = (4096 / 8) * STABILITY_INTERVAL / 240.0
    assert choose(s, np.array([[limit_rho * 0.99]]), ok, np.array([240.0])).chosen == "Tsit5"
    assert choose(s, np.array([[limit_rho * 1.01]]), ok, np.array([240.0])).chosen == IMPLICIT


def test_choose_implicit_when_a_probe_failed_or_is_nan() -> None:
    s = SolverSettings(name="auto")
    rep = choose(s, np.array([[0.5, 0.5]]), np.array([[True, False]]), np.array([240.0, 240.0]))
    assert rep.chosen == IMPLICIT and "failed" in rep.reason
    rep = choose(s, np.array([[np.nan]]), np.array([[True]]), np.array([240.0]))
    assert rep.chosen == IMPLICIT


def test_auto_is_a_valid_setting_and_unknown_names_are_refused() -> None:
    assert SolverSettings().name == "auto"
    for name in ("Tsit5", "Dopri5", "Kvaerno3", "Kvaerno5"):
        SolverSettings(name=name)
    with pytest.raises(ValueError, match="solver.name must be one of"):
        SolverSettings(name="Euler")


@pytest.fixture(scope="module")
def katz(tmp_path_factory):
    from myoglucose.data import prepare_dataset, write_tables
    from myoglucose.inference.fit import FitJob, load_problem

    out = tmp_path_factory.mktemp("tidy") / "katz2000_clamp"
    write_tables(prepare_dataset(ROOT / "data/katz2000_clamp", ROOT), out)
    return load_problem(FitJob(tidy_dir=str(out), model_dir=str(ROOT / "models/core"), repo_root=str(ROOT),
                               solver={"name": "auto"}, sampler={}))


@pytest.mark.slow
def test_probe_matches_numpy_and_chooses_explicit_for_katz_clamps(katz) -> None:
    import jax
    import jax.numpy as jnp

    from myoglucose.model.basal import basal_state
    from myoglucose.model.simulate import _reduced_field, solve
    from myoglucose.model.stiffness import spectral_radius

    spec, data, builder = katz
    assert builder.stiffness is not None and builder.solver.name == "Tsit5", builder.stiffness
    rep = builder.stiffness.as_dict()
    assert 0.2 < rep["rho_max_per_min"] < 5.0 and rep["probe_solves_failed"] == 0

    # independent check for condition 0 at the nominal parameters: central finite differences + numpy eigvals
    a = data.arrays
    u = jax.tree_util.tree_map(lambda x: x[0], a.inputs)
    p = {k: jnp.asarray(r.nominal) for k, r in spec.params.items()}
    t1 = a.t1[0]
    rho, ok = spectral_radius(p, u, t1, data.active, builder.solver)
    assert bool(ok)
    ts = np.linspace(0.0, float(t1), 48)
    sol = solve(p, u, jnp.asarray(ts), t1, dataclasses.replace(builder.solver, name="Kvaerno5", rtol=1e-9,
                                                                  atol=1e-9, adjoint="reverse"), data.active)
    y0, cov = basal_state(p, u)
    field = _reduced_field(data.active)
    worst = 0.0
    for k, t in enumerate(ts):
        seg = u.segment(int(np.clip(np.searchsorted(np.asarray(u.t_break), t, side="left") - 1, 0, None)))
        y = np.array([float(getattr(sol.ys, n)[k]) for n in data.active])
        n = y.size
        J = np.zeros((n, n))
        for j in range(n):
            h = 1e-6 * max(1.0, abs(y[j]))
            yp, ym = y.copy(), y.copy()
            yp[j] += h
            ym[j] -= h
            fp = np.asarray(field(t, jnp.asarray(yp), (p, seg, cov, y0)))
            fm = np.asarray(field(t, jnp.asarray(ym), (p, seg, cov, y0)))
            J[:, j] = (fp - fm) / (2 * h)
        worst = max(worst, float(np.max(np.abs(np.linalg.eigvals(J)))))
    assert float(rho) == pytest.approx(worst, rel=1e-3)


@pytest.mark.slow
def test_explicit_choice_gives_the_implicit_answer(katz) -> None:
    """The likelihood means under the chosen Tsit5 agree with Kvaerno5 at tight tolerances."""
    import jax
    import jax.numpy as jnp

    from myoglucose.inference.numpyro_model import ModelBuilder

    spec, data, builder = katz
    a = data.arrays
    pop = {r.id: jnp.asarray(r.nominal) for r in builder.estimated if r.level != "group" or len(data.groups) == 1}
    grp = {r.id: jnp.full((len(data.groups),), r.nominal) for r in builder.estimated
           if r.level == "group" and len(data.groups) > 1}
    p = builder.condition_params(pop, grp, a.cond_group)
    out = {}
    for name in ("Tsit5", "Kvaerno5"):
        b = ModelBuilder(spec, data, SolverSettings(name=name, rtol=1e-9, atol=1e-9, max_steps=20000))
        mu, ok, _ = jax.jit(lambda p, b=b: b.predict_means(p, a))(p)
        assert bool(jnp.all(ok))
        out[name] = np.asarray(mu)
    np.testing.assert_allclose(out["Tsit5"], out["Kvaerno5"], rtol=1e-6, atol=1e-6)
