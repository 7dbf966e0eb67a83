r"""Kvaerno's 5/4 ESDIRK with a chord-Newton stage solve whose derivative reuses the step's LU factorisation.

Same method as ``diffrax.Kvaerno5`` (its Butcher tableau, predictors, third-order Hermite dense output, and the
stage-convergence test of ``diffrax.VeryChord``), but each implicit stage is one ``jax.lax.custom_root``:

* forward: chord Newton in f-space, ``f_i <- f_i - M^{-1} (f_i - F(t_i, z_i + h*gamma*f_i))`` with ONE Jacobian and
  ONE LU factorisation of ``M = I - h*gamma*J(t0, y0)`` per step (as diffrax does);
* derivative (implicit function theorem): the stage's tangent system ``(I - h*gamma*J_i) x = b`` (J_i the Jacobian
  at the stage value) is solved by Richardson iteration preconditioned with the same LU factors -- each iteration
  one Jacobian-vector product of the vector field and two triangular solves. Reverse mode transposes it
  (``lax.custom_linear_solve``): vector-Jacobian products and the transposed triangular solves.

``diffrax.Kvaerno5`` differentiates each stage through ``optimistix.ImplicitAdjoint``, which materialises a fresh
Jacobian (one JVP per state) and LU-factorises it for every stage of every step (6 per step); that made the
all-parameter reverse-mode gradient of the 4-h clamp 5-6x a forward solve (docs/performance.md section 3). Here the
derivative costs a few vector-field products per stage instead.

Both derivative modes work (``jax.grad`` and ``jax.jacfwd``), as does ``vmap``. States are one flat float array
(``simulate._reduced_field``); a failed stage solve (diverged, or not converged in ``max_newton`` iterations)
rejects the step (error estimate +inf), so the controller retries a smaller one, as with diffrax.

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


def _richardson(solver: "ChordKvaerno5", lu_piv, trans: int):
    """``solve(matvec, b)`` for ``lax.custom_linear_solve``: matvec(x) = b with matvec close to M (trans=0) or M^T
    (trans=1), by x <- x + M^{-1}(b - matvec(x)) from x = M^{-1} b, until the update is below ``deriv_tol`` of x
    (at most ``deriv_max_iter`` updates)."""

    def run(matvec, b):
        x0 = _lu_solve(lu_piv, b, trans)

        def cond(c):
            x, dx, k = c
            return (k < solver.deriv_max_iter) & (jnp.max(jnp.abs(dx)) > solver.deriv_tol * jnp.max(jnp.abs(x)))

        def body(c):
            x, _, k = c
            dx = _lu_solve(lu_piv, b - matvec(x), trans)
            return x + dx, dx, k + 1

        return jax.lax.while_loop(cond, body, (x0, x0, jnp.asarray(0)))[0]

    return run


def _stage_relation(terms, f, diff):
    zi, ti, hg, args = diff
    return terms.vf(ti, zi + hg * f, args)


def _direct(matvec, b):
    """``solve(matvec, b)`` for ``lax.custom_linear_solve`` (as solve and as transpose_solve, which is handed the
    transposed map): materialise the stage's own matrix (one product per state, whatever the number of right-hand
    sides), LU-factorise it and solve -- cheaper than Richardson once many tangents share the stage (forward-mode
    NUTS, the all-parameter Jacobian)."""
    mat = jax.vmap(matvec)(jnp.eye(b.shape[0], dtype=b.dtype)).T  # column j: matvec(e_j)
    return jsl.lu_solve(jsl.lu_factor(mat), b)


def _stage_custom_root(solver, terms, pred, lu_piv, diff):
    """One implicit stage, f = F(t_i, z_i + h*gamma*f), differentiable in both modes (``lax.custom_root``)."""

    def residual(f):
        return f - _stage_relation(terms, f, diff)

    def tangent_solve(g, b):
        if solver.tangent_solve == "direct":
            return jax.lax.custom_linear_solve(g, b, solve=_direct, transpose_solve=_direct)
        return jax.lax.custom_linear_solve(g, b, solve=_richardson(solver, lu_piv, 0),
                                           transpose_solve=_richardson(solver, lu_piv, 1))

    return jax.lax.custom_root(residual, pred, lambda fun, x0: _chord(solver, fun, x0, lu_piv), tangent_solve,
                               has_aux=True)


@eqx.filter_custom_vjp
def _stage_reverse(diff, solver, terms, pred, lu_piv):
    """The same stage for reverse mode only, with a fused backward pass: each Richardson iteration of the transposed
    system (I - h*gamma*J_i)^T lam = fbar is ONE vector-Jacobian product of the stage relation with respect to
    everything (state, time, step, parameters), and the last one's parameter part is the cotangent -- one product
    per iteration, none extra for the parameters (custom_root needs one more)."""
    return _chord(solver, lambda f: f - _stage_relation(terms, f, diff), pred, lu_piv)


@_stage_reverse.def_fwd
def _stage_reverse_fwd(perturbed, diff, solver, terms, pred, lu_piv):
    fi, failed = _stage_reverse.fn(diff, solver, terms, pred, lu_piv)
    return (fi, failed), fi


@_stage_reverse.def_bwd
def _stage_reverse_bwd(fi, grad_obj, perturbed, diff, solver, terms, pred, lu_piv):
    fbar = grad_obj[0]
    dyn, static = eqx.partition(diff, eqx.is_inexact_array)
    if fbar is None:
        return jax.tree_util.tree_map(lambda _: None, diff)
    _, vjp = jax.vjp(lambda d: _stage_relation(terms, fi, eqx.combine(d, static)), dyn)
    hg = diff[2]

    def cond(c):
        return c[4]

    def body(c):
        lam, _, k, _, _ = c
        (cot,) = vjp(lam)
        # residual of (I - hg J^T) lam = fbar; J^T lam is the state part of the product
        dlam = _lu_solve(lu_piv, fbar - (lam - hg * cot[0]), 1)
        go = (k + 1 < solver.deriv_max_iter) & (jnp.max(jnp.abs(dlam)) > solver.deriv_tol * jnp.max(jnp.abs(lam)))
        return lam + dlam, cot, k + 1, dlam, go

    lam0 = _lu_solve(lu_piv, fbar, 1)
    cot0 = jax.tree_util.tree_map(jnp.zeros_like, dyn)
    _, cot, _, _, _ = jax.lax.while_loop(cond, body, (lam0, cot0, jnp.asarray(0), lam0, jnp.asarray(True)))
    cot = eqx.combine(cot, jax.tree_util.tree_map(lambda _: None, static))
    return jax.tree_util.tree_map(lambda g, p: g if p else None, cot, perturbed,
                                  is_leaf=lambda x: x is None)


class ChordKvaerno5(diffrax.AbstractAdaptiveSolver):
    """Kvaerno 5/4 ESDIRK whose stage derivatives reuse the step's LU (see the module docstring).

    ``rtol``/``atol`` are the stage-convergence tolerances: pass the step-size controller's (diffrax does the same
    for its own implicit solvers). ``kappa`` and ``max_newton`` are ``diffrax.VeryChord``'s and ``Kvaerno5``'s.
    The derivative's linear systems are solved to ``kappa * rtol`` (the accuracy the stages themselves are solved
    to; at least 1e-12), in at most ``deriv_max_iter`` Richardson updates. ``reverse_only=True`` (set for
    ``solver.adjoint: reverse``) uses the fused reverse-mode stage; forward-mode derivatives then raise.
    ``tangent_solve``: ``richardson`` (the step's LU and a few products per tangent: few tangents, as forward
    sensitivities of a fit's estimated parameters) or ``direct`` (the stage's own matrix, materialised and
    factorised: many tangents, as ``solver.adjoint: forward``)."""

    rtol: float
    atol: float
    kappa: float = 1e-2
    max_newton: int = 10
    deriv_max_iter: int = 12
    reverse_only: bool = False
    tangent_solve: str = "richardson"

    term_structure: ClassVar = diffrax.AbstractTerm
    interpolation_cls: ClassVar = diffrax.ThirdOrderHermitePolynomialInterpolation.from_k

    @property
    def deriv_tol(self) -> float:
        return max(self.kappa * self.rtol, 1e-12)

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
        n = y0.shape[0]
        dtype = y0.dtype
        h = t1 - t0
        hg = h * GAMMA
        f0 = jax.lax.cond(made_jump, lambda: terms.vf(t0, y0, args), lambda: solver_state)

        # One Jacobian and one LU per step, at (t0, y0); a preconditioner only, so it carries no derivative.
        y0_c, t0_c, args_c, hg_c = jax.lax.stop_gradient((y0, t0, args, hg))
        jac = jax.jacfwd(lambda y: terms.vf(t0_c, y, args_c))(y0_c)
        lu_piv = jax.lax.stop_gradient(jsl.lu_factor(jnp.eye(n, dtype=dtype) - hg_c * jac))

        fs = jnp.zeros((N_STAGES, n), dtype).at[0].set(f0)
        failed = jnp.asarray(False)
        for i in range(1, N_STAGES):  # static: the tableau rows are constants
            ti = t1 if _C[i] == 1.0 else t0 + _C[i] * h
            diff = (y0 + h * (jnp.asarray(_A[i], dtype) @ fs), ti, hg, args)
            pred = jax.lax.stop_gradient(jnp.asarray(_P[i], dtype) @ fs)  # a starting guess: no derivative
            if self.reverse_only:
                fi, fail_i = _stage_reverse(diff, self, terms, pred, lu_piv)
            else:
                fi, fail_i = _stage_custom_root(self, terms, pred, lu_piv, diff)
            fs = fs.at[i].set(fi)
            failed = failed | fail_i

        y1 = y0 + h * (jnp.asarray(_B_SOL, dtype) @ fs)
        y_error = h * (jnp.asarray(_B_ERR, dtype) @ fs)
        y_error = jnp.where(failed, jnp.inf, y_error)  # a stage that did not converge rejects the step
        dense_info = dict(y0=y0, y1=y1, k=h * fs)
        result = RESULTS.where(failed, RESULTS.nonlinear_divergence, RESULTS.successful)
        return y1, y_error, dense_info, fs[-1], result
