"""The package's Kvaerno 5/4 ESDIRK (``model/esdirk.py``): known answers, a reference solution, derivatives in both
modes against finite differences and against diffrax's own Kvaerno5, vmap, and a failed solve that is reported
instead of raised. Small systems, so the whole file compiles in well under a minute on 2 cores."""

from __future__ import annotations

import diffrax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from scipy.integrate import solve_ivp

from myoglucose.model.esdirk import ChordKvaerno5


def _solve(f, y0, args, t1, rtol, atol, solver=None, ts=None, adjoint=None, max_steps=100_000):
    solver = solver or ChordKvaerno5(rtol=rtol, atol=atol)
    ctrl = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=0.3, icoeff=0.4)
    saveat = diffrax.SaveAt(ts=ts) if ts is not None else diffrax.SaveAt(t1=True)
    return diffrax.diffeqsolve(diffrax.ODETerm(f), solver, 0.0, t1, None, y0, args, saveat=saveat,
                               stepsize_controller=ctrl, max_steps=max_steps, throw=False,
                               adjoint=adjoint or diffrax.ForwardMode())


def robertson(t, y, k):
    """Robertson's chemical kinetics (Hairer & Wanner II, section IV.1): stiff, eigenvalues down to about -1e4."""
    k1, k2, k3 = k[0], k[1], k[2]
    return jnp.stack([-k1 * y[0] + k3 * y[1] * y[2], k1 * y[0] - k2 * y[1] ** 2 - k3 * y[1] * y[2], k2 * y[1] ** 2])


ROB_K = jnp.array([0.04, 3e7, 1e4])
ROB_Y0 = jnp.array([1.0, 0.0, 0.0])


def test_linear_stiff_system_matches_the_matrix_exponential():
    """y' = A y with eigenvalues -0.5, -50 +- 20i, -2000: the solution at every save time equals expm(A t) y0."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    blocks = scipy.linalg.block_diag([[-0.5]], [[-50.0, 20.0], [-20.0, -50.0]], [[-2000.0]])
    a = q @ blocks @ q.T
    y0 = np.array([1.0, -0.5, 0.25, 2.0])
    ts = np.array([0.01, 0.1, 1.0, 3.0, 10.0])
    sol = _solve(lambda t, y, a: a @ y, jnp.asarray(y0), jnp.asarray(a), 10.0, 1e-10, 1e-12, ts=jnp.asarray(ts))
    assert sol.result == diffrax.RESULTS.successful
    exact = np.stack([scipy.linalg.expm(a * t) @ y0 for t in ts])
    err = np.max(np.abs(np.asarray(sol.ys) - exact))
    print(f"linear stiff system: max abs error {err:.1e} over {int(sol.stats['num_steps'])} steps")
    assert err < 1e-8  # global error of a local tolerance of 1e-10 over 420 steps


def test_robertson_agrees_with_radau_and_with_diffrax_kvaerno5():
    """Robertson to t = 4000 against Radau at rtol 1e-12. The step-size controller takes the steps the embedded
    error estimate asks for, so the global error sits above the local tolerance on the stiff component (as for any
    such method); diffrax 0.7.2's Kvaerno5 rejects several times more steps at the same tolerance (its stage
    iteration reports failures; docs/performance.md section 3) and so lands closer. Per step the two are equally
    accurate: compared at similar step counts below."""
    ts = np.array([0.4, 4.0, 40.0, 400.0, 4000.0])
    f, jac = jax.jit(robertson), jax.jit(jax.jacfwd(robertson, 1))
    ref = solve_ivp(lambda t, y: np.asarray(f(t, jnp.asarray(y), ROB_K)), (0, 4000.0), np.asarray(ROB_Y0),
                    method="Radau", rtol=1e-12, atol=1e-16, t_eval=ts,
                    jac=lambda t, y: np.asarray(jac(t, jnp.asarray(y), ROB_K))).y.T

    def rel_err(sol):
        return float(np.max(np.abs(np.asarray(sol.ys) - ref) / (np.abs(ref) + 1e-12)))

    ours = _solve(robertson, ROB_Y0, ROB_K, 4000.0, 1e-11, 1e-15, ts=jnp.asarray(ts))
    theirs = _solve(robertson, ROB_Y0, ROB_K, 4000.0, 1e-8, 1e-12, ts=jnp.asarray(ts), solver=diffrax.Kvaerno5())
    assert ours.result == diffrax.RESULTS.successful and theirs.result == diffrax.RESULTS.successful
    n_ours, n_theirs = int(ours.stats["num_steps"]), int(theirs.stats["num_steps"])
    print(f"Robertson against Radau: ours (rtol 1e-11) {rel_err(ours):.1e} in {n_ours} steps "
          f"({int(ours.stats['num_rejected_steps'])} rejected); diffrax.Kvaerno5 (rtol 1e-8) {rel_err(theirs):.1e} "
          f"in {n_theirs} steps ({int(theirs.stats['num_rejected_steps'])} rejected)")
    assert rel_err(ours) < 2e-7
    # the same method: at a comparable number of steps, a comparable error
    assert 0.5 < n_ours / n_theirs < 2.0
    assert rel_err(ours) < 3 * rel_err(theirs)


def _rob_scalar(k, solver=None, adjoint=None, rtol=1e-10, atol=1e-14):
    sol = _solve(robertson, ROB_Y0, k, 100.0, rtol, atol, solver=solver, adjoint=adjoint)
    return sol.ys[-1, 0] + 1e4 * sol.ys[-1, 1]


def test_derivatives_reverse_forward_finite_differences_and_diffrax_agree():
    """d/dk of a scalar of Robertson's solution at t = 100: reverse mode (checkpointed; JAX's transpose of the step's
    custom JVP) equals forward mode (the custom JVP itself), both equal central finite differences of the solve,
    and diffrax's Kvaerno5 (its implicit adjoint: a fresh Jacobian and LU per stage) gives the same derivative."""
    rev = jax.jit(jax.grad(lambda k: _rob_scalar(k, adjoint=diffrax.RecursiveCheckpointAdjoint())))(ROB_K)
    fwd = jax.jit(jax.jacfwd(_rob_scalar))(ROB_K)
    ref = jax.jit(jax.grad(lambda k: _rob_scalar(k, solver=diffrax.Kvaerno5(),
                                                 adjoint=diffrax.RecursiveCheckpointAdjoint())))(ROB_K)
    f = jax.jit(_rob_scalar)
    fd = []
    for i in range(3):
        h = 1e-4 * ROB_K[i]
        e = jnp.zeros(3).at[i].set(h)
        fd.append((f(ROB_K + e) - f(ROB_K - e)) / (2 * h))
    fd = np.asarray(fd)
    print("reverse", np.asarray(rev), "forward", np.asarray(fwd), "finite differences", fd, "diffrax", np.asarray(ref))
    np.testing.assert_allclose(np.asarray(rev), np.asarray(fwd), rtol=1e-9)
    np.testing.assert_allclose(np.asarray(rev), fd, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(rev), np.asarray(ref), rtol=1e-6)


