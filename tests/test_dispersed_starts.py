"""Over-dispersed chain starts (``sampler.init: dispersed``): each chain starts at the local optimum reached from its
own prior draw, so that chains can start in separate modes and R-hat can see a multimodal posterior that chains
started at one shared MAP never leave. A toy model with two well-separated modes (seconds, no ODE)."""

from __future__ import annotations

import types

import jax.numpy as jnp
import jax
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from myoglucose.inference.sample import (SamplerSettings, _optimise_starts, find_chain_starts, find_map, potential,
                                         run_nuts, start_points)

MODES = (-3.0, 3.0)
SD = 0.3


class TwoModes:
    """x ~ Normal(0, 3) a priori; the likelihood is an equal mixture of N(-3, 0.3) and N(3, 0.3) in x, so the
    posterior has two modes of equal mass with essentially no mass between them."""

    solver = types.SimpleNamespace(adjoint="reverse")

    def model(self, a, y=None):
        x = numpyro.sample("x", dist.Normal(0.0, 3.0))
        comp = jnp.stack([dist.Normal(m, SD).log_prob(x) for m in MODES])
        numpyro.factor("lik", jax.scipy.special.logsumexp(comp) + jnp.log(0.5))


ARRAYS = types.SimpleNamespace(values=jnp.zeros(1))


def _rhat(x: np.ndarray) -> float:
    """Split R-hat (Gelman et al. 2013) of draws [chain, draw]; enough to tell mixed chains from separated ones."""
    c, n = x.shape
    h = n // 2
    s = np.concatenate([x[:, :h], x[:, h:2 * h]])
    w = s.var(axis=1, ddof=1).mean()
    b = h * s.mean(axis=1).var(ddof=1)
    return float(np.sqrt(((h - 1) / h * w + b / h) / w))


def test_settings_accept_dispersed_and_take_the_laplace_metric_there():
    s = SamplerSettings(init="dispersed", metric_init="laplace")
    assert s.laplace_metric
    with pytest.raises(ValueError, match="sampler.init must be one of"):
        SamplerSettings(init="random")


def test_each_chain_starts_at_its_own_local_optimum():
    settings = SamplerSettings(chains=6, init="dispersed", map_steps=100, seed=3)
    msgs = []
    starts, pots = find_chain_starts(TwoModes(), ARRAYS, settings, jax.random.PRNGKey(11), log=msgs.append)
    x = np.array([float(s["x"]) for s in starts])
    print("chain starts", x, "potentials", pots)
    assert len(starts) == 6 and len(pots) == 6
    # every start is at one of the two optima (the prior pulls them a little towards 0)
    for v in x:
        assert min(abs(v - m) for m in MODES) < 0.1
    # both modes are represented (prior draws on both sides of 0), and their densities are the same
    assert (x < 0).any() and (x > 0).any()
    assert max(pots) - min(pots) < 1e-6
    assert any(m.startswith("chain starts: potentials") for m in msgs)
    # the shared MAP is one point: every chain would start in the same mode
    m = float(find_map(TwoModes(), ARRAYS, SamplerSettings(map_starts=6, map_steps=100), jax.random.PRNGKey(11),
                       log=print)["x"])
    assert min(abs(m - mode) for mode in MODES) < 0.1


