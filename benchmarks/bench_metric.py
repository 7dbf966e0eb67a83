"""Warmup metric levers (issue 6), side by side: by default NUTS started from the identity mass matrix against one
started from the Laplace approximation at the MAP (``sampler.metric_init: laplace``); ``--variant`` names any other
sampler settings to compare (``sampler.metric_shrinkage``), same data, model, seed and settings otherwise (not a test).

    python benchmarks/bench_metric.py --case core:katz2000_clamp --out benchmarks/out/metric.json
    python benchmarks/bench_metric.py --case full:katz2000_fsivgtt --variant numpyro:metric_shrinkage=0 \
        --variant shrunk:metric_shrinkage=1 --out benchmarks/out/shrinkage.json

For every ``--case model:dataset`` (tidy tables made on the fly by ``myoglucose prepare`` unless ``--tidy-dir`` names
them) every variant runs the production fit path (``inference.fit.run_fit``: multi-start MAP, then NUTS), one after the
other in this process, so all see the same machine. Recorded per variant: gradient evaluations in warmup and after
it (leapfrog steps; they do not depend on the machine's load), the smallest rank-normalised bulk and tail ESS over
every latent coordinate, gradients per effective sample (warmup included), divergences, wall time (compile included;
the load average is recorded beside it), and the largest difference of its posterior means from the first variant's
in units of their Monte Carlo standard error. Writes JSON (``--out``) and a markdown summary next to it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_fit import _tidy  # noqa: E402  (tidy tables via `myoglucose prepare`, as the other benchmarks make them)
from bench_model import cpu_model  # noqa: E402


def _flat_draws(samples: dict):
    """[chain, draw, coordinate] over every latent site (the unconstrained sites NUTS moves in, noise sds as sampled)."""
    parts = []
    for k in sorted(samples):
        v = np.asarray(samples[k], dtype=float)
        parts.append(v.reshape(v.shape[0], v.shape[1], -1))
    return np.concatenate(parts, axis=2)


def _ess(x):
    from arviz_stats.base import array_stats

    bulk = np.asarray(array_stats.ess(x, chain_axis=0, draw_axis=1, method="bulk"))
    tail = np.asarray(array_stats.ess(x, chain_axis=0, draw_axis=1, method="tail", prob=(0.05, 0.95)))
    mcse = np.asarray(array_stats.mcse(x, chain_axis=0, draw_axis=1, method="mean"))
    return bulk, tail, mcse


DEFAULT_VARIANTS = ("identity:metric_init=identity", "laplace:metric_init=laplace")


def parse_variant(text: str) -> tuple[str, dict]:
    """``name:key=value,key=value`` -> (name, sampler overrides); values are parsed as YAML scalars."""
    import yaml

    name, _, spec = text.partition(":")
    if not name or not spec:
        raise SystemExit(f"--variant {text!r}: expected name:key=value[,key=value]")
    over = {}
    for item in spec.split(","):
        k, eq, v = item.partition("=")
        if not eq:
            raise SystemExit(f"--variant {text!r}: {item!r} is not key=value")
        over[k.strip()] = yaml.safe_load(v)
    return name, over


def run_case(model: str, tidy: Path, sampler: dict, solver: dict, cache_dir: str | None,
             variants: list[tuple[str, dict]]) -> dict:
    """Every variant (sampler overrides) of one case, one after the other; ratios against the first variant."""
    from myoglucose.inference.fit import FitJob, run_fit

    out = {}
    means = {}
    for name, over in variants:
        job = FitJob(tidy_dir=str(tidy), model_dir=str(ROOT / "models" / model), repo_root=str(ROOT), solver=solver,
                     sampler={**sampler, **over}, device="cpu", cache_dir=cache_dir)
        load0 = os.getloadavg()
        t0 = time.perf_counter()
        samples, stats, _ = run_fit(job, log=lambda m: print(f"  [{name}] {m}", flush=True))
        wall = time.perf_counter() - t0
        x = _flat_draws(samples)
        bulk, tail, mcse = _ess(x)
        means[name] = (x.mean(axis=(0, 1)), mcse)
        wg = int(np.asarray(stats["_warmup_gradients"]).sum())
        sg = int(np.asarray(stats["num_steps"]).sum())
        out[name] = {
            "overrides": over, "wall_s": wall, "sampling_wall_s": float(stats["_sampling_wall"]), "load_start": load0,
            "load_end": os.getloadavg(), "warmup_gradients": wg, "sampling_gradients": sg,
            "ess_bulk_min": float(bulk.min()), "ess_tail_min": float(tail.min()),
            "gradients_per_ess_bulk": (wg + sg) / float(bulk.min()),
            "divergences": int(np.asarray(stats["diverging"]).sum()),
            "step_size_final": np.asarray(stats["adapt_state.step_size"])[:, -1].tolist(),
            "dimensions": int(x.shape[2]),
        }
        print(f"  [{name}] warmup {wg} + sampling {sg} gradients, min bulk ESS {bulk.min():.0f}, "
              f"wall {wall:.0f} s", flush=True)
    base = variants[0][0]
    for name, _ in variants[1:]:
        (ma, sa), (mb, sb) = means[base], means[name]
        out[name]["vs_" + base] = {
            "max_mean_difference_in_mcse": float((np.abs(ma - mb) / np.sqrt(sa ** 2 + sb ** 2)).max()),
            "warmup_gradient_ratio": out[name]["warmup_gradients"] / max(out[base]["warmup_gradients"], 1),
            "gradients_per_ess_ratio": out[name]["gradients_per_ess_bulk"] / out[base]["gradients_per_ess_bulk"]}
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = ["# Warmup metric variants, side by side\n",
             f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores; sampler {json.dumps(res['sampler'])}; variants "
             + "; ".join(f"`{n}`: {json.dumps(o)}" for n, o in res["variants"]) + "\n",
             "| case | variant | warmup gradients | sampling gradients | min bulk ESS | min tail ESS | gradients / ESS "
             "| divergences | wall s (load) |", "|---|---|---|---|---|---|---|---|---|"]
    base = res["variants"][0][0]
    for case, r in res["cases"].items():
        for name, _ in res["variants"]:
            v = r[name]
            lines.append(f"| {case} | {name} | {v['warmup_gradients']} | {v['sampling_gradients']} | "
                         f"{v['ess_bulk_min']:.0f} | {v['ess_tail_min']:.0f} | {v['gradients_per_ess_bulk']:.0f} | "
                         f"{v['divergences']} | {v['wall_s']:.0f} ({v['load_start'][0]:.1f}) |")
        for name, _ in res["variants"][1:]:
            c = r[name]["vs_" + base]
            lines.append(f"| {case} | ratio {name}/{base} | {c['warmup_gradient_ratio']:.2f} | | | | "
                         f"{c['gradients_per_ess_ratio']:.2f} | | largest mean difference "
                         f"{c['max_mean_difference_in_mcse']:.1f} MCSE |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", action="append", required=True, help="model:dataset (repeatable)")
    ap.add_argument("--tidy-dir", type=Path, help="tidy tables of the (single) case instead of preparing them")
    ap.add_argument("--chains", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=500)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--chain-method", default="sequential", help="sequential: one core, so the variants compare")
    ap.add_argument("--variant", action="append", help="name:key=value[,key=value] sampler overrides (repeatable; "
                    "the first is the baseline of the ratios); default: " + " ".join(DEFAULT_VARIANTS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "metric.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("EQX_ON_ERROR", "nan")
    os.environ.setdefault("MYOGLUCOSE_ROOT", str(ROOT))
    import yaml

    cfg = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    sampler = {**cfg["sampler"], "chains": args.chains, "warmup": args.warmup, "samples": args.samples, "max_samples": None,
               "chain_method": args.chain_method, "progress": False}
    cache = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(Path(os.path.expanduser(cfg["compilation_cache"])))
    variants = [parse_variant(v) for v in (args.variant or DEFAULT_VARIANTS)]
    if len(variants) < 2 or len({n for n, _ in variants}) != len(variants):
        raise SystemExit("--variant: at least two, with distinct names")
    res = {"machine": {"cpu": cpu_model(), "cores": os.cpu_count()}, "sampler": sampler, "solver": cfg["solver"],
           "variants": variants, "cases": {}}
    with tempfile.TemporaryDirectory() as work:
        for case in args.case:
            model, dataset = case.split(":")
            tidy = args.tidy_dir if args.tidy_dir else _tidy(dataset, Path(work))
            print(f"{case}: {tidy}", flush=True)
            res["cases"][case] = run_case(model, tidy, sampler, cfg["solver"], cache, variants)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=float))
    md = markdown(res)
    args.out.with_suffix(".md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