def test_derivatives_in_the_initial_state_the_end_time_and_across_a_jump():
    """The step's rule also carries tangents of the initial state and of the step's end points (here the end time of
    the solve), across a ``jump_ts`` jump: y' = -k(t) y + s with k doubling at t = 1, against the closed form, both
    modes. The step after the jump is short, so this end-to-end check barely sees the first stage's tangent after
    a jump (F(t0, y0) instead of the carried-in stage); ``test_one_step_jacobians_against_finite_differences``
    checks that branch."""
    k1, s_in, tj = 3.0, 0.5, 1.0

    def field(t, y, a):
        k = jnp.where(t < tj, a[0], 2.0 * a[0])
        return -k * y + a[1]

    def end_value(y0, t1, a, adjoint=diffrax.RecursiveCheckpointAdjoint()):
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(field), ChordKvaerno5(rtol=1e-10, atol=1e-12), 0.0, t1, None, y0, a,
            stepsize_controller=diffrax.ClipStepSizeController(
                diffrax.PIDController(rtol=1e-10, atol=1e-12, pcoeff=0.3, icoeff=0.4), jump_ts=jnp.array([tj])),
            max_steps=10_000, throw=False, adjoint=adjoint)
        return sol.ys[-1, 0]

    def exact(y0, t1, a):
        k, s = a[0], a[1]
        yj = s / k + (y0 - s / k) * jnp.exp(-k * tj)  # at the jump
        return s / (2 * k) + (yj - s / (2 * k)) * jnp.exp(-2 * k * (t1 - tj))

    y0, t1, a = jnp.array([2.0]), jnp.asarray(1.7), jnp.array([k1, s_in])
    assert abs(float(end_value(y0, t1, a)) - float(exact(y0[0], t1, a))) < 1e-8
    want = jax.grad(exact, argnums=(0, 1, 2))(y0[0], t1, a)
    rev = jax.jit(jax.grad(end_value, argnums=(0, 1, 2)))(y0, t1, a)
    fwd = jax.jit(jax.jacfwd(lambda *x: end_value(*x, adjoint=diffrax.ForwardMode()), argnums=(0, 1, 2)))(y0, t1, a)
    print("exact", [np.asarray(w) for w in want], "reverse", [np.asarray(r) for r in rev])
    for got in (rev, fwd):
        np.testing.assert_allclose(float(got[0][0]), float(want[0]), rtol=1e-7)
        np.testing.assert_allclose(float(got[1]), float(want[1]), rtol=1e-7)
        np.testing.assert_allclose(np.asarray(got[2]), np.asarray(want[2]), rtol=1e-7)


