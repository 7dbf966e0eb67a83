"""Check the Stan translation against myoglucose before any sampling.

    python benchmarks/stan/validate.py --out benchmarks/out/peer_validation.json

At a few latent points (the prior medians and two reproducible points away from them) it compares
  * the predicted mean of every measurement: myoglucose (``ModelBuilder.predict_means``, the configured diffrax solver,
    ``auto`` resolved as in a fit) against
    the Stan program (generated quantities of a fixed-parameter run, CVODES BDF) and the scipy reference
    (``scipy_model``, solve_ivp), at the production tolerances and at tight ones (1e-10), where the solvers' errors
    are small enough to expose a translation error;
  * the log density: Stan's ``log_prob`` (with the Jacobian of the positive parameters) against minus NumPyro's
    potential energy, absolute and as the difference between points; and its gradient.

The JAX part runs in this process, the Stan part in a child process without JAX (httpstan forks workers).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
ROOT = HERE.parents[1]
TIGHT = 1e-10


def jax_part(args) -> dict:
    import jax
    import yaml

    import jax_side
    from export import export

    jax_side.configure(args.cache_dir)
    cfg = yaml.safe_load((ROOT / args.config).read_text())
    solver = dict(cfg["solver"])
    _, spec, data, builder = jax_side.load(args.tidy_dir, args.model, solver)
    tight = dict(solver, rtol=TIGHT, atol=TIGHT, max_steps=100000)
    builder_t = jax_side.with_solver(spec, data, tight)
    d, meta = export(spec, data, builder, solver["rtol"], solver["atol"], solver["max_steps"], gq_mu=True,
                     split_at_knots=args.split_at_knots)
    d_t, _ = export(spec, data, builder_t, TIGHT, TIGHT, 100000, gq_mu=True, split_at_knots=args.split_at_knots)
    dens, dens_t = jax_side.Density(builder), jax_side.Density(builder_t)
    points = {"median": jax_side.median_latents(builder), "random_1": jax_side.random_latents(builder, 1),
              "random_2": jax_side.random_latents(builder, 2, spread=1.0)}
    out = {"data": d, "data_tight": d_t, "meta": meta, "points": {}, "solver": solver}
    from export import numpyro_to_stan

    for name, lat in points.items():
        u = dens.unconstrain(lat)
        mu, ok, steps = dens.means(lat)
        mu_t, ok_t, steps_t = dens_t.means(lat)
        v, g = dens.value_and_grad(u)
        v_t = dens_t.potential(u)
        out["points"][name] = {
            "stan_params": numpyro_to_stan(lat, meta),
            "u": jax_side.flat_in_stan_order(u, d, meta).tolist(),
            "mu": np.asarray(mu).tolist(), "mu_tight": np.asarray(mu_t).tolist(),
            "ok": bool(np.all(ok)), "ok_tight": bool(np.all(ok_t)),
            "steps": np.asarray(steps).tolist(), "steps_tight": np.asarray(steps_t).tolist(),
            "potential": float(v), "potential_tight": float(v_t),
            "grad": jax_side.flat_in_stan_order(g, d, meta).tolist(),
        }
        print(f"[jax] {name}: potential {float(v):.6f} (tight {float(v_t):.6f}), steps {np.asarray(steps)}",
              flush=True)
    out["coords"] = jax_side.stan_order(d, meta)
    out["versions"] = {"jax": jax.__version__}
    out["myoglucose_solver"] = {"production": builder.solver.name, "tight": builder_t.solver.name}
    return out


def stan_part(inp: Path, outp: Path):
    import stan_side

    src = json.loads(inp.read_text())
    post, info = stan_side.build(src["data"])
    post_t, _ = stan_side.build(src["data_tight"])
    res = {"build": info, "points": {}}
    for name, pt in src["points"].items():
        u = stan_side.unconstrain(post, pt["stan_params"])
        res["points"][name] = {
            "u": u.tolist(),
            "mu": stan_side.predicted_means(post, pt["stan_params"]).tolist(),
            "mu_tight": stan_side.predicted_means(post_t, pt["stan_params"]).tolist(),
            "log_prob": stan_side.log_prob(post, u), "log_prob_tight": stan_side.log_prob(post_t, u),
            "grad": stan_side.grad_log_prob(post, u).tolist(),
        }
        print(f"[stan] {name}: log_prob {res['points'][name]['log_prob']:.6f}", flush=True)
    outp.write_text(json.dumps(res))


def scipy_part(src: dict) -> dict:
    import scipy_model

    res = {}
    for name, pt in src["points"].items():
        u = np.asarray(pt["u"])
        res[name] = {}
        for method in ("BDF", "LSODA"):
            m = scipy_model.ScipyModel(src["data_tight"], method=method)
            mu_t = m.predicted_means(u)
            m2 = scipy_model.ScipyModel(src["data"], method=method)
            res[name][method] = {"mu_tight": mu_t.tolist(), "mu": m2.predicted_means(u).tolist(),
                                 "log_prob": m2.log_prob(u), "log_prob_tight": m.log_prob(u)}
    return res


def rel(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-8)))


def rel_floor(a, b, floor) -> float:
    """Largest |a - b| / max(|b|, floor): relative, except near zero where ``floor`` (10 % of the median magnitude
    of that observable's data, the proportional-noise floor) is the scale."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), floor)))


def compare(jx: dict, st: dict, sp: dict | None) -> dict:
    rows = {}
    names = list(jx["points"])
    floor = np.asarray(jx["data"]["noise_floor"])
    for name in names:
        j, s = jx["points"][name], st["points"][name]
        r = {
            "unconstrained_max_abs_diff": float(np.max(np.abs(np.asarray(j["u"]) - np.asarray(s["u"])))),
            "mu_max_rel_diff_tight": rel(s["mu_tight"], j["mu_tight"]),
            "mu_max_rel_diff": rel(s["mu"], j["mu"]),
            "mu_median_rel_diff": float(np.median(np.abs(np.asarray(s["mu"]) - j["mu"]) /
                                                  np.maximum(np.abs(j["mu"]), 1e-8))),
            "mu_max_scaled_diff": rel_floor(s["mu"], j["mu"], floor),
            "mu_max_rel_diff_jax_tight_vs_production": rel(j["mu"], j["mu_tight"]),
            "mu_max_rel_diff_stan_tight_vs_production": rel(s["mu"], s["mu_tight"]),
            "log_prob_stan": s["log_prob"], "minus_potential_jax": -j["potential"],
            "log_density_abs_diff": abs(s["log_prob"] + j["potential"]),
            "log_density_abs_diff_tight": abs(s["log_prob_tight"] + j["potential_tight"]),
            "grad_max_abs_diff": float(np.max(np.abs(np.asarray(s["grad"]) + np.asarray(j["grad"])))),
            "grad_max_rel_diff": rel(s["grad"], -np.asarray(j["grad"])),
            "grad_norm": float(np.linalg.norm(j["grad"])),
            "jax_steps": j["steps"], "jax_ok": j["ok"],
        }
        if sp is not None:
            for method, v in sp[name].items():
                r[f"scipy_{method}_mu_max_rel_diff_tight"] = rel(v["mu_tight"], j["mu_tight"])
                r[f"scipy_{method}_log_density_abs_diff_tight"] = abs(v["log_prob_tight"] + j["potential_tight"])
                r[f"scipy_{method}_log_density_abs_diff"] = abs(v["log_prob"] + j["potential"])
        rows[name] = r
    base = names[0]
    for name in names[1:]:
        dj = -jx["points"][name]["potential"] + jx["points"][base]["potential"]
        ds = st["points"][name]["log_prob"] - st["points"][base]["log_prob"]
        rows[name]["difference_to_median_stan_minus_jax"] = ds - dj
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tidy-dir", default="results/tidy/katz2000_clamp")
    ap.add_argument("--model", default="models/core")
    ap.add_argument("--config", default="config/config.yaml")
    ap.add_argument("--cache-dir", default=os.environ.get("JAX_COMPILATION_CACHE_DIR"))
    ap.add_argument("--split-at-knots", action="store_true")
    ap.add_argument("--no-scipy", action="store_true")
    ap.add_argument("--out", default="benchmarks/out/peer_validation.json")
    ap.add_argument("--reuse-jax", action="store_true",
                    help="reuse the JAX part saved next to --out by an earlier run (<out>.jax.json)")
    ap.add_argument("--stan-part", nargs=2, metavar=("IN", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.stan_part:
        stan_part(Path(args.stan_part[0]), Path(args.stan_part[1]))
        return 0
    saved = Path(args.out).with_suffix(".jax.json")
    if args.reuse_jax and saved.exists():
        jx = json.loads(saved.read_text())
    else:
        jx = jax_part(args)
        saved.parent.mkdir(parents=True, exist_ok=True)
        saved.write_text(json.dumps(jx))
    with tempfile.TemporaryDirectory() as tmp:
        inp, outp = Path(tmp) / "in.json", Path(tmp) / "out.json"
        inp.write_text(json.dumps(jx))
        subprocess.run([sys.executable, __file__, "--stan-part", str(inp), str(outp)], check=True)
        st = json.loads(outp.read_text())
    Path(args.out).with_suffix(".stan.json").write_text(json.dumps(st))
    sp = None if args.no_scipy else scipy_part(jx)
    rows = compare(jx, st, sp)
    report = {"comparison": rows, "coords": jx["coords"], "solver": jx["solver"], "tight_tol": TIGHT,
              "myoglucose_solver": jx.get("myoglucose_solver"),
              "stan_build": st["build"], "split_at_knots": args.split_at_knots}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    for name, r in rows.items():
        print(name)
        for k, v in r.items():
            print(f"  {k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
