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


class ChordKvaerno5(diffrax.AbstractAdaptiveSolver):
    """Kvaerno 5/4 ESDIRK whose stage derivatives reuse the step's LU (see the module docstring).

    ``rtol``/``atol`` are the stage-convergence tolerances: pass the step-size controller's (diffrax does the same
    for its own implicit solvers). ``kappa`` and ``max_newton`` are ``diffrax.VeryChord``'s and ``Kvaerno5``'s.
    ``deriv_rtol``/``deriv_max_iter`` stop the Richardson iteration of the derivative's linear systems."""

    rtol: float
    atol: float
    kappa: float = 1e-2
    max_newton: int = 10
    deriv_rtol: float = 1e-8
    deriv_max_iter: int = 12

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
        n = y0.shape[0]
        dtype = y0.dtype
        h = t1 - t0
        hg = h * GAMMA

        def vf(t, y):
            return terms.vf(t, y, args)

        f0 = jax.lax.cond(made_jump, lambda: vf(t0, y0), lambda: solver_state)

        # One Jacobian and one LU per step, at (t0, y0); a preconditioner only, so it carries no derivative.
        y0_c, t0_c, args_c, hg_c = jax.lax.stop_gradient((y0, t0, args, hg))
        jac = jax.jacfwd(lambda y: terms.vf(t0_c, y, args_c))(y0_c)
        lu_piv = jsl.lu_factor(jnp.eye(n, dtype=dtype) - hg_c * jac)

        def m_solve(r):
            return jsl.lu_solve(lu_piv, r)

        def mt_solve(r):
            return jsl.lu_solve(lu_piv, r, trans=1)

        def chord(fun, x0):
            """Chord Newton on fun(x) = 0 with the step's LU; VeryChord's convergence test. Returns (x, failed)."""

            def cond(c):
                return ~c[4]

            def body(c):
                x, k, size, _size_prev, _done, _failed = c
                d = m_solve(fun(x))
                x_new = x - d
                new_size = jnp.max(jnp.abs(d) / (self.atol + self.rtol * jnp.abs(x_new)))
                rate = new_size / size
                factor = new_size * rate / (1 - rate)
                k = k + 1
                two = k >= 2
                small = _small(new_size)
                diverged = ~jnp.isfinite(rate) | (rate > 2)
                converged = (factor > 0) & (factor < self.kappa)
                stop = two & (small | diverged | converged)
                failed = two & ~small & (diverged | ~converged)
                out_of_steps = (k >= self.max_newton) & ~stop
                return x_new, k, new_size, size, stop | out_of_steps, (stop & failed) | out_of_steps

            inf = jnp.asarray(jnp.inf, dtype)
            c0 = (x0, jnp.asarray(0), inf, jnp.asarray(1.0, dtype), jnp.asarray(False), jnp.asarray(False))
            x, _, _, _, _, failed = jax.lax.while_loop(cond, body, c0)
            # A failed stage rejects the step; its value is never used, but the derivative is still taken there
            # (with a zero cotangent): return the finite predictor so that no NaN or inf reaches it.
            return jnp.where(failed, x0, x), failed

        def richardson(apply_m, precond):
            """Solve apply_m(x) = b, apply_m close to M: x <- x + M^{-1}(b - apply_m(x)) until the update is
            below deriv_rtol of x (at most deriv_max_iter)."""

            def run(matvec, b):
                x0 = precond(b)

                def cond(c):
                    x, dx, k = c
                    scale = jnp.max(jnp.abs(x))
                    return (k < self.deriv_max_iter) & (jnp.max(jnp.abs(dx)) > self.deriv_rtol * scale)

                def body(c):
                    x, _, k = c
                    dx = precond(b - matvec(x))
                    return x + dx, dx, k + 1

                x, _, _ = jax.lax.while_loop(cond, body, (x0, x0, jnp.asarray(0)))
                return x

            return run

        def tangent_solve(g, b):
            return jax.lax.custom_linear_solve(g, b, solve=richardson(None, m_solve),
                                               transpose_solve=richardson(None, mt_solve))

        def stage(i, carry):
            fs, failed = carry
            ti = t0 + _C[i] * h
            zi = y0 + h * (jnp.asarray(_A[i], dtype) @ fs)
            pred = jnp.asarray(_P[i], dtype) @ fs

            def residual(f):
                return f - vf(ti, zi + hg * f)

            fi, fail_i = jax.lax.custom_root(residual, pred, chord, tangent_solve, has_aux=True)
            return fs.at[i].set(fi), failed | fail_i

        fs = jnp.zeros((N_STAGES, n), dtype).at[0].set(f0)
        carry = (fs, jnp.asarray(False))
        for i in range(1, N_STAGES):  # static: the tableau rows are constants
            carry = stage(i, carry)
        fs, failed = carry

        y1 = y0 + h * (jnp.asarray(_B_SOL, dtype) @ fs)
        y_error = h * (jnp.asarray(_B_ERR, dtype) @ fs)
        y_error = jnp.where(failed, jnp.inf, y_error)  # a stage that did not converge rejects the step
        dense_info = dict(y0=y0, y1=y1, k=h * fs)
        result = RESULTS.where(failed, RESULTS.nonlinear_divergence, RESULTS.successful)
        return y1, y_error, dense_info, fs[-1], result
