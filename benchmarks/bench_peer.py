"""Peer comparison: myoglucose (diffrax + NumPyro) against Stan (PyStan 3, CVODES) on the same model, data and priors,
plus a plain scipy baseline (not a test).

    python benchmarks/bench_peer.py --warm-jax --stan-solvers bdf --out benchmarks/out/peer.json

(chains, warm-up, draws, target acceptance, tree depth, metric and init default to the config's, i.e. the default
fit's settings; the Stan side takes about 30 min of the 2 cores with them, myoglucose under 4 min)

The model is the `core` variant fitted to the Katz 2000 clamp data (``--model``, ``--tidy-dir``); the Stan program
``benchmarks/stan/core_clamp.stan`` is a hand translation checked by ``benchmarks/stan/validate.py``. Steps, one
process each (Stan never shares a process with JAX: httpstan forks its chain workers):

1. myoglucose: the package's own ``inference.fit.run_fit`` (MAP or median initialisation as configured, chains in
   processes, progress logs on), preceded by a 1 + 1 iteration run of the same fit with an empty compilation cache,
   whose wall time is the start-up + trace + compile cost. The sampling time: with ``--warm-jax`` the wall clock of
   the whole parallel sampling phase (as Stan's); otherwise the sampler's own timer (first logged iteration to the
   last, scaled to all iterations, when every chain has its own core), or the fit's wall time minus the probe's.
   Then the warm cost of one log-density gradient at the posterior mean.
2. Stan: compile (the cached builds of this program removed first, unless ``--warm-stan``), NUTS with the same
   chains, warm-up, draws, target acceptance, maximum tree depth, metric (dense: ``stan/nuts_driver.cpp`` through
   ``stan::services`` as CmdStan; diagonal: PyStan 3), solver tolerances and ``max_num_steps`` as configured,
   every chain started at myoglucose's initial point; warm-up draws are kept to count their leapfrog steps.
   ``--stan-solvers`` picks ``ode_bdf_tol`` (CVODES BDF) and/or ``ode_rk45_tol``. Then one gradient at the same
   posterior mean, with each Stan solver.
3. scipy: one log density (solve_ivp BDF and LSODA) and finite-difference gradients at the same point.
4. Comparison (ArviZ 1.3): bulk and tail ESS, R-hat and MCSE of every sampled (unconstrained) coordinate and every
   natural-scale parameter, posterior means of the two stacks compared within their Monte Carlo errors, ESS per
   second of the slowest quantity with and without compile, gradient evaluations per effective sample.

Writes ``--out`` (JSON, every number) and a markdown table next to it (same name, ``.md``) naming the machine (CPU,
cores, load average before and after every step) and the package versions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STAN_DIR = ROOT / "benchmarks" / "stan"
sys.path.insert(0, str(STAN_DIR))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import cpu_model  # noqa: E402  (the machine description, shared by the benchmarks)


# ---------------------------------------------------------------------------------------------------------- machine
def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for p in ("myoglucose", "jax", "jaxlib", "diffrax", "equinox", "numpyro", "arviz", "arviz-stats", "pystan",
              "httpstan", "scipy", "numpy"):
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    try:
        out["g++"] = subprocess.run(["g++", "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    except (OSError, IndexError):
        out["g++"] = None
    try:
        import httpstan

        stanc = Path(httpstan.__file__).parent / "stanc"
        out["stanc"] = subprocess.run([str(stanc), "--version"], capture_output=True, text=True).stdout.strip()
    except Exception:  # noqa: BLE001 - only a label
        out["stanc"] = None
    return out


def log(msg: str):
    print(f"[bench_peer {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------- phase: myoglucose
def phase_jax(cfg: dict, work: Path) -> None:
    """Runs in its own process. Writes work/jax.json and work/jax_draws.npz."""
    import jax_side

    a = cfg["args"]
    cold = not a["warm_jax"]
    cache_probe = tempfile.mkdtemp(prefix="peer_jax_probe_")  # always empty: the probe measures the cold compile
    cache_main = tempfile.mkdtemp(prefix="peer_jax_main_") if cold else a["cache_dir"]
    jax_side.configure(cache_main)
    import jax

    import myoglucose.inference.sample as sample_mod
    from export import export, numpyro_to_stan
    from myoglucose.inference.fit import run_fit

    sampler = dict(cfg["sampler"])
    job, spec, data, builder = jax_side.load(a["tidy_dir"], a["model"], cfg["solver"], sampler, cache_main)
    d, meta = export(spec, data, builder, cfg["solver"]["rtol"], cfg["solver"]["atol"], cfg["solver"]["max_steps"],
                     split_at_knots=a["split_at_knots"])
    res = {"problem": {"estimated": [r.id for r in builder.estimated], "groups": list(data.groups),
                       "conditions": list(data.conditions), "observables": list(data.observables),
                       "measurements": int(d["N"]), "active_states": list(data.active),
                       "myoglucose_solver": builder.solver.name,
                       "stiffness": (builder.stiffness.as_dict() if getattr(builder, "stiffness", None) is not None
                                     else None)},
           "stan_data": d, "meta": meta, "load": {"start": load()}}

    # 1) start-up + compile probe: 1 warm-up + 1 draw, median initialisation, empty cache
    import dataclasses

    probe_job = dataclasses.replace(job, sampler=dict(sampler, warmup=1, samples=1, init="median"),
                                    cache_dir=cache_probe)
    t0 = time.perf_counter()
    _, pstats, _ = run_fit(probe_job, log=lambda m: log(f"[probe] {m}"))
    res["probe"] = {"wall_s": time.perf_counter() - t0, "sampling_wall_s": float(pstats["_sampling_wall"]),
                    "chain_elapsed_s": np.asarray(pstats["_elapsed"]).tolist(), "cache": "cold" if cold else "warm"}
    res["load"]["after_probe"] = load()

    # 2) the fit, capturing the MAP point (the initial point of every chain) and its cost
    captured = {}
    orig = sample_mod.find_map

    def find_map(*args, **kw):
        t = time.perf_counter()
        out = orig(*args, **kw)
        captured["map_s"] = time.perf_counter() - t
        captured["init"] = {k: np.asarray(v) for k, v in out.items()}
        return out

    sample_mod.find_map = find_map
    t0 = time.perf_counter()
    samples, stats, _ = run_fit(job, log=lambda m: log(f"[fit] {m}"))
    sample_mod.find_map = orig
    res["fit"] = {"wall_s": time.perf_counter() - t0, "sampling_wall_s": float(stats["_sampling_wall"]),
                  "chain_elapsed_s": np.asarray(stats["_elapsed"]).tolist(), "map_s": captured.get("map_s"),
                  "init": sampler["init"], "cache": "cold" if cold else "warm"}
    res["load"]["after_fit"] = load()
    init = captured.get("init") or jax_side.median_latents(builder)
    res["init_stan"] = numpyro_to_stan(init, meta)

    # 3) one gradient at the posterior mean (unconstrained), warm
    dens = jax_side.Density(builder)
    lat_names = [k for k in samples if k.endswith(("__z", "__z_mu", "__omega")) or k.startswith("sigma_")]
    u_draws = {k: samples[k] for k in lat_names}
    u_draws.update({k: np.log(samples[k]) for k in lat_names if k.endswith("__omega") or k.startswith("sigma_")})
    u_mean = {k: jax.numpy.asarray(v.mean(axis=(0, 1))) for k, v in u_draws.items()}
    t0 = time.perf_counter()
    v, g = jax.block_until_ready(dens.value_and_grad(u_mean))
    compile_grad = time.perf_counter() - t0
    res["gradient"] = {"first_call_s (trace + compile + run)": compile_grad,
                       **jax_side.time_call(dens.value_and_grad, u_mean, repeats=a["grad_repeats"]),
                       "log_density": -float(v)}
    res["density_only"] = jax_side.time_call(dens.potential, u_mean, repeats=a["grad_repeats"])
    mu, ok, steps = dens.means({k: (np.exp(np.asarray(x)) if (k.endswith("__omega") or k.startswith("sigma_"))
                                    else x) for k, x in u_mean.items()})
    res["solver_steps_at_mean"] = np.asarray(steps).tolist()
    res["u_mean_stan_order"] = jax_side.flat_in_stan_order(u_mean, d, meta).tolist()
    res["grad_stan_order"] = (-jax_side.flat_in_stan_order(g, d, meta)).tolist()
    res["load"]["end"] = load()
    (work / "jax.json").write_text(json.dumps(res))
    # natural-scale parameters of every draw (run_fit returns the latent sites)
    flat = {k: np.asarray(samples[k]).reshape((-1,) + np.asarray(samples[k]).shape[2:]) for k in lat_names}
    pop, grp, _ = jax.vmap(builder.natural)({k: jax.numpy.asarray(v) for k, v in flat.items()})
    C, D = np.asarray(samples[lat_names[0]]).shape[:2]
    natural = {k: np.asarray(v).reshape((C, D) + np.asarray(v).shape[1:]) for k, v in {**pop, **grp}.items()}
    np.savez(work / "jax_draws.npz", **{k: np.asarray(v) for k, v in samples.items()}, **natural,
             **{f"stat__{k}": np.asarray(v) for k, v in stats.items() if not k.startswith("_")})
    shutil.rmtree(cache_probe, ignore_errors=True)
    if cold:
        shutil.rmtree(cache_main, ignore_errors=True)


# ------------------------------------------------------------------------------------------------------ phase: Stan
def stan_files(solver: str) -> tuple[str, str]:
    """Work files of one Stan run (BDF keeps the plain names)."""
    tag = "" if solver == "bdf" else f"_{solver}"
    return f"stan{tag}.json", f"stan{tag}_draws.npz"


def phase_stan(cfg: dict, work: Path) -> None:
    """Runs in its own process (no JAX). For every Stan ODE solver asked for, writes work/stan[_<solver>].json and
    the draws next to it; the program is compiled once (the first build's time is the compile time)."""
    import stan_side
    from export import stan_draws_to_numpyro

    a = cfg["args"]
    jx = json.loads((work / "jax.json").read_text())
    meta = jx["meta"]
    s = cfg["sampler"]
    first = True
    for solver in a.get("stan_solvers", ["bdf"]):
        jf, nf = stan_files(solver)
        if a.get("reuse_work") and (work / jf).exists():
            log(f"Stan {solver}: reusing {work / jf}")
            continue
        d = dict(jx["stan_data"], ode_solver={"bdf": 0, "rk45": 1}[solver])
        res = {"solver": solver, "load": {"start": load()}}
        cold = first and not a["warm_stan"]
        if s["dense_mass"]:  # PyStan has no dense metric: the same program through stan::services, CmdStan's way
            import cmdstan_lite
            from export import STAN_FILE

            exe, info = cmdstan_lite.build(STAN_FILE, cold=cold)
            res["build"] = info
            post, res["pystan_build_for_gradient_timing"] = stan_side.build(d, seed=s["seed"], cold=cold)
        else:
            post, info = stan_side.build(d, seed=s["seed"], cold=cold)
            res["build"] = info
        first = False
        res["load"]["after_build"] = load()
        log(f"Stan {solver}: sampling ({'dense' if s['dense_mass'] else 'diagonal'} metric)")
        if s["dense_mass"]:
            cols, sinfo = cmdstan_lite.sample(exe, d, [jx["init_stan"]] * s["chains"], work / f"stan_{solver}_chains",
                                              metric="dense", warmup=s["warmup"], samples=s["samples"],
                                              delta=s["target_accept"], max_depth=s["max_tree_depth"],
                                              seed=s["seed"], log=log)
            st = cmdstan_lite.sampler_stats(cols, s["warmup"])
            draws = cmdstan_lite.columns_to_numpyro(cols, meta, skip=s["warmup"])
        else:
            fit, sinfo = stan_side.sample(post, s["chains"], s["warmup"], s["samples"], s["target_accept"],
                                          s["max_tree_depth"], inits=[jx["init_stan"]] * s["chains"])
            st = stan_side.draws_stats(fit, s["warmup"])
            draws = stan_draws_to_numpyro(fit, meta, skip=s["warmup"])
        res["sample"] = sinfo
        res["load"]["after_sample"] = load()
        u = jx["u_mean_stan_order"]
        res["gradient"] = stan_side.time_gradient(post, u, repeats=a["grad_repeats"])
        res["grad_at_mean"] = stan_side.grad_log_prob(post, u).tolist()
        res["log_density_at_mean"] = stan_side.log_prob(post, u)
        res["load"]["end"] = load()
        # the cost of one gradient with the other ODE solvers too (no sampling), at the same point
        res["gradient_other_solvers"] = {}
        for other, code in (("bdf", 0), ("rk45", 1)):
            if other != solver:
                p2, _ = stan_side.build(dict(d, ode_solver=code), seed=s["seed"])
                res["gradient_other_solvers"][other] = {**stan_side.time_gradient(p2, u, repeats=a["grad_repeats"]),
                                                        "log_density": stan_side.log_prob(p2, u)}
        (work / jf).write_text(json.dumps(res))
        np.savez(work / nf, **draws,
                 **{f"stat__{k}__{ph}": v[ph] for k, v in st.items() for ph in ("warmup", "sampling")})


# ------------------------------------------------------------------------------------------------------ analysis
def scalars(draws: dict, names: list[str], groups: list[str]) -> dict[str, np.ndarray]:
    """{name[group]: [chain, draw]} for the quantities in ``names`` (group arrays split)."""
    out = {}
    for n in names:
        x = np.asarray(draws[n], float)
        if x.ndim == 3:
            for i, g in enumerate(groups):
                out[f"{n}[{g}]"] = x[..., i]
        else:
            out[n] = x
    return out


def diagnostics(sc: dict[str, np.ndarray]) -> dict:
    import arviz as az
    from arviz_base import from_dict

    dt = from_dict({"posterior": sc})
    res = {}
    metrics = {"ess_bulk": az.ess(dt, method="bulk"), "ess_tail": az.ess(dt, method="tail"),
               "r_hat": az.rhat(dt), "mcse_mean": az.mcse(dt, method="mean"), "mcse_sd": az.mcse(dt, method="sd")}
    for k in sc:
        res[k] = {m: float(np.asarray(v[k] if not hasattr(v, "posterior") else v["posterior"][k]))
                  for m, v in metrics.items()}
        res[k]["mean"] = float(sc[k].mean())
        res[k]["sd"] = float(sc[k].std(ddof=1))
    return res


def sampler_timer(path: Path, total: int):
    """From the fit's progress lines ("chain(s) [c]: iteration i/n (...), ..., t s"), per chain the first and the last
    (iteration, seconds since the first step); returns the chain with the longest span, or None."""
    import re

    if not path.exists():
        return None
    pat = re.compile(r"chain\(s\) \[([0-9, ]+)\]: iteration (\d+)/(\d+) .*?([0-9.]+) s$")
    per = {}
    for line in path.read_text().splitlines():
        m = pat.search(line.strip())
        if m and int(m.group(3)) == total:
            per.setdefault(m.group(1), []).append((int(m.group(2)), float(m.group(4))))
    best = None
    for pts in per.values():
        if len(pts) >= 2 and pts[-1][0] > pts[0][0]:
            span = (pts[0], pts[-1])
            if best is None or span[1][1] - span[0][1] > best[1][1] - best[0][1]:
                best = span
    return best


def analyse(cfg: dict, work: Path, jx: dict, stans: dict[str, dict], scipy_res: dict | None) -> dict:
    s = cfg["sampler"]
    meta = jx["meta"]
    groups = meta["groups"]
    latent = [f"{p}__z" for p in meta["pop"]] + [f"{p}__{k}" for p in meta["grp"] for k in ("z_mu", "omega", "z")]
    latent += meta["noise"]
    names = latent + meta["pop"] + meta["grp"]
    jd = dict(np.load(work / "jax_draws.npz"))
    dj = diagnostics(scalars(jd, names, groups))

    def slowest(dg):
        k = min(dg, key=lambda q: dg[q]["ess_bulk"])
        return k, dg[k]["ess_bulk"]

    f, pr = jx["fit"], jx["probe"]
    j_compile = pr["sampling_wall_s"]
    one_chain_per_worker = s["chains"] <= (os.cpu_count() or 1)
    timer = sampler_timer(work / "jax_stderr.log", s["warmup"] + s["samples"]) if one_chain_per_worker else None
    if cfg["args"]["warm_jax"]:  # like Stan's: the whole parallel sampling phase, wall clock
        j_sampling = f["sampling_wall_s"]
        j_method = "sampling phase wall clock, warm compilation cache (worker start-up and trace included)"
    elif timer is not None:  # the sampler's own timer: (first logged iteration, its time) .. (last, its time)
        (i0, t0), (i1, t1) = timer
        j_sampling = (t1 - t0) * (s["warmup"] + s["samples"]) / (i1 - i0)  # all iterations, first-step compile out
        j_method = f"sampler timer: iterations {i0}..{i1} took {t1 - t0:.1f} s, scaled to all iterations"
    else:
        j_sampling = f["sampling_wall_s"] - j_compile
        j_method = "fit wall time minus the probe's"
    j_reliable = j_sampling > 0.2 * f["sampling_wall_s"]
    if not j_reliable and not cfg["args"]["warm_jax"]:  # the probe took nearly as long as the fit: use the total
        j_sampling = f["sampling_wall_s"]
        j_method = "fit wall time (compile included)"
    j_lf = int(jd["stat__num_steps"].sum())
    jk, jess = slowest(dj)
    my = {
        "solver": jx["problem"].get("myoglucose_solver"),
        "min_ess_bulk": jess, "slowest": jk,
        "startup_compile_s": j_compile, "sampling_s": j_sampling, "total_s": f["sampling_wall_s"],
        "sampling_s_is_total_minus_probe": j_reliable, "sampling_s_method": j_method, "map_init_s": f["map_s"],
        "ess_per_s": jess / j_sampling,
        # with a warm cache the fit compiled nothing: its cold compile is the probe's (empty cache)
        "ess_per_s_with_compile": jess / (f["sampling_wall_s"] + (j_compile if cfg["args"]["warm_jax"] else 0.0)),
        "ess_per_s_with_compile_and_map": jess / (f["sampling_wall_s"] + (f["map_s"] or 0.0)
                                                  + (j_compile if cfg["args"]["warm_jax"] else 0.0)),
        "leapfrog_sampling": j_lf, "gradients_per_ess": j_lf / jess,
        "divergences": int(jd["stat__diverging"].sum()),
        "max_treedepth_hits": int((np.floor(np.log2(np.maximum(jd["stat__num_steps"], 1))) + 1
                                   >= s["max_tree_depth"]).sum()),
        "step_size_per_chain": np.asarray(jd["stat__adapt_state.step_size"])[:, -1].tolist(),
        "gradient_s": jx["gradient"]["median_s"], "gradient_min_s": jx["gradient"]["min_s"],
        "density_s": jx["density_only"]["median_s"], "diagnostics": dj,
    }
    out = {"myoglucose": my, "stan": {}}
    for solver, sx in stans.items():
        sd = dict(np.load(work / stan_files(solver)[1]))
        ds = diagnostics(scalars(sd, names, groups))
        rows = {}
        for k in dj:
            mj, ms = dj[k], ds[k]
            se = float(np.hypot(mj["mcse_mean"], ms["mcse_mean"]))
            rows[k] = {"mean_myoglucose": mj["mean"], "mean_stan": ms["mean"], "mean_diff": mj["mean"] - ms["mean"],
                       "z": (mj["mean"] - ms["mean"]) / se if se > 0 else float("nan"),
                       "sd_ratio": mj["sd"] / ms["sd"] if ms["sd"] > 0 else float("nan")}
        zmax = max(abs(r["z"]) for r in rows.values())
        b, sm = sx["build"], sx["sample"]
        lf_w, lf_s = sd["stat__n_leapfrog____warmup"], sd["stat__n_leapfrog____sampling"]
        lf_samp, lf_all = int(lf_s.sum()), int(lf_w.sum() + lf_s.sum())
        chain_time = float(np.sum(sm["chain_warmup_s"]) + np.sum(sm["chain_sampling_s"]))
        sk, sess = slowest(ds)
        # compile: the first (cold) build of the program, shared by every solver
        compile_s = next((x["build"]["build_s"] for x in stans.values() if not x["build"]["was_cached"]),
                         b["build_s"])
        st = {
            "min_ess_bulk": sess, "slowest": sk,
            "compile_s": compile_s, "compile_cached": all(x["build"]["was_cached"] for x in stans.values()),
            "sampling_s": sm["wall_s"], "total_s": sm["wall_s"] + compile_s,
            "ess_per_s": sess / sm["wall_s"], "ess_per_s_with_compile": sess / (sm["wall_s"] + compile_s),
            "leapfrog_sampling": lf_samp, "leapfrog_total": lf_all, "gradients_per_ess": lf_samp / sess,
            "divergences": int(sd["stat__divergent____sampling"].sum()),
            "max_treedepth_hits": int((sd["stat__treedepth____sampling"] >= s["max_tree_depth"]).sum()),
            "step_size_per_chain": sd["stat__stepsize____sampling"][:, -1].tolist(),
            "gradient_s": sx["gradient"]["grad_median_s"], "gradient_min_s": sx["gradient"]["grad_min_s"],
            "gradient_in_sampling_s": chain_time / max(lf_all, 1),
            "gradient_at_init_stan_message_s": (sm["stan_init_gradient_s"] or [None])[0],
            "chain_warmup_s": sm["chain_warmup_s"], "chain_sampling_s": sm["chain_sampling_s"],
            "gradient_other_solvers": sx.get("gradient_other_solvers", {}),
            "diagnostics": ds, "runner": sm.get("runner", "PyStan 3 (httpstan)"),
            "agreement": {"max_abs_z": zmax, "within_3_mcse": bool(zmax < 3.0), "rows": rows},
        }
        st["ratio_myoglucose_over_stan"] = {
            "ess_per_s": my["ess_per_s"] / st["ess_per_s"],
            "ess_per_s_with_compile": my["ess_per_s_with_compile"] / st["ess_per_s_with_compile"],
            "gradient_time": my["gradient_s"] / st["gradient_s"],
            "gradients_per_ess": my["gradients_per_ess"] / st["gradients_per_ess"],
        }
        g_j, g_s = np.asarray(jx["grad_stan_order"]), np.asarray(sx["grad_at_mean"])
        st["gradient_agreement_at_mean"] = {
            "max_rel_diff": float(np.max(np.abs(g_j - g_s) / np.maximum(np.abs(g_s), 1e-3))),
            "log_density_myoglucose": jx["gradient"]["log_density"], "log_density_stan": sx["log_density_at_mean"]}
        out["stan"][solver] = st
    if scipy_res is not None:
        out["scipy"] = scipy_res
    return out


def fmt(x, nd=3):
    if x is None:
        return "-"
    if isinstance(x, (bool, np.bool_)):
        return str(bool(x))
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    x = float(x)
    if x != x:
        return "nan"
    if abs(x) >= 1e4 or (abs(x) < 1e-2 and x != 0):
        return f"{x:.{nd}g}"
    return f"{x:.{nd + (1 if abs(x) >= 1 else 0)}g}"


STAN_LABEL = {"bdf": "Stan `ode_bdf_tol`", "rk45": "Stan `ode_rk45_tol`"}


def markdown(res: dict) -> str:
    a = res["analysis"]
    m, stans = a["myoglucose"], a["stan"]
    st = res["settings"]
    sv = list(stans)
    heads = ["myoglucose"] + [STAN_LABEL.get(k, k) for k in sv]

    def row(label, my, per_stan, ratio=None):
        cells = [my] + [per_stan(stans[k]) for k in sv]
        r = f"| {label} | " + " | ".join(cells) + " |"
        if ratio is not None:
            r += " " + " / ".join(ratio(stans[k]) for k in sv) + " |"
        else:
            r += " |"
        return r

    rat = "ratio_myoglucose_over_stan"
    L = [f"# Peer comparison: myoglucose vs Stan ({res['model']} / {res['dataset']})", "",
         f"Machine: {res['machine']['cpu']}, {res['machine']['cores']} cores, load average (1/5/15 min) at start "
         f"{res['machine']['load_start']}, at end {res['machine']['load_end']} (a load at start above zero means "
         f"other jobs shared the cores and inflated every wall time; ratios within this run are the meaningful "
         f"numbers).",
         f"Settings: {st['chains']} chains x ({st['warmup']} warm-up + {st['samples']} draws), target acceptance "
         f"{st['target_accept']}, max tree depth {st['max_tree_depth']}, "
         f"{'dense' if st.get('dense_mass') else 'diagonal'} metric in both (Stan: {stans[sv[0]].get('runner')}), "
         f"chains in processes on every core in both, init {st['init']} (every "
         f"chain of every stack starts at the same point), rtol {res['solver']['rtol']}, atol {res['solver']['atol']}, "
         f"max steps {res['solver']['max_steps']}. myoglucose solver: {m.get('solver') or res['solver']['name']} "
         f"({res['solver']['adjoint']} gradients); Stan: CVODES BDF (`ode_bdf_tol`) and/or Dormand-Prince "
         f"(`ode_rk45_tol`), forward sensitivities"
         f"{', restarted at every insulin knot' if st['split_at_knots'] else ''}.",
         "", "| | " + " | ".join(heads) + " | myoglucose / " + " / ".join(heads[1:]) + " |",
         "|---|" + "---|" * (len(heads) + 1)]
    L.append(row("slowest bulk ESS (quantity)", f"{fmt(m['min_ess_bulk'])} ({m['slowest']})",
                  lambda x: f"{fmt(x['min_ess_bulk'])} ({x['slowest']})"))
    L.append(row("sampling time without compile [s]", fmt(m["sampling_s"]) + f" ({m['sampling_s_method']})",
                  lambda x: fmt(x["sampling_s"]), lambda x: fmt(m["sampling_s"] / x["sampling_s"])))
    L.append(row("compile [s]", f"{fmt(m['startup_compile_s'])} (start-up + trace + XLA, empty cache)",
                  lambda x: f"{fmt(x['compile_s'])} (stanc + C++{', cached' if x['compile_cached'] else ''})"))
    L.append(row("MAP initialisation [s]", fmt(m["map_init_s"]), lambda x: "(same point)"))
    L.append(row("**ESS/s without compile**", f"**{fmt(m['ess_per_s'])}**", lambda x: f"**{fmt(x['ess_per_s'])}**",
                  lambda x: f"**{fmt(x[rat]['ess_per_s'])}**"))
    L.append(row("ESS/s with compile", fmt(m["ess_per_s_with_compile"]), lambda x: fmt(x["ess_per_s_with_compile"]),
                  lambda x: fmt(x[rat]["ess_per_s_with_compile"])))
    L.append(row("gradient evaluations, kept draws (+ warm-up)", str(m["leapfrog_sampling"]),
                  lambda x: f"{x['leapfrog_sampling']} (+ {x['leapfrog_total'] - x['leapfrog_sampling']})"))
    L.append(row("gradient evaluations per effective sample", fmt(m["gradients_per_ess"]),
                  lambda x: fmt(x["gradients_per_ess"]), lambda x: fmt(x[rat]["gradients_per_ess"])))
    L.append(row("one gradient at the posterior mean [ms], median", fmt(1e3 * m["gradient_s"]),
                  lambda x: fmt(1e3 * x["gradient_s"]), lambda x: fmt(x[rat]["gradient_time"])))
    L.append(row("gradient inside sampling [ms] (chain time / leapfrog steps)", "-",
                  lambda x: fmt(1e3 * x["gradient_in_sampling_s"])))
    for other in ("bdf", "rk45"):
        if any(other in x.get("gradient_other_solvers", {}) for x in stans.values()):
            L.append(row(f"one gradient with {STAN_LABEL[other]} instead [ms] (no sampling)", "-",
                         lambda x, o=other: fmt(1e3 * x["gradient_other_solvers"][o]["grad_median_s"])
                         if o in x.get("gradient_other_solvers", {}) else "-"))
    L.append(row("divergences (kept draws)", str(m["divergences"]), lambda x: str(x["divergences"])))
    L.append(row("draws at max tree depth", str(m["max_treedepth_hits"]), lambda x: str(x["max_treedepth_hits"])))
    L.append(row("final step size per chain", ", ".join(fmt(v) for v in m["step_size_per_chain"]),
                  lambda x: ", ".join(fmt(v) for v in x["step_size_per_chain"])))
    L.append(row("posterior means agree (max abs z over all quantities)", "",
                  lambda x: f"{fmt(x['agreement']['max_abs_z'])} "
                            f"({'within' if x['agreement']['within_3_mcse'] else 'NOT within'} 3 MCSE)"))
    L += ["", "z = (mean_myoglucose - mean_Stan) / sqrt(MCSE_myoglucose^2 + MCSE_Stan^2); R-hat and bulk ESS per "
          "stack:", "",
          "| quantity | mean myoglucose | " + " | ".join(f"mean {h} (z)" for h in heads[1:]) +
          " | bulk ESS " + " / ".join(heads) + " | R-hat " + " / ".join(heads) + " |",
          "|---|---|" + "---|" * len(sv) + "---|---|"]
    for k in m["diagnostics"]:
        dm = m["diagnostics"][k]
        cells = [f"{fmt(stans[v]['diagnostics'][k]['mean'], 4)} ({fmt(stans[v]['agreement']['rows'][k]['z'], 2)})"
                 for v in sv]
        L.append(f"| {k} | {fmt(dm['mean'], 4)} | " + " | ".join(cells) + " | " +
                 " / ".join([fmt(dm["ess_bulk"])] + [fmt(stans[v]["diagnostics"][k]["ess_bulk"]) for v in sv]) +
                 " | " + " / ".join([fmt(dm["r_hat"])] + [fmt(stans[v]["diagnostics"][k]["r_hat"]) for v in sv]) +
                 " |")
    if "scipy" in a:
        L += ["", f"Plain scipy baseline at the posterior mean (log density of all three conditions; "
              f"finite-difference gradient over the {a['scipy']['dimension']} unconstrained coordinates, step 1e-4; "
              "error = largest |g - g_Stan| / max(|g_Stan|, 1e-3)):", "",
              "| method | log density [ms] | RHS evaluations | forward-FD gradient [ms] | error | "
              "central-FD gradient [ms] | error |", "|---|---|---|---|---|---|---|"]
        for meth, r in a["scipy"]["methods"].items():
            L.append(f"| solve_ivp {meth} | {fmt(1e3 * r['log_prob_median_s'])} | {r['rhs_evaluations']} | "
                     f"{fmt(1e3 * r['fd_forward_gradient_s'])} | {fmt(r.get('fd_forward_max_rel_err'))} | "
                     f"{fmt(1e3 * r['fd_central_gradient_s'])} | {fmt(r.get('fd_central_max_rel_err'))} |")
        L.append(f"| myoglucose (JAX) | {fmt(1e3 * m['density_s'])} | | {fmt(1e3 * m['gradient_s'])} (exact) | | | |")
        for v in sv:
            L.append(f"| {STAN_LABEL.get(v, v)} | | | {fmt(1e3 * stans[v]['gradient_s'])} (exact) | | | |")
    L += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items() if v), ""]
    return "\n".join(L)


