"""Posterior predictive time courses: every data condition on a dense grid, and named scenarios per group.

The output DataTree has
- ``posterior_predictive`` (copied from the fit: replicated data at the measurement points),
- ``conditions``: ``mean`` (draw, condition, observable, time) of each observable without noise, ``time``
  (condition, time) [min],
- ``scenarios``: ``mean`` (scenario, draw, group, observable, time), ``slow`` (scenario, draw, group, quantity, time)
  of the slow adaptive quantities of ``SLOW_QUANTITIES`` (what training and detraining change), ``time``
  (scenario, time), and the attribute ``markers`` (JSON: scenario -> [[marker, time_min], ...], e.g. the start of
  ``training`` and ``detraining``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import json

import numpy as np
import xarray as xr

from .model.protocol import build_inputs, n_breakpoints
from .model.simulate import OBSERVABLE_UNITS, SolverSettings, active_states, observables, solve
from .simulation import load_protocol

OBS = tuple(OBSERVABLE_UNITS)
#: Slow adaptive quantities saved for the scenarios (states and derived fluxes of model/equations.py), unit 1:
#: mitochondrial density, DAG/ceramide and inflammatory tone relative to a sedentary healthy reference, PGC-1alpha,
#: insulin-signalling efficiency, and the fat share of muscle fuel.
SLOW_QUANTITIES = {
    "mito": ("state", "mitochondrial density (rel. to sedentary healthy)"),
    "lipid": ("state", "DAG/ceramide (rel. to healthy)"),
    "infl": ("state", "inflammatory tone (rel.)"),
    "pgc1a": ("state", "PGC-1alpha (rel.)"),
    "sig_efficiency": ("flux", "insulin-signalling efficiency"),
    "fat_share": ("flux", "fat share of muscle fuel"),
}


def posterior_parameter_draws(tree: xr.DataTree, builder, draws: int) -> tuple[dict, dict, np.ndarray]:
    """Evenly thinned posterior draws of population and group parameters (natural scale)."""
    post = tree["posterior"].to_dataset()
    C, D = post.sizes["chain"], post.sizes["draw"]
    idx = np.unique(np.linspace(0, C * D - 1, min(draws, C * D)).round().astype(int))
    pop, grp = {}, {}
    for r in builder.estimated:
        a = post[r.id].values.reshape((C * D,) + post[r.id].shape[2:])[idx]
        (grp if r.id in builder.group_level() else pop)[r.id] = a
    return pop, grp, idx


def scenario_grid(prot, n: int) -> np.ndarray:
    """``n`` save times [min] of a scenario: evenly spaced up to 7 days; for longer ones (training, detraining) once a
    day at the same clock time, one hour before the earliest clock time at which any exercise of the protocol starts
    (08:00 without exercise), so that day-to-day changes are not aliased with the within-day response to each
    session. Unused slots repeat the end time (a solve saves the same state twice)."""
    if prot.end <= 7 * 1440.0:
        return np.linspace(0.0, prot.end, n)
    starts = [seg.start % 1440.0 for seg in prot.segments if seg.kind == "exercise"]
    phase = (min(starts) - 60.0) % 1440.0 if starts else 480.0
    days = np.arange(0.0, np.floor((prot.end - phase) / 1440.0) + 1.0)
    if days.size > n - 1:
        days = np.unique(np.round(np.linspace(0.0, days[-1], n - 1)))
    times = np.concatenate([[0.0], phase + 1440.0 * days])
    times = np.unique(times[times <= prot.end])
    return np.concatenate([times, np.full(n - times.size, prot.end)]) if times.size < n else times[:n]


def _solve_batch(settings: SolverSettings, active):
    import jax
    import jax.numpy as jnp

    def one(p, u, ts, t1):
        sol = solve(p, u, ts, t1, settings, active)
        obs = observables(p, u, ts, sol)
        return jnp.stack([obs[o] for o in OBS]), sol.ok

    return jax.jit(jax.vmap(one))


def _solve_batch_with_slow(settings: SolverSettings, active):
    """As ``_solve_batch``, plus the ``SLOW_QUANTITIES`` (for the scenarios: training and detraining)."""
    import jax
    import jax.numpy as jnp

    from .model.simulate import trajectory_fluxes

    def one(p, u, ts, t1):
        sol = solve(p, u, ts, t1, settings, active)
        obs = observables(p, u, ts, sol)
        fl = trajectory_fluxes(p, u, ts, sol)
        slow = [getattr(sol.ys if kind == "state" else fl, name) for name, (kind, _) in SLOW_QUANTITIES.items()]
        return jnp.stack([obs[o] for o in OBS]), jnp.stack(slow), sol.ok

    return jax.jit(jax.vmap(one))


def predictive_tree(tree, tidy_dir: Path, model_dir: Path, scenarios: list[Path], draws: int, solver: dict | None,
                    repo_root: Path, log: Callable[[str], None] = print, scenario_draws: int = 40) -> xr.DataTree:
    import jax
    import jax.numpy as jnp

    from .inference.fit import FitJob, load_problem

    fit_solver = dict(solver or {})
    if fit_solver.get("name", "auto") == "auto" and tree.attrs.get("solver"):
        fit_solver["name"] = tree.attrs["solver"]  # the fit already measured the stiffness; do not probe again
    job = FitJob(tidy_dir=str(tidy_dir), model_dir=str(model_dir), repo_root=str(repo_root), solver=fit_solver,
                 sampler={})
    spec, data, builder = load_problem(job)
    settings = SolverSettings.from_dict(solver)
    pop, grp, idx = posterior_parameter_draws(tree, builder, draws)
    nd = len(idx)
    G = len(data.groups)
    a = data.arrays
    Cn = len(data.conditions)
    # -- data conditions on a dense grid ------------------------------------------------------------------------
    T = 121
    ts = np.stack([np.linspace(0.0, float(t1), T) for t1 in np.asarray(a.t1)])
    run = _solve_batch(builder.solver, data.active)  # the fit's solver (``auto`` resolved by measuring stiffness)
    means = np.zeros((nd, Cn, len(OBS), T))
    ok_all = np.ones((nd, Cn), bool)
    cg = np.asarray(a.cond_group)
    for d in range(nd):
        p = builder.condition_params({k: jnp.asarray(v[d]) for k, v in pop.items()},
                                     {k: jnp.asarray(v[d]) for k, v in grp.items()}, a.cond_group)
        m, ok = run(p, a.inputs, jnp.asarray(ts), a.t1)
        means[d], ok_all[d] = np.asarray(m), np.asarray(ok)
    log(f"predictive: {nd} draws x {Cn} conditions (failed solves: {int((~ok_all).sum())})")
    cond_ds = xr.Dataset(
        {"mean": (("draw", "condition", "observable", "time_index"), means),
         "ok": (("draw", "condition"), ok_all),
         "time": (("condition", "time_index"), ts)},
        coords={"draw": idx, "condition": list(data.conditions), "observable": list(OBS),
                "condition_group": ("condition", [data.groups[i] for i in cg])},
        attrs={"units": str(dict(OBSERVABLE_UNITS))},
    )
    children = {"conditions": xr.DataTree(cond_ds)}
    if "posterior_predictive" in tree.children:
        children["posterior_predictive"] = xr.DataTree(tree["posterior_predictive"].to_dataset())
    # -- scenarios: per group, insulin from its own kinetics ------------------------------------------------------
    if scenarios:
        prots = [load_protocol(repo_root / s if not Path(s).is_absolute() else s) for s in scenarios]
        K = max(n_breakpoints(pr) for pr in prots)
        Ts = 241
        need = max(int(200 + pr.end / 5.0 + 400 * len(pr.segments)) for pr in prots)
        ssettings = SolverSettings(name=settings.name, rtol=settings.rtol, atol=settings.atol,
                                   max_steps=max(settings.max_steps, need), adjoint="reverse", dt0=settings.dt0)
        run_s = _solve_batch_with_slow(ssettings, active_states(prots + [p for p in data.protocols.values()], True))
        covs = data.covariates
        sd = min(scenario_draws, nd)
        sidx = np.unique(np.linspace(0, nd - 1, sd).round().astype(int))
        out = np.zeros((len(prots), len(sidx), G, len(OBS), Ts))
        slow = np.zeros((len(prots), len(sidx), G, len(SLOW_QUANTITIES), Ts))
        sts = np.zeros((len(prots), Ts))
        sok = np.ones((len(prots), len(sidx), G), bool)
        for si, pr in enumerate(prots):
            us = []
            for g in data.groups:
                row = covs[covs["group"].astype(str) == g].iloc[0]
                us.append(build_inputs(pr, float(row["body_weight_kg"]), float(row["bsa_m2"]), None, n_breaks=K))
            ub = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *us)
            grid = scenario_grid(pr, Ts)
            sts[si] = grid
            tsb = jnp.asarray(np.broadcast_to(grid, (G, Ts)))
            t1b = jnp.full((G,), pr.end)
            for j, d in enumerate(sidx):
                p = builder.condition_params({k: jnp.asarray(v[d]) for k, v in pop.items()},
                                             {k: jnp.asarray(v[d]) for k, v in grp.items()}, jnp.arange(G))
                m, sl, ok = run_s(p, ub, tsb, t1b)
                out[si, j], slow[si, j], sok[si, j] = np.asarray(m), np.asarray(sl), np.asarray(ok)
            log(f"scenario {pr.name}: {len(sidx)} draws x {G} groups (failed solves: {int((~sok[si]).sum())})")
        scen_ds = xr.Dataset(
            {"mean": (("scenario", "draw", "group", "observable", "time_index"), out),
             "slow": (("scenario", "draw", "group", "quantity", "time_index"), slow,
                      {"units": "1", "long_names": json.dumps({k: v[1] for k, v in SLOW_QUANTITIES.items()})}),
             "ok": (("scenario", "draw", "group"), sok),
             "time": (("scenario", "time_index"), sts)},
            coords={"scenario": [pr.name for pr in prots], "draw": idx[sidx], "group": list(data.groups),
                    "observable": list(OBS), "quantity": list(SLOW_QUANTITIES)},
            attrs={"descriptions": str({pr.name: pr.description for pr in prots}),
                   "markers": json.dumps({pr.name: [[m, float(t)] for m, t in pr.markers] for pr in prots})},
        )
        children["scenarios"] = xr.DataTree(scen_ds)
    root = xr.DataTree(children=children)
    root.attrs.update({k: v for k, v in tree.attrs.items()})
    return root
