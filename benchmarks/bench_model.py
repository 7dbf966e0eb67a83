"""Benchmark of the model solve and its gradients (not a test).

    python benchmarks/bench_model.py --out benchmarks/out/model.json

For (a) the 4-h 120 mU/m^2/min clamp and (b) 60 min exercise then a next-day clamp, with the production solver
settings (config/config.yaml ``solver``: rtol = atol = 1e-6) and the production state reduction
(``simulate.active_states``), it measures

* compile time of each program (ahead-of-time ``lower().compile()``, persistent compilation cache OFF);
* warm time of a forward solve, a reverse-mode gradient (``jax.grad``, RecursiveCheckpointAdjoint) and a forward-mode
  gradient (``jax.jacfwd``, ForwardMode) of a scalar (mean GIR over the last 30 min of the clamp) with respect to
  every parameter; ``jax.block_until_ready`` before every timer stops; median (and min) of ``--repeats`` runs;
* a forward-mode gradient with respect to only the parameters the ``full`` variant estimates (what a fit
  differentiates: its sensitivity gradient propagates exactly these; ``grad_estimated``);
* gradient / forward-solve time ratios and solver steps (``num_steps``: accepted + rejected).

``--solvers`` measures several solvers side by side in the same process (default: the package's ``Kvaerno5``,
model/esdirk.py, and diffrax's own ``DiffraxKvaerno5``); every program is compiled first, then the warm repeats run
round-robin over all programs of the case, so that a slow spell of the machine hits every column alike.
``--solvers Tsit5`` measures the explicit solver that ``solver.name: auto`` picks for the clamp fits
(docs/performance.md section 1).

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


def bench_case(name: str, case: dict, p, solvers: list, repeats: int, n_save: int, estimated: list[str]) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from myoglucose.model.protocol import build_inputs
    from myoglucose.model.simulate import active_states, observables, solve
    from myoglucose.simulation import load_protocol, long_solver

    pr = load_protocol(ROOT / case["protocol"])
    u = build_inputs(pr, 70.0, 1.8)
    active = active_states([pr], insulin_kinetic=True)
    lo, hi = case["window"]
    ts = jnp.asarray(np.linspace(lo, hi, n_save))
    t1 = jnp.asarray(pr.end)

    def scalar(p, settings):
        sol = solve(p, u, ts, t1, settings, active)
        gir = observables(p, u, ts, sol)["gir"]
        return jnp.where(sol.ok, jnp.mean(gir), 0.0)

    out = {"protocol": case["protocol"], "description": case["description"], "end_min": pr.end,
           "n_states": len(active), "n_params": len(p), "scalar_window_min": [lo, hi], "estimated": list(estimated),
           "solvers": {}}
    compiled = {}
    for settings in solvers:
        s = dataclasses.replace(long_solver(dataclasses.asdict(settings), pr), adjoint="reverse")
        s_fwd = dataclasses.replace(s, adjoint="forward")
        s_sens = dataclasses.replace(s, adjoint="sensitivity")  # what a fit's forward sensitivities solve with

        def forward_solve(p, s=s):
            sol = solve(p, u, ts, t1, s, active)
            return jnp.where(sol.ok, jnp.mean(observables(p, u, ts, sol)["gir"]), 0.0), sol.ok, sol.num_steps

        def scalar_estimated(q, p, s_sens=s_sens):  # q: the estimated parameters, p: all (the rest held fixed)
            return scalar({**p, **q}, s_sens)

        programs = {
            "solve": jax.jit(forward_solve),
            "grad_reverse": jax.jit(jax.grad(lambda p, s=s: scalar(p, s))),
            "grad_forward": jax.jit(jax.jacfwd(lambda p, s_fwd=s_fwd: scalar(p, s_fwd))),
            "grad_estimated": jax.jit(lambda p, f=scalar_estimated: jax.jacfwd(f)({k: p[k] for k in estimated}, p)),
        }
        r = out["solvers"][settings.name] = {"max_steps": s.max_steps}
        for key, fn in programs.items():
            t0 = time.perf_counter()
            lowered = fn.lower(p)
            t_lower = time.perf_counter() - t0
            t0 = time.perf_counter()
            c = lowered.compile()
            t_compile = time.perf_counter() - t0
            res, t_first = timed(c, p)
            compiled[(settings.name, key)] = c
            r[key] = {"trace_lower_s": t_lower, "compile_s": t_compile, "first_run_s": t_first}
            if key == "solve":
                val, ok, steps = res
                r["scalar_mean_gir_mg_kg_min"] = float(val)
                r["ok"] = bool(ok)
                r["num_steps"] = int(steps)
            else:
                vals = np.array([float(v) for v in jax.tree_util.tree_leaves(res)])
                r[key]["all_finite"] = bool(np.all(np.isfinite(vals)))
                r[key]["values"] = {k: float(v) for k, v in res.items()}
            print(f"[bench] {name} {settings.name} {key}: trace+lower {t_lower:.1f} s, compile {t_compile:.1f} s",
                  flush=True)
    times = {k: [] for k in compiled}
    for _ in range(repeats):  # round-robin: every program once per round
        for k, c in compiled.items():
            times[k].append(timed(c, p)[1])
    for (solver, key), ts_ in times.items():
        r = out["solvers"][solver]
        r[key].update({"median_s": statistics.median(ts_), "min_s": min(ts_), "repeats": repeats})
    for solver, r in out["solvers"].items():
        for key in ("grad_reverse", "grad_forward", "grad_estimated"):
            r[f"ratio_{key}_over_solve"] = r[key]["median_s"] / r["solve"]["median_s"]
        print(f"[bench] {name} {solver}: solve {r['solve']['median_s'] * 1e3:.2f} ms, reverse "
              f"{r['grad_reverse']['median_s'] * 1e3:.2f} ms ({r['ratio_grad_reverse_over_solve']:.1f}x), forward "
              f"{r['grad_forward']['median_s'] * 1e3:.2f} ms ({r['ratio_grad_forward_over_solve']:.1f}x), estimated "
              f"{r['grad_estimated']['median_s'] * 1e3:.2f} ms ({r['ratio_grad_estimated_over_solve']:.1f}x), "
              f"{r['num_steps']} steps", flush=True)
    names = list(out["solvers"])
    if len(names) > 1:  # the derivatives of every solver against the first's
        ref = out["solvers"][names[0]]["grad_reverse"]["values"]
        scale = max(abs(v) for v in ref.values())
        for solver in names[1:]:
            other = out["solvers"][solver]["grad_reverse"]["values"]
            out["solvers"][solver]["grad_reverse_max_abs_diff_over_max_abs"] = max(
                abs(other[k] - ref[k]) for k in ref) / scale
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    sv = res["solver"]
    lines = [
        "# myoglucose model benchmark",
        "",
        f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, load average (1/5/15 min) at start "
        f"{'/'.join(f'{x:.1f}' for x in m['loadavg_start'])}, at end {'/'.join(f'{x:.1f}' for x in m['loadavg_end'])}; "
        f"Python {m['python']}, jax {m['jax']}, jaxlib {m['jaxlib']}, diffrax "
        f"{m['diffrax']}, equinox {m['equinox']}, backend {m['backend']}. Persistent compilation cache off.",
        "",
        f"Solver tolerances: rtol {sv['rtol']}, atol {sv['atol']}, dt0 {sv['dt0']}; "
        f"states reduced by `active_states`; scalar = mean GIR over the last 30 min of the clamp; gradients w.r.t. "
        f"all parameters; warm times are the median of {res['repeats']} round-robin runs (every program of a case "
        f"once per round).",
        "",
        "| case | solver | states | params | steps | trace+lower solve / rev / fwd (s) | compile solve / rev / fwd (s) | "
        "solve (ms) | reverse grad (ms) | forward grad (ms) | rev/solve | fwd/solve | estimated-parameter "
        "grad (ms) | est/solve |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, case in res["cases"].items():
        for solver, c in case["solvers"].items():
            lines.append(
                f"| {name} | {solver} | {case['n_states']} | {case['n_params']} | {c['num_steps']} | "
                f"{c['solve']['trace_lower_s']:.1f} / {c['grad_reverse']['trace_lower_s']:.1f} / "
                f"{c['grad_forward']['trace_lower_s']:.1f} | "
                f"{c['solve']['compile_s']:.1f} / {c['grad_reverse']['compile_s']:.1f} / "
                f"{c['grad_forward']['compile_s']:.1f} | {c['solve']['median_s'] * 1e3:.2f} | "
                f"{c['grad_reverse']['median_s'] * 1e3:.2f} | {c['grad_forward']['median_s'] * 1e3:.2f} | "
                f"{c['ratio_grad_reverse_over_solve']:.1f} | {c['ratio_grad_forward_over_solve']:.1f} | "
                f"{c['grad_estimated']['median_s'] * 1e3:.2f} | {c['ratio_grad_estimated_over_solve']:.1f} |")
    if all("min_s" in c[k] for case in res["cases"].values() for c in case["solvers"].values()
           for k in ("solve", "grad_reverse", "grad_forward", "grad_estimated")):
        lines += ["", "The fastest of the repeats (a machine's slow spells inflate the medians; on a shared or "
                  "virtual machine the minima are the steadier figure of what each program costs):", "",
                  "| case | solver | solve (ms) | reverse grad (ms) | forward grad (ms) | estimated-parameter grad (ms) | "
                  "rev/solve | fwd/solve | est/solve |", "|---|---|---|---|---|---|---|---|---|"]
        for name, case in res["cases"].items():
            for solver, c in case["solvers"].items():
                mins = {k: c[k]["min_s"] for k in ("solve", "grad_reverse", "grad_forward", "grad_estimated")}
                lines.append(
                    f"| {name} | {solver} | {mins['solve'] * 1e3:.2f} | {mins['grad_reverse'] * 1e3:.2f} | "
                    f"{mins['grad_forward'] * 1e3:.2f} | {mins['grad_estimated'] * 1e3:.2f} | "
                    f"{mins['grad_reverse'] / mins['solve']:.1f} | {mins['grad_forward'] / mins['solve']:.1f} | "
                    f"{mins['grad_estimated'] / mins['solve']:.1f} |")
    diffs = [(name, solver, c["grad_reverse_max_abs_diff_over_max_abs"]) for name, case in res["cases"].items()
             for solver, c in case["solvers"].items() if "grad_reverse_max_abs_diff_over_max_abs" in c]
    if diffs:
        first = next(iter(next(iter(res["cases"].values()))["solvers"]))
        lines += ["", f"Reverse-mode gradient against {first}'s (largest difference over the largest entry): "
                  + "; ".join(f"{n} {s} {d:.1e}" for n, s, d in diffs) + "."]
    ests = {tuple(c.get("estimated", ())) for c in res["cases"].values()} - {()}
    if ests:
        lines += ["", "Estimated parameters (forward mode, the `full` variant's): " + ", ".join(sorted(ests)[0]) + "."]
    lines += ["", "First-call cost = trace+lower + compile (XLA, `lower().compile()`). Warm times: median of the repeats, "
              "each stopped after `jax.block_until_ready`. Steps = accepted + rejected solver steps of one solve."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/model.json"), help="JSON output path")
    ap.add_argument("--repeats", type=int, default=15, help="warm repeats per measurement (median reported)")
    ap.add_argument("--cases", nargs="*", default=list(CASES), choices=list(CASES))
    ap.add_argument("--n-save", type=int, default=7, help="save times in the scalar's 30-min window")
    ap.add_argument("--rtol", type=float, default=None, help="override config/config.yaml solver.rtol")
    ap.add_argument("--atol", type=float, default=None, help="override config/config.yaml solver.atol")
    ap.add_argument("--solvers", nargs="*", default=["Kvaerno5", "DiffraxKvaerno5"],
                    help="solvers measured side by side (e.g. Kvaerno5 DiffraxKvaerno5 Tsit5)")
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
    solvers = [SolverSettings.from_dict({**cfg, "name": name}) for name in args.solvers]
    settings = solvers[0]
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
        res["cases"][name] = bench_case(name, CASES[name], p, solvers, args.repeats, args.n_save, estimated)
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
