"""Gradients of the solution with respect to every parameter (issue "The GLUT4/AMPK/myokine ODE system", Tests 2).

Scalars: mean GIR over the last 30 min of the 4-h 120 mU/m^2/min clamp, and skeletal-muscle glucose uptake at the end
of the 60-min bout at 70 % VO2max. Reverse mode (``jax.grad``, RecursiveCheckpointAdjoint) and forward mode
(``jax.jacfwd``, ``SolverSettings(adjoint="forward")``) must agree with central finite differences (relative step
1e-4 on the natural scale; every FD perturbation in ONE vmapped, jitted solve). All solves at rtol 1e-10.

Compile budget: both scalars share each program (full state set, the same padded breakpoint count and number of save
times; which observable is averaged is data, ``w_gir`` / ``w_mu``), so the module compiles four programs: reverse,
forward, the vmapped FD solve, and the max_steps=16 solve of the failure test.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from myoglucose.model.protocol import build_inputs
from myoglucose.model.simulate import SolverSettings, active_states, observables, solve
from myoglucose.simulation import load_protocol

ROOT = Path(__file__).resolve().parents[1]
K_BREAKS = 4
N_SAVE = 7
REL_STEP = 1e-4
RTOL_GRAD = 1e-3  # relative agreement of gradients
FLOOR = 2e-5  # absolute floor on log-sensitivities p_i dS/dp_i, relative to |S|
SETTINGS = SolverSettings(rtol=1e-10, atol=1e-12, max_steps=8192, adjoint="reverse")
SETTINGS_FWD = dataclasses.replace(SETTINGS, adjoint="forward")

CASES = {
    # protocol, save times, t1, weight on gir, weight on muscle_uptake
    "clamp120_gir_last30": ("protocols/scenarios/clamp_120.yaml", np.linspace(210.0, 240.0, N_SAVE), 240.0,
                            np.full(N_SAVE, 1.0 / N_SAVE), np.zeros(N_SAVE)),
    "exercise70_uptake_end": ("protocols/scenarios/exercise_70.yaml", np.linspace(570.0, 600.0, N_SAVE), 600.0,
                              np.zeros(N_SAVE), np.eye(N_SAVE)[-1]),
}


def scalar(p, u, ts, t1, w_gir, w_mu, settings):
    """Weighted sum of GIR and muscle uptake at ``ts``, masked to 0 when the solve failed; aux = (ok, sanitised ys)."""
    sol = solve(p, u, ts, t1, settings)
    obs = observables(p, u, ts, sol)
    s = jnp.sum(w_gir * obs["gir"] + w_mu * obs["muscle_uptake"])
    return jnp.where(sol.ok, s, 0.0), (sol.ok, sol.ys)


reverse = jax.jit(jax.value_and_grad(scalar, has_aux=True), static_argnames="settings")
forward = jax.jit(jax.jacfwd(scalar, has_aux=True), static_argnames="settings")


@functools.partial(jax.jit, static_argnames="settings")
def batched(pb, u, ts, t1, w_gir, w_mu, settings):
    return jax.vmap(lambda p: scalar(p, u, ts, t1, w_gir, w_mu, settings)[0])(pb)


def _case(name):
    path, ts, t1, wg, wm = CASES[name]
    pr = load_protocol(ROOT / path)
    u = build_inputs(pr, 70.0, 1.8, insulin_knots=None, n_breaks=K_BREAKS, n_knots=1)
    return u, jnp.asarray(ts), jnp.asarray(t1), jnp.asarray(wg), jnp.asarray(wm)


def _timed(f, *a, **k):
    t0 = time.perf_counter()
    out = jax.block_until_ready(f(*a, **k))
    return out, time.perf_counter() - t0


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_gradients_match_finite_differences(case, nominal):
    u, ts, t1, wg, wm = _case(case)
    names = sorted(nominal)
    p = {k: jnp.asarray(v, dtype=jnp.float64) for k, v in nominal.items()}
    ((s, (ok, _)), g_rev), t_rev = _timed(reverse, p, u, ts, t1, wg, wm, settings=SETTINGS)
    assert bool(ok) and np.isfinite(float(s)) and abs(float(s)) > 0
    (g_fwd, (ok_f, _)), t_fwd = _timed(forward, p, u, ts, t1, wg, wm, settings=SETTINGS_FWD)
    assert bool(ok_f)

    # central differences, all 2P perturbations in one vmapped solve
    x = np.array([float(nominal[k]) for k in names])
    h = REL_STEP * np.where(x != 0.0, np.abs(x), 1.0)
    n = len(names)
    pb = {k: np.full(2 * n, float(nominal[k])) for k in names}
    for i, k in enumerate(names):
        pb[k][i] += h[i]
        pb[k][n + i] -= h[i]
    vals, t_fd = _timed(batched, {k: jnp.asarray(v) for k, v in pb.items()}, u, ts, t1, wg, wm, settings=SETTINGS)
    vals = np.asarray(vals)
    assert np.all(np.isfinite(vals)) and np.all(vals != 0.0), "a perturbed solve failed"
    g_fd = (vals[:n] - vals[n:]) / (2.0 * h)

    scale = np.where(x != 0.0, np.abs(x), 1.0)  # log-sensitivities p_i dS/dp_i (or dS/dp_i at p_i = 0)
    fd = g_fd * scale
    rev = np.array([float(g_rev[k]) for k in names]) * scale
    fwd = np.array([float(g_fwd[k]) for k in names]) * scale
    tol = RTOL_GRAD * np.abs(fd) + FLOOR * abs(float(s))
    order = np.argsort(-np.abs(fd))
    print(f"\n[gradients] {case}: S = {float(s):.6g}; reverse {t_rev:.2f} s, forward {t_fwd:.2f} s, FD ({2 * n} solves) "
          f"{t_fd:.2f} s (first calls include compilation)")
    print("  largest log-sensitivities p dS/dp (FD | reverse | forward):")
    for i in order[:8]:
        print(f"    {names[i]:18s} {fd[i]: .6e} {rev[i]: .6e} {fwd[i]: .6e}")
    print(f"  max |rev-fd|/tol = {np.max(np.abs(rev - fd) / tol):.3f}, max |fwd-fd|/tol = "
          f"{np.max(np.abs(fwd - fd) / tol):.3f}, max |rev-fwd|/|S| = {np.max(np.abs(rev - fwd)) / abs(float(s)):.2e}")
    bad_rev = {names[i]: (fd[i], rev[i]) for i in range(n) if not abs(rev[i] - fd[i]) <= tol[i]}
    bad_fwd = {names[i]: (fd[i], fwd[i]) for i in range(n) if not abs(fwd[i] - fd[i]) <= tol[i]}
    assert not bad_rev, f"{case}: reverse-mode gradient differs from FD (fd, ad): {bad_rev}"
    assert not bad_fwd, f"{case}: forward-mode gradient differs from FD (fd, ad): {bad_fwd}"
    # the scalar is not trivially insensitive: a handful of parameters matter
    assert np.sum(np.abs(fd) > 1e-3 * abs(float(s))) >= 5


FAIL_SETTINGS = SolverSettings(rtol=1e-10, atol=1e-12, max_steps=16, adjoint="reverse")


@functools.partial(jax.jit, static_argnames=("settings", "active"))
def _masked_loss_and_grad(p, u, ts, t1, settings, active):
    def loss(p):
        sol = solve(p, u, ts, t1, settings, active)
        obs = observables(p, u, ts, sol)
        val = jnp.sum((obs["gir"] - 5.0) ** 2) + jnp.sum((obs["glucose_plasma"] - 90.0) ** 2)
        return jnp.where(sol.ok, val, 0.0), sol

    return jax.value_and_grad(loss, has_aux=True)(p)


def test_failed_solve_is_flagged_sanitised_and_differentiable(nominal):
    pr = load_protocol(ROOT / "protocols/scenarios/clamp_120.yaml")
    u = build_inputs(pr, 70.0, 1.8)
    ts = jnp.linspace(0.0, 240.0, 9)
    p = dict(nominal, k_akt_off=jnp.asarray(1e6))
    (val, sol), g = _masked_loss_and_grad(p, u, ts, jnp.asarray(240.0), FAIL_SETTINGS, active_states([pr]))
    assert not bool(sol.ok), "expected the solve to fail (max_steps=16)"
    leaves = jax.tree_util.tree_leaves(sol.ys)
    assert all(bool(jnp.all(jnp.isfinite(a))) for a in leaves), "failed solve returned non-finite states"
    # sanitised to the basal state
    np.testing.assert_allclose(np.asarray(sol.ys.gp), float(sol.y0.gp))
    assert float(val) == 0.0
    bad = [k for k, v in g.items() if not bool(jnp.all(jnp.isfinite(v)))]
    assert not bad, f"NaN/inf gradient of the masked loss for {bad}"
    assert all(float(v) == 0.0 for v in g.values()), "masked loss must have a zero gradient"
