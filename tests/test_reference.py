"""Reference solution: the diffrax solve agrees with scipy's Radau on the same right-hand side (issue "The
GLUT4/AMPK/myokine ODE system", Tests 1).

For every shipped protocol (covariates 70 kg / 1.8 m^2, kinetic insulin) ``simulate.solve`` (Kvaerno5, rtol 1e-10,
atol 1e-12) and ``scipy.integrate.solve_ivp(method="Radau", rtol=1e-10, atol=1e-12)`` on ``equations.vector_field``
flattened over ``STATE_NAMES`` must give the same observables within 1e-6 relative at the save times.

The scipy integration restarts at every protocol breakpoint and, inside segment k, holds the inputs of segment k (the
model's definition: the segment that starts at or before t); holding them explicitly also keeps Radau's right
collocation node, which sits ON the next breakpoint, from seeing the next segment's inputs.

Compile budget: ONE jitted diffrax program serves every protocol (full state set, inputs padded to a common number
of breakpoints ``K_BREAKS``, a common number of save times ``N_SAVE``, ``t1`` traced), plus the small jitted vector
field and Jacobian used by scipy. ``tests/test_equations.py`` defines the identical program (same name and body), so
``tests/test_equations.py`` imports
``jax_solution`` / ``solve_states`` from here, so it shares both the compiled program and the solved trajectories.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.integrate import solve_ivp

from myoglucose.model.equations import STATE_NAMES, State, vector_field
from myoglucose.model.protocol import PAD_TIME, InputArrays, build_inputs, n_breakpoints
from myoglucose.model.simulate import Solution, SolverSettings, observables, solve
from myoglucose.simulation import load_protocol

ROOT = Path(__file__).resolve().parents[1]
PROTOCOLS = sorted((ROOT / "protocols").glob("*.yaml")) + sorted((ROOT / "protocols" / "scenarios").glob("*.yaml"))
SLOW_PROTOCOLS = {"training_12w"}  # 20 weeks of simulated time, 36 exercise sessions
K_BREAKS = 80  # >= breakpoints of every shipped protocol (training_12w has 73)
N_SAVE = 512  # save times per protocol (event boundaries, points just after them, and an even grid)
MAX_STEPS = 400_000
RTOL, ATOL = 1e-10, 1e-12
REL_TOL = 1e-6
BODY_WEIGHT, BSA = 70.0, 1.8


def save_times(protocol, n: int = N_SAVE) -> np.ndarray:
    """``n`` distinct sorted times in [0, end]: every event boundary, points 1-120 min after each, and an even grid."""
    end = protocol.end
    bounds = sorted({s.start for s in protocol.segments} | {s.end for s in protocol.segments})
    special = {0.0, end}
    for b in bounds:
        for off in (0.0, 1.0, 5.0, 20.0, 60.0, 120.0):
            if 0.0 <= b + off <= end:
                special.add(b + off)
    special = np.array(sorted(special))
    if special.size > n:  # keep boundaries first, then thin the rest evenly
        special = special[np.unique(np.linspace(0, special.size - 1, n).round().astype(int))]
    m = n - special.size
    while True:
        ts = np.unique(np.concatenate([special, np.linspace(0.0, end, m + 2)[1:-1]]))
        if ts.size >= n:
            break
        m += n - ts.size
    if ts.size > n:  # drop surplus grid points (never 0 or end)
        extra = np.setdiff1d(ts, special)
        ts = np.setdiff1d(ts, extra[: ts.size - n])
    assert ts.size == n and ts[0] == 0.0 and ts[-1] == end
    return ts


def load(path: Path):
    return load_protocol(path)


@functools.partial(jax.jit, static_argnames=("settings", "active"))
def solve_states(p, u, ts, t1, settings, active):
    """The shared program: the model's own solve, returning the Solution (states at ``ts``)."""
    return solve(p, u, ts, t1, settings, active)


def reference_settings():
    return SolverSettings(rtol=RTOL, atol=ATOL, max_steps=MAX_STEPS, adjoint="reverse")


# ------------------------------------------------------------------------------------------ scipy reference
def _flat_field(t, y, args):
    d = vector_field(t, State(**{n: y[i] for i, n in enumerate(STATE_NAMES)}), args)
    return jnp.stack([getattr(d, n) for n in STATE_NAMES])


@functools.cache
def _jitted_field():
    return jax.jit(_flat_field), jax.jit(jax.jacfwd(_flat_field, argnums=1))


def frozen_inputs(u, k: int):
    """``u`` with every piecewise-constant column set to segment k's value (shapes kept: no recompilation)."""
    cols = ("exercise", "insulin_infusion", "glucose_infusion", "clamp_active", "clamp_target_mgdl",
            "clamp_target_basal")
    return InputArrays(t_break=u.t_break, insulin_forced=u.insulin_forced, ins_t=u.ins_t, ins_v=u.ins_v,
                       **{c: jnp.full_like(getattr(u, c), getattr(u, c)[k]) for c in cols})


