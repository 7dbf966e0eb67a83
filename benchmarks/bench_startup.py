"""Start-up of a fit, phase by phase, with an empty and then a warm persistent compilation cache (not a test).

    python benchmarks/bench_startup.py --dataset katz2000_clamp --model core --out benchmarks/out/startup.json

Each run is a fresh process (``--one``) that does what ``myoglucose fit`` does before and at the start of sampling,
in one process: imports, load the tables and build the model (with the stiffness probe), the potential (traced, or
exported and loaded: inference/exported.py), the multi-start MAP, and one chain of 5 + 5 iterations
(``NUTS.init``, trace of the step, compile or cache load, 10 iterations), then a second such chain in the same
process. After it, a second fresh process does what a chain worker does (``--worker``: load the tables with the
solver already resolved, load the main process's export when there is one, one chain of 5 + 5 from the MAP). JAX's
monitoring events give, per phase, the time spent tracing, lowering, compiling (XLA) and retrieving compiled programs
from the persistent cache; the sum of those is the phase's compile-related time. Two modes side by side, each with
its own cache folder: **traced** (``MYOGLUCOSE_EXPORT_POTENTIAL=0``, every process traces the potential) and
**exported** (the default); the first run of each mode uses an empty cache folder, the second the same folder, now
warm. Writes ``--out`` (JSON) and a markdown table next to it naming the machine.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

EVENTS = {  # JAX monitoring event -> our label (the events jax 0.12 reports)
    "/jax/core/compile/jaxpr_trace_duration": "trace",
    "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower",
    "/jax/core/compile/backend_compile_duration": "xla_compile",
    "/jax/compilation_cache/cache_retrieval_time_sec": "cache_load",
}


def one(args) -> dict:
    t_start = time.perf_counter()
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    import yaml

    from myoglucose import runtime

    runtime.configure("cpu", args.cache)
    import jax
    import numpy as np
    from jax import monitoring

    acc = collections.defaultdict(float)

    def on_duration(event, duration, **kw):
        if event in EVENTS:
            acc[EVENTS[event]] += duration

    monitoring.register_event_duration_secs_listener(on_duration)
    phases = []
    mark = [time.perf_counter()]

    def phase(name):
        now = time.perf_counter()
        phases.append({"phase": name, "wall_s": now - mark[0], **{k: acc[k] for k in sorted(set(EVENTS.values()))}})
        acc.clear()
        mark[0] = now

    from myoglucose.inference.fit import FitJob, _export_potential, load_problem
    from myoglucose.inference.sample import SamplerSettings, find_map, potential, run_nuts

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    sampler = dict(cfg["sampler"], warmup=5, samples=5, max_samples=None, chains=1, progress=False)
    solver = dict(cfg["solver"], **(json.loads(args.solver) if args.solver else {}))
    job = FitJob(tidy_dir=args.tidy_dir, model_dir=str(ROOT / "models" / args.model), repo_root=str(ROOT),
                 solver=solver, sampler=sampler, cache_dir=args.cache)
    imports = time.perf_counter() - t_start
    mark[0] = time.perf_counter()
    spec, data, builder = load_problem(job)
    settings = SamplerSettings.from_dict(sampler)
    info = {"backend": jax.default_backend(), "cache_dir": args.cache}
    if args.worker:  # a chain worker: the solver comes resolved, the export (when used) from the main process
        phase("load tables, build the model")
        if args.export:
            from myoglucose.inference.exported import export_key, load_vg, read_cached
            from myoglucose.inference.sample import use_exported

            blob = read_cached(args.cache, export_key(builder, data.arrays, info["backend"]))
            assert blob is not None, "the main process's export is not in the cache"
            use_exported(builder, data.arrays, load_vg(blob))
            phase("load the main process's export")
        init = {k: np.asarray(v) for k, v in json.loads(args.init).items()}
        run_nuts(builder, data.arrays, settings, init, [0])
        phase("first chain: NUTS.init, step, 5 + 5 iterations")
        return {"imports_s": imports, "phases": phases, "total_s": time.perf_counter() - t_start}
    phase("load tables, build the model, stiffness probe")
    if args.export:
        assert _export_potential(builder, data, info, "processes", log=lambda m: None) is not None
        phase("potential: trace and export, or load the stored export")
    pot = potential(builder, data.arrays)
    phase("build the potential")
    init = find_map(builder, data.arrays, settings, jax.random.PRNGKey(1), log=lambda m: None, pot=pot)
    init = {k: np.asarray(v) for k, v in init.items()}
    phase(f"MAP ({settings.map_starts} starts)")
    run_nuts(builder, data.arrays, settings, init, [0])
    phase("first chain: NUTS.init, step trace, 5 + 5 iterations")
    run_nuts(builder, data.arrays, settings, init, [1])
    phase("second chain in the same process")
    return {"imports_s": imports, "phases": phases, "total_s": time.perf_counter() - t_start,
            "solver": {"name": builder.solver.name, "adjoint": builder.solver.adjoint},
            "init": {k: v.tolist() for k, v in init.items()}}


RUNS = [(f"{mode}_{cache}", mode, cache) for mode in ("traced", "exported") for cache in ("empty", "warm")]


def _compile_related(p: dict) -> float:
    return p["trace"] + p["lower"] + p["xla_compile"] + p["cache_load"]


def _table(runs: dict, who: str, title: str, head: list[str]) -> list[str]:
    """Markdown rows: one per phase of process ``who`` ("main" or "worker"), one column per run of ``RUNS``."""
    L = [f"| {title} | " + " | ".join(head) + " |", "|---" * (len(RUNS) + 1) + "|",
         "| process start and imports | " + " | ".join(f"{runs[k][who]['imports_s']:.1f} s" for k, _, _ in RUNS)
         + " |"]
    # phases in the order they run (the exported runs have every phase the traced ones have, and one more)
    labels = list(dict.fromkeys(p["phase"] for k, _, _ in reversed(RUNS) for p in runs[k][who]["phases"]))
    for lab in labels:
        cells = []
        for k, _, _ in RUNS:
            p = next((p for p in runs[k][who]["phases"] if p["phase"] == lab), None)
            cells.append("-" if p is None else f"{p['wall_s']:.1f} s ({_compile_related(p):.1f} s)")
        L.append(f"| {lab} | " + " | ".join(cells) + " |")
    L.append("| **total** | " + " | ".join(
        f"**{runs[k][who]['total_s']:.1f} s** ({sum(_compile_related(p) for p in runs[k][who]['phases']):.1f} s)"
        for k, _, _ in RUNS) + " |")
    return L


def markdown(res: dict) -> str:
    m = res["machine"]
    L = [f"# Start-up of a fit: {res['model']} / {res['dataset']}", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, load average at start {m['load_start']}, at end {m['load_end']}; "
         f"jax {res['jax']}; solver {res['solver']['name']}, gradients {res['solver']['adjoint']}. One fresh process "
         "per cell; each mode has its own cache folder, empty for the first run and warm for the second. "
         "**traced**: every process traces the potential (`MYOGLUCOSE_EXPORT_POTENTIAL=0`); **exported**: the main "
         "process traces and exports it once, or loads the stored export, and a chain worker loads it "
         "(inference/exported.py). Wall time (compile-related = trace + lower + XLA compile + cache load, JAX "
         "monitoring events).", ""]
    runs = res["runs"]
    head = [k.replace("_", ", ") + " cache" for k, _, _ in RUNS]
    L += _table(runs, "main", "main process: phase", head)
    L += [""] + _table(runs, "worker", "a chain worker (fresh process, after the main process)", head)
    L += ["", "Compile-related time by kind, main process and worker: " + "; ".join(
        f"{k}: " + ", ".join(f"{e} {sum(p[e] for w in ('main', 'worker') for p in runs[k][w]['phases']):.1f} s"
                             for e in ("trace", "lower", "xla_compile", "cache_load"))
        for k, _, _ in RUNS), ""]
    return "\n".join(L)


def _run(args, tidy: str, cache: Path, export: bool, extra: list[str]) -> dict:
    env = dict(os.environ, MYOGLUCOSE_EXPORT_POTENTIAL="1" if export else "0")
    cmd = [sys.executable, __file__, "--one", "--tidy-dir", tidy, "--model", args.model, "--cache", str(cache)]
    p = subprocess.run(cmd + (["--export"] if export else []) + extra, capture_output=True, text=True, cwd=ROOT,
                       env=env)
    line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
    if p.returncode != 0 or line is None:
        raise SystemExit(f"run {cmd + extra} failed:\n{p.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="katz2000_clamp")
    ap.add_argument("--model", default="core")
    ap.add_argument("--tidy-dir", default=None, help="prepared tables (default: prepared on the fly)")
    ap.add_argument("--out", default="benchmarks/out/startup.json")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--export", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    ap.add_argument("--solver", help=argparse.SUPPRESS)
    ap.add_argument("--init", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args)), flush=True)
        return 0
    from bench_model import cpu_model

    work = Path(tempfile.mkdtemp(prefix="startup_"))
    tidy = args.tidy_dir or str(work / "tidy")
    if not args.tidy_dir:
        subprocess.run([sys.executable, "-m", "myoglucose.cli", "prepare", "--dataset-dir",
                        str(ROOT / "data" / args.dataset), "--out-dir", tidy], check=True, capture_output=True)
    load_start = [round(x, 2) for x in os.getloadavg()]
    runs = {}
    for label, mode, _ in RUNS:
        cache = work / f"jax_cache_{mode}"
        cache.mkdir(exist_ok=True)
        main_run = _run(args, tidy, cache, mode == "exported", [])
        worker = _run(args, tidy, cache, mode == "exported", [
            "--worker", "--solver", json.dumps(main_run["solver"]), "--init", json.dumps(main_run["init"])])
        main_run.pop("init")
        runs[label] = {"main": main_run, "worker": worker}
        print(f"[startup] {label}: main process {main_run['total_s']:.1f} s, worker {worker['total_s']:.1f} s",
              flush=True)
    import jax

    res = {"dataset": args.dataset, "model": args.model, "jax": jax.__version__, "runs": runs,
           "solver": runs["traced_empty"]["main"]["solver"],
           "machine": {"cpu": cpu_model(), "cores": os.cpu_count(), "platform": platform.platform(),
                       "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()]}}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2))
    md = markdown(res)
    out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