@pytest.mark.parametrize("made_jump", [False, True])
def test_one_step_jacobians_against_finite_differences(made_jump):
    """The step's derivative rule on its own: the Jacobians of one step's outputs (y1, the error estimate, the last
    stage) with respect to every input (y0, the carried-in first stage f0, t0, t1, the parameters) in forward and
    reverse mode equal central finite differences of the step. After a jump the first stage is F(t0, y0), so f0
    must have no influence and y0, t0 and the parameters enter through it too."""
    solver = ChordKvaerno5(rtol=1e-13, atol=1e-13)
    term = diffrax.ODETerm(lambda t, y, k: robertson(t, y, k) * (1.0 + 0.1 * jnp.sin(t)))
    k = jnp.array([0.04, 3e3, 1e2])  # milder than Robertson's, so that h = 0.05 is an accepted, stiff step
    y0 = jnp.array([0.9, 2e-3, 0.098])
    f0 = term.vf(0.3, y0, k) + jnp.array([0.01, -0.02, 0.03])  # a carried-in stage that differs from F(t0, y0)
    mj = jnp.asarray(made_jump)

    def outputs(x):
        y0_, f0_, t0_, t1_, k_ = x
        y1, err, _, f_last, result = solver.step(term, t0_, t1_, y0_, k_, f0_, mj)
        return jnp.concatenate([y1, err, f_last])

    x = (y0, f0, jnp.asarray(0.3), jnp.asarray(0.35), k)
    assert bool(jnp.all(jnp.isfinite(outputs(x))))
    fwd = jax.jit(jax.jacfwd(outputs))(x)
    rev = jax.jit(jax.jacrev(outputs))(x)
    f = jax.jit(outputs)
    for j, name in enumerate(["y0", "f0", "t0", "t1", "k"]):
        xj = np.atleast_1d(np.asarray(x[j], dtype=float))
        fd = []
        for m in range(xj.size):
            h = 1e-6 * max(abs(xj[m]), 1e-3)
            xp, xm = xj.copy(), xj.copy()
            xp[m] += h
            xm[m] -= h
            rp = [*x[:j], jnp.asarray(xp.reshape(np.shape(x[j]))), *x[j + 1:]]
            rm = [*x[:j], jnp.asarray(xm.reshape(np.shape(x[j]))), *x[j + 1:]]
            fd.append((np.asarray(f(tuple(rp))) - np.asarray(f(tuple(rm)))) / (2 * h))
        fd = np.stack(fd, axis=-1)
        for got in (fwd[j], rev[j]):
            got = np.asarray(got).reshape(fd.shape)
            np.testing.assert_allclose(got, fd, rtol=1e-5, atol=1e-7 * np.max(np.abs(fd)) + 1e-12, err_msg=name)
    if made_jump:
        assert np.max(np.abs(np.asarray(fwd[1]))) == 0.0  # the carried-in stage is ignored after a jump


def test_vmap_over_parameters_equals_one_solve_each():
    ks = jnp.stack([ROB_K, ROB_K * jnp.array([2.0, 1.0, 0.5]), ROB_K * jnp.array([0.5, 3.0, 1.0])])
    f = jax.jit(lambda k: _rob_scalar(k, rtol=1e-7, atol=1e-11))
    batched = jax.jit(jax.vmap(lambda k: _rob_scalar(k, rtol=1e-7, atol=1e-11)))(ks)
    one = np.array([float(f(k)) for k in ks])
    np.testing.assert_allclose(np.asarray(batched), one, rtol=1e-12)


def test_a_blow_up_is_reported_not_raised_and_its_gradient_is_defined():
    """y' = y^2 from y(0) = 1 blows up at t = 1: integrating to t = 2 fails (a stage that cannot converge rejects
    the step until the step size collapses, or the steps run out); the solve returns a failure code, no exception,
    and differentiating it raises nothing either."""

    def scalar(c):
        sol = _solve(lambda t, y, c: c * y**2, jnp.array([1.0]), c, 2.0, 1e-6, 1e-8, max_steps=2000,
                     adjoint=diffrax.RecursiveCheckpointAdjoint())
        return sol.result != diffrax.RESULTS.successful, sol.ys[-1, 0]

    failed, _ = jax.jit(scalar)(jnp.asarray(1.0))
    assert bool(failed)
    g = jax.jit(jax.grad(lambda c: jnp.where(scalar(c)[0], 0.0, scalar(c)[1])))(jnp.asarray(1.0))
    assert np.isfinite(float(g))


def test_rejects_a_state_that_is_not_one_flat_vector():
    with pytest.raises(TypeError, match="flat state vector"):
        _solve(lambda t, y, a: {"a": -y["a"]}, {"a": jnp.ones(2)}, None, 1.0, 1e-6, 1e-8)