# ------------------------------------------------------------------------------------------------------------ main
def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)  # so that ``finally`` blocks stop the child processes


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="config/config.yaml", help="solver and sampler defaults")
    ap.add_argument("--tidy-dir", default=None, help="prepared tables (default results/tidy/katz2000_clamp, "
                    "prepared into a temporary folder when missing)")
    ap.add_argument("--dataset", default="katz2000_clamp")
    ap.add_argument("--model", default="models/core")
    ap.add_argument("--chains", type=int, default=None, help="default: the config's (the default fit's settings)")
    ap.add_argument("--warmup", type=int, default=None, help="default: the config's")
    ap.add_argument("--samples", type=int, default=None, help="default: the config's")
    ap.add_argument("--target-accept", type=float, default=None, help="default: the config's (0.85)")
    ap.add_argument("--max-tree-depth", type=int, default=None, help="default: the config's")
    ap.add_argument("--init", choices=("map", "median"), default=None, help="default: the config's")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--split-at-knots", action="store_true", help="Stan restarts CVODES at every insulin knot")
    ap.add_argument("--stan-solvers", default="bdf",
                    help="Stan ODE solvers to sample with, comma separated: bdf (ode_bdf_tol, default) and/or rk45 "
                         "(ode_rk45_tol); one gradient with the other is timed either way")
    ap.add_argument("--warm-jax", action="store_true",
                    help="the fit uses the JAX compilation cache (compile: the probe's, from an empty cache)")
    ap.add_argument("--warm-stan", action="store_true", help="keep httpstan's cached build (compile not measured)")
    ap.add_argument("--metric", choices=("dense", "diag"), default="dense",
                    help="mass matrix of both samplers (default dense, the fits' default; Stan then runs through "
                         "benchmarks/stan/nuts_driver.cpp, as CmdStan would; diag runs Stan through PyStan 3)")
    ap.add_argument("--grad-repeats", type=int, default=10)
    ap.add_argument("--no-scipy", action="store_true")
    ap.add_argument("--keep-work", action="store_true", help="keep the per-step files next to --out")
    ap.add_argument("--reuse-work", action="store_true",
                    help="with --keep-work: skip a step whose files an earlier run left (to redo the analysis)")
    ap.add_argument("--out", default="benchmarks/out/peer.json")
    ap.add_argument("--phase", choices=("jax", "stan"), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)

    if args.phase:
        cfg = json.loads((Path(args.work) / "cfg.json").read_text())
        {"jax": phase_jax, "stan": phase_stan}[args.phase](cfg, Path(args.work))
        return 0

    import yaml

    os.chdir(ROOT)
    conf = yaml.safe_load((ROOT / args.config).read_text())
    solver = dict(conf["solver"])
    smp = dict(conf.get("sampler", {}))
    sampler = {
        "chains": args.chains or smp.get("chains", 4), "warmup": args.warmup or smp.get("warmup", 500),
        "samples": args.samples or smp.get("samples", 500),
        "target_accept": args.target_accept or smp.get("target_accept", 0.85),
        "max_tree_depth": args.max_tree_depth or smp.get("max_tree_depth", 10),
        "init": args.init or smp.get("init", "map"), "map_starts": smp.get("map_starts", 4),
        "map_steps": smp.get("map_steps", 200),
        # the same metric in both stacks: dense (the fits' default) runs Stan through benchmarks/stan/nuts_driver.cpp
        # (PyStan 3 / httpstan only has hmc_nuts_diag_e_adapt), diagonal through PyStan
        "dense_mass": args.metric == "dense",
        "chain_method": smp.get("chain_method", "auto"),
        "seed": args.seed if args.seed is not None else smp.get("seed", 1),
        "progress": True,  # the sampler logs "iteration i/n ..., t s" (t from the first step): sampling time
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="peer_"))
    tidy = args.tidy_dir or str(ROOT / "results" / "tidy" / args.dataset)
    if not (Path(tidy) / "measurements.tsv").exists():
        tidy = str(tmp / "tidy")
        log(f"preparing data/{args.dataset} into {tidy}")
        subprocess.run([sys.executable, "-m", "myoglucose.cli", "prepare", "--dataset-dir",
                        str(ROOT / "data" / args.dataset), "--out-dir", tidy], check=True)
    work = out.with_name(out.stem + "_work") if args.keep_work else tmp / "work"
    work.mkdir(parents=True, exist_ok=True)
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR")
    cfg = {"solver": solver, "sampler": sampler,
           "args": {"tidy_dir": tidy, "model": args.model, "split_at_knots": args.split_at_knots,
                    "warm_jax": args.warm_jax, "warm_stan": args.warm_stan, "grad_repeats": args.grad_repeats,
                    "cache_dir": cache, "stan_solvers": [x for x in args.stan_solvers.split(",") if x],
                    "reuse_work": args.reuse_work}}
    if args.reuse_work and (work / "cfg.json").exists():  # keep the sampler settings of the reused steps
        old_cfg = json.loads((work / "cfg.json").read_text())
        old_cfg["args"].update(stan_solvers=cfg["args"]["stan_solvers"], reuse_work=True)
        cfg = old_cfg
    (work / "cfg.json").write_text(json.dumps(cfg))
    load_start = load()
    t_all = time.perf_counter()
    solvers = cfg["args"]["stan_solvers"]
    for phase in ("jax", "stan"):
        done = [work / "jax.json"] if phase == "jax" else [work / stan_files(v)[0] for v in solvers]
        if args.reuse_work and all(f.exists() for f in done):
            log(f"step {phase}: reusing {', '.join(str(f) for f in done)}")
            continue
        log(f"step {phase} (load {load()})")
        t0 = time.perf_counter()
        with open(work / f"{phase}_stderr.log", "w") as errlog:
            proc = subprocess.Popen([sys.executable, __file__, "--phase", phase, "--work", str(work)],
                                    stderr=subprocess.PIPE, text=True)
            try:
                for line in proc.stderr:
                    sys.stderr.write(line)
                    errlog.write(line)
            finally:  # stopped (Ctrl-C, SIGTERM): stop the step, which stops its Stan chain processes
                if proc.poll() is None:
                    proc.terminate()
            if proc.wait() != 0:
                raise SystemExit(f"step {phase} failed (exit {proc.returncode})")
        log(f"step {phase} done in {time.perf_counter() - t0:.0f} s")
    jx = json.loads((work / "jax.json").read_text())
    stans = {v: json.loads((work / stan_files(v)[0]).read_text()) for v in solvers}
    ref = stans.get("bdf") or next(iter(stans.values()))
    scipy_res = None
    if not args.no_scipy:
        import scipy_model

        log("step scipy")
        u = jx["u_mean_stan_order"]
        scipy_res = {"dimension": len(u), "load": load(),
                     "methods": scipy_model.time_baseline(jx["stan_data"], u, reference_grad=ref["grad_at_mean"])}
    analysis = analyse(cfg, work, jx, stans, scipy_res)
    res = {
        "model": Path(args.model).name, "dataset": args.dataset, "settings": {**sampler,
                                                                               "split_at_knots": args.split_at_knots},
        "solver": solver, "problem": jx["problem"],
        "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                    "load_start": load_start, "load_end": load(),
                    "load_per_step": {"myoglucose": jx["load"], **{f"stan_{v}": x["load"] for v, x in stans.items()}}},
        "versions": versions(), "wall_total_s": time.perf_counter() - t_all,
        "myoglucose_raw": {k: jx[k] for k in ("probe", "fit", "gradient", "density_only", "solver_steps_at_mean")},
        "stan_raw": {v: {k: x[k] for k in ("build", "sample", "gradient")} for v, x in stans.items()},
        "analysis": analysis,
    }
    out.write_text(json.dumps(res, indent=2, default=float))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    if not args.keep_work:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
