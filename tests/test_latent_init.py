"""Start-up without eager model runs: the latent model (``sample.latent_model``) gives NumPyro's own starting points,
and ``_LatentInitNUTS`` is NumPyro's NUTS on the same model with the same compiled step. The core Katz 2000 clamp,
one condition (the eager reference path solves the ODE op by op: seconds)."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def problem():
    from myoglucose.data.prepare import prepare_dataset
    from myoglucose.inference.arrays import build_fit_data
    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.model.simulate import SolverSettings
    from myoglucose.model.spec import load_model

    spec = load_model(ROOT / "models/core")
    t = prepare_dataset(ROOT / "data/katz2000_clamp", ROOT)
    first = t.conditions["condition_id"].iloc[0]
    conds = t.conditions[t.conditions["condition_id"] == first].reset_index(drop=True)
    meas = t.measurements[t.measurements["condition_id"] == first].reset_index(drop=True)
    data = build_fit_data(meas, conds, ROOT, set(spec.observables))
    builder = ModelBuilder(spec, data, SolverSettings.from_dict({"name": "Tsit5", "rtol": 1e-6, "atol": 1e-8}))
    return builder, data.arrays


def test_latent_model_gives_numpyros_starting_points(problem):
    """``initialize_model`` on the latent model and on the whole model: the same unconstrained start, bit for bit, for
    the median and for prior draws (the seed handler hands out the same keys: the latent sites come first)."""
    from numpyro.infer import init_to_median, init_to_sample
    from numpyro.infer.util import initialize_model

    from myoglucose.inference.sample import _init_z, latent_model

    builder, arrays = problem
    for i, strategy in enumerate([init_to_median(num_samples=15), init_to_sample, init_to_sample]):
        key = jax.random.PRNGKey(100 + i)
        fast = ravel_pytree(_init_z(builder, arrays, key, strategy))[0]
        full = ravel_pytree(initialize_model(key, builder.model, model_args=(arrays,),
                                             model_kwargs={"y": arrays.values},
                                             init_strategy=strategy).param_info.z)[0]
        print(strategy, np.asarray(fast))
        assert np.array_equal(np.asarray(fast), np.asarray(full))
    assert set(latent_model(builder).__code__.co_names) == {"sample_latents"}


def test_latent_init_nuts_is_numpyros_nuts(problem):
    """The same start as stock NUTS (the point exactly; potential and gradient within solver rounding, the stock ones
    being evaluated eagerly), and from one state both kernels' compiled steps give the same next states: the same
    computation, ours with the potential behind one shared jit boundary (``potential_energy_fn``), which XLA may
    round differently in the last bits, so equal to 1e-7 relative, not bit for bit (on an AMD EPYC 2-core machine,
    session 20, the two differed by 3.6e-9 relative after five steps: the adaptive ODE steps amplify last-bit
    differences; an error in the kernel would differ by far more)."""
    from numpyro.infer import NUTS

    from myoglucose.inference.sample import SamplerSettings, _latent_init_nuts, make_kernel

    builder, arrays = problem
    settings = SamplerSettings(max_tree_depth=4)
    args, kwargs = (arrays,), {"y": arrays.values}
    ours = make_kernel(builder, settings, None)
    assert isinstance(ours, _latent_init_nuts())
    stock = NUTS(builder.model, target_accept_prob=settings.target_accept, dense_mass=settings.dense_mass,
                 max_tree_depth=settings.max_tree_depth, init_strategy=ours._init_strategy)
    key = jax.random.PRNGKey(7)
    s_ours = ours.init(key, 10, None, model_args=args, model_kwargs=kwargs)
    s_stock = stock.init(key, 10, None, model_args=args, model_kwargs=kwargs)
    z1, z0 = ravel_pytree(s_ours.z)[0], ravel_pytree(s_stock.z)[0]
    assert np.array_equal(np.asarray(z1), np.asarray(z0))
    print("potential: ours", float(s_ours.potential_energy), "stock (eager)", float(s_stock.potential_energy))
    np.testing.assert_allclose(float(s_ours.potential_energy), float(s_stock.potential_energy), rtol=1e-8)
    np.testing.assert_allclose(ravel_pytree(s_ours.z_grad)[0], ravel_pytree(s_stock.z_grad)[0], rtol=1e-5, atol=1e-6)
    step_ours = jax.jit(lambda s: ours.sample(s, args, kwargs))
    step_stock = jax.jit(lambda s: stock.sample(s, args, kwargs))
    a = b = s_stock
    for _ in range(5):
        a, b = step_ours(a), step_stock(b)
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-7, atol=1e-10)
    assert int(a.i) == 5 and not np.array_equal(np.asarray(ravel_pytree(a.z)[0]), np.asarray(z0))  # it moved
    # the constrained values of a state: the latent model's transforms are the whole model's
    c_ours = ours.get_constrain_fn(args, kwargs, return_deterministic=False)(a.z)
    c_stock = stock.get_constrain_fn(args, kwargs, return_deterministic=False)(a.z)
    assert set(c_ours) == set(c_stock)
    for k in c_ours:
        assert np.array_equal(np.asarray(c_ours[k]), np.asarray(c_stock[k])), k


def test_a_start_where_the_model_fails_is_refused(problem):
    """A start where the ODE solve fails (a rate 300 prior sd out) has an infinite potential: refused with a clear
    error, as NumPyro refuses it, instead of a chain that can never move."""
    from numpyro.infer.util import constrain_fn

    from myoglucose.inference.sample import SamplerSettings, latent_model, make_kernel

    builder, arrays = problem
    lat = {k: jnp.zeros(v.shape[1:]) + (0.5 if k.startswith("sigma_") or k.endswith("__omega") else 0.0)
           for k, v in builder.prior_latents(jax.random.PRNGKey(0), 1).items()}
    lat["k_ins_int__z"] = jnp.asarray(300.0)
    start = constrain_fn(latent_model(builder), (arrays,), {"y": arrays.values}, lat)
    kernel = make_kernel(builder, SamplerSettings(), {k: np.asarray(v) for k, v in start.items()})
    with pytest.raises(RuntimeError, match="Cannot find valid initial parameters"):
        kernel.init(jax.random.PRNGKey(0), 10, None, model_args=(arrays,), model_kwargs={"y": arrays.values})


def test_vectorised_chains_start_from_the_same_point(problem):
    """Chains vectorised in one program (the GPU path) go through the same initialisation with a batched key: every
    chain starts at the given point, and sampling runs."""
    from numpyro.infer.util import constrain_fn

    from myoglucose.inference.sample import SamplerSettings, latent_model, run_nuts

    builder, arrays = problem
    lat = {k: jnp.zeros(v.shape[1:]) + (0.5 if k.startswith("sigma_") or k.endswith("__omega") else 0.0)
           for k, v in builder.prior_latents(jax.random.PRNGKey(0), 1).items()}
    start = {k: np.asarray(v) for k, v in
             constrain_fn(latent_model(builder), (arrays,), {"y": arrays.values}, lat).items()}
    settings = SamplerSettings(chains=2, warmup=3, samples=2, max_tree_depth=3, progress=False, checkpoint_every=0)
    out = run_nuts(builder, arrays, settings, start, [0, 1], vectorized=True)
    for k, v in out["samples"].items():
        assert v.shape[:2] == (2, 2) and np.all(np.isfinite(v)), k
    assert np.all(np.isfinite(out["stats"]["potential_energy"]))
