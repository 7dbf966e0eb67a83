"""Benchmark of the model solve and its gradients (not a test).

    python benchmarks/bench_model.py --out benchmarks/out/model.json

For (a) the 4-h 120 mU/m^2/min clamp and (b) 60 min exercise then a next-day clamp, with the production solver
settings (config/config.yaml ``solver``: Kvaerno5, rtol 1e-6, atol 1e-8) and the production state reduction
(``simulate.active_states``), it measures

* compile time of each program (ahead-of-time ``lower().compile()``, persistent compilation cache OFF);
* warm time of a forward solve, a reverse-mode gradient (``jax.grad``, RecursiveCheckpointAdjoint) and a forward-mode
  gradient (``jax.jacfwd``, ForwardMode) of a scalar (mean GIR over the last 30 min of the clamp) with respect to
  every parameter; ``jax.block_until_ready`` before every timer stops; median (and min) of ``--repeats`` runs;
* a forward-mode gradient with respect to only the parameters the ``full`` variant estimates (what a fit
  differentiates: its sensitivity gradient propagates exactly these; ``grad_estimated``);
* gradient / forward-solve time ratios and solver steps (``num_steps``: accepted + rejected).

``--solver Tsit5`` measures the explicit solver that ``solver.name: auto`` picks for the clamp fits
(docs/performance.md section 1); the default is the implicit solver of scenario simulations.

Writes JSON (``--out``) and a markdown table next to it (``model.md``) naming the machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CASES = {
    "clamp_120": {
        "protocol": "protocols/scenarios/clamp_120.yaml",
        "description": "4-h clamp, insulin 120 mU/m^2/min, glucose held basal",
        "window": (210.0, 240.0),  # scalar: mean GIR over the last 30 min of the clamp [min]
    },
    "exercise_then_clamp": {
        "protocol": "protocols/scenarios/exercise_then_clamp.yaml",
        "description": "60 min at 70 % VO2max (day 0 09:00), 3-h 40 mU/m^2/min clamp on day 1 09:00-12:00",
        "window": (1440.0 + 690.0, 1440.0 + 720.0),
    },
}


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def timed(f, *args):
    import jax

    t0 = time.perf_counter()
    out = jax.block_until_ready(f(*args))
    return out, time.perf_counter() - t0


def bench_case(name: str, case: dict, p, settings, repeats: int, n_save: int, estimated: list[str]) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from myoglucose.model.protocol import build_inputs
    from myoglucose.model.simulate import active_states, observables, solve
    from myoglucose.simulation import load_protocol, long_solver

    pr = load_protocol(ROOT / case["protocol"])
    u = build_inputs(pr, 70.0, 1.8)
    s = dataclasses.replace(long_solver(dataclasses.asdict(settings), pr), adjoint="reverse")
    s_fwd = dataclasses.replace(s, adjoint="forward")
    active = active_states([pr], insulin_kinetic=True)
    lo, hi = case["window"]
    ts = jnp.asarray(np.linspace(lo, hi, n_save))
    t1 = jnp.asarray(pr.end)

    def scalar(p, settings):
        sol = solve(p, u, ts, t1, settings, active)
        gir = observables(p, u, ts, sol)["gir"]
        return jnp.where(sol.ok, jnp.mean(gir), 0.0)

    def forward_solve(p):
        sol = solve(p, u, ts, t1, s, active)
        return jnp.where(sol.ok, jnp.mean(observables(p, u, ts, sol)["gir"]), 0.0), sol.ok, sol.num_steps

    def scalar_estimated(q, p):  # q: the estimated parameters, p: all (the rest held fixed)
        return scalar({**p, **q}, s_fwd)

    programs = {
        "solve": jax.jit(forward_solve),
        "grad_reverse": jax.jit(jax.grad(lambda p: scalar(p, s))),
        "grad_forward": jax.jit(jax.jacfwd(lambda p: scalar(p, s_fwd))),
        "grad_estimated": jax.jit(lambda p: jax.jacfwd(scalar_estimated)({k: p[k] for k in estimated}, p)),
    }
    out = {"protocol": case["protocol"], "description": case["description"], "end_min": pr.end,
           "n_states": len(active), "n_params": len(p), "max_steps": s.max_steps, "scalar_window_min": [lo, hi],
           "estimated": list(estimated)}
    for key, fn in programs.items():
        t0 = time.perf_counter()
        lowered = fn.lower(p)
        t_lower = time.perf_counter() - t0
        t0 = time.perf_counter()
        compiled = lowered.compile()
        t_compile = time.perf_counter() - t0
        res, t_first = timed(compiled, p)
        times = [timed(compiled, p)[1] for _ in range(repeats)]
        out[key] = {"trace_lower_s": t_lower, "compile_s": t_compile, "first_run_s": t_first,
                    "median_s": statistics.median(times), "min_s": min(times), "repeats": repeats}
        if key == "solve":
            val, ok, steps = res
            out["scalar_mean_gir_mg_kg_min"] = float(val)
            out["ok"] = bool(ok)
            out["num_steps"] = int(steps)
        else:
            vals = np.array([float(v) for v in jax.tree_util.tree_leaves(res)])
            out[key]["all_finite"] = bool(np.all(np.isfinite(vals)))
        print(f"[bench] {name} {key}: trace+lower {t_lower:.1f} s, compile {t_compile:.1f} s, warm median "
              f"{out[key]['median_s'] * 1e3:.1f} ms", flush=True)
    out["ratio_grad_reverse_over_solve"] = out["grad_reverse"]["median_s"] / out["solve"]["median_s"]
    out["ratio_grad_forward_over_solve"] = out["grad_forward"]["median_s"] / out["solve"]["median_s"]
    out["ratio_grad_estimated_over_solve"] = out["grad_estimated"]["median_s"] / out["solve"]["median_s"]
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        "# myoglucose model benchmark",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.1f}' for x in m['loadavg_start'])}, at end {'/'.join(f'{x:.1f}' for x in m['loadavg_end'])}; Python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, diffrax "
        f"{m['diffrax']}, equinox {m['equinox']}, backend {m['backend']}. Persistent compilation cache off.",
        "",
        f"Solver: {res['solver']['name']}, rtol {res['solver']['rtol']}, atol {res['solver']['atol']}, "
        f"dt0 {res['solver']['dt0']}, "
        f"states reduced by `active_states`; scalar = mean GIR over the last 30 min of the clamp; gradients w.r.t. "
        f"all parameters; warm times are the median of {res['repeats']} runs.",
        "",
        "| case | states | params | steps | trace+lower solve / rev / fwd (s) | compile solve / rev / fwd (s) | "
        "solve (ms) | reverse grad (ms) | forward grad (ms) | rev/solve | fwd/solve | estimated-parameter "
        "grad (ms) | est/solve |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in res["cases"].items():
        est = (f" {c['grad_estimated']['median_s'] * 1e3:.1f} | {c['ratio_grad_estimated_over_solve']:.1f} |"
               if "grad_estimated" in c else " - | - |")
        lines.append(
            f"| {name} | {c['n_states']} | {c['n_params']} | {c['num_steps']} | "
            f"{c['solve']['trace_lower_s']:.1f} / {c['grad_reverse']['trace_lower_s']:.1f} / "
            f"{c['grad_forward']['trace_lower_s']:.1f} | "
            f"{c['solve']['compile_s']:.1f} / {c['grad_reverse']['compile_s']:.1f} / "
            f"{c['grad_forward']['compile_s']:.1f} | {c['solve']['median_s'] * 1e3:.1f} | "
            f"{c['grad_reverse']['median_s'] * 1e3:.1f} | {c['grad_forward']['median_s'] * 1e3:.1f} | "
            f"{c['ratio_grad_reverse_over_solve']:.1f} | {c['ratio_grad_forward_over_solve']:.1f} |" + est)
    ests = {tuple(c.get("estimated", ())) for c in res["cases"].values()} - {()}
    if ests:
        lines += ["", "Estimated parameters (forward mode, the `full` variant's): " + ", ".join(sorted(ests)[0]) + "."]
    lines += ["", "First-call cost = trace+lower + compile (XLA, `lower().compile()`). Warm times: median of the repeats, "
              "each stopped after `jax.block_until_ready`. Steps = accepted + rejected solver steps of one solve."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/model.json"), help="JSON output path")
    ap.add_argument("--repeats", type=int, default=7, help="warm repeats per measurement (median reported)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--n-save", type=int, default=7, help="save times in the scalar's 30-min window")
    ap.add_argument("--rtol", type=float, default=None, help="override config/config.yaml solver.rtol")
    ap.add_argument("--atol", type=float, default=None, help="override config/config.yaml solver.atol")
    ap.add_argument("--solver", default=None, help="override config/config.yaml solver.name (e.g. Tsit5)")
    ap.add_argument("--markdown-from", default=None, help="only rewrite the markdown table from an existing JSON")
    args = ap.parse_args(argv)
    if args.markdown_from:
        res = json.loads(Path(args.markdown_from).read_text())
        md = Path(args.markdown_from).with_suffix(".md")
        md.write_text(markdown(res))
        print(markdown(res))
        return 0

    os.environ.setdefault("MYOGLUCOSE_ROOT", str(ROOT))
    from myoglucose import runtime

    runtime.configure("cpu")
    import diffrax
    import equinox
    import jax
    import jax.numpy as jnp
    import jaxlib
    import yaml

    jax.config.update("jax_enable_compilation_cache", False)  # measure real compile times

    from myoglucose.model.simulate import SolverSettings
    from myoglucose.model.spec import load_model, nominal_params

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text()).get("solver", {})
    if args.rtol is not None:
        cfg["rtol"] = args.rtol
    if args.atol is not None:
        cfg["atol"] = args.atol
    if args.solver is not None:
        cfg["name"] = args.solver
    if cfg.get("name", "auto") == "auto":
        cfg["name"] = "Kvaerno5"  # scenario simulations use the implicit solver
    settings = SolverSettings.from_dict(cfg)
    full = load_model(ROOT / "models/full")
    p = {k: jnp.asarray(v) for k, v in nominal_params(full).items()}
    estimated = [r.id for r in full.estimated]

    res = {
        "machine": {
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
            "python": sys.version.split()[0], "jax": jax.__version__, "jaxlib": jaxlib.__version__,
            "diffrax": diffrax.__version__, "equinox": equinox.__version__, "backend": jax.default_backend(),
            "platform": platform.platform(),
        },
        "solver": dataclasses.asdict(settings),
        "repeats": args.repeats,
        "cases": {},
    }
    for name in args.cases:
        res["cases"][name] = bench_case(name, CASES[name], p, settings, args.repeats, args.n_save, estimated)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(res, indent=2) + "\n")
    tmp.replace(out)
    md = out.with_name(out.stem + ".md")
    md.write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
