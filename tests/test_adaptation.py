"""Warmup with shrunk dense-metric window estimates (``sampler.metric_shrinkage``, inference/adaptation.py).

Toy Gaussians with a known answer (no ODE): the adapter with no shrinkage is NumPyro's adapter draw for draw; the
shrunk estimate has the closed form of the module docstring; a short window in many dimensions no longer yields a
near-singular metric; and chains warmed up this way sample the right posterior."""

from __future__ import annotations

import types
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro.infer import MCMC, NUTS

from myoglucose.inference.adaptation import shrinkage_warmup_adapter, shrunk_covariance, use_adapter
from myoglucose.inference.sample import SamplerSettings, make_kernel, run_nuts

DIM = 12


def _covariance(dim: int, seed: int = 3) -> np.ndarray:
    """A correlated covariance with scales from 0.05 to 3."""
    rng = np.random.default_rng(seed)
    Q = np.linalg.qr(rng.normal(size=(dim, dim)))[0]
    return (Q * np.geomspace(0.05, 3.0, dim) ** 2) @ Q.T


COV = _covariance(DIM)
MEAN = np.linspace(-1.0, 1.0, DIM)


def gauss_model(a=None, y=None):
    numpyro.sample("x", dist.MultivariateNormal(jnp.asarray(MEAN), covariance_matrix=jnp.asarray(COV)))


def _run(warmup: int, samples: int, shrinkage: float | None, seed: int = 0):
    """NumPyro's MCMC with its own adapter (``shrinkage`` None) or with ours substituted."""
    from numpyro.infer import hmc

    kernel = NUTS(gauss_model, dense_mass=True, target_accept_prob=0.8)
    mcmc = MCMC(kernel, num_warmup=warmup, num_samples=samples, progress_bar=False)
    original = hmc.warmup_adapter
    if shrinkage is not None:
        hmc.warmup_adapter = partial(shrinkage_warmup_adapter, shrinkage=shrinkage)
    try:
        mcmc.run(jax.random.PRNGKey(seed), extra_fields=("num_steps", "adapt_state.inverse_mass_matrix"))
    finally:
        hmc.warmup_adapter = original
    return mcmc


def test_no_shrinkage_is_numpyros_adapter_draw_for_draw():
    stock = _run(150, 40, None)
    ours = _run(150, 40, 0.0)
    np.testing.assert_array_equal(np.asarray(ours.get_samples()["x"]), np.asarray(stock.get_samples()["x"]))
    np.testing.assert_array_equal(np.asarray(ours.get_extra_fields()["num_steps"]),
                                  np.asarray(stock.get_extra_fields()["num_steps"]))
    a = stock.last_state.adapt_state
    b = ours.last_state.adapt_state
    for k in a.inverse_mass_matrix:
        np.testing.assert_array_equal(np.asarray(b.inverse_mass_matrix[k]), np.asarray(a.inverse_mass_matrix[k]))
        np.testing.assert_array_equal(np.asarray(b.mass_matrix_sqrt[k]), np.asarray(a.mass_matrix_sqrt[k]))
    assert float(a.step_size) == float(b.step_size)


def _welford(draws: np.ndarray):
    mean = draws.mean(axis=0)
    return (draws - mean).T @ (draws - mean), len(draws)


def test_shrunk_covariance_closed_form():
    rng = np.random.default_rng(0)
    draws = rng.multivariate_normal(MEAN, COV, size=30)
    m2, n = _welford(draws)
    C = m2 / (n - 1)
    # no shrinkage: Stan's and NumPyro's regularisation
    got = np.asarray(shrunk_covariance(jnp.asarray(m2), n, jnp.eye(DIM), 0.0))
    np.testing.assert_allclose(got, n / (n + 5) * C + 1e-3 * 5 / (n + 5) * np.eye(DIM), rtol=1e-12, atol=1e-15)
    # towards a previous metric: its principal axes, with the window's variances along them; k = shrinkage x dim
    P = _covariance(DIM, seed=9)
    _, U = np.linalg.eigh(P)
    k = 0.5 * DIM
    expected = (n * C + k * (U * np.diag(U.T @ C @ U)) @ U.T) / (n + k)
    got = np.asarray(shrunk_covariance(jnp.asarray(m2), n, jnp.asarray(P), 0.5, regularize=False))
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-13)
    # the variance along each of those axes is the window's own, and only P's axes count, not its scale
    np.testing.assert_allclose(np.diag(U.T @ got @ U), np.diag(U.T @ C @ U), rtol=1e-10)
    scaled = np.asarray(shrunk_covariance(jnp.asarray(m2), n, jnp.asarray(7.0 * P), 0.5, regularize=False))
    np.testing.assert_allclose(scaled, got, rtol=1e-9, atol=1e-12)
    # towards the identity: correlations shrink by n / (n + k), variances stay
    got = np.asarray(shrunk_covariance(jnp.asarray(m2), n, jnp.eye(DIM), 1.0, regularize=False))
    off = ~np.eye(DIM, dtype=bool)
    np.testing.assert_allclose(got[off], C[off] * n / (n + DIM), rtol=1e-12)
    # a diagonal block is only regularised
    d = np.asarray(shrunk_covariance(jnp.asarray(np.diag(m2)), n, jnp.ones(DIM), 1.0))
    np.testing.assert_allclose(d, n / (n + 5) * np.diag(C) + 1e-3 * 5 / (n + 5), rtol=1e-12)


