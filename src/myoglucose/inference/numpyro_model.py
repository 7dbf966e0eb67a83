"""The NumPyro model, built from the parameter and observable tables.

One function serves prior predictive (``y=None``), fitting (``y`` = data) and posterior predictive (``Predictive``).

Priors live on the declared ``parameterScale``: log-normal parameters are sampled as standard normals ``z`` with
``log theta = log(priorLoc) + priorScale * z``; normal (lin-scale) parameters as ``theta = priorLoc + priorScale * z``.
Group-level parameters are hierarchical and non-centred: a population location ``z_mu``, a between-group spread
``omega ~ HalfNormal(priorScale / 2)`` and group offsets ``z_g``: ``log theta_g = log(loc) + s * z_mu + omega * z_g``.

Observation model per observable (``noiseDistribution``): ``normal`` (additive sd ``sigma``), ``proportional``
(sd ``sigma * |mu| + floor``) or ``lognormal`` (sd of log ``sigma``). A known measurement error of a value (the sem
of a group mean, or sd/sqrt(n)) adds in quadrature to the estimated ``sigma``, which then stands for model misfit
and between-study variation.

Failed ODE solves: the trajectory is sanitised before the likelihood and ``factor('ode_ok', -inf)`` rejects the
proposal, so the potential is +inf with a finite gradient (never a crash).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ..model.simulate import SolverSettings, observables, solve
from ..model.spec import ModelSpec
from .arrays import FitArrays, FitData

NOISE_CODE = {"normal": 0, "proportional": 1, "lognormal": 2}
PROPORTIONAL_FLOOR = 0.1  # [observable unit] sd floor of proportional noise near zero predictions


class ObservationNoise(dist.Distribution):
    """Per-row noise model: normal (0), proportional normal (1) or log-normal (2) around ``mu`` with sd ``scale``."""

    arg_constraints = {"mu": constraints.real, "scale": constraints.positive}
    support = constraints.real
    reparametrized_params = ["mu", "scale"]

    def __init__(self, mu, scale, kind, validate_args=None):
        self.mu, self.scale, self.kind = mu, scale, kind
        super().__init__(batch_shape=jnp.shape(mu), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        eps = jax.random.normal(key, sample_shape + self.batch_shape)
        logn = jnp.exp(jnp.log(jnp.maximum(self.mu, 1e-12)) + self.scale * eps)
        return jnp.where(self.kind == 2, logn, self.mu + self.scale * eps)

    def log_prob(self, value):
        normal = dist.Normal(self.mu, self.scale).log_prob(value)
        safe_v = jnp.where(value > 0, value, 1.0)
        logn = dist.LogNormal(jnp.log(jnp.maximum(self.mu, 1e-12)), self.scale).log_prob(safe_v)
        logn = jnp.where(value > 0, logn, -jnp.inf)
        return jnp.where(self.kind == 2, logn, normal)


class ModelBuilder:
    """Holds the static structure (which parameters are estimated, at which level) for a spec and a dataset."""

    def __init__(self, spec: ModelSpec, data: FitData, solver: SolverSettings):
        self.spec, self.data, self.solver = spec, data, solver
        self.estimated = [r for r in spec.estimated]
        self.fixed = {k: jnp.asarray(r.nominal) for k, r in spec.params.items() if not r.estimate}
        self.groups = data.groups
        obs_rows = [spec.observables[o] for o in data.observables]
        self.noise_kind = jnp.asarray([NOISE_CODE[r.noise] for r in obs_rows])
        self.noise_names = [r.noise_parameter for r in obs_rows]
        self.noise_prior = [spec.noise_priors[n] for n in self.noise_names]

    # -- parameters -------------------------------------------------------------------------------------------
    def _transform(self, r, z):
        if r.scale == "log" or r.prior == "lognormal":
            return jnp.exp(jnp.log(r.loc) + r.prior_scale * z)
        return r.loc + r.prior_scale * z

    def sample_latents(self) -> dict:
        """Sample the latent (non-centred) sites: standard-normal ``z``, half-normal spreads and noise scales."""
        lat = {}
        G = len(self.groups)
        for r in self.estimated:
            if r.level == "group" and G > 1:
                lat[f"{r.id}__z_mu"] = numpyro.sample(f"{r.id}__z_mu", dist.Normal(0.0, 1.0))
                lat[f"{r.id}__omega"] = numpyro.sample(f"{r.id}__omega", dist.HalfNormal(0.5 * r.prior_scale))
                with numpyro.plate("group", G):
                    lat[f"{r.id}__z"] = numpyro.sample(f"{r.id}__z", dist.Normal(0.0, 1.0))
            else:
                lat[f"{r.id}__z"] = numpyro.sample(f"{r.id}__z", dist.Normal(0.0, 1.0))
        for n, s in zip(dict.fromkeys(self.noise_names), self._noise_prior_unique()):
            lat[n] = numpyro.sample(n, dist.HalfNormal(s))
        return lat

    def _noise_prior_unique(self):
        seen = {}
        for n, s in zip(self.noise_names, self.noise_prior):
            seen.setdefault(n, s)
        return list(seen.values())

    def natural(self, lat: dict) -> tuple[dict, dict, dict]:
        """Latents -> (population parameters, group parameters [G], noise scales) on the natural scale."""
        pop, grp = {}, {}
        G = len(self.groups)
        for r in self.estimated:
            log = r.prior == "lognormal"
            if r.level == "group" and G > 1:
                eta = r.prior_scale * lat[f"{r.id}__z_mu"] + lat[f"{r.id}__omega"] * lat[f"{r.id}__z"]
                grp[r.id] = jnp.exp(jnp.log(r.loc) + eta) if log else r.loc + eta
            else:
                eta = r.prior_scale * lat[f"{r.id}__z"]
                pop[r.id] = jnp.exp(jnp.log(r.loc) + eta) if log else r.loc + eta
        noise = {n: lat[n] for n in dict.fromkeys(self.noise_names)}
        return pop, grp, noise

    def prior_latents(self, key, n: int) -> dict:
        """``n`` independent prior draws of every latent site (numpy-free, jittable)."""
        keys = iter(jax.random.split(key, 4 * len(self.estimated) + len(self.noise_names) + 1))
        G = len(self.groups)
        lat = {}
        for r in self.estimated:
            if r.level == "group" and G > 1:
                lat[f"{r.id}__z_mu"] = jax.random.normal(next(keys), (n,))
                lat[f"{r.id}__omega"] = 0.5 * r.prior_scale * jnp.abs(jax.random.normal(next(keys), (n,)))
                lat[f"{r.id}__z"] = jax.random.normal(next(keys), (n, G))
            else:
                lat[f"{r.id}__z"] = jax.random.normal(next(keys), (n,))
        for name, s in zip(dict.fromkeys(self.noise_names), self._noise_prior_unique()):
            lat[name] = s * jnp.abs(jax.random.normal(next(keys), (n,)))
        return lat

    def condition_params(self, pop: dict, grp: dict, cond_group) -> dict:
        C = cond_group.shape[0]
        p = {k: jnp.broadcast_to(v, (C,)) for k, v in self.fixed.items()}
        p.update({k: jnp.broadcast_to(v, (C,)) for k, v in pop.items()})
        p.update({k: v[cond_group] for k, v in grp.items()})
        return p

    # -- simulation -------------------------------------------------------------------------------------------
    def predict_means(self, p: dict, a: FitArrays):
        """Predicted observable means at every measurement, per-condition solve success, solver steps."""
        settings = self.solver
        names = self.data.observables

        active = self.data.active

        def one(pc, u, ts, t1):
            sol = solve(pc, u, ts, t1, settings, active)
            obs = observables(pc, u, ts, sol)
            return jnp.stack([obs[o] for o in names]), sol.ok, sol.num_steps

        stack, ok, steps = jax.vmap(one)(p, a.inputs, a.ts, a.t1)  # [C, O, T], [C], [C]
        mu = stack[a.m_cond, a.m_obs, a.m_time]
        return mu, ok, steps

    # -- the model --------------------------------------------------------------------------------------------
    def model(self, a: FitArrays, y=None):
        lat = self.sample_latents()
        pop, grp, noise = self.natural(lat)
        for k, v in {**pop, **grp}.items():
            numpyro.deterministic(k, v)
        dist_, ok = self.observation(lat, a)
        numpyro.deterministic("ode_failed", jnp.sum(~ok))
        numpyro.factor("ode_ok", jnp.where(jnp.all(ok), 0.0, -jnp.inf))
        with numpyro.plate("measurement", a.values.shape[0]):
            numpyro.sample("obs", dist_, obs=y)

    def observation(self, lat: dict, a: FitArrays):
        """The observation distribution of every measurement for latents ``lat`` and per-condition solve success."""
        pop, grp, noise = self.natural(lat)
        sigmas = jnp.stack([noise[n] for n in self.noise_names])
        p = self.condition_params(pop, grp, a.cond_group)
        mu, ok, _ = self.predict_means(p, a)
        all_ok = jnp.all(ok)
        mu = jnp.where(all_ok, mu, jnp.where(a.values > 0, a.values, 1.0))  # sanitised: finite, gradient-safe
        kind = self.noise_kind[a.m_obs]
        sig = sigmas[a.m_obs]
        known = a.known_sd
        scale_normal = jnp.sqrt(sig**2 + known**2)
        scale_prop = jnp.sqrt((sig * jnp.abs(mu)) ** 2 + PROPORTIONAL_FLOOR**2 + known**2)
        scale_log = jnp.sqrt(sig**2 + (known / jnp.maximum(jnp.abs(mu), 1e-6)) ** 2)
        scale = jnp.where(kind == 0, scale_normal, jnp.where(kind == 1, scale_prop, scale_log))
        return ObservationNoise(mu, scale, kind), ok

    def pointwise(self, lat: dict, a: FitArrays, key):
        """Per-draw log likelihood of every measurement, a replicated data set, and solve success (one draw)."""
        d, ok = self.observation(lat, a)
        ll = jnp.where(jnp.all(ok), d.log_prob(a.values), -jnp.inf)
        return ll, d.sample(key), jnp.sum(~ok)

    def parameter_sites(self) -> list[str]:
        return [r.id for r in self.estimated] + list(dict.fromkeys(self.noise_names))

    def group_level(self) -> list[str]:
        return [r.id for r in self.estimated if r.level == "group" and len(self.groups) > 1]


def nominal_condition_params(spec: ModelSpec, C: int) -> dict:
    return {k: jnp.broadcast_to(jnp.asarray(r.nominal), (C,)) for k, r in spec.params.items()}


def numpy_tree(x):
    return jax.tree_util.tree_map(lambda a: np.asarray(a), x)
