"""Benchmark of the fit's log density: solvers side by side, accuracy against a tight reference, scaling in N
subjects, compile time cold and warm (not a test).

    python benchmarks/bench_fit.py --out benchmarks/out/fit.json

Sections (each can be chosen with ``--sections``):

* ``density``: for every ``--cases`` entry ``model:dataset`` (tidy tables from ``myoglucose prepare``, made on the fly
  into a temporary folder), the NumPyro potential (negative log density) and its gradient on the unconstrained space,
  for each solver of ``--solvers`` plus what ``auto`` chooses (model/stiffness.py): forward (potential only),
  gradient in the production ``sensitivity`` mode and in ``reverse`` mode; warm median of ``--repeats`` runs at
  perturbed points, each stopped after ``jax.block_until_ready``; first-call cost (trace + compile, in-process cache
  off); solver steps per condition; and the largest |difference| of the log density from a reference solve
  (Kvaerno5, rtol = atol = 1e-10) at the same points, so that speed never buys a wrong posterior.
* ``scaling``: a synthetic cohort (``cohort.simulate_cohort``, models/core, the Katz clamp protocol, kinetic insulin)
  of N subjects, each its own group, so the hierarchy runs over subjects; gradient cost and peak resident memory
  (one subprocess per N).
* ``compile``: cold (empty persistent cache) and warm (second process, same cache) time to the first gradient of the
  first case, in fresh processes.

Writes JSON (``--out``) and a markdown summary next to it naming the machine and its load.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import cpu_model  # noqa: E402  (the machine description, shared by the benchmarks)
REFERENCE = {"name": "Kvaerno5", "rtol": 1e-10, "atol": 1e-10, "max_steps": 100000}


def _setup(cache_dir: str | None = None, device: str = "cpu"):
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    os.environ.setdefault("MYOGLUCOSE_ROOT", str(ROOT))
    from myoglucose import runtime

    runtime.configure(device, cache_dir)


def _tidy(dataset: str, work: Path) -> Path:
    out = work / "tidy" / dataset
    if not (out / "measurements.tsv").exists():
        subprocess.run([sys.executable, "-m", "myoglucose.cli", "prepare", "--dataset-dir", str(ROOT / "data" / dataset),
                        "--out-dir", str(out)], check=True, capture_output=True, cwd=ROOT)
    return out


def _problem(model: str, tidy: Path, solver: dict):
    from myoglucose.inference.fit import FitJob, load_problem

    return load_problem(FitJob(tidy_dir=str(tidy), model_dir=str(ROOT / "models" / model), repo_root=str(ROOT),
                               solver=solver, sampler={}))


def _density_programs(builder, arrays):
    """(potential, flat init point) on the unconstrained space, as NUTS sees it: NumPyro's potential energy of the
    whole model at the prior median (``init_to_median(5)``), its sites found from the latent model as the fit does
    (``sample.latent_model``), so that no whole-model solve runs eagerly during set-up."""
    import jax
    from jax.flatten_util import ravel_pytree
    from numpyro.infer import init_to_median
    from numpyro.infer.util import potential_energy

    from myoglucose.inference.sample import _init_z

    x0, unravel = ravel_pytree(_init_z(builder, arrays, jax.random.PRNGKey(0), init_to_median(num_samples=5)))

    def pot(x):
        return potential_energy(builder.model, (arrays,), {"y": arrays.values}, unravel(x))

    return pot, x0


def _time(fn, xs, repeats):
    import jax

    out = []
    for i in range(repeats):
        x = xs[i % len(xs)]
        t0 = time.perf_counter()
        jax.block_until_ready(fn(x))
        out.append(time.perf_counter() - t0)
    return statistics.median(out), min(out)


def bench_density(case: str, solvers: list[str], repeats: int, work: Path, base_solver: dict) -> dict:
    import jax
    import numpy as np
    from numpyro.infer import init_to_median
    from numpyro.infer.util import constrain_fn

    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.inference.sample import _init_z, latent_model
    from myoglucose.model.simulate import SolverSettings

    model, dataset = case.split(":")
    tidy = _tidy(dataset, work)
    spec, data, auto_builder = _problem(model, tidy, {**base_solver, "name": "auto"})
    arrays = data.arrays
    res = {"model": model, "dataset": dataset, "conditions": len(data.conditions),
           "measurements": int(arrays.values.shape[0]), "active_states": len(data.active),
           "estimated_parameters": len(auto_builder.estimated), "groups": len(data.groups),
           "auto": auto_builder.stiffness.as_dict(), "auto_adjoint": auto_builder.solver.adjoint, "solvers": {}}
    ref = ModelBuilder(spec, data, SolverSettings.from_dict({**base_solver, **REFERENCE}))
    ref_pot, x0 = _density_programs(ref, arrays)
    rng = np.random.default_rng(0)
    xs = [x0] + [x0 + 0.1 * rng.standard_normal(x0.shape) for _ in range(4)]
    ref_vals = np.array([float(jax.jit(ref_pot)(x)) for x in xs])
    for name in solvers:
        entry = {}
        for mode in ("sensitivity", "reverse"):
            settings = SolverSettings.from_dict({**base_solver, "name": name, "adjoint": mode})
            b = ModelBuilder(spec, data, settings)
            pot, _ = _density_programs(b, arrays)
            progs = {"potential": jax.jit(pot), "value_and_grad": jax.jit(jax.value_and_grad(pot))}
            if mode == "reverse":
                progs.pop("potential")
            for key, fn in progs.items():
                t0 = time.perf_counter()
                jax.block_until_ready(fn(x0))
                first = time.perf_counter() - t0
                med, mn = _time(fn, xs, repeats)
                entry[f"{key}_{mode}" if key != "potential" else key] = {"first_call_s": first, "median_s": med,
                                                                         "min_s": mn}
            if mode == "sensitivity":
                vals = np.array([float(progs["potential"](x)) for x in xs])
                entry["max_abs_logdensity_error_vs_reference"] = float(np.max(np.abs(vals - ref_vals)))
                z0 = _init_z(b, arrays, jax.random.PRNGKey(0), init_to_median(num_samples=5))
                zc = constrain_fn(latent_model(b), (arrays,), {"y": arrays.values}, z0)
                pop, grp, _ = b.natural(zc)
                _, ok, steps = jax.jit(lambda: b.predict_means(b.condition_params(pop, grp, arrays.cond_group),
                                                               arrays))()
                entry["steps_per_condition"] = [int(s) for s in np.asarray(steps)]
                entry["ok"] = bool(np.all(np.asarray(ok)))
        p = entry["potential"]["median_s"]
        entry["ratio_grad_sensitivity_over_potential"] = entry["value_and_grad_sensitivity"]["median_s"] / p
        entry["ratio_grad_reverse_over_potential"] = entry["value_and_grad_reverse"]["median_s"] / p
        res["solvers"][name] = entry
        print(f"[bench] {case} {name}: potential {p * 1e3:.2f} ms, grad (sensitivity) "
              f"{entry['value_and_grad_sensitivity']['median_s'] * 1e3:.2f} ms, grad (reverse) "
              f"{entry['value_and_grad_reverse']['median_s'] * 1e3:.2f} ms, steps {entry['steps_per_condition']}, "
              f"|dlogp| vs reference {entry['max_abs_logdensity_error_vs_reference']:.2e}", flush=True)
    return res


def one_scaling(n: int, repeats: int, base_solver: dict, solver: str = "auto") -> dict:
    """Gradient cost of the hierarchical log density for an N-subject synthetic cohort, with the time of each set-up
    phase. The cohort is simulated on the CPU (it is set-up, not the measured program), so on a GPU machine only the
    log density runs on the accelerator."""
    import jax
    import numpy as np

    from myoglucose.cohort import simulate_cohort
    from myoglucose.inference.arrays import build_fit_data
    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.model.simulate import SolverSettings
    from myoglucose.model.spec import load_model

    phases = {}
    t0 = time.perf_counter()
    spec = load_model(ROOT / "models/core")
    times = np.arange(0.0, 241.0, 20.0)
    with jax.default_device(jax.devices("cpu")[0]):
        coh = simulate_cohort(spec, str(ROOT / "protocols/katz2000_clamp_120.yaml"), n, 1, ["cohort"],
                              ["glucose_plasma", "insulin_plasma", "gir"], times, solver=base_solver)
    conds = coh.conditions.assign(group=coh.conditions["subject_id"])  # every subject its own group
    meas = coh.measurements.assign(group=coh.measurements["subject_id"])
    data = build_fit_data(meas, conds, ROOT, set(spec.observables))
    phases["cohort_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    b = ModelBuilder(spec, data, SolverSettings.from_dict({**base_solver, "name": solver}))  # auto: the probe
    probe_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    pot, x0 = _density_programs(b, data.arrays)
    phases["init_point_s"] = time.perf_counter() - t0
    vg = jax.jit(jax.value_and_grad(pot))
    t0 = time.perf_counter()
    jax.block_until_ready(vg(x0))
    first = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    xs = [x0 + 0.05 * rng.standard_normal(x0.shape) for _ in range(3)]
    med, mn = _time(vg, xs, repeats)
    stats = jax.devices()[0].memory_stats() or {}  # accelerators report their own peak; the CPU backend reports none
    return {"n_subjects": n, "latent_dim": int(x0.shape[0]), "measurements": int(data.arrays.values.shape[0]),
            "solver": b.solver.name, "stiffness_probe_s": probe_s, "first_call_s": first, **phases,
            "grad_median_s": med, "grad_min_s": mn, "backend": jax.default_backend(),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "device_peak_mib": stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None}


def one_compile(case: str, work: Path, base_solver: dict) -> dict:
    import jax

    model, dataset = case.split(":")
    t0 = time.perf_counter()
    _, data, b = _problem(model, _tidy(dataset, work), {**base_solver, "name": "auto"})
    t_probe = time.perf_counter() - t0
    pot, x0 = _density_programs(b, data.arrays)
    t0 = time.perf_counter()
    jax.block_until_ready(jax.jit(jax.value_and_grad(pot))(x0))
    return {"stiffness_probe_s": t_probe, "first_gradient_s": time.perf_counter() - t0, "solver": b.solver.name}


def bench_load(n: int, work: Path, warmup: int, samples: int) -> dict:
    """A real (short) fit of an N-subject synthetic cohort through the CLI, each subject its own group, one chain in
    the fit process: wall time and the peak resident memory of the fit process (``getrusage`` of the children)."""
    import yaml

    cohort = work / f"cohort_{n}"
    cli = [sys.executable, "-m", "myoglucose.cli"]
    if not (cohort / "measurements.tsv").exists():
        subprocess.run([*cli, "simulate-cohort", "--model", str(ROOT / "models/core"), "--protocol",
                        str(ROOT / "protocols/katz2000_clamp_120.yaml"), "--n", str(n), "--seed", "1",
                        "--groups", ",".join(f"s{i:04d}" for i in range(n)), "--observables",
                        "glucose_plasma,insulin_plasma,gir", "--every", "20", "--out-dir", str(cohort)],
                       check=True, capture_output=True, cwd=ROOT)
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["sampler"].update(chains=1, warmup=warmup, samples=samples, max_samples=None, init="median", progress=False,
                          predictive_draws=10, max_tree_depth=6, checkpoint_every=0)
    cfg["device"] = "cpu"
    cfg_path = work / f"load_{n}.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    t0 = time.perf_counter()
    out = subprocess.run([*cli, "fit", "--tidy-dir", str(cohort), "--model", str(ROOT / "models/core"), "--config",
                          str(cfg_path), "--out", str(work / f"load_{n}.nc")], capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"fit of {n} subjects failed:\n{out.stderr[-3000:]}")
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"n_subjects": n, "warmup": warmup, "samples": samples, "wall_s": wall, "peak_rss_mib": peak / 1024,
            "peak_rss_is_exact": peak > before, "log_tail": out.stdout[-600:] + out.stderr[-600:]}


def _subprocess_json(args: list[str], env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, *args], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"{args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _subprocess_json_lines(args: list[str]):
    """Yield each JSON line the child prints, as it prints it (a long run keeps what it finished)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=ROOT)
    for line in proc.stdout:
        if line.startswith("{"):
            yield json.loads(line)
    err = proc.stderr.read()
    if proc.wait() != 0:
        raise RuntimeError(f"{args} failed:\n{err[-3000:]}")


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# myoglucose fit benchmark", "",
             f"Machine: {m['cpu_model']}, {m['cpu_count']} cores, load average (1/5/15 min) at start "
             f"{'/'.join(f'{x:.1f}' for x in m['loadavg_start'])}, at end "
             f"{'/'.join(f'{x:.1f}' for x in m['loadavg_end'])}; Python {m['python']}, jax {m['jax']}, "
             f"diffrax {m['diffrax']}, numpyro {m['numpyro']}, backend {m['backend']} "
             f"({m.get('device_kind', 'cpu')}).", "",
             f"Solver tolerances: rtol {res['base_solver'].get('rtol')}, atol {res['base_solver'].get('atol')} "
             f"(config/config.yaml); reference for the accuracy column: Kvaerno5 at rtol = atol = 1e-10.", ""]
    if res.get("density"):
        lines += ["## Log density per fit (potential and gradient on the unconstrained space, warm medians)", "",
                  "| fit | states | conditions | auto chooses (rho max, stability steps) | solver | steps/condition | "
                  "estimated ODE parameters | potential (ms) | grad sensitivity (ms) | grad reverse (ms) | "
                  "sensitivity / reverse | `adjoint: auto` takes | grad/potential (sensitivity) | |dlogp| vs ref | "
                  "first call potential / grad sensitivity / grad reverse (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        from myoglucose.model.simulate import SolverSettings, choose_adjoint

        for c in res["density"]:
            a = c["auto"]
            for name, e in c["solvers"].items():
                takes = choose_adjoint(SolverSettings(name=name, adjoint="auto"), c["estimated_parameters"])[0].adjoint
                sens, rev = e["value_and_grad_sensitivity"]["median_s"], e["value_and_grad_reverse"]["median_s"]
                lines.append(
                    f"| {c['model']}:{c['dataset']} | {c['active_states']} | {c['conditions']} | {a['chosen']} "
                    f"({a['rho_max_per_min']:.2f}/min, {a['stability_steps']:.0f}) | {name} | "
                    f"{'/'.join(map(str, e['steps_per_condition']))} | {c['estimated_parameters']} | "
                    f"{e['potential']['median_s'] * 1e3:.2f} | {sens * 1e3:.2f} | {rev * 1e3:.2f} | "
                    f"{sens / rev:.2f} | {takes} | {e['ratio_grad_sensitivity_over_potential']:.1f} | "
                    f"{e['max_abs_logdensity_error_vs_reference']:.1e} | {e['potential']['first_call_s']:.1f} / "
                    f"{e['value_and_grad_sensitivity']['first_call_s']:.1f} / "
                    f"{e['value_and_grad_reverse']['first_call_s']:.1f} |")
        lines.append("")
    if res.get("scaling"):
        base = res["scaling"][0]["grad_median_s"]
        lines += ["## Scaling of the hierarchical gradient with subjects (core, 4-h clamp, each subject its own group)",
                  "", "| N subjects | latent dim | solver | gradient (ms) | x N=1 | per subject (ms) | first call (s) | "
                  "peak RSS (MiB) | peak device memory (MiB) | set-up: cohort / stiffness probe / init (s) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for s in res["scaling"]:
            dev = s.get("device_peak_mib")
            lines.append(f"| {s['n_subjects']} | {s['latent_dim']} | {s['solver']} | {s['grad_median_s'] * 1e3:.1f} | "
                         f"{s['grad_median_s'] / base:.1f} | {s['grad_median_s'] * 1e3 / s['n_subjects']:.2f} | "
                         f"{s['first_call_s']:.1f} | {s['peak_rss_mib']:.0f} | {'-' if dev is None else f'{dev:.0f}'} | "
                         f"{s.get('cohort_s', float('nan')):.0f} / {s['stiffness_probe_s']:.0f} / "
                         f"{s.get('init_point_s', float('nan')):.0f} |")
        lines.append("")
    if res.get("load"):
        lines += ["## Load: a short real fit of an N-subject cohort (core, each subject its own group, 1 chain)", "",
                  "| N subjects | warmup + draws | wall (s, incl. compile) | peak RSS of the fit process (MiB) |",
                  "|---|---|---|---|"]
        for x in res["load"]:
            lines.append(f"| {x['n_subjects']} | {x['warmup']} + {x['samples']} | {x['wall_s']:.0f} | "
                         f"{x['peak_rss_mib']:.0f} |")
        lines.append("")
    if res.get("compile"):
        c = res["compile"]
        lines += ["## Compile time to the first gradient (fresh processes)", "",
                  f"Case {c['case']}: cold (empty persistent cache) stiffness probe {c['cold']['stiffness_probe_s']:.1f} s"
                  f" + first gradient {c['cold']['first_gradient_s']:.1f} s; warm (same cache, new process) "
                  f"{c['warm']['stiffness_probe_s']:.1f} s + {c['warm']['first_gradient_s']:.1f} s.", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks/out/fit.json"))
    ap.add_argument("--sections", nargs="*", default=["density", "scaling", "compile"],
                    choices=["density", "scaling", "compile", "load"])
    ap.add_argument("--load", nargs="*", type=int, default=[256], help="cohort sizes for the load section")
    ap.add_argument("--load-iterations", nargs=2, type=int, default=[20, 20], metavar=("WARMUP", "SAMPLES"))
    ap.add_argument("--cases", nargs="*", default=["core:katz2000_clamp", "full:roy2007_exercise"])
    ap.add_argument("--solvers", nargs="*", default=["Kvaerno5", "Tsit5"])
    ap.add_argument("--scaling", nargs="*", type=int, default=[1, 4, 16, 64, 256])
    ap.add_argument("--scaling-solver", default="auto",
                    help="solver of the scaling section (default auto: the stiffness probe, whose cost grows with N on "
                         "a GPU; the core Katz clamp probes non-stiff at every N, so Tsit5 skips it)")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu", "auto"],
                    help="where the density, scaling and compile sections run (the load section's fit uses the CPU)")
    ap.add_argument("--work", default=None, help="folder for tidy tables (default: a temporary folder)")
    ap.add_argument("--one-scaling", type=int, nargs="*", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--one-compile", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--markdown-from", default=None, help="only rewrite the markdown from an existing JSON")
    args = ap.parse_args(argv)
    if args.markdown_from:
        res = json.loads(Path(args.markdown_from).read_text())
        Path(args.markdown_from).with_suffix(".md").write_text(markdown(res))
        return 0
    import yaml

    base_solver = yaml.safe_load((ROOT / "config/config.yaml").read_text()).get("solver", {})
    work = Path(args.work or tempfile.mkdtemp(prefix="myoglucose-bench-"))
    if args.one_scaling is not None:
        _setup(device=args.device)
        for n in args.one_scaling:
            print(json.dumps(one_scaling(n, args.repeats, base_solver, args.scaling_solver)), flush=True)
        return 0
    if args.one_compile is not None:
        _setup(os.environ.get("JAX_COMPILATION_CACHE_DIR"), args.device)
        print(json.dumps(one_compile(args.one_compile, work, base_solver)))
        return 0

    _setup(device=args.device)
    import diffrax
    import jax
    import numpyro

    jax.config.update("jax_enable_compilation_cache", False)  # first-call numbers are real compiles
    res = {"machine": {"cpu_model": cpu_model(), "cpu_count": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                       "python": sys.version.split()[0], "jax": jax.__version__, "diffrax": diffrax.__version__,
                       "numpyro": numpyro.__version__, "backend": jax.default_backend(),
                       "device_kind": jax.devices()[0].device_kind},
           "base_solver": base_solver}
    if "density" in args.sections:
        res["density"] = [bench_density(c, args.solvers, args.repeats, work, base_solver) for c in args.cases]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if "scaling" in args.sections:
        # On the CPU one process per N, so that each peak RSS is that N's. On an accelerator (its own peak memory
        # counter) one process for all N: start-up and imports there cost more than the gradients measured.
        groups = [[n] for n in args.scaling] if args.device == "cpu" else [args.scaling]
        res["scaling"] = []
        for ns in groups:
            cmd = ["--one-scaling", *map(str, ns), "--repeats", str(args.repeats), "--device", args.device,
                   "--scaling-solver", args.scaling_solver]
            for s in _subprocess_json_lines(cmd):
                print(f"[bench] scaling N={s['n_subjects']}: {json.dumps(s)}", flush=True)
                res["scaling"].append(s)
                out.write_text(json.dumps(res, indent=2))  # what finished survives a time limit
    if "load" in args.sections:
        res["load"] = []
        for n in args.load:
            x = bench_load(n, work, *args.load_iterations)
            print(f"[bench] load N={n}: fit {x['wall_s']:.0f} s, peak RSS {x['peak_rss_mib']:.0f} MiB", flush=True)
            res["load"].append(x)
    if "compile" in args.sections:
        cache = tempfile.mkdtemp(prefix="myoglucose-bench-cache-")
        env = {"JAX_COMPILATION_CACHE_DIR": cache}
        extra = ["--work", str(work), "--device", args.device]
        cold = _subprocess_json(["--one-compile", args.cases[0], *extra], env)
        warm = _subprocess_json(["--one-compile", args.cases[0], *extra], env)
        res["compile"] = {"case": args.cases[0], "cold": cold, "warm": warm}
        print(f"[bench] compile cold {cold}, warm {warm}", flush=True)
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    out.write_text(json.dumps(res, indent=2))
    out.with_suffix(".md").write_text(markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
