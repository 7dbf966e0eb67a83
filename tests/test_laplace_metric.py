"""The Laplace metric (``sampler.metric_init: laplace``): a finite-difference Hessian of the potential at the MAP,
inverted with floored eigenvalues, in NumPyro's flat sorted-site order, handed to NUTS as the warmup's starting mass
matrix. Toy models with a known posterior (seconds, no ODE)."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from myoglucose.inference.sample import (LAPLACE_VAR_MAX, SamplerSettings, hessian_fd, laplace_inverse_metric,
                                         make_kernel, map_metric)

COV = np.array([[0.5, 0.3], [0.3, 0.4]])  # posterior covariance of "x"
SD_B = 0.2


class GaussBuilder:
    """A latent ``x`` (2-vector, correlated) and ``b`` (scalar): the posterior is Gaussian, so the Laplace covariance is
    exact. The sorted flat order is [b, x0, x1]."""

    solver = types.SimpleNamespace(adjoint="reverse")

    def model(self, a, y=None):
        numpyro.sample("x", dist.MultivariateNormal(jnp.array([1.0, -2.0]), covariance_matrix=jnp.asarray(COV)))
        numpyro.sample("b", dist.Normal(3.0, SD_B))


ARRAYS = types.SimpleNamespace(values=jnp.zeros(1))
MAP = {"x": np.array([1.0, -2.0]), "b": np.array(3.0)}
EXPECTED = np.block([[np.array([[SD_B**2]]), np.zeros((1, 2))], [np.zeros((2, 1)), COV]])


def test_hessian_fd_matches_the_analytic_hessian():
    A = np.array([[3.0, 1.0, 0.2], [1.0, 2.0, -0.5], [0.2, -0.5, 1.5]])

    def grad(x):  # f = x'Ax/2 + sum(x^4)/4
        return A @ x + x**3

    x = np.array([0.3, -0.7, 1.1])
    H = hessian_fd(grad, x)
    np.testing.assert_allclose(H, A + np.diag(3 * x**2), rtol=0, atol=1e-5)
    assert np.array_equal(H, H.T)


def test_inverse_metric_inverts_a_positive_definite_hessian():
    H = np.linalg.inv(COV)
    M, info = laplace_inverse_metric(H, dense=True)
    np.testing.assert_allclose(M, COV, rtol=1e-12)
    assert info["floored"] == 0 and info["condition"] > 1
    d, _ = laplace_inverse_metric(H, dense=False)
    np.testing.assert_allclose(d, np.diag(COV), rtol=1e-12)


def test_flat_and_non_convex_directions_are_floored():
    V = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))[0]
    H = (V * np.array([-2.0, 1e-9, 10.0])) @ V.T  # a saddle direction, a flat one, a well-curved one
    M, info = laplace_inverse_metric(H, dense=True)
    w = np.linalg.eigvalsh(M)
    assert info["floored"] == 2
    assert np.all(w > 0) and w.max() == pytest.approx(LAPLACE_VAR_MAX)
    assert w.min() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="not finite"):
        laplace_inverse_metric(np.array([[np.nan]]), dense=True)


def test_map_metric_is_the_posterior_covariance_in_numpyro_site_order():
    settings = SamplerSettings(init="map", metric_init="laplace", dense_mass=True)
    M = map_metric(GaussBuilder(), ARRAYS, MAP, settings, log=print)
    np.testing.assert_allclose(M, EXPECTED, atol=1e-6)
    # diagonal metric when the mass matrix is diagonal
    d = map_metric(GaussBuilder(), ARRAYS, MAP, SamplerSettings(init="map", metric_init="laplace",
                                                                dense_mass=False), log=print)
    np.testing.assert_allclose(d, np.diag(EXPECTED), atol=1e-6)


def test_nuts_warmup_starts_from_the_laplace_metric():
    settings = SamplerSettings(init="map", metric_init="laplace", dense_mass=True, warmup=10, samples=5)
    M = map_metric(GaussBuilder(), ARRAYS, MAP, settings, log=print)
    kernel = make_kernel(GaussBuilder(), settings, MAP, inverse_mass_matrix=jnp.asarray(M))
    state = kernel.init(jax.random.PRNGKey(0), 10, None, model_args=(ARRAYS,), model_kwargs={"y": ARRAYS.values})
    imm = state.adapt_state.inverse_mass_matrix
    assert list(imm) == [("b", "x")]
    np.testing.assert_allclose(np.asarray(imm[("b", "x")]), EXPECTED, atol=1e-6)


def test_laplace_needs_a_map():
    assert SamplerSettings(metric_init="laplace").laplace_metric
    assert not SamplerSettings(init="median", metric_init="laplace").laplace_metric  # no MAP: identity (logged)
    assert not SamplerSettings().laplace_metric  # the default is the identity
    with pytest.raises(ValueError, match="metric_init must be"):
        SamplerSettings(metric_init="hessian")


@pytest.mark.parametrize("vectorized", [False, True])
def test_chains_sample_the_posterior_from_the_laplace_start(vectorized):
    """Both chain layouts (one chain at a time on CPU, vectorised on a GPU) take the metric and sample the known
    posterior."""
    from myoglucose.inference.sample import run_nuts

    settings = SamplerSettings(chains=2, warmup=150, samples=400, init="map", seed=5, progress=False,
                               checkpoint_every=0, chain_method="vectorized" if vectorized else "sequential")
    M = map_metric(GaussBuilder(), ARRAYS, MAP, settings, log=print)
    out = run_nuts(GaussBuilder(), ARRAYS, settings, MAP, [0, 1], vectorized=vectorized,
                   inverse_mass_matrix=jnp.asarray(M))
    x = np.asarray(out["samples"]["x"]).reshape(-1, 2)
    b = np.asarray(out["samples"]["b"]).reshape(-1)
    np.testing.assert_allclose(x.mean(axis=0), [1.0, -2.0], atol=0.15)
    np.testing.assert_allclose(np.cov(x.T), COV, atol=0.12)
    assert abs(b.std() - SD_B) < 0.04
    assert out["stats"]["_warmup_gradients"].shape == (2,) and np.all(out["stats"]["_warmup_gradients"] > 0)


# -- a centred hierarchy whose joint MAP collapses into the funnel's neck -------------------------------------------
Y_GROUPS = np.array([-0.15, 0.0, 0.05, 0.2])  # group means
NOISE_SD = 0.3  # their measurement sd
S_OMEGA = 0.3  # half-normal scale of the between-group spread


class FunnelBuilder:
    """``mu ~ N(0, 1)``, ``omega ~ HalfNormal(0.3)``, centred group values ``g_z ~ N(mu, omega)``, data ``y_g ~
    N(g_z, 0.05)``. The density grows without bound as ``omega -> 0`` with every group at ``mu``, whatever the data
    say (the groups here differ by 0.9, eighteen data sds), so the joint MAP is degenerate."""

    solver = types.SimpleNamespace(adjoint="reverse")
    estimated = [types.SimpleNamespace(id="g", prior_scale=S_OMEGA)]

    def group_level(self):
        return ["g"]

    def subject_level(self):
        return []

    def model(self, a, y=None):
        mu = numpyro.sample("g__z_mu", dist.Normal(0.0, 1.0))
        omega = numpyro.sample("g__omega", dist.HalfNormal(S_OMEGA))
        with numpyro.plate("group", 4):
            z = numpyro.sample("g__z", dist.Normal(mu, omega))
            numpyro.sample("y", dist.Normal(z, NOISE_SD), obs=jnp.asarray(Y_GROUPS))


def test_collapsed_group_spread_is_lifted_to_its_prior_median_and_the_rest_reoptimised(capsys):
    """The MAP search walks down the neck (omega far below its prior's 5 % quantile). The start and the Laplace point
    are moved to omega at its prior median with the other latents at their optimum given that omega: a quadratic
    problem with a closed-form answer."""
    from scipy.stats import halfnorm

    from myoglucose.inference.sample import SPREAD_COLLAPSE_QUANTILE, find_map, potential, spread_priors

    b = FunnelBuilder()
    assert spread_priors(b) == {"g__omega": S_OMEGA}
    settings = SamplerSettings(init="map", map_starts=2, map_steps=300)
    pot = potential(b, ARRAYS)
    # without the lift, the best optimum has collapsed
    from myoglucose.inference.sample import _optimise_starts

    runs = _optimise_starts(b, ARRAYS, settings, jax.random.PRNGKey(0), 2, pot, True, print, "start")
    raw = pot[1](min(runs, key=lambda r: r[1])[0])
    assert float(jnp.exp(raw["g__omega"])) < halfnorm.ppf(SPREAD_COLLAPSE_QUANTILE, scale=S_OMEGA)

    init = find_map(b, ARRAYS, settings, jax.random.PRNGKey(0), log=print, pot=pot)
    assert "hierarchical spread(s) collapsed" in capsys.readouterr().out
    w = float(init["g__omega"])
    assert w == pytest.approx(halfnorm.median(scale=S_OMEGA), rel=1e-12)
    # closed form: minimise mu^2/2 + sum (z - mu)^2 / 2w^2 + sum (y - z)^2 / 2 sd^2 over (mu, z)
    a, c = 1.0 / w**2, 1.0 / NOISE_SD**2
    A = np.zeros((5, 5))
    A[0, 0] = 1.0 + 4 * a
    A[0, 1:] = A[1:, 0] = -a
    A[1:, 1:] = np.eye(4) * (a + c)
    sol = np.linalg.solve(A, np.concatenate([[0.0], c * Y_GROUPS]))
    assert float(init["g__z_mu"]) == pytest.approx(sol[0], abs=1e-5)
    np.testing.assert_allclose(np.asarray(init["g__z"]), sol[1:], atol=1e-5)
    # the Laplace metric there is an ordinary matrix (the collapsed point's was 1e6-scale ill-conditioned)
    M = map_metric(b, ARRAYS, init, SamplerSettings(init="map", metric_init="laplace"), log=print)
    assert np.linalg.cond(M) < 1e4


def test_a_spread_inside_its_prior_is_left_alone():
    from myoglucose.inference.sample import flat_unconstrained, lift_collapsed_spreads, potential

    b = FunnelBuilder()
    pot = potential(b, ARRAYS)
    x = np.asarray(flat_unconstrained(b, ARRAYS, {"g__z_mu": np.array(0.1), "g__omega": np.array(0.05),
                                                  "g__z": Y_GROUPS.copy()}))
    y, val = lift_collapsed_spreads(b, x, pot, 100, log=print)
    assert val is None and np.array_equal(x, y)
    assert lift_collapsed_spreads(GaussBuilder(), np.zeros(3), potential(GaussBuilder(), ARRAYS), 10)[1] is None
