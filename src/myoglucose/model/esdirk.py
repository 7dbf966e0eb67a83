r"""Kvaerno's 5/4 ESDIRK: chord-Newton stages, and one derivative rule for a whole step.

Same method as ``diffrax.Kvaerno5`` (its Butcher tableau, predictors, third-order Hermite dense output, and the
stage-convergence test of ``diffrax.VeryChord``). Two things differ:

* the solve: chord Newton in f-space, ``f_i <- f_i - M^{-1} (f_i - F(t_i, z_i + h*gamma*f_i))`` with ONE Jacobian
  and ONE LU factorisation of ``M = I - h*gamma*J(t0, y0)`` per step, as diffrax does;
* the derivative: a custom JVP of the step's six implicit stages together (``_stages_jvp``), by the implicit
  function theorem. The stage Jacobians J_i are materialised at the seven stage points in one batched forward-mode
  evaluation and LU-factorised; the parameter and time terms of all stages are one batched JVP; the rest is a
  recurrence of small dense products and triangular solves. Reverse mode is JAX's transpose of the same rule, so
  the parameter cotangents of a step come out of ONE batched vector-Jacobian product.

``diffrax.Kvaerno5`` differentiates each stage separately through ``optimistix.ImplicitAdjoint`` (a fresh Jacobian
and LU per stage, inside each stage's own derivative), and a first version of this module solved each stage's
tangent system by Richardson iteration on the step's LU (one vector-field product per iteration and stage). Both
cost more than this rule; the measurements are in docs/performance.md section 3.

Both derivative modes work (``jax.grad`` and ``jax.jacfwd``), as does ``vmap``. States are one flat float array
(``simulate._reduced_field``); a failed stage solve (diverged, or not converged in ``max_newton`` iterations)
rejects the step (error estimate +inf), so the controller retries a smaller one, as with diffrax; the rejected
step's tangents are zero and are computed at finite points, so no NaN reaches a derivative through the discarded
branch.

Reference: Kvaerno A (2004) Singly diagonally implicit Runge-Kutta methods with an explicit first stage. BIT Numer
Math 44:489-502 (the method); Hairer E, Wanner G (1996) Solving ODEs II, section IV.8 (simplified Newton and its
convergence test); Griewank A, Walther A (2008) Evaluating Derivatives, chapter 15 (derivatives of fixed points).
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
import numpy as np
from diffrax import RESULTS

# The method's coefficients, taken from diffrax (the same numbers Kvaerno 2004 tabulates), as dense arrays:
# a row per stage (explicit first stage), the diagonal gamma, the stage predictors, and the weights.
_TAB = diffrax.Kvaerno5.tableau
N_STAGES = len(_TAB.c) + 1  # 7
GAMMA = float(_TAB.a_diagonal[1])
_A = np.zeros((N_STAGES, N_STAGES))
_P = np.zeros((N_STAGES, N_STAGES))
for _i, (_row, _pred) in enumerate(zip(_TAB.a_lower, _TAB.a_predictor), start=1):
    _A[_i, : len(_row)] = _row
    _P[_i, : len(_pred)] = _pred
_C = np.concatenate([[0.0], _TAB.c])
_B_SOL = np.asarray(_TAB.b_sol, dtype=float)
_B_ERR = np.asarray(_TAB.b_error, dtype=float)
assert np.all(np.asarray(_TAB.a_diagonal[1:]) == GAMMA) and _TAB.a_diagonal[0] == 0


def _small(diffsize):
    # as diffrax.VeryChord: an update below 100 ulp of the scaled size has converged
    return diffsize < 10.0 ** (2 - jnp.finfo(diffsize.dtype).precision)


def _lu_solve(lu_piv, r, trans=0):
    return jsl.lu_solve(lu_piv, r, trans=trans)


def _chord(solver: "ChordKvaerno5", fun, x0, lu_piv):
    """Chord Newton on fun(x) = 0 with the step's LU factors of ``M ~ dfun/dx``; diffrax.VeryChord's convergence
    test (Hairer & Wanner II, IV.8: stop once the contraction-rate estimate says the remaining error is below
    ``kappa`` of the tolerance; fail on divergence or after ``max_newton`` iterations). Returns (x, failed)."""
    dtype = x0.dtype

    def cond(c):
        return ~c[4]

    def body(c):
        x, k, size, _size_prev, _done, _failed = c
        d = _lu_solve(lu_piv, fun(x))
        x_new = x - d
        new_size = jnp.max(jnp.abs(d) / (solver.atol + solver.rtol * jnp.abs(x_new)))
        rate = new_size / size
        factor = new_size * rate / (1 - rate)
        k = k + 1
        two = k >= 2
        small = _small(new_size)
        diverged = ~jnp.isfinite(rate) | (rate > 2)
        converged = (factor > 0) & (factor < solver.kappa)
        stop = two & (small | diverged | converged)
        failed = two & ~small & (diverged | ~converged)
        out_of_steps = (k >= solver.max_newton) & ~stop
        return x_new, k, new_size, size, stop | out_of_steps, (stop & failed) | out_of_steps

    c0 = (x0, jnp.asarray(0), jnp.asarray(jnp.inf, dtype), jnp.asarray(1.0, dtype), jnp.asarray(False),
          jnp.asarray(False))
    x, _, _, _, _, failed = jax.lax.while_loop(cond, body, c0)
    # A failed stage rejects the step; its value is never used, but the derivative is still taken there (with a zero
    # cotangent): return the finite predictor so that no NaN or inf reaches it.
    return jnp.where(failed, x0, x), failed


def _stage_times(t0, t1, h):
    """The stage times t0 + c_i h, with t1 exactly where c_i = 1."""
    return jnp.stack([t1 if _C[i] == 1.0 else t0 + _C[i] * h for i in range(N_STAGES)])


def _stages_primal(solver: "ChordKvaerno5", terms, y0, f0, t0, t1, args, made_jump):
    """All stage derivatives f_i of one step (f_0 explicit) by chord Newton with one Jacobian and one LU at
    (t0, y0); returns (fs [N_STAGES, n], failed)."""
    n = y0.shape[0]
    dtype = y0.dtype
    h = t1 - t0
    hg = h * GAMMA
    f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: f0)
    jac = jax.jacfwd(lambda y: terms.vf(t0, y, args))(y0)
    lu_piv = jsl.lu_factor(jnp.eye(n, dtype=dtype) - hg * jac)
    ts = _stage_times(t0, t1, h)
    fs = jnp.zeros((N_STAGES, n), dtype).at[0].set(f0)
    failed = jnp.asarray(False)
    for i in range(1, N_STAGES):  # static: the tableau rows are constants
        zi = y0 + h * (jnp.asarray(_A[i], dtype) @ fs)
        pred = jnp.asarray(_P[i], dtype) @ fs
        fi, fail_i = _chord(solver, lambda f, zi=zi, ti=ts[i]: f - terms.vf(ti, zi + hg * f, args), pred, lu_piv)
        fs = fs.at[i].set(fi)
        failed = failed | fail_i
    return fs, failed


@eqx.filter_custom_jvp
def _stages(y0, f0, t0, t1, args, made_jump, solver, terms):
    return _stages_primal(solver, terms, y0, f0, t0, t1, args, made_jump)


@_stages.def_jvp
def _stages_jvp(primals, tangents):
    """Tangents of the stage derivatives by the implicit function theorem, all stages of the step together.

    Stage i solves f_i = F(t_i, w_i, a) with w_i = z_i + h*gamma*f_i, z_i = y0 + h*sum_j A_ij f_j, so
        (I - h*gamma*J_i) df_i = J_i (dz_i + gamma*dh*f_i) + F_t(w_i) dt_i + F_a(w_i) da,   J_i = dF/dw at w_i.
    Every J_i is materialised at once (one forward-mode Jacobian evaluated at the seven stage points together,
    ``vmap``) and LU-factorised; the inhomogeneous terms F_t dt_i + F_a da of all stages are one batched JVP (they do
    not depend on the other stages' tangents); what is left is a recurrence of small dense products and triangular
    solves. Reverse mode transposes exactly this: the parameter and time cotangents of the whole step become ONE
    batched vector-Jacobian product, the state cotangents a backward recurrence of transposed solves."""
    y0, f0, t0, t1, args, made_jump, solver, terms = primals
    ty0, tf0, tt0, tt1, targs = tangents[:5]
    fs, failed = _stages(y0, f0, t0, t1, args, made_jump, solver, terms)
    n = y0.shape[0]
    dtype = y0.dtype
    h = t1 - t0
    hg = h * GAMMA
    ok = ~failed
    ts = _stage_times(t0, t1, h)
    # the stage points; a failed step (rejected: its tangents are discarded) is linearised at y0 instead, so that
    # nothing non-finite reaches a transposed solve with a zero cotangent
    ws = jnp.concatenate([y0[None], y0 + h * (jnp.asarray(_A[1:], dtype) @ fs) + hg * fs[1:]])
    ws = jnp.where(ok, ws, y0[None])
    jacs = jax.vmap(lambda t, w: jax.jacfwd(lambda w: terms.vf(t, w, args))(w))(ts, ws)  # [N_STAGES, n, n]
    eye = jnp.eye(n, dtype=dtype)
    mats = jnp.where(ok, eye - hg * jacs[1:], eye)
    lus = jax.vmap(jsl.lu_factor)(mats)

    zero = jnp.zeros((), dtype)
    dt0 = zero if tt0 is None else tt0
    dt1 = zero if tt1 is None else tt1
    dh = dt1 - dt0
    dts = jnp.stack([dt1 if _C[i] == 1.0 else dt0 + _C[i] * dh for i in range(N_STAGES)])
    # F_t dt_i + F_a da at every stage point: one batched JVP (only the perturbed leaves of args)
    is_none = lambda x: x is None  # noqa: E731
    pert = jax.tree_util.tree_map(lambda t: t is not None, targs, is_leaf=is_none) if targs is not None else False
    if any(jax.tree_util.tree_leaves(pert)):
        a_p, a_rest = eqx.partition(args, pert)
        ta_p = jax.tree_util.tree_map(lambda t, p: t if p else None, targs, pert, is_leaf=is_none)

        def tangent_rhs(t, w, dt):
            return jax.jvp(lambda t, ap: terms.vf(t, w, eqx.combine(ap, a_rest)), (t, a_p), (dt, ta_p))[1]
    else:
        def tangent_rhs(t, w, dt):
            return jax.jvp(lambda t: terms.vf(t, w, args), (t,), (dt,))[1]
    r = jax.vmap(tangent_rhs)(ts, ws, dts)

    dy0 = jnp.zeros_like(y0) if ty0 is None else ty0
    df0 = jnp.zeros_like(y0) if tf0 is None else tf0
    dfs = [jnp.where(made_jump, jacs[0] @ dy0 + r[0], df0)]  # stage 0: F(t0, y0) after a jump, else carried in
    for i in range(1, N_STAGES):
        a_i = jnp.asarray(_A[i, :i], dtype)
        dz = dy0 + dh * (a_i @ fs[:i]) + h * (a_i @ jnp.stack(dfs))
        rhs = jacs[i] @ (dz + GAMMA * dh * fs[i]) + r[i]
        dfs.append(jsl.lu_solve((lus[0][i - 1], lus[1][i - 1]), rhs))
    dfs = jnp.where(ok, jnp.stack(dfs), 0.0)
    return (fs, failed), (dfs, None)


class ChordKvaerno5(diffrax.AbstractAdaptiveSolver):
    """Kvaerno 5/4 ESDIRK: chord-Newton stages, one derivative rule per step (see the module docstring).

    ``rtol``/``atol`` are the stage-convergence tolerances: pass the step-size controller's (diffrax does the same
    for its own implicit solvers). ``kappa`` and ``max_newton`` are ``diffrax.VeryChord``'s and ``Kvaerno5``'s.
    Derivatives in either mode go through one custom JVP per step (``_stages_jvp``)."""

    rtol: float
    atol: float
    kappa: float = 1e-2
    max_newton: int = 10

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    def order(self, terms):
        return 5

    def error_order(self, terms):
        return 5

    def init(self, terms, t0, t1, y0, args):
        return terms.vf(t0, y0, args)  # first-same-as-last: the vector field at the step's start

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def step(self, terms, t0, t1, y0, args, solver_state, made_jump):
        if not (isinstance(y0, jax.Array) and y0.ndim == 1):
            raise TypeError("ChordKvaerno5 integrates one flat state vector (simulate._reduced_field)")
        dtype = y0.dtype
        h = t1 - t0
        fs, failed = _stages(y0, solver_state, t0, t1, args, made_jump, self, terms)
        y1 = y0 + h * (jnp.asarray(_B_SOL, dtype) @ fs)
        y_error = h * (jnp.asarray(_B_ERR, dtype) @ fs)
        y_error = jnp.where(failed, jnp.inf, y_error)  # a stage that did not converge rejects the step
        dense_info = dict(y0=y0, y1=y1, k=h * fs)
        result = RESULTS.where(failed, RESULTS.nonlinear_divergence, RESULTS.successful)
        return y1, y_error, dense_info, fs[-1], result