@pytest.mark.parametrize("vectorized", [False, True])
def test_rhat_sees_the_modes_only_from_dispersed_starts(vectorized):
    """Chains started in their own modes stay there (the modes are 20 sd apart), so R-hat is far above 1; started at
    the one MAP, every chain samples one mode and R-hat passes: the failure a shared start hides."""
    settings = SamplerSettings(chains=4, warmup=100, samples=200, init="dispersed", map_steps=100, seed=3,
                               progress=False, checkpoint_every=0)
    starts, _ = find_chain_starts(TwoModes(), ARRAYS, settings, jax.random.PRNGKey(11), log=print)
    side = np.sign([float(s["x"]) for s in starts])
    out = run_nuts(TwoModes(), ARRAYS, settings, starts, [0, 1, 2, 3], vectorized=vectorized)
    x = np.asarray(out["samples"]["x"])
    assert x.shape == (4, 200)
    for c in range(4):  # each chain sampled the mode it started in
        assert np.all(np.sign(x[c]) == side[c])
        np.testing.assert_allclose(x[c].mean(), side[c] * 3.0 * 9 / (9 + SD**2), atol=0.1)
    r_dispersed = _rhat(x)
    shared = run_nuts(TwoModes(), ARRAYS, settings, starts[0], [0, 1, 2, 3], vectorized=vectorized)
    r_shared = _rhat(np.asarray(shared["samples"]["x"]))
    print(f"R-hat: dispersed starts {r_dispersed:.2f}, one shared start {r_shared:.3f}")
    assert r_dispersed > 2.0
    assert r_shared < 1.05


def test_start_points_are_overdispersed_prior_draws_around_the_median():
    """Start 0 is the prior median; the others are median + map_spread x (prior draw - median), so with the same key
    spread 3 puts every start exactly 3 times as far from the median as spread 1 (plain prior draws, sd 3 here)."""
    key = jax.random.PRNGKey(5)
    one = start_points(TwoModes(), ARRAYS, SamplerSettings(map_spread=1.0), key, 400, True)
    three = start_points(TwoModes(), ARRAYS, SamplerSettings(map_spread=3.0), key, 400, True)
    c = float(one[0][0])
    assert float(three[0][0]) == c and abs(c) < 1.0  # the median of the N(0, 3) prior, estimated from 15 draws
    d1 = np.array([float(x[0]) - c for x in one[1:]])
    d3 = np.array([float(x[0]) - c for x in three[1:]])
    np.testing.assert_allclose(d3, 3.0 * d1, rtol=1e-12, atol=1e-12)
    print("sd of plain starts", d1.std(), "of spread-3 starts", d3.std())
    assert 0.85 < d1.std() / 3.0 < 1.15
    with pytest.raises(ValueError, match="map_spread"):
        SamplerSettings(map_spread=0.0)


class TailOptimum:
    """x ~ Normal(0, 1) a priori; the likelihood has a broad shallow mode at x = 0.5 and a narrow deep one at
    x = -3.5 (3.5 prior sd out, where the joint density is highest): the situation of full Sorensen 1978's akt_ec50."""

    solver = types.SimpleNamespace(adjoint="reverse")

    def model(self, a, y=None):
        x = numpyro.sample("x", dist.Normal(0.0, 1.0))
        comp = jnp.stack([jnp.log(0.02) + dist.Normal(0.5, 0.7).log_prob(x),
                          jnp.log(0.98) + dist.Normal(-3.5, 0.15).log_prob(x)])
        numpyro.factor("lik", 8.0 * jax.scipy.special.logsumexp(comp))


def test_overdispersed_starts_reach_an_optimum_in_the_prior_tail():
    """From plain prior draws few optimisations reach the deep optimum 3.5 prior sd out; from spread 3, many do, and
    the MAP is that optimum."""
    pot = potential(TailOptimum(), ARRAYS)
    found = {}
    for spread in (1.0, 3.0):
        settings = SamplerSettings(map_spread=spread, map_steps=100)
        runs = _optimise_starts(TailOptimum(), ARRAYS, settings, jax.random.PRNGKey(2), 60, pot, True,
                                lambda m: None, "start")
        xs = np.array([float(x[0]) for x, _ in runs])
        found[spread] = int(np.sum(np.abs(xs + 3.5) < 0.3))
    print("starts reaching the deep optimum: spread 1", found[1.0], "of 60, spread 3", found[3.0], "of 60")
    assert found[3.0] >= 3 and found[3.0] > 2 * found[1.0]
    m = float(find_map(TailOptimum(), ARRAYS, SamplerSettings(map_starts=8, map_steps=100, map_spread=3.0),
                       jax.random.PRNGKey(2), log=lambda m: None)["x"])
    assert abs(m + 3.5) < 0.3
