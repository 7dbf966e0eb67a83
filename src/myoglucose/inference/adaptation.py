"""NUTS warmup with a dense metric estimate that does not collapse in short windows (``sampler.metric_shrinkage``).

NumPyro's (and Stan's) windowed adaptation estimates the inverse mass matrix at the end of each slow window from that
window's draws alone, regularised towards ``1e-3 * I``: ``(n / (n + 5)) * C + 1e-3 * (5 / (n + 5)) * I``. With a
dense metric and a window shorter than a few times the dimension the sample covariance ``C`` is rank-deficient or
nearly so: 25 draws of a 28-dimensional posterior leave at least 4 directions with variance 1.7e-4, where the
posterior's is about 1, and the smallest eigenvalues of a 50-draw estimate are still about 0.06 of the truth
(Marchenko-Pastur). Every such direction forces the step size down and the trajectories long: on full Katz 2000
FSIVGTT one chain needed 55 leapfrog steps per iteration on the Laplace metric, 244 after the 25-draw window, 173
after the 50-draw one and 72 per draw on the final 100-draw estimate (docs/performance.md section 2).

``shrinkage_warmup_adapter`` is NumPyro's ``warmup_adapter`` with one change at the end of each slow window: the dense
estimate is shrunk towards the previous metric's principal axes, with the window's own variances along them,

    M = (n * C + k * T) / (n + k),   T = U diag(u_i' C u_i) U',   P = U diag(lambda) U',   k = shrinkage * dim,

(an inverse-Wishart prior centred on ``T`` with ``k`` pseudo-draws), then regularised as NumPyro does. The
directions come from the previous metric ``P`` (the Laplace metric, for the first window), which 25 draws cannot
resolve; the variance along each direction is the window's, a one-dimensional estimate that 25 draws do resolve, so
a wrong scale in ``P`` (the identity, or a Laplace metric from a degenerate mode) is not carried over. (Shrinking
towards ``P``'s correlations on the window's marginal variances instead was measured worse: in a strongly correlated
posterior small errors of a correlation swamp its narrow directions.) ``shrinkage = 0`` gives NumPyro's adapter
exactly (tested draw for draw). Diagonal blocks are unchanged. Only the path through warmup changes; the sampling
metric is still estimated from the last window's draws, and the posterior is the same.

``numpyro.infer.hmc`` builds its adapter when a kernel is initialised (``NUTS.init``); ``use_adapter`` substitutes this
one for the duration of that call.
"""

from __future__ import annotations

import contextlib
from functools import partial

import jax.numpy as jnp
from jax import random
from jax.scipy.linalg import solve_triangular


def _factors(cov):
    """(inverse mass matrix, mass_matrix_sqrt, mass_matrix_sqrt_inv) of one block, as NumPyro's Welford estimator
    returns them (dense: Cholesky of the precision via the flipped Cholesky of ``cov``)."""
    if jnp.ndim(cov) == 2:
        tril_inv = jnp.swapaxes(jnp.linalg.cholesky(cov[..., ::-1, ::-1])[..., ::-1, ::-1], -2, -1)
        return cov, solve_triangular(tril_inv, jnp.identity(cov.shape[-1]), lower=True), tril_inv
    tril_inv = jnp.sqrt(cov)
    return cov, jnp.reciprocal(tril_inv), tril_inv


def shrunk_covariance(m2, n, previous, shrinkage: float, regularize: bool = True):
    """A window's covariance estimate from its Welford sums (``m2``, ``n`` draws), shrunk towards ``previous``'s
    principal axes with the window's variances along them (dense blocks, ``shrinkage > 0``), then regularised as
    Stan and NumPyro do."""
    cov = m2 / (n - 1)
    if jnp.ndim(cov) == 2 and shrinkage > 0:
        k = shrinkage * cov.shape[-1]
        _, axes = jnp.linalg.eigh(previous)
        var = jnp.einsum("ij,ik,kj->j", axes, cov, axes)  # the window's variance along each of the previous axes
        target = (axes * var) @ axes.T
        cov = (n * cov + k * target) / (n + k)
    if regularize:
        scaled = (n / (n + 5)) * cov
        eps = 1e-3 * (5 / (n + 5))
        cov = scaled + eps if jnp.ndim(scaled) == 1 else scaled + eps * jnp.identity(cov.shape[-1])
    return cov


