"""The Snakemake workflow: lint, dry runs, config schema, and (slow) a full run of config/test.yaml with its report.

Every test works in a copy of the workflow under tmp_path, so it never touches the checkout's results/ (the workflow
writes results/config.resolved.yaml even in a dry run; see docs/workflow.md).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
COPIED = ("Snakefile", "workflow", "config", "data", "models", "protocols", ".test")
STAGES = ("prepare", "fit", "diagnose", "predict", "report_fit", "behaviours")
FIT = "results/fits/core/katz2000_clamp"
FIGURES = "results/figures/core/katz2000_clamp"
# "scenarios" because config/test.yaml has a predict scenario
FIGURE_NAMES = ("ppc", "curves", "rank", "pairs", "forest_groups", "prior_posterior", "scenarios")
# The one lint we would tolerate: rules without conda/container (all rules have `conda:` today).
CONDA_LINT = "Specify a conda environment or container for each rule"


def copy_workflow(dest: Path) -> Path:
    """Copy what the workflow reads (not results/, .snakemake/) into dest; return dest."""
    for name in COPIED:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".snakemake"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    return dest


def snakemake(
    workdir: Path, *args: str, timeout: float | None = 300, wrap: Sequence[str] = ()
) -> subprocess.CompletedProcess[str]:
    """Run this interpreter's snakemake in workdir (after the command prefix `wrap`, e.g. `timeout 900`);
    the interpreter's bin/ (with `myoglucose`) goes first on PATH."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    return subprocess.run(
        [*wrap, sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def job_counts(output: str) -> dict[str, int]:
    """The 'Job stats' table of a dry run as {rule: count}."""
    table = output.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)$", table, flags=re.M) if m[1] != "total"}


def unexpected_lints(output: str) -> list[str]:
    """Lint titles other than the documented conda one."""
    titles = re.findall(r"^\s+\* (.+?):?$", output, flags=re.M)
    return [t for t in titles if CONDA_LINT not in t]


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def test_lint_passes(workdir: Path) -> None:
    res = snakemake(workdir, "--lint")
    out = res.stdout + res.stderr
    assert not unexpected_lints(out), out
    assert res.returncode == 0 or CONDA_LINT in out, out


@pytest.mark.parametrize("configfile", [None, "config/test.yaml"])
def test_dry_run_lists_every_stage(workdir: Path, configfile: str | None) -> None:
    assert not (workdir / "results").exists()  # works before results/ exists, without running anything
    res = snakemake(workdir, "-n", *(["--configfile", configfile] if configfile else []))
    assert res.returncode == 0, res.stdout + res.stderr
    counts = job_counts(res.stdout)
    for stage in STAGES:
        assert counts.get(stage, 0) >= 1, f"{stage} missing from the dry run: {counts}"
    if configfile == "config/test.yaml":
        assert "model_comparison" not in counts  # one model: nothing to compare


def test_resolved_config_has_defaults_and_overlay(workdir: Path) -> None:
    res = snakemake(workdir, "-n", "--configfile", "config/test.yaml")
    assert res.returncode == 0, res.stdout + res.stderr
    resolved = yaml.safe_load((workdir / "results/config.resolved.yaml").read_text())
    assert resolved["sampler"]["chains"] == 2  # from config/test.yaml
    assert resolved["solver"]["name"] == "Kvaerno5"  # from config/config.yaml or the schema default
    assert resolved["diagnostics"]["fail_on_bad"] is False
    assert resolved["fits"] == [{"dataset": "katz2000_clamp", "model": "core"}]  # default: datasets x models


def test_second_model_adds_loo_comparison(workdir: Path) -> None:
    shutil.copytree(workdir / "models/core", workdir / "models/core_copy")
    overlay = workdir / "two_models.yaml"
    overlay.write_text("models: [core, core_copy]\n")
    res = snakemake(workdir, "-n", "-p", "--configfile", "config/test.yaml", str(overlay))
    assert res.returncode == 0, res.stdout + res.stderr
    counts = job_counts(res.stdout)
    assert counts["fit"] == 2 and counts["model_comparison"] == 1, counts
    assert "results/tables/loo_katz2000_clamp.csv" in res.stdout
    assert "--posterior results/fits/core_copy/katz2000_clamp/posterior.nc --label core_copy" in res.stdout


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ("sampler:\n  chainz: 3\n", "sampler: Additional properties are not allowed ('chainz' was unexpected)"),
        ("colour: blue\n", "top level: Additional properties are not allowed ('colour' was unexpected)"),
        ("sampler:\n  chains: four\n", "sampler.chains: 'four' is not of type 'integer'"),
        ("solver:\n  rtol: -1\n", "solver.rtol: -1 is less than or equal to the minimum of 0"),
        ("solver:\n  name: Tsit5\n", "solver.name: 'Tsit5' is not one of"),
        ("fits:\n  - {dataset: katz2000_clamp, model: nosuchmodel}\n", "fits: model 'nosuchmodel' is not listed"),
        ("datasets: [nosuchdataset]\n", "datasets: 'nosuchdataset' has no folder data/nosuchdataset/"),
    ],
)
def test_bad_config_is_rejected_before_any_rule(workdir: Path, overlay: str, message: str) -> None:
    bad = workdir / "bad.yaml"
    bad.write_text(overlay)
    res = snakemake(workdir, "-n", "--configfile", "config/test.yaml", str(bad))
    out = res.stdout + res.stderr
    assert res.returncode != 0
    assert f"Invalid config: {message}" in out, out
    assert not (workdir / "results").exists()  # nothing ran, nothing was written


@pytest.mark.slow
def test_full_run_and_report(workdir: Path) -> None:
    res = snakemake(workdir, "--cores", "2", "--configfile", "config/test.yaml", timeout=1500)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    expected = [
        "results/tidy/katz2000_clamp/measurements.tsv",
        f"{FIT}/posterior.nc",
        f"{FIT}/diagnostics.tsv",
        f"{FIT}/verdict.json",
        f"{FIT}/predictive.nc",
        *(f"{FIGURES}/{fig}.{ext}" for fig in FIGURE_NAMES for ext in ("svg", "pdf", "png")),
        f"{FIGURES}/convergence.csv",
        f"{FIGURES}/methods.md",
        *(f"results/figures/core/behaviours.{ext}" for ext in ("svg", "pdf", "png", "tsv", "tex")),
    ]
    missing = [p for p in expected if not (workdir / p).is_file() or (workdir / p).stat().st_size == 0]
    assert not missing, missing

    res = snakemake(workdir, "--report", "results/report.html", "--configfile", "config/test.yaml")
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    html = (workdir / "results/report.html").read_text(encoding="utf-8")
    for name in (*(f"{fig}.svg" for fig in FIGURE_NAMES), "behaviours.svg", "convergence.csv",
                 "Posterior predictive check of model"):
        assert name in html, f"{name} not in the report"
