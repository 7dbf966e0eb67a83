"""``sampler.warmup_max_tree_depth``: the warmup's own tree-depth cap (toy model, seconds, no ODE). With a fixed small
step size every trajectory is long, so the cap shows in the leapfrog counts: at most 2**d - 1 per warmup iteration,
and the draws after warmup reach ``max_tree_depth``'s 2**D - 1 again."""

from __future__ import annotations

import types

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
import pytest

from myoglucose.inference.sample import SamplerSettings, make_kernel, run_nuts


class ToyBuilder:
    solver = types.SimpleNamespace(adjoint="reverse")

    def model(self, a, y=None):
        numpyro.sample("x", dist.Normal(0.0, 1.0).expand([2]).to_event(1))


ARRAYS = types.SimpleNamespace(values=jnp.zeros(1))
FIXED = dict(step_size=0.01, adapt_step_size=False, adapt_mass_matrix=False)  # every tree runs to its cap


def run(warmup_depth):
    s = SamplerSettings(chains=1, warmup=20, samples=20, init="median", seed=5, progress=False, max_tree_depth=6,
                        warmup_max_tree_depth=warmup_depth, chain_method="sequential", checkpoint_every=0)
    return run_nuts(ToyBuilder(), ARRAYS, s, None, [0], **FIXED)


def test_warmup_cap_limits_warmup_trees_only():
    capped, plain = run(2), run(None)
    print("warmup leapfrog steps: capped", int(capped["stats"]["_warmup_gradients"].sum()), "uncapped",
          int(plain["stats"]["_warmup_gradients"].sum()))
    print("steps per draw after warmup: capped", capped["stats"]["num_steps"].max(), "uncapped",
          plain["stats"]["num_steps"].max())
    assert int(capped["stats"]["_warmup_gradients"].sum()) <= 20 * 3
    assert int(plain["stats"]["_warmup_gradients"].sum()) > 20 * 3
    # after warmup both use max_tree_depth 6: trajectories of a step size 0.01 run into its 63-step cap
    assert capped["stats"]["num_steps"].max() == 63 and plain["stats"]["num_steps"].max() == 63


def test_kernel_gets_numpyros_pair():
    s = SamplerSettings(max_tree_depth=8, warmup_max_tree_depth=6)
    assert make_kernel(ToyBuilder(), s, None)._max_tree_depth == (6, 8)
    assert make_kernel(ToyBuilder(), SamplerSettings(max_tree_depth=8), None)._max_tree_depth == 8


@pytest.mark.parametrize("bad", [0, 16])
def test_out_of_range_is_refused(bad):
    with pytest.raises(ValueError, match="warmup_max_tree_depth"):
        SamplerSettings(warmup_max_tree_depth=bad)