def test_a_short_window_in_many_dimensions_no_longer_gives_a_singular_metric():
    """25 draws of a 40-dimensional posterior: NumPyro's estimate has at least 16 directions at variance 1.7e-4;
    shrunk towards a previous metric with the right correlations (and a wrong scale), every direction keeps a useful
    fraction of its posterior variance."""
    dim = 40
    cov = _covariance(dim, seed=4)
    draws = np.random.default_rng(1).multivariate_normal(np.zeros(dim), cov, size=25)
    m2, n = _welford(draws)
    L = np.linalg.cholesky(cov)

    def ratios(M):  # variance of the metric relative to the posterior's, per direction
        Li = np.linalg.inv(L)
        return np.linalg.eigvalsh(Li @ M @ Li.T)

    stock = ratios(np.asarray(shrunk_covariance(jnp.asarray(m2), n, jnp.eye(dim), 0.0)))
    shrunk = ratios(np.asarray(shrunk_covariance(jnp.asarray(m2), n, jnp.asarray(cov * 3.0), 1.0)))
    print(f"variance ratios, metric / posterior: NumPyro {stock.min():.2e} .. {stock.max():.2f}; "
          f"shrunk {shrunk.min():.2e} .. {shrunk.max():.2f}")
    assert np.sum(stock < 0.1) >= dim - n + 1  # the directions 25 draws do not span, at least
    # what sets NUTS's step size and tree depth: the spread of these ratios (condition number of the preconditioned
    # posterior); about 1e4 for NumPyro's estimate, about 1e2 shrunk
    assert stock.max() / stock.min() > 1e3
    assert shrunk.min() > 0.1 and shrunk.max() / shrunk.min() < 200


@pytest.mark.parametrize("shrinkage", [1.0, 3.0])
def test_chains_warmed_up_with_shrinkage_sample_the_posterior(shrinkage):
    mcmc = _run(300, 1500, shrinkage, seed=2)
    x = np.asarray(mcmc.get_samples()["x"])
    sd = np.sqrt(np.diag(COV))
    z = (x.mean(axis=0) - MEAN) / sd
    assert np.abs(z).max() < 0.25  # about 4 Monte Carlo standard errors at an effective size of a few hundred
    np.testing.assert_allclose(np.std(x, axis=0) / sd, 1.0, atol=0.15)
    corr = np.corrcoef(x.T)
    target = COV / np.outer(sd, sd)
    assert np.abs(corr - target).max() < 0.15
    # the sampling metric, relative to the posterior covariance, direction by direction
    M = np.asarray(mcmc.last_state.adapt_state.inverse_mass_matrix[("x",)])
    Li = np.linalg.inv(np.linalg.cholesky(COV))
    r = np.linalg.eigvalsh(Li @ M @ Li.T)
    print(f"shrinkage {shrinkage}: metric / posterior variance {r.min():.2f} .. {r.max():.2f}")
    if shrinkage == 1.0:  # as good as NumPyro's own (0.38-0.40 .. 1.9-2.1 on this problem)
        assert 0.2 < r.min() and r.max() < 3.0
    else:  # from an identity start heavy shrinkage keeps some of the identity's axes (7.8 here): worse, still valid
        assert 0.2 < r.min() and r.max() < 30.0


def test_the_fit_kernel_uses_the_setting():
    """``sampler.metric_shrinkage`` reaches the kernel: through ``make_kernel``/``run_nuts`` the adapted metric is
    the shrunk one (it differs from NumPyro's on the same chain), and the adapter is only substituted during
    ``init``."""
    from numpyro.infer import hmc

    builder = types.SimpleNamespace(model=gauss_model, solver=types.SimpleNamespace(adjoint="reverse"))
    arrays = types.SimpleNamespace(values=jnp.zeros(1))
    out = {}
    for s in (0.0, 1.0):
        settings = SamplerSettings(chains=1, warmup=120, samples=20, init="median", seed=4, progress=False,
                                   checkpoint_every=0, chain_method="sequential", metric_shrinkage=s)
        assert make_kernel(builder, settings, None)._metric_shrinkage == s
        out[s] = run_nuts(builder, arrays, settings, None, [0])
    assert hmc.warmup_adapter.__module__ == "numpyro.infer.hmc_util"  # restored
    assert not np.array_equal(out[0.0]["samples"]["x"], out[1.0]["samples"]["x"])
    with use_adapter(2.0):
        assert hmc.warmup_adapter.keywords == {"shrinkage": 2.0, "target": "previous", "initial": None}
    with use_adapter(0.0):
        assert hmc.warmup_adapter.__module__ == "numpyro.infer.hmc_util"
    with pytest.raises(ValueError, match="metric_shrinkage"):
        SamplerSettings(metric_shrinkage=-1.0)


