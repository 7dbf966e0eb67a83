"""Posterior predictive time courses: every data condition on a dense grid, and named scenarios per group.

The output DataTree has
- ``posterior_predictive`` (copied from the fit: replicated data at the measurement points),
- ``conditions``: ``mean`` (draw, condition, observable, time) of each observable without noise, ``time``
  (condition, time) [min],
- ``scenarios``: ``mean`` (scenario, draw, group, observable, time), ``slow`` (scenario, draw, group, quantity, time)
  of the slow adaptive quantities of ``SLOW_QUANTITIES`` (what training and detraining change), ``time``
  (scenario, time), and the attribute ``markers`` (JSON: scenario -> [[marker, time_min], ...], e.g. the start of
  ``training`` and ``detraining``).
- ``post_exercise`` (unless switched off): the steady-state glucose infusion rate of a euglycemic clamp at a grid of
  delays after one exercise bout, per posterior draw and group: ``gir`` (draw, group, delay_h) and ``gir_control``
  (draw, group) [mg/kg/min], their ``ratio`` (draw, group, delay_h) [1], the solve flags ``ok``/``ok_control``, and
  the protocol settings in the attributes (see :func:`post_exercise_dataset`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import json

import numpy as np
import xarray as xr

from .model.protocol import Protocol, build_inputs, n_breakpoints, parse_protocol
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


def posterior_subject_draws(tree: xr.DataTree, builder, idx: np.ndarray) -> dict:
    """The same posterior draws ``idx`` of the subject values ``<id>_subject`` [draw, subject] of the subject-level
    parameters (empty when the fit has no subject level)."""
    post = tree["posterior"].to_dataset()
    C, D = post.sizes["chain"], post.sizes["draw"]
    return {k: post[f"{k}_subject"].values.reshape((C * D, -1))[idx] for k in builder.subject_level()}


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


#: Solves per compiled call when draws are batched (``_over_draws``). On a GPU every call pays a fixed latency (about
#: 30 ms for a clamp on an H100) whatever its size, so batching draws turns a few hundred calls into a few; on the
#: CPU the solves' arithmetic dominates and the time is the same (docs/performance.md, "posterior predictive").
BATCH_SOLVES = 128


def _over_draws(run, params_of_draw: Callable[[int], dict], draws, inputs, ts, t1, batch: int = BATCH_SOLVES):
    """``run`` (a jit(vmap) solve over B batch elements) for every draw in ``draws`` and every element, several draws
    per call: each call flattens ``chunk`` draws x B elements into one vmapped batch. The last chunk is padded by
    repeating its final draw, so every call has the same shapes and one compiled program serves them all.
    ``params_of_draw(d)`` gives the parameters of draw ``d`` as a dict of [B] arrays. Returns ``run``'s outputs as
    numpy arrays with a leading [len(draws), B] instead of [B]."""
    import jax
    import jax.numpy as jnp

    draws = list(draws)
    B = int(np.shape(t1)[0])
    # as few calls as ``batch`` allows, with the draws shared evenly between them: 40 draws x 4 groups in calls of
    # at most 128 solves are 2 calls of 20 draws, not 32 + 8 padded to 32 (60 % more solves)
    calls = max(1, -(-len(draws) // max(1, batch // B)))
    chunk = max(1, -(-len(draws) // calls))

    def tile(x):
        return jnp.tile(jnp.asarray(x), (chunk,) + (1,) * (jnp.ndim(x) - 1))

    u, tsb, t1b = jax.tree_util.tree_map(tile, inputs), tile(ts), tile(t1)
    parts = []
    for start in range(0, len(draws), chunk):
        ds = draws[start:start + chunk]
        ps = [params_of_draw(d) for d in ds + [ds[-1]] * (chunk - len(ds))]
        p = {k: jnp.concatenate([jnp.broadcast_to(q[k], (B,)) for q in ps]) for k in ps[0]}
        out = run(p, u, tsb, t1b)
        parts.append([np.asarray(r).reshape((chunk, B) + r.shape[1:])[:len(ds)] for r in out])
    return tuple(np.concatenate(xs) for xs in zip(*parts))


# -- post-exercise insulin sensitivity ---------------------------------------------------------------------------
#: Defaults of the config section ``predict.post_exercise`` (workflow/schemas/config.schema.yaml states the same).
POST_EXERCISE_DEFAULTS = {
    "enabled": True,
    "delays_h": [0, 1, 2, 4, 8, 12, 24, 36, 48, 60, 72],  # clamp start after the END of the bout [h]
    "intensity": 0.70,  # fraction of VO2max
    "exercise_min": 60.0,  # duration of the bout [min]
    "clamp_rate": 40.0,  # insulin infusion of the clamp [mU/m^2/min]
    "clamp_min": 120.0,  # duration of the clamp [min]
}
POST_EXERCISE_START = "day 0 09:00"  # the bout starts here (protocol clock, ARCHITECTURE.md section 2)
STEADY_STATE_MIN = 30.0  # the steady-state GIR is the time average over the last 30 min of the clamp
_STEADY_POINTS = 31  # saved times in that window (every minute)


def _clock(minutes: float) -> str | float:
    """A protocol time: ``"day D HH:MM"`` for a whole minute, else the number of minutes."""
    minutes = float(minutes)
    if minutes.is_integer():
        m = int(minutes)
        return f"day {m // 1440} {(m % 1440) // 60:02d}:{m % 60:02d}"
    return minutes


def post_exercise_settings(cfg: dict | None) -> dict:
    """``predict.post_exercise`` of a config with the defaults filled in and checked (the schema checks the same
    for the workflow; this also covers a library call or a config that skipped the schema)."""
    out = {**POST_EXERCISE_DEFAULTS, **(cfg or {})}
    unknown = set(out) - set(POST_EXERCISE_DEFAULTS)
    if unknown:
        raise ValueError(f"predict.post_exercise: unknown key(s) {sorted(unknown)}")
    delays = [float(d) for d in out["delays_h"]]
    if not delays or not all(np.isfinite(d) and d >= 0 for d in delays):
        raise ValueError(f"predict.post_exercise.delays_h: need one or more delays >= 0 h, got {out['delays_h']}")
    if len(set(delays)) != len(delays):
        raise ValueError(f"predict.post_exercise.delays_h: delays must be unique, got {out['delays_h']}")
    if not 0 < float(out["intensity"]) <= 1:
        raise ValueError(f"predict.post_exercise.intensity: must be in (0, 1], got {out['intensity']}")
    if not float(out["exercise_min"]) > 0 or not float(out["clamp_rate"]) > 0:
        raise ValueError("predict.post_exercise: exercise_min and clamp_rate must be > 0")
    if not float(out["clamp_min"]) >= STEADY_STATE_MIN:
        raise ValueError(f"predict.post_exercise.clamp_min: must be >= {STEADY_STATE_MIN:g} min (the steady-state "
                         f"window), got {out['clamp_min']}")
    out["delays_h"] = sorted(delays)
    for k in ("intensity", "exercise_min", "clamp_rate", "clamp_min"):
        out[k] = float(out[k])
    out["enabled"] = bool(out["enabled"])
    return out


def post_exercise_protocols(delays_h, intensity: float = 0.70, exercise_min: float = 60.0, clamp_rate: float = 40.0,
                            clamp_min: float = 120.0, exercise_start: str = POST_EXERCISE_START
                            ) -> tuple[list[Protocol], Protocol]:
    """The protocols of the post-exercise prediction, built with the protocol machinery (``parse_protocol``, the same
    mapping as a file in ``protocols/scenarios/``): for each delay one exercise bout (``exercise_min`` at
    ``intensity`` of VO2max from ``exercise_start``) and a euglycemic clamp (insulin ``clamp_rate`` mU/m^2/min,
    glucose clamped at basal, ``clamp_min`` long) starting ``delay`` hours after the END of the bout; and the control:
    the same clamp without the bout, at the clock time of the 0 h clamp. Each protocol ends with its clamp."""
    from .model.protocol import parse_time

    t_ex = parse_time(exercise_start, "<post_exercise>", "exercise_start")
    t_after = t_ex + float(exercise_min)

    def clamp(t0: float) -> list[dict]:
        return [{"type": "insulin_infusion", "start": _clock(t0), "duration_min": float(clamp_min),
                 "rate": float(clamp_rate), "unit": "mU/m2/min"},
                {"type": "glucose_clamp", "start": _clock(t0), "duration_min": float(clamp_min), "target": "basal"}]

    bout = {"type": "exercise", "start": exercise_start, "duration_min": float(exercise_min),
            "intensity": float(intensity)}
    what = f"{clamp_rate:g} mU/m^2/min euglycemic clamp ({clamp_min:g} min)"
    prots = []
    for d in delays_h:
        t0 = t_after + 60.0 * float(d)
        doc = {"name": f"post_exercise_{float(d):g}h",
               "description": f"{exercise_min:g} min at {100 * intensity:g} % VO2max from {exercise_start}, then a "
                              f"{what} {float(d):g} h after the end of the bout",
               "end": _clock(t0 + clamp_min), "events": [bout, *clamp(t0)]}
        prots.append(parse_protocol(doc, f"<post_exercise {float(d):g} h>"))
    control = parse_protocol({"name": "post_exercise_control", "description": f"the same {what} without exercise",
                              "end": _clock(t_after + clamp_min), "events": clamp(t_after)}, "<post_exercise control>")
    return prots, control


#: With ``solver.name: auto``, when the fit's own stiffness probe chose the explicit solver, the scenario and
#: post-exercise simulations run the explicit Tsit5 at this fraction of the config's tolerances, and re-solve any draw
#: whose explicit solve failed (a draw stiffer than the probe saw runs out of steps) with the implicit Kvaerno5 at the
#: config's tolerances. Measured on full Katz FSIVGTT (3 groups, 40 draws, session 16): Tsit5 at 1e-8 was 6e-6
#: relative from Kvaerno5 at 1e-10 on every scenario curve, Kvaerno5 at the config's 1e-6 7e-5 away, and the
#: scenarios and post-exercise clamps took 21 s against 54 s (docs/performance.md section 7b).
SCENARIO_EXPLICIT_TOL = 0.01


def _scenario_solvers(settings: SolverSettings, prots: list[Protocol],
                      fit_solver: str | None) -> tuple[SolverSettings, SolverSettings | None]:
    """The solver settings of scenario simulations and of their fallback for failed draws (None: none).

    A solver named in the config is used as is, without fallback. ``auto``: when the fit's stiffness probe chose an
    explicit solver (``fit_solver``, the posterior's ``solver`` attribute), the explicit Tsit5 at
    ``SCENARIO_EXPLICIT_TOL`` times the config's tolerances with Kvaerno5 at the config's tolerances as the fallback;
    otherwise (the fit's conditions were stiff, or unknown) Kvaerno5 at the config's tolerances. Every setting has a
    step budget that grows with the protocol's length and number of events, and no gradients (reverse adjoint, never
    differentiated)."""
    from .model.simulate import EXPLICIT_SOLVERS
    from .model.stiffness import EXPLICIT, IMPLICIT

    steps = max(settings.max_steps, *(int(200 + pr.end / 5.0 + 400 * len(pr.segments)) for pr in prots))

    def make(name: str, factor: float = 1.0) -> SolverSettings:
        return SolverSettings(name=name, rtol=max(settings.rtol * factor, 1e-12),
                              atol=max(settings.atol * factor, 1e-12), max_steps=steps, adjoint="reverse",
                              dt0=settings.dt0)

    if settings.name != "auto":
        return make(settings.name), None
    if fit_solver in EXPLICIT_SOLVERS:
        return make(EXPLICIT, SCENARIO_EXPLICIT_TOL), make(IMPLICIT)
    return make(IMPLICIT), None


def _solver_label(first: SolverSettings, fallback: SolverSettings | None, redone: int) -> str:
    label = f"{first.name} (rtol {first.rtol:g}, atol {first.atol:g})"
    if fallback is not None:
        label += f"; {fallback.name} (rtol {fallback.rtol:g}) re-solved {redone} draw(s) whose explicit solve failed"
    return label


def _over_draws_with_fallback(run, fallback_run, params_of_draw, draws, inputs, ts, t1, log, what: str):
    """``_over_draws`` with ``run``; then every draw with a failed (``ok`` false, the last output) or non-finite solve
    in any batch element is solved again with ``fallback_run`` (None: not), and its outputs replaced. Returns the
    outputs and the number of draws re-solved."""
    draws = list(draws)
    out = list(_over_draws(run, params_of_draw, draws, inputs, ts, t1))
    if fallback_run is None:
        return tuple(out), 0
    bad_lane = ~np.asarray(out[-1], bool) | ~np.isfinite(out[0]).reshape(out[0].shape[:2] + (-1,)).all(axis=-1)
    bad = np.flatnonzero(bad_lane.any(axis=1))
    if bad.size:
        log(f"{what}: {int(bad_lane.sum())} explicit solve(s) failed in {bad.size} draw(s) (stiff or out of steps); "
            f"solving those draws again with the implicit solver")
        redo = _over_draws(fallback_run, params_of_draw, [draws[i] for i in bad], inputs, ts, t1)
        for o, r in zip(out, redo):
            o[bad] = r
    return tuple(out), int(bad.size)


def _steady_gir_batch(settings: SolverSettings, active):
    """jit(vmap) of one solve -> (time average of ``gir`` over the saved times, solve ok)."""
    import jax
    import jax.numpy as jnp

    def one(p, u, ts, t1):
        sol = solve(p, u, ts, t1, settings, active)
        gir = observables(p, u, ts, sol)["gir"]
        return jnp.trapezoid(gir, ts) / (ts[-1] - ts[0]), sol.ok

    return jax.jit(jax.vmap(one))


def post_exercise_dataset(builder, data, pop: dict, grp: dict, draws: np.ndarray, settings: SolverSettings,
                          post_exercise: dict | None = None, log: Callable[[str], None] = print,
                          fit_solver: str | None = None) -> xr.Dataset:
    """Steady-state GIR of a euglycemic clamp at each delay after one exercise bout, and of the same clamp without
    exercise, for each posterior draw and group (``post_exercise_protocols``; settings: ``post_exercise_settings``).

    ``pop``/``grp`` hold the parameter draws to simulate (leading axis = draw, as from
    ``posterior_parameter_draws``), ``draws`` their draw index (the ``draw`` coordinate). Each group gets its own
    covariates (body weight and surface area of its first condition) and its own insulin kinetics. All groups x
    (delays + control) are solved in one batch per draw, by one compiled program (protocols padded to a common
    number of breakpoints). A failed solve gives NaN and ``ok = False``; it never raises. ``settings`` and
    ``fit_solver`` (the solver the fit chose) pick the solver as for the scenarios (``_scenario_solvers``)."""
    import jax
    import jax.numpy as jnp

    cfg = post_exercise_settings(post_exercise)
    delays = cfg["delays_h"]
    prots, control = post_exercise_protocols(delays, cfg["intensity"], cfg["exercise_min"], cfg["clamp_rate"],
                                             cfg["clamp_min"])
    allp = prots + [control]
    P, G = len(allp), len(data.groups)
    K = max(n_breakpoints(pr) for pr in allp)
    covs = data.covariates
    us, ts, t1 = [], [], []
    for g in data.groups:
        row = covs[covs["group"].astype(str) == g].iloc[0]
        for pr in allp:
            us.append(build_inputs(pr, float(row["body_weight_kg"]), float(row["bsa_m2"]), None, n_breaks=K))
            ts.append(np.linspace(pr.end - STEADY_STATE_MIN, pr.end, _STEADY_POINTS))
            t1.append(pr.end)
    ub = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *us)
    tsb, t1b = jnp.asarray(np.stack(ts)), jnp.asarray(np.asarray(t1))
    gidx = jnp.asarray(np.repeat(np.arange(G), P))
    ssettings, fsettings = _scenario_solvers(settings, allp, fit_solver)
    active = active_states(allp, True)
    nd = len(draws)
    (m, o), redone = _over_draws_with_fallback(
        _steady_gir_batch(ssettings, active), fsettings and _steady_gir_batch(fsettings, active),
        lambda j: builder.condition_params({k: jnp.asarray(v[j]) for k, v in pop.items()},
                                           {k: jnp.asarray(v[j]) for k, v in grp.items()}, gidx),
        range(nd), ub, tsb, t1b, log, "post_exercise")
    m, o = m.reshape(nd, G, P), o.reshape(nd, G, P)
    ok = o & np.isfinite(m)
    gir = np.where(ok, m, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = gir[:, :, :-1] / gir[:, :, -1:]
    n_failed = int((~ok).sum())
    log(f"post_exercise: {nd} draws x {G} groups x ({len(delays)} delays + control) (failed solves: {n_failed})")
    desc = (f"{cfg['exercise_min']:g} min exercise at {100 * cfg['intensity']:g} % VO2max from "
            f"{POST_EXERCISE_START}, then a {cfg['clamp_rate']:g} mU/m^2/min euglycemic clamp (glucose clamped at "
            f"basal, {cfg['clamp_min']:g} min) starting delay_h hours after the end of the bout; control: the same "
            f"clamp without exercise. GIR: time average over the last {STEADY_STATE_MIN:g} min of the clamp.")
    clamp_start = np.asarray([min(sg.start for sg in pr.segments if sg.kind == "clamp") for pr in prots])
    return xr.Dataset(
        {"gir": (("draw", "group", "delay_h"), gir[:, :, :-1],
                 {"units": OBSERVABLE_UNITS["gir"], "long_name": "steady-state glucose infusion rate after exercise"}),
         "gir_control": (("draw", "group"), gir[:, :, -1],
                         {"units": OBSERVABLE_UNITS["gir"],
                          "long_name": "steady-state glucose infusion rate of the clamp without exercise"}),
         "ratio": (("draw", "group", "delay_h"), ratio,
                   {"units": "1", "long_name": "GIR after exercise / GIR of the control clamp"}),
         "ok": (("draw", "group", "delay_h"), ok[:, :, :-1], {"long_name": "solve succeeded (else NaN)"}),
         "ok_control": (("draw", "group"), ok[:, :, -1], {"long_name": "control solve succeeded (else NaN)"})},
        coords={"draw": np.asarray(draws), "group": list(data.groups),
                "delay_h": ("delay_h", np.asarray(delays, float),
                            {"units": "h", "long_name": "clamp start after the end of exercise"}),
                "clamp_start_min": ("delay_h", clamp_start,
                                    {"units": "min", "long_name": "clamp start since the protocol origin"})},
        attrs={"description": desc, "units": json.dumps({"gir": OBSERVABLE_UNITS["gir"],
                                                         "gir_control": OBSERVABLE_UNITS["gir"], "ratio": "1",
                                                         "delay_h": "h"}),
               "exercise_start": POST_EXERCISE_START, "exercise_min": cfg["exercise_min"],
               "intensity": cfg["intensity"], "intensity_unit": "fraction of VO2max",
               "clamp_rate": cfg["clamp_rate"], "clamp_rate_unit": "mU/m2/min", "clamp_min": cfg["clamp_min"],
               "clamp_target": "basal", "steady_state_min": STEADY_STATE_MIN, "delays_h": json.dumps(delays),
               "control": "the same clamp without exercise, starting at the end time of the bout (day 0)",
               "n_failed": n_failed, "solver": _solver_label(ssettings, fsettings, redone),
               "rtol": ssettings.rtol, "atol": ssettings.atol},
    )


def predictive_tree(tree, tidy_dir: Path, model_dir: Path, scenarios: list[Path], draws: int, solver: dict | None,
                    repo_root: Path, log: Callable[[str], None] = print, scenario_draws: int = 40,
                    post_exercise: dict | None = None) -> xr.DataTree:
    """The predictive DataTree of the module docstring. ``post_exercise``: the config section
    ``predict.post_exercise`` (None: the defaults, ``POST_EXERCISE_DEFAULTS``; ``enabled: false`` leaves the
    ``post_exercise`` child out). Scenarios and post-exercise clamps use ``scenario_draws`` evenly thinned draws."""
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
    subj = posterior_subject_draws(tree, builder, idx)  # each data condition is simulated with its own subject
    nd = len(idx)
    G = len(data.groups)
    a = data.arrays
    Cn = len(data.conditions)
    # -- data conditions on a dense grid ------------------------------------------------------------------------
    T = 121
    ts = np.stack([np.linspace(0.0, float(t1), T) for t1 in np.asarray(a.t1)])
    run = _solve_batch(builder.solver, data.active)  # the fit's solver (``auto`` resolved by measuring stiffness)
    cg = np.asarray(a.cond_group)
    means, ok_all = _over_draws(
        run, lambda d: builder.condition_params({k: jnp.asarray(v[d]) for k, v in pop.items()},
                                                {k: jnp.asarray(v[d]) for k, v in grp.items()}, a.cond_group,
                                                {k: jnp.asarray(v[d]) for k, v in subj.items()}, a.cond_subject),
        range(nd), a.inputs, ts, a.t1)
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
    sd = min(scenario_draws, nd)
    sidx = np.unique(np.linspace(0, nd - 1, sd).round().astype(int))
    if scenarios:
        prots = [load_protocol(repo_root / s if not Path(s).is_absolute() else s) for s in scenarios]
        K = max(n_breakpoints(pr) for pr in prots)
        Ts = 241
        ssettings, fsettings = _scenario_solvers(settings, prots, tree.attrs.get("solver"))
        sactive = active_states(prots + [p for p in data.protocols.values()], True)
        run_s = _solve_batch_with_slow(ssettings, sactive)
        run_f = fsettings and _solve_batch_with_slow(fsettings, sactive)
        redone = 0
        covs = data.covariates
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
            (out[si], slow[si], sok[si]), n = _over_draws_with_fallback(
                run_s, run_f, lambda d: builder.condition_params({k: jnp.asarray(v[d]) for k, v in pop.items()},
                                                                 {k: jnp.asarray(v[d]) for k, v in grp.items()},
                                                                 jnp.arange(G)),
                sidx, ub, tsb, t1b, log, f"scenario {pr.name}")
            redone += n
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
                   "solver": _solver_label(ssettings, fsettings, redone),
                   "markers": json.dumps({pr.name: [[m, float(t)] for m, t in pr.markers] for pr in prots})},
        )
        children["scenarios"] = xr.DataTree(scen_ds)
    # -- post-exercise insulin sensitivity: clamps at a grid of delays after one bout, and a control clamp -------
    pe = post_exercise_settings(post_exercise)
    if pe["enabled"]:
        children["post_exercise"] = xr.DataTree(post_exercise_dataset(
            builder, data, {k: v[sidx] for k, v in pop.items()}, {k: v[sidx] for k, v in grp.items()}, idx[sidx],
            settings, pe, log=log, fit_solver=tree.attrs.get("solver")))
    root = xr.DataTree(children=children)
    root.attrs.update({k: v for k, v in tree.attrs.items()})
    return root
