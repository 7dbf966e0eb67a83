"""XLA:CPU's small-while-loop threshold, side by side (not a test).

    python benchmarks/bench_xla_flags.py --out benchmarks/out/xla_flags.json

XLA:CPU (jax >= 0.4.32) executes a compiled program as a sequence of "thunks", one per fused operation, and a while
loop runs its body's thunks one by one on every iteration. An ODE solve is a loop of solver steps, each a few dozen
tiny operations on the states of a few conditions, so the dispatches can cost more than the arithmetic. Below a
byte threshold (``xla_cpu_small_while_loop_byte_threshold``, an ``--xla_backend_extra_options`` key) XLA compiles a
loop, or a run of small operations, into one kernel instead. Each ``--thresholds`` value
is put in the worker's ``XLA_FLAGS`` (``off``: none, XLA's default). Finding (docs/performance.md section 1b): with
jax 0.12 the default already compiles our solver's step loops into one kernel each, so raising it changes nothing
that matters here.

For every case and every ``--thresholds`` value, in a fresh process with an empty compilation cache (so the first
call is a cold trace + compile):

* ``model:dataset`` cases (default: the fits of config/config.yaml): the fit's potential (negative log density on
  NumPyro's unconstrained space) and its gradient, with the solver and gradient mode ``auto`` picks, as the NUTS step
  calls it: first call (trace + compile) and the warm median of ``--repeats`` calls at perturbed points, each
  stopped after ``jax.block_until_ready``;
* ``scenario:<protocol>`` cases: the predictive's scenario simulation of ``protocols/scenarios/<protocol>.yaml`` at
  the nominal parameters of models/full, 8 copies vmapped, with the solver of ``--scenario-solver`` (default the
  explicit Tsit5 at rtol = atol = 1e-8, what ``predict`` runs after an explicit fit).

The values must agree between thresholds (the same program, compiled differently); the largest relative difference
is reported. Writes JSON (``--out``) and a markdown table next to it, naming the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import cpu_model  # noqa: E402

SMALL_LOOP_OPTION = "xla_cpu_small_while_loop_byte_threshold"


def default_cases() -> list[str]:
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    fits = [f"{f['model']}:{f['dataset']}" for f in cfg.get("fits") or []]
    return fits + ["scenario:training_12w", "scenario:exercise_then_clamp"]


# ------------------------------------------------------------------------------------------------- one measurement
def _measure_fit(case: str, repeats: int, work: Path) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median

    from myoglucose.inference.fit import FitJob, load_problem
    from myoglucose.inference.sample import _init_z, potential

    model, dataset = case.split(":")
    tidy = work / "tidy" / dataset
    if not (tidy / "measurements.tsv").exists():
        subprocess.run([sys.executable, "-m", "myoglucose.cli", "prepare", "--dataset-dir",
                        str(ROOT / "data" / dataset), "--out-dir", str(tidy)], check=True, capture_output=True, cwd=ROOT)
    solver = {"name": "auto", "rtol": 1e-6, "atol": 1e-6, "max_steps": 4096, "adjoint": "auto", "dt0": 0.05}
    t0 = time.perf_counter()
    _, data, builder = load_problem(FitJob(tidy_dir=str(tidy), model_dir=str(ROOT / "models" / model),
                                           repo_root=str(ROOT), solver=solver, sampler={}))
    build_s = time.perf_counter() - t0
    vg, _ = potential(builder, data.arrays)
    x0 = ravel_pytree(_init_z(builder, data.arrays, jax.random.PRNGKey(0), init_to_median(num_samples=5)))[0]
    t0 = time.perf_counter()
    jax.block_until_ready(vg(x0))
    first = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    xs = [jnp.asarray(x0 + 0.05 * rng.standard_normal(x0.shape)) for _ in range(repeats)]
    times, values = [], []
    for x in xs:
        t0 = time.perf_counter()
        v, g = jax.block_until_ready(vg(x))
        times.append(time.perf_counter() - t0)
        values.append(float(v))
    return {"what": f"potential + gradient ({builder.solver.name}, {builder.solver.adjoint})", "build_s": build_s,
            "hlo": vg.lower(x0).compile().as_text(),
            "first_s": first, "median_s": statistics.median(times), "min_s": min(times), "values": values}


def _measure_scenario(case: str, repeats: int, solver: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from myoglucose.model.protocol import build_inputs
    from myoglucose.model.simulate import SolverSettings, active_states, solve
    from myoglucose.model.spec import load_model, nominal_params
    from myoglucose.prediction import scenario_grid
    from myoglucose.simulation import load_protocol

    pr = load_protocol(ROOT / "protocols" / "scenarios" / f"{case.split(':', 1)[1]}.yaml")
    settings = SolverSettings.from_dict({**solver, "max_steps": max(4096, int(200 + pr.end / 5.0
                                                                                + 400 * len(pr.segments)))})
    spec = load_model(ROOT / "models" / "full")
    p = {k: jnp.asarray(v) for k, v in nominal_params(spec).items()}
    active = active_states([pr], True)
    u = build_inputs(pr, 75.0, 1.9, None)
    ts = jnp.asarray(scenario_grid(pr, 241))
    scale = jnp.linspace(0.9, 1.1, 8)  # 8 copies with different insulin sensitivity, as predictive draws differ

    def one(s):
        q = dict(p, akt_ec50=p["akt_ec50"] * s)
        sol = solve(q, u, ts, pr.end, settings, active)
        return sol.ys.gp, sol.num_steps

    f = jax.jit(jax.vmap(one))
    t0 = time.perf_counter()
    jax.block_until_ready(f(scale))
    first = time.perf_counter() - t0
    times, values, steps = [], [], 0
    for i in range(repeats):
        t0 = time.perf_counter()
        g, n = jax.block_until_ready(f(scale * (1 + 1e-3 * i)))
        times.append(time.perf_counter() - t0)
        values.append(float(jnp.sum(g)))
        steps = int(jnp.max(n))
    return {"what": f"8 scenario solves vmapped ({settings.name}, rtol {settings.rtol:g}; {steps} steps)",
            "build_s": 0.0, "hlo": f.lower(scale).compile().as_text(), "first_s": first, "median_s": statistics.median(times), "min_s": min(times),
            "values": values}


def worker(args) -> int:
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    os.environ.setdefault("MYOGLUCOSE_ROOT", str(ROOT))
    from myoglucose import runtime

    info = runtime.configure("cpu", args.cache)
    if args.case.startswith("scenario:"):
        out = _measure_scenario(args.case, args.repeats, json.loads(args.scenario_solver))
    else:
        out = _measure_fit(args.case, args.repeats, Path(args.work))
    out["xla_flags"] = info.get("xla_flags", "")
    out["small_calls"] = out.pop("hlo", "").count("xla_cpu_small_call")
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------------------------------------------------ driver
def markdown(res: dict) -> str:
    th = res["thresholds"]
    base = th[0]
    lines = [
        "# XLA:CPU small-while-loop threshold: fit gradients and scenario solves",
        "",
        f"Machine: {res['machine']['cpu_model']}, {res['machine']['cpu_count']} cores, load average at start "
        f"{res['machine']['loadavg_start']}; jax {res['machine']['jax']}. Each cell: warm median of "
        f"{res['repeats']} calls [ms] (first call, cold trace + compile [s]), fresh process, empty compilation cache. "
        f"Ratio: warm time at each threshold / at `{base}` (XLA's default). Definitions: "
        "`benchmarks/bench_xla_flags.py`.",
        "",
        "| case | what | " + " | ".join(f"threshold `{t}`" for t in th) + " | "
        + " | ".join(f"ratio `{t}`" for t in th[1:]) + " | max rel. value difference |",
        "|---|---|" + "---|" * (2 * len(th)),
    ]
    for case, per in res["cases"].items():
        if any("median_s" not in per.get(t, {}) for t in th):
            continue
        cells = [f"{per[t]['median_s'] * 1e3:.2f} ({per[t]['first_s']:.1f} s; {per[t].get('small_calls', '-')} one-kernel "
                 "calls)" for t in th]
        ratios = [f"**{per[t]['median_s'] / per[base]['median_s']:.2f}**" for t in th[1:]]
        lines.append(f"| `{case}` | {per[base]['what']} | " + " | ".join(cells) + " | " + " | ".join(ratios)
                     + f" | {per.get('max_rel_diff', float('nan')):.1e} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=None, help="comma-separated model:dataset or scenario:<protocol> (default: "
                    "the config's fits and two scenarios)")
    ap.add_argument("--thresholds", default="off,1,1000000000",
                    help="comma-separated byte thresholds; 'off' is XLA's default, 1 folds no loop (first: the "
                         "baseline of the ratios)")
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--scenario-solver", default='{"name": "Tsit5", "rtol": 1e-8, "atol": 1e-8, "dt0": 0.05}')
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "xla_flags.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return worker(args)

    import jax

    cases = args.cases.split(",") if args.cases else default_cases()
    thresholds = args.thresholds.split(",")
    res = {"machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                       "python": sys.version.split()[0], "jax": jax.__version__},
           "thresholds": thresholds, "repeats": args.repeats, "cases": {}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-xla-") as work:
        for i, case in enumerate(cases):
            per = res["cases"].setdefault(case, {})
            order = thresholds if i % 2 == 0 else thresholds[::-1]  # alternate which variant runs first
            for t in order:
                env = dict(os.environ)
                env.pop("XLA_FLAGS", None)
                if t != "off":
                    env["XLA_FLAGS"] = f"--xla_backend_extra_options={SMALL_LOOP_OPTION}={int(t)}"
                with tempfile.TemporaryDirectory(prefix="cache-", dir=work) as cache:
                    p = subprocess.run([sys.executable, __file__, "--worker", "--case", case, "--cache", cache,
                                        "--work", work, "--repeats", str(args.repeats),
                                        "--scenario-solver", args.scenario_solver],
                                       env=env, capture_output=True, text=True, cwd=ROOT)
                line = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
                if p.returncode or not line:
                    per[t] = {"error": p.stderr[-2000:]}
                    print(f"{case} threshold {t}: FAILED\n{p.stderr[-2000:]}", file=sys.stderr)
                    continue
                per[t] = json.loads(line[0][7:])
                print(f"{case} threshold {t}: {per[t]['what']}: warm {per[t]['median_s'] * 1e3:.2f} ms, first "
                      f"{per[t]['first_s']:.1f} s", flush=True)
            ok = [per[t]["values"] for t in thresholds if "values" in per[t]]
            if len(ok) == len(thresholds):
                ref = ok[0]
                per["max_rel_diff"] = max(abs(a - b) / max(abs(b), 1e-300) for vals in ok[1:]
                                          for a, b in zip(vals, ref))
            out.write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
