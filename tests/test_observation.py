"""Observation models: known answers for the normal, proportional and log-normal noise of ObservationNoise."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from myoglucose.inference.numpyro_model import ObservationNoise


def test_log_prob_matches_scipy():
    mu = jnp.array([90.0, 10.0, 20.0])
    scale = jnp.array([5.0, 1.5, 0.3])
    kind = jnp.array([0, 1, 2])
    y = jnp.array([95.0, 9.0, 25.0])
    lp = np.asarray(ObservationNoise(mu, scale, kind).log_prob(y))
    assert lp[0] == pytest.approx(stats.norm(90, 5).logpdf(95), rel=1e-12)
    assert lp[1] == pytest.approx(stats.norm(10, 1.5).logpdf(9), rel=1e-12)
    assert lp[2] == pytest.approx(stats.lognorm(s=0.3, scale=20.0).logpdf(25.0), rel=1e-12)


def test_lognormal_rejects_non_positive_values():
    d = ObservationNoise(jnp.array([5.0]), jnp.array([0.2]), jnp.array([2]))
    assert np.isneginf(np.asarray(d.log_prob(jnp.array([0.0])))[0])


def test_sampling_moments():
    n = 200_000
    d = ObservationNoise(jnp.full(n, 50.0), jnp.full(n, 0.1), jnp.full(n, 2))
    x = np.asarray(d.sample(jax.random.PRNGKey(0)))
    assert np.median(x) == pytest.approx(50.0, rel=5e-3)
    assert np.std(np.log(x)) == pytest.approx(0.1, rel=1e-2)
    d = ObservationNoise(jnp.full(n, 3.0), jnp.full(n, 0.5), jnp.full(n, 0))
    x = np.asarray(d.sample(jax.random.PRNGKey(1)))
    assert x.mean() == pytest.approx(3.0, abs=5e-3) and x.std() == pytest.approx(0.5, rel=1e-2)
