"""Export a myoglucose fit problem (``spec, data, builder`` from ``inference.fit.load_problem``) to the data block of
``core_clamp.stan``, and convert latent draws between NumPyro's sites and the Stan program's parameters.

Only what ``core_clamp.stan`` translates is accepted: every condition insulin-forced, no exercise, the nine active
states of a clamp (``simulate.active_states``), estimated parameters among the Stan program's ``Q_ORDER``. Anything
else raises ``ValueError`` rather than exporting a different model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from myoglucose.inference.numpyro_model import GROUP_SPREAD_PRIOR

HERE = Path(__file__).resolve().parent
STAN_FILE = HERE / "core_clamp.stan"
ACTIVE = ("ins_int", "ins_liv", "akt", "as160", "glut4_pm", "glut4_in", "gp", "gt", "clamp_int")
#: the parameters that vary inside the Stan right-hand side (core_clamp.stan, transformed data ``rhs_slot``)
RHS_VARIABLE = ("k_ins_int", "akt_ec50", "glut4_capacity", "gb")
OBS_CODES = {"glucose_plasma": 1, "glucose_whole_blood": 2, "gir": 3, "rd": 4, "ra": 5, "egp": 6,
             "muscle_uptake": 7, "glut4_membrane": 8}


def q_order(stan_file: Path = STAN_FILE) -> list[str]:
    """The parameter order of ``q`` in the Stan program (its ``// Q_ORDER:`` line)."""
    for line in stan_file.read_text().splitlines():
        if line.strip().startswith("// Q_ORDER:"):
            return line.split(":", 1)[1].split()
    raise ValueError(f"{stan_file}: no '// Q_ORDER:' line")


def _inputs_at(t_break: np.ndarray, cols: dict, t: float) -> int:
    """Segment index of InputArrays.at(t) (left-continuous: segment k covers (t_k, t_k+1])."""
    return int(np.clip(np.searchsorted(t_break, t, side="left") - 1, 0, t_break.shape[0] - 1))


def export(spec, data, builder, rtol: float, atol: float, max_steps: int, split_at_knots: bool = False,
           gq_mu: bool = False, ode_solver: str = "bdf") -> tuple[dict, dict]:
    """(Stan data dict, metadata) for the problem. ``split_at_knots`` also restarts the integrator at every insulin
    knot inside a protocol segment (myoglucose's diffrax solve steps onto the knots; CVODES otherwise steps over
    them under error control)."""
    a = data.arrays
    Q = q_order()
    if tuple(data.active) != ACTIVE:
        raise ValueError(f"core_clamp.stan translates the active states {ACTIVE}; this problem has {data.active}")
    inp = {k: np.asarray(v) for k, v in vars(a.inputs).items()}
    if not np.all(inp["insulin_forced"] > 0.5):
        raise ValueError("core_clamp.stan needs every condition insulin-forced (insulin_mode: forced)")
    if np.any(inp["exercise"] != 0):
        raise ValueError("core_clamp.stan has no exercise states; the protocols contain exercise")
    unknown = [o for o in data.observables if o not in OBS_CODES]
    if unknown:
        raise ValueError(f"observables {unknown} are not translated in core_clamp.stan")
    ids = sorted(r.id for r in builder.estimated)
    if ids != sorted(RHS_VARIABLE):
        raise ValueError(f"core_clamp.stan treats exactly {RHS_VARIABLE} as estimated (the core variant); this "
                         f"model estimates {ids}")
    G = len(data.groups)
    pop, grp = [], []
    for r in builder.estimated:
        if r.id not in Q:
            raise ValueError(f"estimated parameter {r.id!r} does not enter the core clamp equations (Q_ORDER)")
        (grp if r.id in builder.group_level() else pop).append(r)
    nominal = {k: float(np.asarray(v)) for k, v in builder.fixed.items()}
    q_fixed = [nominal.get(k, spec.params[k].nominal) for k in Q]

    C = len(data.conditions)
    ts = np.asarray(a.ts)
    t1 = np.asarray(a.t1)
    m_cond = np.asarray(a.m_cond)
    m_time_idx = np.asarray(a.m_time)
    m_t = ts[m_cond, m_time_idx]
    intervals, sol_t, sol_start, sol_len, evals = [], [], [], [], {}
    e_cond, e_sol, e_inp = [], [], []
    for c in range(C):
        tb = inp["t_break"][c]
        starts = np.minimum(tb, t1[c])
        ends = np.minimum(np.concatenate([tb[1:], [np.inf]]), t1[c])
        grid = np.unique(ts[c])
        knots = np.unique(inp["ins_t"][c])
        ivs = []
        for k in range(tb.shape[0]):
            lo, hi = float(starts[k]), float(ends[k])
            if hi <= lo:
                continue
            cuts = [lo] + ([float(x) for x in knots if lo < x < hi] if split_at_knots else []) + [hi]
            seg = [inp["clamp_active"][c, k], inp["glucose_infusion"][c, k], inp["clamp_target_basal"][c, k],
                   inp["clamp_target_mgdl"][c, k]]
            ivs += [(u, v, seg) for u, v in zip(cuts[:-1], cuts[1:])]
        row_start, row_len = [], []
        for u, v, _ in ivs:
            times = [float(t) for t in grid if u < t <= v]
            if not times or times[-1] != v:
                times.append(v)
            row_start.append(len(sol_t) + 1)
            row_len.append(len(times))
            for t in times:
                sol_t.append(t)
                evals[(c, t)] = len(sol_t)  # 1-based index into sol_t
        intervals.append(ivs)
        sol_start.append(row_start)
        sol_len.append(row_len)
    J = max(len(iv) for iv in intervals)
    eval_index = {}
    for c, t in sorted({(int(c), float(t)) for c, t in zip(m_cond, m_t)}):
        eval_index[(c, t)] = len(e_cond) + 1
        e_cond.append(c + 1)
        first = intervals[c][0][0]
        e_sol.append(0 if t <= first else evals[(c, t)])
        k = _inputs_at(inp["t_break"][c], inp, t)
        e_inp.append([inp["clamp_active"][c, k], inp["glucose_infusion"][c, k], inp["clamp_target_basal"][c, k],
                      inp["clamp_target_mgdl"][c, k]])
    noise_names = list(dict.fromkeys(builder.noise_names))
    noise_prior = builder._noise_prior_unique()
    m_obs = np.asarray(a.m_obs)
    obs_noise = [noise_names.index(n) + 1 for n in builder.noise_names]

    def pad(rows, fill):
        return [list(r) + [fill] * (J - len(r)) for r in rows]

    d = {
        "C": C, "G": G, "cond_group": (np.asarray(a.cond_group) + 1).tolist(),
        "NQ": len(Q), "q_fixed": q_fixed,
        "PP": len(pop), "pop_slot": [Q.index(r.id) + 1 for r in pop],
        "pop_log": [int(r.prior == "lognormal") for r in pop], "pop_loc": [r.loc for r in pop],
        "pop_scale": [r.prior_scale for r in pop],
        "PG": len(grp), "grp_slot": [Q.index(r.id) + 1 for r in grp],
        "grp_log": [int(r.prior == "lognormal") for r in grp], "grp_loc": [r.loc for r in grp],
        "grp_scale": [r.prior_scale for r in grp], "grp_centered": [int(r.centered) for r in grp],
        "grp_spread": GROUP_SPREAD_PRIOR,
        "S": len(noise_names), "sigma_prior": [float(s) for s in noise_prior],
        "M": int(inp["ins_t"].shape[1]), "knot_t": inp["ins_t"].tolist(), "knot_v": inp["ins_v"].tolist(),
        "J": J, "n_int": [len(iv) for iv in intervals],
        "int_start": pad([[u for u, _, _ in iv] for iv in intervals], 0.0),
        "int_seg": pad([[list(map(float, s)) for _, _, s in iv] for iv in intervals], [0.0] * 4),
        "NT": len(sol_t), "sol_t": sol_t, "sol_start": pad(sol_start, 0), "sol_len": pad(sol_len, 0),
        "E": len(e_cond), "e_cond": e_cond, "e_sol": e_sol, "e_inp": [list(map(float, r)) for r in e_inp],
        "N": int(m_obs.shape[0]),
        "m_eval": [eval_index[(int(c), float(t))] for c, t in zip(m_cond, m_t)],
        "m_code": [OBS_CODES[data.observables[o]] for o in m_obs],
        "m_noise": [obs_noise[o] for o in m_obs],
        "m_kind": np.asarray(builder.noise_kind)[m_obs].astype(int).tolist(),
        "y_obs": np.asarray(a.values, float).tolist(),
        "known_sd": np.asarray(a.known_sd, float).tolist(),
        "noise_floor": np.asarray(builder.noise_floor, float)[m_obs].tolist(),
        "rtol": float(rtol), "atol": float(atol), "max_steps": int(max_steps), "gq_mu": int(gq_mu),
        "ode_solver": {"bdf": 0, "rk45": 1}[ode_solver],
    }
    meta = {"pop": [r.id for r in pop], "grp": [r.id for r in grp], "noise": noise_names,
            "groups": list(data.groups), "q_order": Q, "split_at_knots": split_at_knots,
            "intervals_per_condition": [len(iv) for iv in intervals]}
    return d, meta


def numpyro_to_stan(lat: dict, meta: dict) -> dict:
    """NumPyro latent sites (one draw, constrained: omega and sigma positive) -> Stan parameter dict."""
    G = len(meta["groups"])
    return {
        "z_pop": [float(np.asarray(lat[f"{p}__z"])) for p in meta["pop"]],
        "z_mu": [float(np.asarray(lat[f"{p}__z_mu"])) for p in meta["grp"]],
        "omega": [float(np.asarray(lat[f"{p}__omega"])) for p in meta["grp"]],
        "z_grp": [np.asarray(lat[f"{p}__z"], float).reshape(G).tolist() for p in meta["grp"]] or
                 np.zeros((0, G)).tolist(),
        "sigma": [float(np.asarray(lat[n])) for n in meta["noise"]],
    }


def by_chain(x, chains: int) -> np.ndarray:
    """A PyStan 3 ``fit[name]`` array [dims..., draw*chain] (the flat axis runs over chains fastest) ->
    [chain, draw, dims...]."""
    x = np.asarray(x)
    x = x.reshape(x.shape[:-1] + (-1, chains))
    return np.moveaxis(np.moveaxis(x, -1, 0), -1, 1)


def stan_draws_to_numpyro(fit, meta: dict, skip: int = 0) -> dict[str, np.ndarray]:
    """PyStan 3 fit -> {NumPyro site name or natural parameter: array [chain, draw, ...]}, dropping the first
    ``skip`` draws of every chain (the warm-up when it was saved)."""
    C = fit.num_chains

    def arr(name):
        return by_chain(fit[name], C)[:, skip:]

    out = {}
    zp, zm, om, zg, sg = arr("z_pop"), arr("z_mu"), arr("omega"), arr("z_grp"), arr("sigma")
    pv, gv = arr("pop_val"), arr("grp_val")
    for i, p in enumerate(meta["pop"]):
        out[f"{p}__z"] = zp[..., i]
        out[p] = pv[..., i]
    for i, p in enumerate(meta["grp"]):
        out[f"{p}__z_mu"] = zm[..., i]
        out[f"{p}__omega"] = om[..., i]
        out[f"{p}__z"] = zg[..., i, :]
        out[p] = gv[..., i, :]
    for i, n in enumerate(meta["noise"]):
        out[n] = sg[..., i]
    return out
