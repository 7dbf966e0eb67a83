"""Peer comparison on hierarchical synthetic cohorts (not a test): the cost of one log-density gradient in myoglucose
and in Stan, side by side in one run, for N subjects (each its own group under the population), on the same model,
data, priors and tolerances as ``bench_peer.py``'s single-dataset fit.

    python benchmarks/bench_peer_cohort.py --n 1 4 16 64 --out benchmarks/out/peer_cohort.json

The cohort: the ``core`` variant, the Katz 2000 120 mU/m^2/min clamp protocol, parameters drawn from the priors
(seed 1), glucose, insulin and GIR every 20 min over 4 h with observation noise (``myoglucose.cohort``); the insulin
series is then used as measured forcing (``insulin_mode: forced``), as in the Katz fit, which is what the Stan
program ``benchmarks/stan/core_clamp.stan`` implements. At each N both stacks are evaluated at the same two points
(the prior median, and a reproducible point away from it): the log densities and gradients must agree (translation
check at this N), then each stack's gradient is timed (median of ``--repeats``, warm). Stan runs in a child process
without JAX.

A converged 64-subject Stan fit is out of reach on 2 cores (about 0.5 s per gradient and about 50 gradients per
iteration: about 14 h of wall time for 4 x (500 + 500)), so this script measures the gradient, which is where the two
stacks differ: on the single-dataset fit both samplers needed the same gradients per effective sample
(``bench_peer.py``).
Writes ``--out`` (JSON) and a markdown table next to it naming the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks" / "stan"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import cpu_model  # noqa: E402
from bench_peer import load, versions  # noqa: E402  (load average, package versions)


def cohort_problem(n: int, solver: dict):
    """(spec, data, builder) of an N-subject cohort, every subject its own group, insulin as measured forcing."""
    import jax

    from myoglucose.cohort import simulate_cohort
    from myoglucose.inference.arrays import build_fit_data
    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.model.simulate import SolverSettings
    from myoglucose.model.spec import load_model

    spec = load_model(ROOT / "models/core")
    with jax.default_device(jax.devices("cpu")[0]):
        coh = simulate_cohort(spec, str(ROOT / "protocols/katz2000_clamp_120.yaml"), n, 1, ["cohort"],
                              ["glucose_plasma", "insulin_plasma", "gir"], np.arange(0.0, 241.0, 20.0),
                              solver=solver)
    conds = coh.conditions.assign(group=coh.conditions["subject_id"], insulin_mode="forced")
    meas = coh.measurements.assign(group=coh.measurements["subject_id"])
    data = build_fit_data(meas, conds, ROOT, set(spec.observables))
    return spec, data, ModelBuilder(spec, data, SolverSettings.from_dict(solver))


def phase_jax(ns: list[int], solver: dict, repeats: int, work: Path) -> dict:
    import jax_side
    from export import export

    jax_side.configure()
    out = {}
    for n in ns:
        t0 = time.perf_counter()
        spec, data, builder = cohort_problem(n, solver)
        setup = time.perf_counter() - t0
        d, meta = export(spec, data, builder, solver["rtol"], solver["atol"], solver["max_steps"])
        dens = jax_side.Density(builder)
        points = {"median": jax_side.median_latents(builder), "random": jax_side.random_latents(builder, 1, 0.5)}
        res = {"n_subjects": n, "groups": len(data.groups), "measurements": int(d["N"]),
               "solver": builder.solver.name, "setup_s": setup, "points": {}}
        for name, lat in points.items():
            u = dens.unconstrain(lat)
            v, g = dens.value_and_grad(u)
            t = jax_side.time_call(dens.value_and_grad, u, repeats=repeats)
            res["points"][name] = {"u_stan": jax_side.flat_in_stan_order(u, d, meta).tolist(),
                                   "log_density": -float(v),
                                   "grad": (-jax_side.flat_in_stan_order(g, d, meta)).tolist(),
                                   "timing": t, "latent_dim": int(sum(np.size(x) for x in u.values()))}
        print(f"[jax] N={n}: gradient {res['points']['median']['timing']['median_s'] * 1e3:.2f} ms "
              f"({res['solver']}, latent dim {res['points']['median']['latent_dim']})", flush=True)
        (work / f"stan_data_{n}.json").write_text(json.dumps(d))
        out[str(n)] = res
    return out


def phase_stan(work: Path, repeats: int) -> None:
    """Child process, no JAX: for every N, build (httpstan caches the program; data differ) and time a gradient."""
    import stan_side

    jx = json.loads((work / "jax.json").read_text())
    out = {}
    for n, r in jx.items():
        d = json.loads((work / f"stan_data_{n}.json").read_text())
        post, info = stan_side.build(d)
        res = {"build": info, "points": {}}
        for name, p in r["points"].items():
            u = p["u_stan"]
            res["points"][name] = {"log_density": stan_side.log_prob(post, u),
                                   "grad": stan_side.grad_log_prob(post, u).tolist(),
                                   "timing": stan_side.time_gradient(post, u, repeats=repeats)}
        print(f"[stan] N={n}: gradient {res['points']['median']['timing']['grad_median_s'] * 1e3:.1f} ms",
              flush=True)
        out[n] = res
    (work / "stan.json").write_text(json.dumps(out))


def analyse(jx: dict, st: dict) -> list[dict]:
    rows = []
    for n, r in jx.items():
        s = st[n]
        row = {"n_subjects": int(n), "latent_dim": r["points"]["median"]["latent_dim"],
               "measurements": r["measurements"], "solver": r["solver"], "points": {}}
        for name in r["points"]:
            pj, ps = r["points"][name], s["points"][name]
            gj, gs = np.asarray(pj["grad"]), np.asarray(ps["grad"])
            row["points"][name] = {
                "gradient_myoglucose_s": pj["timing"]["median_s"], "gradient_stan_s": ps["timing"]["grad_median_s"],
                "ratio_stan_over_myoglucose": ps["timing"]["grad_median_s"] / pj["timing"]["median_s"],
                "log_density_myoglucose": pj["log_density"], "log_density_stan": ps["log_density"],
                "log_density_abs_diff": abs(pj["log_density"] - ps["log_density"]),
                "grad_max_rel_diff": float(np.max(np.abs(gj - gs) / np.maximum(np.abs(gs), 1e-3)))}
        rows.append(row)
    return rows


def markdown(res: dict) -> str:
    m = res["machine"]
    L = ["# Peer comparison on hierarchical cohorts: one log-density gradient, myoglucose vs Stan", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, load average at start {m['load_start']}, at end {m['load_end']}. "
         f"Core variant, Katz 2000 clamp protocol, N synthetic subjects each its own group, insulin as measured "
         f"forcing; rtol {res['solver']['rtol']}, atol {res['solver']['atol']}; Stan `ode_bdf_tol` (CVODES, forward "
         f"sensitivities) through PyStan's compiled module; myoglucose `{res['solver']['adjoint']}` gradients. "
         f"Median of {res['repeats']} warm calls at the prior median (and at a second point, in brackets).", "",
         "| N subjects | latent dim | measurements | myoglucose solver | myoglucose gradient [ms] | Stan gradient [ms] "
         "| Stan / myoglucose | abs. log-density difference | max rel. gradient difference |",
         "|---|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        a, b = r["points"]["median"], r["points"]["random"]
        L.append(f"| {r['n_subjects']} | {r['latent_dim']} | {r['measurements']} | {r['solver']} | "
                 f"{a['gradient_myoglucose_s'] * 1e3:.2f} ({b['gradient_myoglucose_s'] * 1e3:.2f}) | "
                 f"{a['gradient_stan_s'] * 1e3:.1f} ({b['gradient_stan_s'] * 1e3:.1f}) | "
                 f"**{a['ratio_stan_over_myoglucose']:.1f}** ({b['ratio_stan_over_myoglucose']:.1f}) | "
                 f"{a['log_density_abs_diff']:.1e} ({b['log_density_abs_diff']:.1e}) | "
                 f"{a['grad_max_rel_diff']:.1e} ({b['grad_max_rel_diff']:.1e}) |")
    L += ["", "Versions: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()), ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", nargs="*", type=int, default=[1, 4, 16, 64])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--out", default="benchmarks/out/peer_cohort.json")
    ap.add_argument("--phase", choices=("stan",), help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.phase == "stan":
        phase_stan(Path(args.work), args.repeats)
        return 0
    import yaml

    os.chdir(ROOT)
    solver = dict(yaml.safe_load((ROOT / args.config).read_text())["solver"])
    work = Path(tempfile.mkdtemp(prefix="peer_cohort_"))
    load_start = load()
    jx = phase_jax(args.n, solver, args.repeats, work)
    (work / "jax.json").write_text(json.dumps(jx))
    subprocess.run([sys.executable, __file__, "--phase", "stan", "--work", str(work), "--repeats", str(args.repeats)],
                   check=True)
    st = json.loads((work / "stan.json").read_text())
    res = {"solver": solver, "repeats": args.repeats,
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "load_start": load_start, "load_end": load()},
           "versions": {k: v for k, v in versions().items() if k in ("jax", "diffrax", "numpyro", "pystan",
                                                                     "httpstan", "stanc")},
           "jax": jx, "stan": {n: {k: v for k, v in s.items()} for n, s in st.items()}, "rows": analyse(jx, st)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2, default=float))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
