"""Per-fit cost of a workflow that has run: ESS per second, gradients per effective sample, peak memory, verdict.

Reads what the workflow leaves in a results folder (nothing is re-run):

* ``results/fits/<model>/<dataset>/posterior.nc`` - the fit's own ``fit_summary`` (sampling wall time, gradient
  evaluations after warmup, divergences) and its provenance (commit, solver);
* ``results/fits/<model>/<dataset>/diagnostics.tsv`` and ``verdict.json`` - bulk and tail ESS, R-hat, pass/fail;
* ``results/benchmarks/<rule>/...tsv`` - Snakemake's benchmark of every job: wall seconds and peak RSS (``max_rss``).

Writes ``<out>.json`` (every number) and ``<out>.md`` (a table naming the machine). Definitions:

* **ESS/s (job)**: smallest bulk ESS of any parameter / wall time of the whole fit job (Snakemake benchmark: process
  start, data, stiffness probe, MAP initialisation, compile, warmup, sampling, writing the NetCDF);
* **ESS/s (sampling)**: the same ESS / the fit's sampling wall time (warmup + draws of all chains, including each chain
  process's compile, which is cached after the first; ``fit_summary.sampling_wall_s``). Cold and warm compile are
  measured apart by ``bench_fit.py --sections compile``;
* **gradients / ESS**: leapfrog steps (= gradient evaluations) of the kept draws of all chains / smallest bulk ESS;
* **peak RSS**: largest resident set of the fit job (Snakemake ``max_rss``; with one process per chain the parent's
  view).

Usage::

    .venv/bin/python benchmarks/bench_workflow.py --results results --out benchmarks/out/workflow
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import pandas as pd


def _bench(results: Path, rule: str, model: str, dataset: str) -> dict:
    path = results / "benchmarks" / rule / model / f"{dataset}.tsv"
    if not path.is_file():
        return {}
    row = pd.read_csv(path, sep="\t").iloc[-1]
    return {"wall_s": float(row["s"]), "max_rss_mib": float(row["max_rss"])}


def _attrs(posterior: Path) -> dict:
    import xarray as xr

    with xr.open_datatree(posterior, engine="h5netcdf") as tree:
        return dict(tree.attrs)


def fit_rows(results: Path) -> list[dict]:
    rows = []
    for diag in sorted(results.glob("fits/*/*/diagnostics.tsv")):
        folder = diag.parent
        model, dataset = folder.parent.name, folder.name
        posterior = folder / "posterior.nc"
        if not posterior.is_file():
            continue
        attrs = _attrs(posterior)
        summary = json.loads(attrs.get("fit_summary", "{}"))
        d = pd.read_csv(diag, sep="\t")
        verdict = json.loads((folder / "verdict.json").read_text()) if (folder / "verdict.json").is_file() else {}
        job = _bench(results, "fit", model, dataset)
        i_bulk, i_tail, i_rhat = d["ess_bulk"].idxmin(), d["ess_tail"].idxmin(), d["r_hat"].idxmax()
        ess = float(d.loc[i_bulk, "ess_bulk"])
        sampling = float(summary.get("sampling_wall_s", float("nan")))
        wall = job.get("wall_s", float(summary.get("total_wall_s", float("nan"))))
        grads = int(summary.get("gradient_evaluations", 0))
        rows.append({
            "model": model, "dataset": dataset, "git_commit": attrs.get("git_commit", "")[:7],
            "solver": attrs.get("solver", ""), "passed": verdict.get("passed"),
            "failures": verdict.get("failures", []),
            "job_wall_s": wall, "job_wall_source": "snakemake benchmark" if job else "fit_summary.total_wall_s",
            "sampling_wall_s": sampling, "peak_rss_mib": job.get("max_rss_mib"),
            "min_ess_bulk": ess, "min_ess_bulk_parameter": str(d.loc[i_bulk, "parameter"]),
            "min_ess_tail": float(d.loc[i_tail, "ess_tail"]), "max_r_hat": float(d.loc[i_rhat, "r_hat"]),
            "max_r_hat_parameter": str(d.loc[i_rhat, "parameter"]),
            "divergences": int(summary.get("divergences", 0)), "ode_failures": int(summary.get("ode_failures", 0)),
            "gradient_evaluations": grads,
            "ess_per_s_job": ess / wall if wall else float("nan"),
            "ess_per_s_sampling": ess / sampling if sampling else float("nan"),
            "gradients_per_ess": grads / ess if ess else float("nan"),
        })
    return rows


def job_totals(results: Path) -> dict:
    """Sum of the wall times of every job with a Snakemake benchmark, per rule (a lower bound of the workflow's
    serial time; jobs that ran in parallel overlap in real time)."""
    per_rule: dict[str, float] = {}
    for path in results.glob("benchmarks/**/*.tsv"):
        rule = path.relative_to(results / "benchmarks").parts[0]
        per_rule[rule] = per_rule.get(rule, 0.0) + float(pd.read_csv(path, sep="\t")["s"].iloc[-1])
    return dict(sorted(per_rule.items()))


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def markdown(doc: dict) -> str:
    lines = [
        "# Per-fit cost of a workflow run", "",
        f"Machine: {doc['machine']}. Results folder: `{doc['results']}`. Definitions: `benchmarks/bench_workflow.py`.",
        "",
        "| model | dataset | verdict | job wall (s) | sampling (s) | min bulk ESS | ESS/s job | ESS/s sampling "
        "| gradients / ESS | max R-hat | divergences | peak RSS (MiB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in doc["fits"]:
        verdict = {True: "passed", False: "failed", None: "-"}[r["passed"]]
        rss = "-" if r["peak_rss_mib"] is None else f"{r['peak_rss_mib']:.0f}"
        lines.append(
            f"| {r['model']} | {r['dataset']} | {verdict} | {r['job_wall_s']:.0f} | {r['sampling_wall_s']:.0f} "
            f"| {r['min_ess_bulk']:.0f} (`{r['min_ess_bulk_parameter']}`) | {r['ess_per_s_job']:.2f} "
            f"| {r['ess_per_s_sampling']:.2f} | {r['gradients_per_ess']:.0f} "
            f"| {r['max_r_hat']:.3f} | {r['divergences']} | {rss} |")
    lines += ["", "Sum of job wall times per rule (serial lower bound of the run; parallel jobs overlap):", ""]
    lines += [f"- {rule}: {s:.0f} s" for rule, s in doc["job_totals_s"].items()]
    lines += [f"- all jobs: {sum(doc['job_totals_s'].values()):.0f} s", ""]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", default="results", help="the workflow's results folder")
    ap.add_argument("--out", default="benchmarks/out/workflow", help="output stem: <out>.json and <out>.md")
    args = ap.parse_args()
    results = Path(args.results)
    doc = {"machine": machine(), "results": str(results), "fits": fit_rows(results),
           "job_totals_s": job_totals(results)}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(doc, indent=2))
    out.with_suffix(".md").write_text(markdown(doc))
    print(markdown(doc))


if __name__ == "__main__":
    main()
