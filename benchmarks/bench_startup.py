"""Start-up of a fit, phase by phase, with an empty and then a warm persistent compilation cache (not a test).

    python benchmarks/bench_startup.py --dataset katz2000_clamp --model core --out benchmarks/out/startup.json

Each run is a fresh process (``--one``) that does what ``myoglucose fit`` does before and at the start of sampling,
in one process: imports, load the tables and build the model (with the stiffness probe), build the potential, the
multi-start MAP, and one chain of 5 + 5 iterations (``NUTS.init``, trace of the step, compile or cache load, 10
iterations), then a second such chain in the same process. JAX's monitoring events give, per phase, the time spent
tracing, lowering, compiling (XLA) and retrieving compiled programs from the persistent cache; the sum of those is
the phase's compile-related time. The first run uses an empty cache folder, the second the same folder, now warm.
Writes ``--out`` (JSON) and a markdown table next to it naming the machine.
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

    from myoglucose.inference.fit import FitJob, load_problem
    from myoglucose.inference.sample import SamplerSettings, find_map, potential, run_nuts

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    sampler = dict(cfg["sampler"], warmup=5, samples=5, max_samples=None, chains=1, progress=False)
    job = FitJob(tidy_dir=args.tidy_dir, model_dir=str(ROOT / "models" / args.model), repo_root=str(ROOT),
                 solver=cfg["solver"], sampler=sampler)
    imports = time.perf_counter() - t_start
    mark[0] = time.perf_counter()
    spec, data, builder = load_problem(job)
    phase("load tables, build the model, stiffness probe")
    settings = SamplerSettings.from_dict(sampler)
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
            "solver": builder.solver.name}


def markdown(res: dict) -> str:
    m = res["machine"]
    L = [f"# Start-up of a fit: {res['model']} / {res['dataset']}", "",
         f"Machine: {m['cpu']}, {m['cores']} cores, load average at start {m['load_start']}, at end {m['load_end']}; "
         f"jax {res['jax']}. One fresh process per column; compile-related = trace + lower + XLA compile + cache "
         f"load (JAX monitoring events).", "",
         "| phase | empty cache: wall (compile-related) | warm cache: wall (compile-related) |", "|---|---|---|"]
    cold, warm = res["runs"]["empty_cache"], res["runs"]["warm_cache"]
    L.append(f"| process start and imports | {cold['imports_s']:.1f} s | {warm['imports_s']:.1f} s |")
    for a, b in zip(cold["phases"], warm["phases"]):
        ca = a["trace"] + a["lower"] + a["xla_compile"] + a["cache_load"]
        cb = b["trace"] + b["lower"] + b["xla_compile"] + b["cache_load"]
        L.append(f"| {a['phase']} | {a['wall_s']:.1f} s ({ca:.1f} s) | {b['wall_s']:.1f} s ({cb:.1f} s) |")
    tot = {k: sum(p["trace"] + p["lower"] + p["xla_compile"] + p["cache_load"] for p in r["phases"])
           for k, r in res["runs"].items()}
    L.append(f"| **total** | **{cold['total_s']:.1f} s** ({tot['empty_cache']:.1f} s) | "
             f"**{warm['total_s']:.1f} s** ({tot['warm_cache']:.1f} s) |")
    L += ["", "Compile-related time by kind, all phases: " + "; ".join(
        f"{k}: " + ", ".join(f"{e} {sum(p[e] for p in r['phases']):.1f} s"
                             for e in ("trace", "lower", "xla_compile", "cache_load"))
        for k, r in res["runs"].items()), ""]
    return "\n".join(L)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="katz2000_clamp")
    ap.add_argument("--model", default="core")
    ap.add_argument("--tidy-dir", default=None, help="prepared tables (default: prepared on the fly)")
    ap.add_argument("--out", default="benchmarks/out/startup.json")
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
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
    cache = work / "jax_cache"
    cache.mkdir()
    load_start = [round(x, 2) for x in os.getloadavg()]
    runs = {}
    for label in ("empty_cache", "warm_cache"):
        p = subprocess.run([sys.executable, __file__, "--one", "--tidy-dir", tidy, "--model", args.model,
                            "--cache", str(cache)], capture_output=True, text=True, cwd=ROOT)
        line = next((x for x in p.stdout.splitlines() if x.startswith("RESULT ")), None)
        if p.returncode != 0 or line is None:
            raise SystemExit(f"{label} run failed:\n{p.stderr[-3000:]}")
        runs[label] = json.loads(line[len("RESULT "):])
        print(f"[startup] {label}: {runs[label]['total_s']:.1f} s", flush=True)
    import jax

    res = {"dataset": args.dataset, "model": args.model, "jax": jax.__version__, "runs": runs,
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
