"""The NumPyro model, built from the parameter and observable tables.

One function serves prior predictive (``y=None``), fitting (``y`` = data) and posterior predictive (``Predictive``).

Priors live on the declared ``parameterScale``: log-normal parameters are sampled as standard normals ``z`` with
``log theta = log(priorLoc) + priorScale * z``; normal (lin-scale) parameters as ``theta = priorLoc + priorScale * z``.
Group-level parameters are hierarchical, by default non-centred: a population location ``z_mu``, a between-group
spread ``omega ~ HalfNormal(priorScale)`` and group offsets ``z_g``: ``log theta_g = log(loc) + s * z_mu + omega *
z_g``. A parameter with ``hierarchy: centered`` (parameters.tsv) samples its group values directly,
``z_g ~ Normal(z_mu, omega / s)`` and ``log theta_g = log(loc) + s * z_g``: the same prior, a different geometry, right
for values the data pin in every group (basal glucose).
Subject-level parameters (``level: subject``) add a third, non-centred level when the data hold more than one subject
in a group (a synthetic cohort, individual clamp curves): a within-group spread ``tau ~ HalfNormal(priorScale / 2)``
and subject offsets ``z_s``: ``log theta_s = log theta_g(s) + tau * z_s``. With one subject per group (group means)
they are group-level parameters. The posterior keeps the group's typical value under the parameter's name and the
subject values as ``<id>_subject``.

Observation model per observable (``noiseDistribution``): ``normal`` (additive sd ``sigma``), ``proportional``
(sd ``sigma * |mu| + floor``) or ``lognormal`` (sd of log ``sigma``). A known measurement error of a value (the sem
of a group mean, or sd/sqrt(n)) adds in quadrature to the estimated ``sigma``, which then stands for model misfit
and between-study variation.

Failed ODE solves: the trajectory is sanitised before the likelihood and ``factor('ode_ok', -inf)`` rejects the
proposal, so the potential is +inf with a finite gradient (never a crash).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro.distributions import constraints

from ..model.equations import INSULIN_KINETIC_PARAMS
from ..model.simulate import SolverSettings, choose_adjoint, observables, solve
from ..model.spec import ModelSpec
from .arrays import FitArrays, FitData

NOISE_CODE = {"normal": 0, "proportional": 1, "lognormal": 2}
#: half-normal scales of the between-group spread ``omega`` and the within-group spread ``tau``, in units of the
#: parameter's ``priorScale``. Groups are chosen to differ (type 2 diabetes vs healthy), so a group may sit as far from
#: the population as the prior itself allows; with ``priorScale / 2`` the Katz 2000 groups put omega in the prior's far
#: tail (EC50 2.2, basal glucose 1.6 prior sds), a prior-data conflict that made NUTS diverge.
GROUP_SPREAD_PRIOR = 1.0
SUBJECT_SPREAD_PRIOR = 0.5
PROPORTIONAL_FLOOR = 0.1  # [observable unit] smallest sd floor of proportional noise near zero predictions


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

    def __init__(self, spec: ModelSpec, data: FitData, solver: SolverSettings, cache_dir: str | None = None):
        """``cache_dir``: a folder (the compilation cache's) where the stiffness probe of ``solver.name: auto`` keeps
        its measurement, keyed by everything it depends on, so that a later build of the same problem does not
        probe again (the probe traces and compiles its own programs: 3-5 s per process on 2 cores)."""
        self.spec, self.data, self.solver = spec, data, solver
        # without a kinetic-insulin condition the insulin-kinetic parameters cannot act: they stay nominal
        modes = set(data.covariates["insulin_mode"].astype(str)) if "insulin_mode" in data.covariates else {"kinetic"}
        no_kinetics = modes == {"forced"}
        #: estimated in the variant but fixed at nominal in this fit, because no condition can inform them
        self.not_informed = [r.id for r in spec.estimated if no_kinetics and r.id in INSULIN_KINETIC_PARAMS]
        self.estimated = [r for r in spec.estimated if r.id not in self.not_informed]
        self.fixed = {k: jnp.asarray(r.nominal) for k, r in spec.params.items()
                      if not r.estimate or k in self.not_informed}
        self.groups = data.groups
        self.subjects = data.subjects
        # a subject level exists only when some group holds more than one subject
        self.subject_effects = len(data.subjects) > len(data.groups)
        obs_rows = [spec.observables[o] for o in data.observables]
        self.noise_kind = jnp.asarray([NOISE_CODE[r.noise] for r in obs_rows])
        self.noise_names = [r.noise_parameter for r in obs_rows]
        self.noise_prior = [spec.noise_priors[n] for n in self.noise_names]
        # floor of the proportional noise sd, per observable: 10 % of the median magnitude of its data (so that
        # values near zero, e.g. the first minutes of a clamp's glucose infusion, are not over-weighted)
        vals = data.measurements.assign(a=data.measurements["value"].abs()).groupby("observable_id")["a"].median()
        self.noise_floor = jnp.asarray([max(PROPORTIONAL_FLOOR, 0.1 * float(vals[o])) for o in data.observables])
        self.stiffness = None  # StiffnessReport when ``solver.name == "auto"`` was resolved here
        if solver.name == "auto":
            self.stiffness = self._probe_stiffness(cache_dir=cache_dir)
            self.solver = dataclasses.replace(solver, name=self.stiffness.chosen)
        #: why the gradient mode was chosen, when ``solver.adjoint`` was ``auto`` (else "")
        self.solver, self.adjoint_choice = choose_adjoint(self.solver, len(self.estimated))

    def _probe_stiffness(self, draws: int = 8, seed: int = 0, cache_dir: str | None = None):
        """Measure the stiffness of every condition at the nominal parameters and ``draws`` prior draws (fixed seed,
        so the choice is reproducible) and choose the solver (``model/stiffness.py``). With ``cache_dir`` the
        measured spectral radii are stored there and reused by a later build of the same problem; the choice is
        made from them each time."""
        from ..model.stiffness import choose, probe

        a = self.data.arrays
        stored = None
        if cache_dir:
            import hashlib
            import json
            from pathlib import Path

            from .exported import export_key

            key = hashlib.sha256(f"{export_key(self, a, jax.default_backend())}:probe:{draws}:{seed}".encode())
            stored = Path(cache_dir) / "probes" / f"{key.hexdigest()}.json"
            try:
                got = json.loads(stored.read_text())
                return choose(self.solver, np.asarray(got["rho"], float), np.asarray(got["ok"], bool),
                              np.asarray(a.t1))
            except (OSError, ValueError, KeyError, TypeError):
                pass
        lat = self.prior_latents(jax.random.PRNGKey(seed), draws)

        def params_of(one):
            pop, grp, _ = self.natural(one)
            return self.condition_params(pop, grp, a.cond_group, self.subject_values(one, pop, grp), a.cond_subject)

        drawn = jax.vmap(params_of)(lat)  # [D, C]
        C = a.cond_group.shape[0]
        nominal = {k: jnp.broadcast_to(jnp.asarray(r.nominal), (1, C)) for k, r in self.spec.params.items()}
        params = {k: jnp.concatenate([nominal[k], drawn[k]]) for k in drawn}
        rho, ok = probe(params, a.inputs, a.t1, self.data.active, self.solver)
        if stored is not None:
            try:
                from ..runtime import write_bytes_atomic

                stored.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(stored, json.dumps({"rho": rho.tolist(), "ok": ok.tolist()}).encode())
            except OSError:
                pass
        return choose(self.solver, rho, ok, np.asarray(a.t1))

    # -- parameters -------------------------------------------------------------------------------------------
    def sample_latents(self) -> dict:
        """Sample the latent (non-centred) sites: standard-normal ``z``, half-normal spreads and noise scales."""
        lat = {}
        G, S = len(self.groups), len(self.subjects)
        grouped, by_subject = set(self.group_level()), set(self.subject_level())
        for r in self.estimated:
            if r.id in grouped:
                lat[f"{r.id}__z_mu"] = numpyro.sample(f"{r.id}__z_mu", dist.Normal(0.0, 1.0))
                lat[f"{r.id}__omega"] = numpyro.sample(f"{r.id}__omega",
                                                       dist.HalfNormal(GROUP_SPREAD_PRIOR * r.prior_scale))
                with numpyro.plate("group", G):
                    if r.centered:  # the group values themselves, in units of the prior scale
                        lat[f"{r.id}__z"] = numpyro.sample(f"{r.id}__z", dist.Normal(
                            lat[f"{r.id}__z_mu"], lat[f"{r.id}__omega"] / r.prior_scale))
                    else:
                        lat[f"{r.id}__z"] = numpyro.sample(f"{r.id}__z", dist.Normal(0.0, 1.0))
            else:
                lat[f"{r.id}__z"] = numpyro.sample(f"{r.id}__z", dist.Normal(0.0, 1.0))
            if r.id in by_subject:
                lat[f"{r.id}__tau"] = numpyro.sample(f"{r.id}__tau",
                                                     dist.HalfNormal(SUBJECT_SPREAD_PRIOR * r.prior_scale))
                with numpyro.plate("subject", S):
                    lat[f"{r.id}__zs"] = numpyro.sample(f"{r.id}__zs", dist.Normal(0.0, 1.0))
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
        grouped = set(self.group_level())
        for r in self.estimated:
            log = r.prior == "lognormal"
            if r.id in grouped:
                if r.centered:
                    eta = r.prior_scale * lat[f"{r.id}__z"]
                else:
                    eta = r.prior_scale * lat[f"{r.id}__z_mu"] + lat[f"{r.id}__omega"] * lat[f"{r.id}__z"]
                grp[r.id] = jnp.exp(jnp.log(r.loc) + eta) if log else r.loc + eta
            else:
                eta = r.prior_scale * lat[f"{r.id}__z"]
                pop[r.id] = jnp.exp(jnp.log(r.loc) + eta) if log else r.loc + eta
        noise = {n: lat[n] for n in dict.fromkeys(self.noise_names)}
        return pop, grp, noise

    def subject_values(self, lat: dict, pop: dict, grp: dict) -> dict:
        """Subject-level parameters [S] on the natural scale: each subject's group value (or the population value)
        shifted by ``tau * z_s`` on the prior's scale. Empty without a subject level."""
        out = {}
        sg = self.data.arrays.subject_group
        for r in self.estimated:
            if r.id not in set(self.subject_level()):
                continue
            typical = grp[r.id][..., sg] if r.id in grp else pop[r.id][..., None]
            eta = lat[f"{r.id}__tau"][..., None] * lat[f"{r.id}__zs"]
            out[r.id] = typical * jnp.exp(eta) if r.prior == "lognormal" else typical + eta
        return out

    def prior_latents(self, key, n: int) -> dict:
        """``n`` independent prior draws of every latent site (numpy-free, jittable)."""
        keys = iter(jax.random.split(key, 6 * len(self.estimated) + len(self.noise_names) + 1))
        G, S = len(self.groups), len(self.subjects)
        grouped, by_subject = set(self.group_level()), set(self.subject_level())
        lat = {}
        for r in self.estimated:
            if r.id in grouped:
                lat[f"{r.id}__z_mu"] = jax.random.normal(next(keys), (n,))
                omega_sd = GROUP_SPREAD_PRIOR * r.prior_scale
                lat[f"{r.id}__omega"] = omega_sd * jnp.abs(jax.random.normal(next(keys), (n,)))
                lat[f"{r.id}__z"] = jax.random.normal(next(keys), (n, G))
                if r.centered:
                    lat[f"{r.id}__z"] = (lat[f"{r.id}__z_mu"][:, None]
                                         + lat[f"{r.id}__omega"][:, None] / r.prior_scale * lat[f"{r.id}__z"])
            else:
                lat[f"{r.id}__z"] = jax.random.normal(next(keys), (n,))
            if r.id in by_subject:
                tau_sd = SUBJECT_SPREAD_PRIOR * r.prior_scale
                lat[f"{r.id}__tau"] = tau_sd * jnp.abs(jax.random.normal(next(keys), (n,)))
                lat[f"{r.id}__zs"] = jax.random.normal(next(keys), (n, S))
        for name, s in zip(dict.fromkeys(self.noise_names), self._noise_prior_unique()):
            lat[name] = s * jnp.abs(jax.random.normal(next(keys), (n,)))
        return lat

    def condition_params(self, pop: dict, grp: dict, cond_group, subj: dict | None = None,
                         cond_subject=None) -> dict:
        """Every model parameter per condition [C]: fixed, population, group (by ``cond_group``) and, when given,
        subject values (by ``cond_subject``), which replace the group's typical value."""
        C = cond_group.shape[0]
        p = {k: jnp.broadcast_to(v, (C,)) for k, v in self.fixed.items()}
        p.update({k: jnp.broadcast_to(v, (C,)) for k, v in pop.items()})
        p.update({k: v[cond_group] for k, v in grp.items()})
        p.update({k: v[cond_subject] for k, v in (subj or {}).items()})
        return p

    # -- simulation -------------------------------------------------------------------------------------------
    def predict_means(self, p: dict, a: FitArrays):
        """Predicted observable means at every measurement, per-condition solve success, solver steps.

        With ``solver.adjoint == "sensitivity"`` the ODE block is a custom-VJP function whose forward pass
        integrates the model together with its forward sensitivities with respect to the *estimated* parameters of
        each condition only (a handful of tangents per condition, like CVODES forward sensitivities in Stan), and
        whose backward pass is a product with that Jacobian. The rest of the log density is reverse-mode, so the cost
        of a gradient does not grow with the number of latent dimensions of the hierarchy. With ``reverse`` the
        whole solve is differentiated in reverse mode (recursive checkpointing), whose cost does not grow with the
        number of estimated parameters either; ``auto`` chooses between the two (``model.simulate.choose_adjoint``).
        """
        settings = self.solver
        names = self.data.observables
        active = self.data.active
        if settings.adjoint != "sensitivity":
            def one(pc, u, ts, t1):
                sol = solve(pc, u, ts, t1, settings, active)
                obs = observables(pc, u, ts, sol)
                return jnp.stack([obs[o] for o in names]), sol.ok, sol.num_steps

            stack, ok, steps = jax.vmap(one)(p, a.inputs, a.ts, a.t1)  # [C, O, T], [C], [C]
            return stack[a.m_cond, a.m_obs, a.m_time], ok, steps

        est = [r.id for r in self.estimated]
        theta = jnp.stack([p[k] for k in est], axis=-1)  # [C, P]
        fixed = {k: v for k, v in p.items() if k not in est}
        return _sensitivity_block(settings, names, active, est)(theta, fixed, a)

        # -- the model --------------------------------------------------------------------------------------------
    def model(self, a: FitArrays, y=None):
        lat = self.sample_latents()
        pop, grp, noise = self.natural(lat)
        for k, v in {**pop, **grp}.items():
            numpyro.deterministic(k, v)
        for k, v in self.subject_values(lat, pop, grp).items():
            numpyro.deterministic(f"{k}_subject", v)
        dist_, ok = self.observation(lat, a)
        numpyro.deterministic("ode_failed", jnp.sum(~ok))
        numpyro.factor("ode_ok", jnp.where(jnp.all(ok), 0.0, -jnp.inf))
        with numpyro.plate("measurement", a.values.shape[0]):
            numpyro.sample("obs", dist_, obs=y)

    def observation(self, lat: dict, a: FitArrays):
        """The observation distribution of every measurement for latents ``lat`` and per-condition solve success."""
        pop, grp, noise = self.natural(lat)
        sigmas = jnp.stack([noise[n] for n in self.noise_names])
        p = self.condition_params(pop, grp, a.cond_group, self.subject_values(lat, pop, grp), a.cond_subject)
        mu, ok, _ = self.predict_means(p, a)
        all_ok = jnp.all(ok)
        mu = jnp.where(all_ok, mu, jnp.where(a.values > 0, a.values, 1.0))  # sanitised: finite, gradient-safe
        kind = self.noise_kind[a.m_obs]
        sig = sigmas[a.m_obs]
        known = a.known_sd
        scale_normal = jnp.sqrt(sig**2 + known**2)
        floor = self.noise_floor[a.m_obs]
        scale_prop = jnp.sqrt((sig * jnp.abs(mu)) ** 2 + floor**2 + known**2)
        scale_log = jnp.sqrt(sig**2 + (known / jnp.maximum(jnp.abs(mu), 1e-6)) ** 2)
        scale = jnp.where(kind == 0, scale_normal, jnp.where(kind == 1, scale_prop, scale_log))
        return ObservationNoise(mu, scale, kind), ok

    def pointwise(self, lat: dict, a: FitArrays, key):
        """Per-draw log likelihood of every measurement, a replicated data set, and solve success (one draw)."""
        d, ok = self.observation(lat, a)
        ll = jnp.where(jnp.all(ok), d.log_prob(a.values), -jnp.inf)
        return ll, d.sample(key), jnp.sum(~ok)

    def group_level(self) -> list[str]:
        """Parameters with a group dimension (group- and subject-level ones, when the data have several groups)."""
        return [r.id for r in self.estimated if r.level in ("group", "subject") and len(self.groups) > 1]

    def subject_level(self) -> list[str]:
        """Parameters with a subject dimension (subject-level ones, when some group holds several subjects)."""
        return [r.id for r in self.estimated if r.level == "subject" and self.subject_effects]


def _sensitivity_block(settings, names, active, est):
    """The ODE block as a custom-VJP function of the per-condition estimated parameters ``theta`` [C, P]."""
    fwd_settings = dataclasses.replace(settings, adjoint="forward")

    def one(th, fx, u, ts, t1):
        pc = dict(fx)
        pc.update({k: th[i] for i, k in enumerate(est)})
        sol = solve(pc, u, ts, t1, fwd_settings, active)
        obs = observables(pc, u, ts, sol)
        # ok and steps travel as floats (a custom VJP's outputs must all be differentiable types)
        return jnp.stack([obs[o] for o in names]), jnp.stack([sol.ok.astype(jnp.float64),
                                                            sol.num_steps.astype(jnp.float64)])

    def primal(theta, fixed, a):
        stack, aux = jax.vmap(one)(theta, fixed, a.inputs, a.ts, a.t1)
        return stack[a.m_cond, a.m_obs, a.m_time], aux

    def with_jac(theta, fixed, a):
        def one_jac(th, fx, u, ts, t1):
            (stack, aux), jac = _value_and_jacfwd(lambda t: one(t, fx, u, ts, t1), th)
            return stack, aux, jac  # jac [O, T, P]

        stack, aux, jac = jax.vmap(one_jac)(theta, fixed, a.inputs, a.ts, a.t1)
        mu = stack[a.m_cond, a.m_obs, a.m_time]
        j = jac[a.m_cond, a.m_obs, a.m_time]  # [N, P]
        return (mu, aux), j

    @jax.custom_vjp
    def block(theta, fixed, a):
        return primal(theta, fixed, a)

    def block_fwd(theta, fixed, a):
        out, j = with_jac(theta, fixed, a)
        return out, (j, a.m_cond, theta.shape[0], fixed, a)

    def block_bwd(res, ct):
        j, m_cond, C, fixed, a = res
        ct_mu = ct[0]
        g = jax.ops.segment_sum(ct_mu[:, None] * j, m_cond, num_segments=C)  # [C, P]
        zeros = jax.tree_util.tree_map(jnp.zeros_like, (fixed, a))
        zeros = jax.tree_util.tree_map(
            lambda z: z if jnp.issubdtype(z.dtype, jnp.floating) else np.zeros(z.shape, jax.dtypes.float0),
            zeros)
        return (g, zeros[0], zeros[1])

    block.defvjp(block_fwd, block_bwd)

    def run(theta, fixed, a):
        mu, aux = block(theta, fixed, a)
        aux = jax.lax.stop_gradient(aux)
        return mu, aux[:, 0] > 0.5, aux[:, 1].astype(jnp.int32)

    return run


def _value_and_jacfwd(f, x):
    """(f(x) = (y, aux)) and the forward-mode Jacobian dy/dx [..., P]: one batched JVP per entry of x, the primal
    solved once (the step-size controller only looks at the primal)."""
    basis = jnp.eye(x.shape[0], dtype=x.dtype)

    def pushfwd(v):
        y, ty, aux = jax.jvp(f, (x,), (v,), has_aux=True)
        return y, aux, ty

    y, aux, ty = jax.vmap(pushfwd, out_axes=(None, None, -1))(basis)
    return (y, aux), ty