def scipy_reference(p, u, y0, cov, end: float, ts: np.ndarray, rtol=RTOL, atol=ATOL) -> np.ndarray:
    """Radau on the full flattened vector field, restarted at every breakpoint. Returns states [len(ts), n_states]."""
    f_j, jac_j = _jitted_field()
    tb = np.asarray(u.t_break)
    n_seg = int(np.sum(tb < min(end, PAD_TIME)))
    edges = np.concatenate([tb[:n_seg], [end]])
    y = np.array([float(getattr(y0, n)) for n in STATE_NAMES])
    out = np.full((ts.size, y.size), np.nan)
    for k in range(n_seg):
        a, b = float(edges[k]), float(edges[k + 1])
        if b <= a:
            continue
        args = (p, frozen_inputs(u, k), cov)
        fun = lambda t, x, args=args: np.asarray(f_j(jnp.asarray(t), jnp.asarray(x), args))  # noqa: E731
        jac = lambda t, x, args=args: np.asarray(jac_j(jnp.asarray(t), jnp.asarray(x), args))  # noqa: E731
        sel = np.flatnonzero((ts >= a) & (ts <= b))
        t_eval = np.unique(np.append(ts[sel], b))
        r = solve_ivp(fun, (a, b), y, method="Radau", rtol=rtol, atol=atol, jac=jac, t_eval=t_eval)
        assert r.success, f"scipy Radau failed on [{a}, {b}]: {r.message}"
        out[sel] = r.y.T[np.searchsorted(t_eval, ts[sel])]
        y = r.y[:, -1]
    assert np.all(np.isfinite(out))
    return out


def observables_of(p, u, ts, sol, ys_matrix=None):
    """Observables from a Solution, or from a state matrix [T, n_states] in STATE_NAMES order."""
    if ys_matrix is not None:
        ys = State(**{n: jnp.asarray(ys_matrix[:, i]) for i, n in enumerate(STATE_NAMES)})
        sol = Solution(ys=ys, ok=jnp.asarray(True), num_steps=jnp.asarray(0), y0=sol.y0, cov=sol.cov)
    return {k: np.asarray(v) for k, v in observables(p, u, jnp.asarray(ts), sol).items()}


def relative_errors(a: dict, b: dict) -> dict[str, float]:
    """max_t |a-b| / max(|b|, scale) per observable; scale = max_t |b| of that observable (for the increments
    delta_uptake / delta_egp: of rd / egp, which they are differences of)."""
    companion = {"delta_uptake": "rd", "delta_egp": "egp"}
    out = {}
    for k in b:
        scale = max(np.max(np.abs(b[k])), np.max(np.abs(b[companion[k]])) if k in companion else 0.0, 1e-12)
        out[k] = float(np.max(np.abs(a[k] - b[k]) / np.maximum(np.abs(b[k]), scale)))
    return out


def _cases():
    for path in PROTOCOLS:
        marks = [pytest.mark.slow] if path.stem in SLOW_PROTOCOLS else []
        yield pytest.param(path, marks=marks, id=path.stem)


def test_breakpoint_budget():
    need = {p.stem: n_breakpoints(load(p)) for p in PROTOCOLS}
    assert max(need.values()) <= K_BREAKS, need


def test_save_times_include_boundaries():
    pr = load(ROOT / "protocols/scenarios/exercise_then_clamp.yaml")
    ts = save_times(pr)
    assert ts.size == N_SAVE and np.all(np.diff(ts) > 0)
    for s in pr.segments:
        assert s.start in ts and s.end in ts


_SOLUTIONS: dict = {}


def jax_solution(path: Path, p):
    """(protocol, inputs, save times, Solution, seconds) of the reference diffrax solve; cached per session so that
    tests/test_equations.py reuses the trajectories (the training protocol takes minutes)."""
    key = str(Path(path).resolve())
    if key not in _SOLUTIONS:
        pr = load(path)
        u = build_inputs(pr, BODY_WEIGHT, BSA, insulin_knots=None, n_breaks=K_BREAKS, n_knots=1)
        ts = save_times(pr)
        t0 = time.perf_counter()
        sol = solve_states(p, u, jnp.asarray(ts), jnp.asarray(pr.end), reference_settings(), STATE_NAMES)
        jax.block_until_ready(sol)
        _SOLUTIONS[key] = (pr, u, ts, sol, time.perf_counter() - t0)
    return _SOLUTIONS[key]


@pytest.mark.parametrize("path", list(_cases()))
def test_reference_solution(path, nominal):
    pr, u, ts, sol, t_jax = jax_solution(path, nominal)
    assert bool(sol.ok), f"{pr.name}: diffrax solve failed"
    t0 = time.perf_counter()
    ref = scipy_reference(nominal, u, sol.y0, sol.cov, pr.end, ts)
    t_ref = time.perf_counter() - t0
    obs_jax = observables_of(nominal, u, ts, sol)
    obs_ref = observables_of(nominal, u, ts, sol, ys_matrix=ref)
    err = relative_errors(obs_jax, obs_ref)
    worst = max(err, key=err.get)
    print(f"\n[reference] {pr.name}: max relative error {err[worst]:.2e} ({worst}); diffrax {int(sol.num_steps)} "
          f"steps {t_jax:.1f} s (incl. compile on the first call), scipy Radau {t_ref:.1f} s")
    bad = {k: v for k, v in err.items() if not v <= REL_TOL}
    assert not bad, f"{pr.name}: observables differ from the Radau reference by more than {REL_TOL}: {bad}"
