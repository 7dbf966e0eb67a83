"""The myoglucose (JAX) side of the peer comparison: the fit problem, NumPyro's potential energy and the predicted
means at given latent points, in the unconstrained parameterisation that the Stan program shares."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from myoglucose.inference.numpyro_model import GROUP_SPREAD_PRIOR

ROOT = Path(__file__).resolve().parents[2]


def configure(cache_dir: str | None = None):
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    from myoglucose import runtime

    return runtime.configure("cpu", cache_dir)


def load(tidy_dir: str, model_dir: str, solver: dict, sampler: dict | None = None, cache_dir: str | None = None):
    """(job, spec, data, builder) exactly as ``myoglucose fit`` builds them."""
    from myoglucose.inference.fit import FitJob, load_problem

    job = FitJob(tidy_dir=str(tidy_dir), model_dir=str(model_dir), repo_root=str(ROOT), solver=dict(solver),
                 sampler=dict(sampler or {}), device="cpu", cache_dir=cache_dir)
    spec, data, builder = load_problem(job)
    return job, spec, data, builder


def with_solver(spec, data, solver: dict):
    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.model.simulate import SolverSettings

    return ModelBuilder(spec, data, SolverSettings.from_dict(solver))


def median_latents(builder) -> dict:
    """Prior medians of every latent site (what ``init: median`` starts from): z = 0, half-normal medians."""
    G = len(builder.groups)
    lat = {}
    for r in builder.estimated:
        if r.id in builder.group_level():
            lat[f"{r.id}__z_mu"] = np.float64(0.0)
            lat[f"{r.id}__omega"] = np.float64(GROUP_SPREAD_PRIOR * r.prior_scale * 0.6744897501960817)
            lat[f"{r.id}__z"] = np.zeros(G)
        else:
            lat[f"{r.id}__z"] = np.float64(0.0)
    for n, s in zip(dict.fromkeys(builder.noise_names), builder._noise_prior_unique()):
        lat[n] = np.float64(s * 0.6744897501960817)
    return lat


def random_latents(builder, seed: int, spread: float = 0.7) -> dict:
    """A reproducible point away from the medians (standard normals scaled by ``spread``)."""
    rng = np.random.default_rng(seed)
    lat = median_latents(builder)
    for k, v in lat.items():
        if k.endswith(("__z", "__z_mu")):
            lat[k] = np.asarray(v) + spread * rng.standard_normal(np.shape(v))
        else:  # omega, sigma: scale the median by a log-normal factor
            lat[k] = np.asarray(v) * np.exp(0.5 * spread * rng.standard_normal())
    return lat


class Density:
    """NumPyro's potential energy U(u) = -log p(u | y) of a builder on the unconstrained latents, jitted."""

    def __init__(self, builder):
        import jax
        from numpyro.infer.util import potential_energy, unconstrain_fn

        self.builder = builder
        a = builder.data.arrays
        self._args, self._kwargs = (a,), {"y": a.values}
        self._unc = lambda lat: unconstrain_fn(builder.model, self._args, self._kwargs, lat)
        pot = lambda u: potential_energy(builder.model, self._args, self._kwargs, u)  # noqa: E731
        self.potential = jax.jit(pot)
        self.value_and_grad = jax.jit(jax.value_and_grad(pot))

        def means(lat):
            pop, grp, _ = builder.natural(lat)
            p = builder.condition_params(pop, grp, a.cond_group)
            mu, ok, steps = builder.predict_means(p, a)
            return mu, ok, steps

        self.means = jax.jit(means)

    def unconstrain(self, lat: dict) -> dict:
        import jax.numpy as jnp

        return self._unc({k: jnp.asarray(v) for k, v in lat.items()})


def stan_order(d: dict, meta: dict) -> list[str]:
    """Names of the Stan program's unconstrained coordinates, in Stan's order (z_grp column-major)."""
    names = [f"{p}__z" for p in meta["pop"]] + [f"{p}__z_mu" for p in meta["grp"]]
    names += [f"{p}__omega" for p in meta["grp"]]
    names += [f"{p}__z[{g}]" for g in range(d["G"]) for p in meta["grp"]]
    names += list(meta["noise"])
    return names


def flat_in_stan_order(tree: dict, d: dict, meta: dict) -> np.ndarray:
    """A dict of NumPyro unconstrained sites (or their gradients) -> vector in the Stan program's order."""
    out = [float(np.asarray(tree[f"{p}__z"])) for p in meta["pop"]]
    out += [float(np.asarray(tree[f"{p}__z_mu"])) for p in meta["grp"]]
    out += [float(np.asarray(tree[f"{p}__omega"])) for p in meta["grp"]]
    out += [float(np.asarray(tree[f"{p}__z"])[g]) for g in range(d["G"]) for p in meta["grp"]]
    out += [float(np.asarray(tree[n])) for n in meta["noise"]]
    return np.asarray(out)


def time_call(f, *args, repeats: int = 10) -> dict:
    import jax

    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        ts.append(time.perf_counter() - t0)
    return {"first_s": first, "median_s": float(np.median(ts)), "min_s": float(np.min(ts)), "repeats": repeats}
