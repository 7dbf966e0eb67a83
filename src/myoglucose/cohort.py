"""Synthetic cohorts: N virtual subjects with hierarchical parameter draws, any protocol, measurement noise.

Each estimated parameter of the model variant is drawn on its prior scale following its ``level`` (the hierarchy the
fit assumes, ``inference/numpyro_model.py``): the population location from the prior; ``group`` and ``subject``
parameters add group offsets with spread ``priorScale / 2``; ``subject`` parameters add subject offsets with spread
``priorScale / 4`` (log scale for log-normal priors). ``population`` parameters are shared by every subject. Every subject runs the protocol from its own basal state with
kinetic insulin; the observables are sampled at ``times`` with each observable's noise model and the scale given by
the model's ``noise_priors``. The output is the tidy format of ``prepare`` (so it feeds ``fit`` directly) plus the
true parameters. Library code: returns DataFrames, writes nothing.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd

from .model.equations import INSULIN_KINETIC_PARAMS
from .model.protocol import build_inputs
from .model.simulate import OBSERVABLE_UNITS, SolverSettings, active_states, observables, solve
from .model.spec import ModelSpec
from .simulation import load_protocol


@dataclasses.dataclass
class Cohort:
    measurements: pd.DataFrame
    conditions: pd.DataFrame
    provenance: pd.DataFrame
    truth: pd.DataFrame  # subject_id, group, parameterId, value


def draw_parameters(spec: ModelSpec, groups: list[str], n: int, rng: np.random.Generator,
                    typical: dict | None = None) -> pd.DataFrame:
    """True parameters of ``n`` subjects (cycling through ``groups``), long format. Without ``typical`` the
    population value comes from the prior and the group offsets from ``priorScale / 2``; with ``typical`` (from
    :func:`posterior_typicals`: parameter -> {"groups": {group: value}, "sd_subject": float | None}) the group values
    are taken from it. Subject-level parameters then scatter around their group's value with the posterior's
    within-group spread, or ``priorScale / 4`` when the posterior has none."""
    rows = []
    subj_group = [groups[i % len(groups)] for i in range(n)]
    for r in spec.estimated:
        if typical is not None and r.id not in typical:
            continue  # held at its nominal value by the fit (``posterior_typicals``)
        log = r.prior == "lognormal"
        s_sd = 0.25 * r.prior_scale if r.level == "subject" else 0.0
        if typical is not None:
            t = typical[r.id]
            g_val = {g: (np.log(t["groups"][g]) - np.log(r.loc)) if log else t["groups"][g] - r.loc for g in groups}
            if r.level == "subject" and t.get("sd_subject") is not None:
                s_sd = float(t["sd_subject"])
        else:
            mu = rng.normal(0.0, 1.0) * r.prior_scale
            g_sd = 0.5 * r.prior_scale if r.level in ("group", "subject") and len(groups) > 1 else 0.0
            g_val = {g: mu + rng.normal(0.0, 1.0) * g_sd for g in groups}
        for i in range(n):
            eta = g_val[subj_group[i]] + rng.normal(0.0, 1.0) * s_sd
            v = float(np.exp(np.log(r.loc) + eta)) if log else float(r.loc + eta)
            v = float(np.clip(v, r.lower, r.upper))
            rows.append({"subject_id": f"s{i + 1:04d}", "group": subj_group[i], "parameterId": r.id, "value": v})
    return pd.DataFrame(rows)


def posterior_typicals(posterior, spec: ModelSpec, groups: list[str] | None, rng: np.random.Generator,
                       source: str = "posterior") -> tuple[dict, dict, list[str]]:
    """One draw (chosen at random) of a fit's posterior (``posterior`` = its ``posterior`` group as an
    ``xarray.Dataset``): per estimated parameter the group values and the within-group spread, the noise scales
    ``sigma_<observable>`` of that draw, and the groups (all of the posterior's unless ``groups`` names some).
    Errors name the file (``source``), the parameter or the group."""
    post = posterior
    # insulin-kinetic parameters are absent from a fit whose conditions all took measured insulin (the fit held them
    # at nominal values): they stay nominal here too
    estimated = [r for r in spec.estimated if r.id in post.data_vars or r.id not in INSULIN_KINETIC_PARAMS]
    missing = [r.id for r in estimated if r.id not in post.data_vars]
    if missing:
        raise ValueError(f"{source}: no posterior for parameter(s) {missing} of model {spec.id!r}; simulate with the "
                         "model variant that was fitted")
    post_groups = [str(g) for g in post["group"].values] if "group" in post.coords else []
    if groups is None:
        groups = post_groups or ["cohort"]
    grouped = [r.id for r in estimated if "group" in post[r.id].dims]
    unknown = [g for g in groups if grouped and g not in post_groups]
    if unknown:
        raise ValueError(f"{source}: group(s) {unknown} not in the posterior; it has {post_groups}")
    C, D = post.sizes["chain"], post.sizes["draw"]
    c, d = int(rng.integers(C)), int(rng.integers(D))
    typical = {}
    for r in estimated:
        da = post[r.id].isel(chain=c, draw=d)
        vals = {g: float(da.sel(group=g)) if "group" in da.dims else float(da) for g in groups}
        sd = f"{r.id}_sd_subject"
        typical[r.id] = {"groups": vals, "sd_subject": float(post[sd].isel(chain=c, draw=d)) if sd in post else None}
    noise = {k: float(post[k].isel(chain=c, draw=d)) for k in post.data_vars if str(k).startswith("sigma_")}
    return typical, noise, list(groups)


def simulate_cohort(spec: ModelSpec, protocol_path: str, n: int, seed: int, groups: list[str] | None,
                    observables_out: list[str], times: np.ndarray, body_weight: float = 75.0, bsa: float = 1.9,
                    solver: dict | None = None, dataset_id: str = "synthetic", posterior=None,
                    posterior_source: str = "posterior") -> Cohort:
    """Simulate the cohort. With ``posterior`` (a fit's ``posterior`` Dataset) the group values, within-group spreads
    and noise scales come from one random posterior draw (:func:`posterior_typicals`); otherwise from the priors
    (noise sd = half the noise prior's scale)."""
    import jax
    import jax.numpy as jnp

    if n < 1:
        raise ValueError("--n must be >= 1")
    unknown = set(observables_out) - set(spec.observables)
    if unknown:
        raise ValueError(f"unknown observable(s) {sorted(unknown)}; the model has {sorted(spec.observables)}")
    prot = load_protocol(protocol_path)
    times = np.asarray(sorted(set(float(t) for t in times if 0 <= t <= prot.end)))
    if times.size == 0:
        raise ValueError(f"no sampling time inside the protocol (0 to {prot.end} min)")
    rng = np.random.default_rng(seed)
    typical, noise_sd = None, {}
    if posterior is not None:
        typical, noise_sd, groups = posterior_typicals(posterior, spec, groups, rng, posterior_source)
    groups = groups or ["cohort"]
    origin = f"one draw of the posterior {posterior_source}" if posterior is not None else "the priors"
    truth = draw_parameters(spec, groups, n, rng, typical)
    wide = truth.pivot(index="subject_id", columns="parameterId", values="value")
    subjects = list(wide.index)
    p = {k: jnp.full((n,), r.nominal) for k, r in spec.params.items()}
    for k in wide.columns:
        p[k] = jnp.asarray(wide[k].to_numpy(float))
    u1 = build_inputs(prot, body_weight, bsa)
    u = jax.tree_util.tree_map(lambda x: jnp.broadcast_to(x, (n,) + x.shape), u1)
    settings = SolverSettings.from_dict(solver)
    settings = dataclasses.replace(settings, max_steps=max(settings.max_steps, int(200 + prot.end / 5.0
                                                                                  + 400 * len(prot.segments))))
    active = active_states([prot], insulin_kinetic=True)
    ts = jnp.asarray(times)

    def one(pc, uc):
        sol = solve(pc, uc, ts, jnp.asarray(prot.end), settings, active)
        obs = observables(pc, uc, ts, sol)
        return jnp.stack([obs[o] for o in observables_out]), sol.ok

    means, ok = jax.jit(jax.vmap(one))(p, u)
    means, ok = np.asarray(means), np.asarray(ok)
    if not ok.all():
        bad = [subjects[i] for i in np.flatnonzero(~ok)]
        raise RuntimeError(f"ODE solve failed for {len(bad)} subject(s): {bad[:5]}")
    rows = []
    group_of = truth.drop_duplicates("subject_id").set_index("subject_id")["group"]
    for oi, o in enumerate(observables_out):
        row = spec.observables[o]
        s = noise_sd.get(row.noise_parameter, spec.noise_priors[row.noise_parameter] / 2.0)
        for i, sid in enumerate(subjects):
            mu = means[i, oi]
            if row.noise == "normal":
                y = mu + s * rng.standard_normal(mu.shape)
            elif row.noise == "proportional":
                y = mu + s * np.abs(mu) * rng.standard_normal(mu.shape)
            else:
                y = np.exp(np.log(np.maximum(mu, 1e-9)) + s * rng.standard_normal(mu.shape))
            if o not in ("delta_uptake", "delta_egp"):
                y = np.maximum(y, 0.0)
            for t, v in zip(times, y):
                rows.append({"dataset_id": dataset_id, "subject_id": sid, "group": group_of[sid],
                             "condition_id": f"{prot.name}_{sid}", "observable_id": o, "time_min": float(t),
                             "value": float(v), "unit": OBSERVABLE_UNITS[o], "sd": float("nan"),
                             "sem": float("nan"), "n": 1, "source_id": f"{dataset_id}:simulated"})
    meas = pd.DataFrame(rows)
    conds = pd.DataFrame([{"condition_id": f"{prot.name}_{sid}", "dataset_id": dataset_id, "subject_id": sid,
                           "group": group_of[sid], "protocol_file": str(protocol_path), "body_weight_kg": body_weight,
                           "bsa_m2": bsa, "insulin_mode": "kinetic",
                           "notes": f"synthetic subject, model {spec.id}, seed {seed}, parameters from {origin}"}
                          for sid in subjects])
    prov = pd.DataFrame([{"source_id": f"{dataset_id}:simulated", "dataset_id": dataset_id,
                          "citation": f"synthetic cohort simulated with myoglucose (model {spec.id}, seed {seed})",
                          "doi_or_url": "none (simulated)", "figure_or_table": "none (simulated)",
                          "how_obtained": f"simulated: hierarchical draws from {origin}, model solve, observation noise",
                          "units_as_published": "canonical", "conversion": "none", "raw_file": str(protocol_path),
                          "sha256": _sha256(protocol_path)}])
    return Cohort(measurements=meas, conditions=conds, provenance=prov, truth=truth)


def _sha256(path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def default_times(end: float, step: float = 10.0) -> np.ndarray:
    return np.arange(0.0, end + 1e-9, step)


__all__ = ["Cohort", "simulate_cohort", "draw_parameters", "posterior_typicals", "default_times"]