def test_shrinking_towards_the_initial_metric():
    """``target: initial`` shrinks every window towards the metric the warmup started from (here the posterior's own
    covariance, at 5x its scale: only its axes count); the chains sample the posterior and the final metric is good
    in every direction. A bad target name is refused."""
    from numpyro.infer import hmc

    kernel = NUTS(gauss_model, dense_mass=True, target_accept_prob=0.8, inverse_mass_matrix=jnp.asarray(5.0 * COV))
    mcmc = MCMC(kernel, num_warmup=300, num_samples=1000, progress_bar=False)
    original = hmc.warmup_adapter
    hmc.warmup_adapter = partial(shrinkage_warmup_adapter, shrinkage=1.0, target="initial",
                                 initial=jnp.asarray(5.0 * COV))
    try:
        mcmc.run(jax.random.PRNGKey(7))
    finally:
        hmc.warmup_adapter = original
    x = np.asarray(mcmc.get_samples()["x"])
    sd = np.sqrt(np.diag(COV))
    assert np.abs((x.mean(axis=0) - MEAN) / sd).max() < 0.25
    np.testing.assert_allclose(np.std(x, axis=0) / sd, 1.0, atol=0.15)
    M = np.asarray(mcmc.last_state.adapt_state.inverse_mass_matrix[("x",)])
    Li = np.linalg.inv(np.linalg.cholesky(COV))
    r = np.linalg.eigvalsh(Li @ M @ Li.T)
    print(f"target initial: metric / posterior variance {r.min():.2f} .. {r.max():.2f}")
    assert 0.3 < r.min() and r.max() < 2.5
    with pytest.raises(ValueError, match="shrinkage target"):
        shrinkage_warmup_adapter(100, shrinkage=1.0, target="mean")
    with pytest.raises(ValueError, match="metric_shrinkage_target"):
        SamplerSettings(metric_shrinkage_target="mean")
    builder = types.SimpleNamespace(model=gauss_model, solver=types.SimpleNamespace(adjoint="reverse"))
    k = make_kernel(builder, SamplerSettings(metric_shrinkage=1.0, metric_shrinkage_target="initial", init="median"),
                    None)
    assert k._metric_shrinkage_target == "initial"


def _wide_gauss_model(a=None, y=None):
    numpyro.sample("x", dist.MultivariateNormal(jnp.zeros(40), covariance_matrix=jnp.asarray(_covariance(40, seed=4))))


@pytest.mark.parametrize("target", ["previous", "initial"])
def test_vectorised_chains_adapt_with_shrinkage(target):
    """Vectorised chains (``chain_method: vectorized``, the GPU's) build the adapter once in ``init`` and ``vmap`` it.
    A 40-dimensional posterior, 40 warmup iterations (one slow window of 30 draws): with NumPyro's estimate each chain's
    metric has at least 10 near-singular directions; shrunk, none. Exact draws are not compared with chains run one
    by one: batched and single linear algebra round differently and the warmup amplifies it (NumPyro's own adapter
    ends up to 4e-3 apart at the first draw)."""
    builder = types.SimpleNamespace(model=_wide_gauss_model, solver=types.SimpleNamespace(adjoint="reverse"))
    Li = np.linalg.inv(np.linalg.cholesky(_covariance(40, seed=4)))
    lowest = {}
    for s in (0.0, 1.0):
        settings = SamplerSettings(chains=2, warmup=40, samples=1, init="median", seed=5, progress=False,
                                   checkpoint_every=0, chain_method="vectorized", metric_shrinkage=s,
                                   metric_shrinkage_target=target, max_tree_depth=8)
        # the fit's kernel under NumPyro's vectorised chains: like sample_chains, one init with a key per chain
        mcmc = MCMC(make_kernel(builder, settings, None), num_warmup=40, num_samples=1, num_chains=2,
                    chain_method="vectorized", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(5))
        metrics = np.asarray(mcmc.last_state.adapt_state.inverse_mass_matrix[("x",)])  # [chain, 40, 40]
        assert metrics.shape == (2, 40, 40)
        lowest[s] = [np.linalg.eigvalsh(Li @ M @ Li.T) for M in metrics]  # metric / posterior variance
    print(target, "smallest metric / posterior variance ratios per chain: NumPyro",
          [f"{r.min():.1e}" for r in lowest[0.0]], "shrunk", [f"{r.min():.2f}" for r in lowest[1.0]])
    for stock, shrunk in zip(lowest[0.0], lowest[1.0]):
        assert np.sum(stock < 0.05) >= 10
        assert shrunk.min() > 0.02  # 0.07-0.10 measured; NumPyro 2e-4