def shrinkage_warmup_adapter(num_adapt_steps, find_reasonable_step_size=None, adapt_step_size=True,
                             adapt_mass_matrix=True, dense_mass=False, target_accept_prob=0.8,
                             regularize_mass_matrix=True, *, shrinkage: float = 1.0, target: str = "previous",
                             initial=None):
    """``numpyro.infer.hmc_util.warmup_adapter`` with the shrunk window estimate (module docstring). Same
    signature, state (``HMCAdaptState``) and schedule; ``init_fn`` is NumPyro's own. ``target``: ``previous``
    shrinks towards the metric of the window before (the module docstring), ``initial`` always towards the warmup's
    starting metric ``initial`` (the Laplace metric; the identity when None), whose axes do not carry the noise of
    a short window's estimate into the next."""
    if target not in ("previous", "initial"):
        raise ValueError(f"shrinkage target must be 'previous' or 'initial' (got {target!r})")
    from numpyro.infer import hmc_util
    from numpyro.util import cond, identity

    init_fn, _ = hmc_util.warmup_adapter(num_adapt_steps, find_reasonable_step_size=find_reasonable_step_size,
                                         adapt_step_size=adapt_step_size, adapt_mass_matrix=adapt_mass_matrix,
                                         dense_mass=dense_mass, target_accept_prob=target_accept_prob,
                                         regularize_mass_matrix=regularize_mass_matrix)
    find_step = identity if find_reasonable_step_size is None else find_reasonable_step_size
    ss_init, ss_update = hmc_util.dual_averaging()
    mm_init, mm_update, _ = hmc_util.welford_covariance(diagonal=not dense_mass)
    schedule = jnp.asarray(hmc_util.build_adaptation_schedule(num_adapt_steps))
    num_windows = len(schedule)

    def anchor(previous):
        if target == "previous" or jnp.ndim(previous) != 2:
            return previous
        dim = previous.shape[-1]
        if initial is None or jnp.size(initial) not in (dim, dim * dim):
            return jnp.identity(dim)
        return jnp.diag(initial) if jnp.ndim(initial) == 1 else jnp.asarray(initial)

    def final(mm_state, previous):
        if isinstance(mm_state, dict):
            out = {b: final(mm_state[b], previous[b]) for b in mm_state}
            return tuple({b: out[b][i] for b in out} for i in range(3))
        _, m2, n = mm_state
        return _factors(shrunk_covariance(m2, n, anchor(previous), shrinkage, regularize_mass_matrix))

    def window_end(z_info, rng_key_ss, state):
        step_size, imm, mm_sqrt, mm_sqrt_inv, ss_state, mm_state, window_idx, rng_key = state
        if adapt_mass_matrix:
            imm, mm_sqrt, mm_sqrt_inv = final(mm_state, imm)
            size = {k: v.shape for k, v in imm.items()} if isinstance(imm, dict) else imm.shape[-1]
            mm_state = mm_init(size)
        if adapt_step_size:
            step_size = find_step(step_size, imm, z_info, rng_key_ss)
            ss_state = ss_init(jnp.log(10) + jnp.log(step_size))
        return hmc_util.HMCAdaptState(step_size, imm, mm_sqrt, mm_sqrt_inv, ss_state, mm_state, window_idx, rng_key)

    def update_fn(t, accept_prob, z_info, state):
        step_size, imm, mm_sqrt, mm_sqrt_inv, ss_state, mm_state, window_idx, rng_key = state
        if rng_key is not None:
            rng_key, rng_key_ss = random.split(rng_key)
        else:
            rng_key_ss = None
        if adapt_step_size:  # dual averaging; the end of warmup takes the averaged step size
            ss_state = ss_update(target_accept_prob - accept_prob, ss_state)
            log_step_size, log_step_size_avg, *_ = ss_state
            step_size = jnp.where(t == (num_adapt_steps - 1), jnp.exp(log_step_size_avg), jnp.exp(log_step_size))
            finfo = jnp.finfo(jnp.result_type(step_size))
            step_size = jnp.clip(step_size, finfo.tiny, finfo.max)
        is_middle_window = (0 < window_idx) & (window_idx < (num_windows - 1))
        if adapt_mass_matrix:
            mm_state = cond(is_middle_window, (z_info[0], mm_state), lambda args: mm_update(*args), mm_state,
                            identity)
        at_end = t == schedule[window_idx, 1]
        window_idx = jnp.where(at_end, window_idx + 1, window_idx)
        state = hmc_util.HMCAdaptState(step_size, imm, mm_sqrt, mm_sqrt_inv, ss_state, mm_state, window_idx,
                                       rng_key)
        return cond(at_end & is_middle_window, (z_info, rng_key_ss, state), lambda args: window_end(*args), state,
                    identity)

    return init_fn, update_fn


@contextlib.contextmanager
def use_adapter(shrinkage: float, target: str = "previous", initial=None):
    """Within the block, NumPyro kernels initialised (``init``) adapt with ``shrinkage_warmup_adapter``
    (``shrinkage`` pseudo-draws per dimension towards ``target``; ``initial``: the starting inverse mass matrix);
    ``shrinkage = 0`` leaves NumPyro's adapter in place."""
    if not shrinkage:
        yield
        return
    from numpyro.infer import hmc

    original = hmc.warmup_adapter
    hmc.warmup_adapter = partial(shrinkage_warmup_adapter, shrinkage=float(shrinkage), target=target,
                                 initial=None if initial is None else jnp.asarray(initial))
    try:
        yield
    finally:
        hmc.warmup_adapter = original
