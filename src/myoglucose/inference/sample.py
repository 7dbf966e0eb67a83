"""NUTS: multi-start MAP initialisation, chains in parallel, posterior and predictive draws. No file I/O.

Chains in parallel (shared/research/inference.md section 0a): on jax 0.12 ``chain_method="parallel"`` (pmap) breaks inside
the implicit diffrax solver, so on CPU each chain runs in its own process (``processes``; results merged, identical
to a sequential run with the same seed) and on a GPU the chains are vectorised in one program (``vectorized``).
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

CHAIN_METHODS = ("auto", "processes", "vectorized", "sequential")


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    chains: int = 4
    warmup: int = 500
    samples: int = 500
    target_accept: float = 0.85
    dense_mass: bool = False
    max_tree_depth: int = 8
    init: str = "map"  # map | median
    map_starts: int = 4
    map_steps: int = 200
    chain_method: str = "auto"
    seed: int = 20261125
    progress: bool = True
    predictive_draws: int = 200  # draws for prior predictive

    def __post_init__(self):
        problems = []
        if self.chains < 1:
            problems.append(f"sampler.chains must be >= 1 (got {self.chains})")
        if self.warmup < 1 or self.samples < 1:
            problems.append(f"sampler.warmup and sampler.samples must be >= 1 (got {self.warmup}, {self.samples})")
        if not 0.5 <= self.target_accept < 1.0:
            problems.append(f"sampler.target_accept must be in [0.5, 1) (got {self.target_accept})")
        if not 1 <= self.max_tree_depth <= 15:
            problems.append(f"sampler.max_tree_depth must be in [1, 15] (got {self.max_tree_depth})")
        if self.init not in ("map", "median"):
            problems.append(f"sampler.init must be 'map' or 'median' (got {self.init!r})")
        if self.chain_method not in CHAIN_METHODS:
            problems.append(f"sampler.chain_method must be one of {CHAIN_METHODS} (got {self.chain_method!r})")
        if self.map_starts < 1:
            problems.append(f"sampler.map_starts must be >= 1 (got {self.map_starts})")
        if problems:
            raise ValueError("; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict | None) -> "SamplerSettings":
        d = dict(d or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"unknown sampler setting(s) {sorted(unknown)}")
        return cls(**d)

    def resolved_chain_method(self, backend: str) -> str:
        if self.chain_method != "auto":
            return self.chain_method
        if backend == "gpu":
            return "vectorized"
        return "processes" if self.chains > 1 and (os.cpu_count() or 1) > 1 else "sequential"


def find_map(builder, arrays, settings: SamplerSettings, key, log: Callable[[str], None] = print) -> dict:
    """Multi-start MAP on the unconstrained latent space (BFGS from prior draws). Returns constrained latents."""
    from jax.flatten_util import ravel_pytree
    from numpyro.infer.util import constrain_fn, initialize_model

    from numpyro.infer import init_to_median, init_to_sample

    fwd = builder.solver.adjoint == "forward"
    y = arrays.values
    best, best_val = None, np.inf
    keys = jax.random.split(key, settings.map_starts)
    info = initialize_model(keys[0], builder.model, model_args=(arrays,), model_kwargs={"y": y},
                            init_strategy=init_to_median(num_samples=5), forward_mode_differentiation=fwd)
    flat0, unravel = ravel_pytree(info.param_info.z)
    pot = info.potential_fn

    def f(x):
        return pot(unravel(x))

    vg = jax.jit(lambda x: (f(x), jax.jacfwd(f)(x)) if fwd else jax.value_and_grad(f)(x))
    starts = [flat0]
    for k in keys[1:]:
        z = initialize_model(k, builder.model, model_args=(arrays,), model_kwargs={"y": y},
                             init_strategy=init_to_sample, forward_mode_differentiation=fwd).param_info.z
        starts.append(ravel_pytree(z)[0])
    for i, x in enumerate(starts):
        x, val = _lbfgs(vg, x, settings.map_steps)
        log(f"MAP start {i + 1}/{len(starts)}: potential {val:.3f}")
        if np.isfinite(val) and val < best_val:
            best, best_val = x, val
    if best is None:
        raise RuntimeError("MAP initialisation failed: every start gave a non-finite log density")
    z = unravel(best)
    return constrain_fn(builder.model, (arrays,), {"y": y}, z)


def _lbfgs(vg, x, steps: int):
    """L-BFGS-B (scipy) on the jitted value-and-gradient; a non-finite value is treated as a wall (large value)."""
    from scipy.optimize import minimize

    def fun(z):
        v, g = vg(jnp.asarray(z))
        v, g = float(v), np.asarray(g, dtype=np.float64)
        if not np.isfinite(v) or not np.all(np.isfinite(g)):
            return 1e12, np.zeros_like(g)
        return v, g

    x0 = np.asarray(x, dtype=np.float64)
    res = minimize(fun, x0, jac=True, method="L-BFGS-B", options={"maxiter": int(steps), "maxfun": int(2 * steps)})
    val = float(res.fun)
    return jnp.asarray(res.x), (val if val < 1e12 else np.inf)


def run_nuts(builder, arrays, settings: SamplerSettings, init: dict | None, chain_ids: list[int],
             vectorized: bool = False) -> dict[str, Any]:
    """Run NUTS for the given chain ids (one MCMC per chain unless ``vectorized``). Returns numpy arrays
    ``samples[site] -> [chain, draw, ...]`` and ``stats[field] -> [chain, draw]``."""
    from numpyro.infer import MCMC, NUTS, init_to_median, init_to_value

    fwd = builder.solver.adjoint == "forward"
    strategy = init_to_value(values=init) if init is not None else init_to_median(num_samples=15)
    kernel = NUTS(builder.model, target_accept_prob=settings.target_accept, dense_mass=settings.dense_mass,
                  max_tree_depth=settings.max_tree_depth, init_strategy=strategy, forward_mode_differentiation=fwd)
    extra = ("diverging", "num_steps", "energy", "accept_prob", "potential_energy", "adapt_state.step_size")
    out_s: dict[str, list] = {}
    out_t: dict[str, list] = {}
    runs = [chain_ids] if vectorized else [[c] for c in chain_ids]
    for ids in runs:
        mcmc = MCMC(kernel, num_warmup=settings.warmup, num_samples=settings.samples, num_chains=len(ids),
                    chain_method="vectorized" if len(ids) > 1 else "sequential",
                    progress_bar=settings.progress, jit_model_args=False)
        keys = jnp.stack([jax.random.fold_in(jax.random.PRNGKey(settings.seed), c) for c in ids])
        t0 = time.perf_counter()
        print(f"[{time.strftime('%H:%M:%S')}] chain(s) {ids}: compiling and sampling", flush=True,
              file=__import__("sys").stderr)
        mcmc.run(keys if len(ids) > 1 else keys[0], arrays, y=arrays.values, extra_fields=extra)
        samples = jax.block_until_ready(mcmc.get_samples(group_by_chain=True))
        stats = jax.block_until_ready(mcmc.get_extra_fields(group_by_chain=True))
        elapsed = time.perf_counter() - t0
        div = int(np.asarray(stats["diverging"]).sum())
        steps = int(np.asarray(stats["num_steps"]).sum())
        print(f"[{time.strftime('%H:%M:%S')}] chain(s) {ids}: {settings.warmup} warmup + {settings.samples} draws in "
              f"{elapsed:.1f} s (incl. compile), {steps} gradient evaluations, {div} divergences", flush=True,
              file=__import__("sys").stderr)
        for k, v in samples.items():
            out_s.setdefault(k, []).append(np.asarray(v))
        for k, v in stats.items():
            out_t.setdefault(k, []).append(np.asarray(v))
        out_t.setdefault("_elapsed", []).append(np.full((len(ids),), elapsed))
    return {"samples": {k: np.concatenate(v, axis=0) for k, v in out_s.items()},
            "stats": {k: np.concatenate(v, axis=0) for k, v in out_t.items()}}


def pointwise_draws(builder, arrays, latents: dict, key, batch: int = 50) -> dict[str, np.ndarray]:
    """Log likelihood, replicated data and failed solves for every draw in ``latents`` (leading axis = draws)."""
    n = next(iter(latents.values())).shape[0]
    fn = jax.jit(jax.vmap(lambda lat, k: builder.pointwise(lat, arrays, k)))
    lls, reps, fails = [], [], []
    keys = jax.random.split(key, n)
    for s in range(0, n, batch):
        e = min(n, s + batch)
        chunk = {k: v[s:e] for k, v in latents.items()}
        kk = keys[s:e]
        if e - s < batch:  # pad to one compiled shape
            pad = batch - (e - s)
            chunk = {k: jnp.concatenate([v, jnp.repeat(v[-1:], pad, axis=0)]) for k, v in chunk.items()}
            kk = jnp.concatenate([kk, jnp.repeat(kk[-1:], pad, axis=0)])
        ll, rep, fail = jax.block_until_ready(fn(chunk, kk))
        lls.append(np.asarray(ll)[: e - s])
        reps.append(np.asarray(rep)[: e - s])
        fails.append(np.asarray(fail)[: e - s])
    return {"log_likelihood": np.concatenate(lls), "replicate": np.concatenate(reps),
            "ode_failed": np.concatenate(fails)}
