"""The Snakemake workflow: lint, dry runs, config schema, and (slow) a full run of config/test.yaml with its report,
every report figure loaded in headless Chromium, and a second run that must reproduce the numbers.

Every test works in a copy of the workflow under tmp_path, so it never touches the checkout's results/ (the workflow
writes results/config.resolved.yaml even in a dry run; see docs/workflow.md).
"""

from __future__ import annotations

import importlib.util
import json
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
STAGES = ("prepare", "data_overview", "fit", "diagnose", "predict", "report_fit", "behaviours")
FIT = "results/fits/core/katz2000_clamp"
FIGURES = "results/figures/core/katz2000_clamp"
DATA_FIGURES = "results/figures/data/katz2000_clamp"
# "scenarios" because config/test.yaml has a predict scenario; "post_exercise" because predict.post_exercise is on
FIGURE_NAMES = ("ppc", "curves", "rank", "pairs", "forest_groups", "prior_posterior", "scenarios", "post_exercise")
FIT_TABLES = ("convergence", "contraction", "group_differences", "priors", "post_exercise_gir")
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
    # config.yaml extends chains until converged; the CI config's 50 draws must stay 50 (null overrides 2000)
    assert resolved["sampler"]["max_samples"] is None
    assert yaml.safe_load((REPO / "config/config.yaml").read_text())["sampler"]["max_samples"] == 2000
    assert resolved["solver"]["name"] == "auto"  # from config/config.yaml or the schema default
    assert resolved["diagnostics"]["fail_on_bad"] is False
    assert resolved["fits"] == [{"dataset": "katz2000_clamp", "model": "core"}]  # default: datasets x models


def test_a_fits_entry_sampler_reaches_that_fit_only(workdir: Path) -> None:
    """A `fits` entry's own sampler settings: kept in the resolved config (which the CLI reads), and the fit's thread
    count follows its own chains while the other fit keeps the section's."""
    shutil.copytree(workdir / "models/core", workdir / "models/core_copy")
    overlay = workdir / "own.yaml"
    overlay.write_text("models: [core, core_copy]\nfits:\n  - {dataset: katz2000_clamp, model: core}\n"
                       "  - {dataset: katz2000_clamp, model: core_copy, sampler: {chains: 1, samples: 77}}\n")
    res = snakemake(workdir, "-n", "--cores", "4", "--configfile", "config/test.yaml", str(overlay))
    assert res.returncode == 0, res.stdout + res.stderr
    resolved = yaml.safe_load((workdir / "results/config.resolved.yaml").read_text())
    assert resolved["fits"] == [{"dataset": "katz2000_clamp", "model": "core"},
                                {"dataset": "katz2000_clamp", "model": "core_copy",
                                 "sampler": {"chains": 1, "samples": 77}}]
    blocks = [b.split("\n\n", 1)[0] for b in res.stdout.split("rule fit:")[1:]]
    jobs = {re.search(r"wildcards: model=(\w+)", b)[1]: b for b in blocks}
    assert "threads: 2" in jobs["core"], jobs  # config/test.yaml: 2 chains
    assert "threads:" not in jobs["core_copy"], jobs  # 1 thread (Snakemake prints no line for 1)


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


def test_joint_dataset_is_combined_then_fitted_as_one(workdir: Path) -> None:
    overlay = workdir / "joint.yaml"
    overlay.write_text(yaml.safe_dump({
        "datasets": ["katz2000_clamp", "katz2000_fsivgtt"],
        "joint": {"katz2000": {"datasets": ["katz2000_clamp", "katz2000_fsivgtt"], "same_subjects": True}},
        "fits": [{"dataset": "katz2000", "model": "core"}],
    }))
    res = snakemake(workdir, "-n", "-p", "--configfile", "config/test.yaml", str(overlay))
    assert res.returncode == 0, res.stdout + res.stderr
    counts = job_counts(res.stdout)
    assert counts["prepare"] == 2 and counts["combine"] == 1 and counts["fit"] == 1, counts
    assert ("myoglucose combine --tidy-dir results/tidy/katz2000_clamp --tidy-dir results/tidy/katz2000_fsivgtt "
            "--same-subjects --out-dir results/tidy/katz2000") in res.stdout
    assert "--tidy-dir results/tidy/katz2000 --model models/core" in res.stdout
    fit_job = res.stdout.split("rule fit:", 1)[1].split("rule ", 1)[0]
    # editing a protocol of either member re-runs the joint fit
    assert "protocols/katz2000_clamp_120.yaml" in fit_job and "protocols/katz2000_fsivgtt.yaml" in fit_job
    resolved = yaml.safe_load((workdir / "results/config.resolved.yaml").read_text())
    assert resolved["joint"] == {"katz2000": {"datasets": ["katz2000_clamp", "katz2000_fsivgtt"],
                                              "same_subjects": True}}


@pytest.mark.parametrize(
    ("scenarios", "figures"),
    [
        (["exercise_then_clamp"], {"scenarios"}),
        (["training_12w"], {"training"}),
        (["exercise_then_clamp", "training_12w"], {"scenarios", "training"}),
    ],
)
def test_training_scenarios_get_their_own_figure(workdir: Path, scenarios: list[str], figures: set[str]) -> None:
    overlay = workdir / "scenarios.yaml"
    overlay.write_text(yaml.safe_dump({"predict": {"scenarios": [f"protocols/scenarios/{s}.yaml" for s in scenarios]}}))
    res = snakemake(workdir, "-n", "-p", "--configfile", "config/test.yaml", str(overlay))
    assert res.returncode == 0, res.stdout + res.stderr
    drawn = {name for name in ("scenarios", "training") if f"{FIGURES}/{name}.svg" in res.stdout}
    assert drawn == figures


@pytest.mark.parametrize("enabled", [True, False])
def test_post_exercise_figure_and_table_follow_the_config(workdir: Path, enabled: bool) -> None:
    overlay = workdir / "post_exercise.yaml"
    overlay.write_text(yaml.safe_dump({"predict": {"post_exercise": {"enabled": enabled}}}))
    res = snakemake(workdir, "-n", "-p", "--configfile", "config/test.yaml", str(overlay))
    assert res.returncode == 0, res.stdout + res.stderr
    for name in ("post_exercise.svg", "post_exercise.pdf", "post_exercise_gir.csv", "post_exercise_gir.tex"):
        assert (f"{FIGURES}/{name}" in res.stdout) == enabled, name
    resolved = yaml.safe_load((workdir / "results/config.resolved.yaml").read_text())
    assert resolved["predict"]["post_exercise"]["delays_h"] == [0, 1, 2, 4, 8, 12, 24, 36, 48, 60, 72]  # defaults


@pytest.mark.parametrize(
    ("overlay", "message"),
    [
        ("sampler:\n  chainz: 3\n", "sampler: Additional properties are not allowed ('chainz' was unexpected)"),
        ("colour: blue\n", "top level: Additional properties are not allowed ('colour' was unexpected)"),
        ("sampler:\n  chains: four\n", "sampler.chains: 'four' is not of type 'integer'"),
        ("solver:\n  rtol: -1\n", "solver.rtol: -1 is less than or equal to the minimum of 0"),
        ("solver:\n  name: Euler\n", "solver.name: 'Euler' is not one of"),
        ("fits:\n  - {dataset: katz2000_clamp, model: nosuchmodel}\n", "fits: model 'nosuchmodel' is not listed"),
        ("datasets: [nosuchdataset]\n", "datasets: 'nosuchdataset' has no folder data/nosuchdataset/"),
        ("predict:\n  post_exercise:\n    delays_h: [0, 24, -6]\n",
         "predict.post_exercise.delays_h.2: -6 is less than the minimum of 0"),
        ("joint:\n  kz:\n    datasets: [katz2000_clamp, katz2000_fsvgtt]\n",
         "joint.kz.datasets: 'katz2000_fsvgtt' has no folder data/katz2000_fsvgtt/"),
        ("datasets: [katz2000_clamp, katz2000_fsivgtt]\njoint:\n  katz2000_fsivgtt:\n"
         "    datasets: [katz2000_clamp, katz2000_fsivgtt]\n", "joint: 'katz2000_fsivgtt' is also a dataset"),
        ("joint:\n  kz:\n    datasets: [katz2000_clamp]\n", "joint.kz.datasets: ['katz2000_clamp'] is too short"),
        ("joint:\n  kz:\n    datasets: [katz2000_clamp, katz2000_fsivgtt]\n    same_people: true\n",
         "joint.kz: Additional properties are not allowed ('same_people' was unexpected)"),
        ("fits:\n  - {dataset: kz, model: core}\n", "fits: dataset 'kz' is not listed under datasets"),
        ("fits:\n  - {dataset: katz2000_clamp, model: core, sampler: {sample: 9}}\n",
         "fits.0.sampler: unknown sampler setting 'sample'"),
        ("fits:\n  - {dataset: katz2000_clamp, model: core, sampler: {warmup: 0}}\n",
         "fits.0.sampler.warmup: 0 is less than the minimum of 1"),
        ("fits:\n  - {dataset: katz2000_clamp, model: core}\n  - {dataset: katz2000_clamp, model: core, "
         "sampler: {seed: 1}}\n", "fits: a (dataset, model) pair is listed twice"),
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


# ------------------------------------------------------------------------------------------- slow tier
# The small configuration runs once per test module (fixture `small_run`); the reproducibility test runs it a second
# time in another copy and compares. Under pytest-xdist each worker that gets one of these tests runs it once.
def run_small_config(workdir: Path, report: bool = True) -> None:
    """`snakemake --cores 2 --configfile config/test.yaml` in workdir, then (report) the HTML report."""
    res = snakemake(workdir, "--cores", "2", "--configfile", "config/test.yaml", timeout=2400)
    assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]
    if report:
        res = snakemake(workdir, "--report", "results/report.html", "--configfile", "config/test.yaml")
        assert res.returncode == 0, res.stdout[-5000:] + res.stderr[-5000:]


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("small_run"))
    run_small_config(workdir)
    return workdir


@pytest.mark.slow
def test_full_run_and_report(small_run: Path) -> None:
    workdir = small_run
    expected = [
        "results/tidy/katz2000_clamp/measurements.tsv",
        f"{FIT}/posterior.nc",
        f"{FIT}/diagnostics.tsv",
        f"{FIT}/verdict.json",
        f"{FIT}/predictive.nc",
        *(f"{FIGURES}/{fig}.{ext}" for fig in FIGURE_NAMES for ext in ("svg", "pdf", "png")),
        *(f"{FIGURES}/{table}.{ext}" for table in FIT_TABLES for ext in ("csv", "tex")),
        f"{FIGURES}/methods.md",
        *(f"{DATA_FIGURES}/overview.{ext}" for ext in ("svg", "pdf", "png")),
        *(f"{DATA_FIGURES}/summary.{ext}" for ext in ("csv", "tex")),
        *(f"results/figures/core/behaviours.{ext}" for ext in ("svg", "pdf", "png", "tsv", "tex")),
        "results/report.html",
    ]
    missing = [p for p in expected if not (workdir / p).is_file() or (workdir / p).stat().st_size == 0]
    assert not missing, missing

    html = (workdir / "results/report.html").read_text(encoding="utf-8")
    for name in (*(f"{fig}.svg" for fig in FIGURE_NAMES), "behaviours.svg", "overview.svg", "convergence.csv",
                 "priors.csv", "summary.csv", "post_exercise_gir.csv", "methods.md",
                 "Posterior predictive check of model", "the same clamp without exercise"):
        assert name in html, f"{name} not in the report"
    methods = (workdir / FIGURES / "methods.md").read_text(encoding="utf-8")
    # solver auto: the Katz clamps with forced insulin are not stiff, so the fit measures that and takes Tsit5
    for item in ("variant \u201ccore\u201d", "Priors (natural scale)", "solver of diffrax", "relative tolerance",
                 "2 chains", "random seed was 1", "Software: myoglucose", "git commit", "SHA-256"):
        assert item in methods, f"methods.md lacks {item!r}"


def _report_checker():
    spec = importlib.util.spec_from_file_location("screenshot_report", REPO / "scripts" / "screenshot_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_report_figures_load_in_chromium(small_run: Path, tmp_path: Path) -> None:
    """A reader's check: headless Chromium shows every figure of the report (natural size > 0) and screenshots."""
    checker = _report_checker()
    if checker.find_chromium() is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium); the browser check needs it")
    summary = checker.check_report(small_run / "results/report.html", tmp_path / "check")
    n_expected = len(FIGURE_NAMES) + 2  # the fit's figures, behaviours, the data overview
    assert summary["n_figures"] == n_expected, sorted(summary["figures"])
    bad = {p: r for p, r in summary["figures"].items() if not r["ok"]}
    assert not bad and summary["ok"], (bad, summary.get("browser_error"))
    for rec in summary["figures"].values():
        assert rec["browser_width"] > 100 and rec["browser_height"] > 100, rec
    for shot in summary["screenshots"]:
        data = Path(shot).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, shot


def _without_volatile(attrs: dict) -> dict:
    """Root attributes that must match between two runs: all but creation times and wall-clock timings."""
    return {k: v for k, v in attrs.items() if k not in ("created_utc", "created_at", "fit_summary")}


def _assert_same_tree(a_path: Path, b_path: Path) -> None:
    import xarray as xr

    a = xr.load_datatree(a_path, engine="h5netcdf")
    b = xr.load_datatree(b_path, engine="h5netcdf")
    assert sorted(a.children) == sorted(b.children), a_path.name
    attrs_a, attrs_b = _without_volatile(a.attrs), _without_volatile(b.attrs)
    differ = sorted(k for k in attrs_a.keys() | attrs_b.keys() if str(attrs_a.get(k)) != str(attrs_b.get(k)))
    # a difference here means the two runs did not use the same config, code or data: not a reproducibility failure
    # of the numerics, but the comparison below would be meaningless
    assert not differ, f"{a_path.name}: the runs differ in their recorded provenance {differ}"
    for group in a.children:
        # exact equality of every value and coordinate (attributes hold creation times)
        xr.testing.assert_equal(a[group].to_dataset(), b[group].to_dataset())


@pytest.mark.slow
def test_same_config_and_seed_reproduce_the_numbers(small_run: Path, tmp_path: Path) -> None:
    """Issue #7: the same config and seed on the same machine give the same numbers. A second run of
    config/test.yaml in a fresh copy must reproduce the posterior, the predictive, the diagnostics and every table
    exactly, and draw the same figures."""
    second = copy_workflow(tmp_path)
    run_small_config(second, report=False)
    for nc in (f"{FIT}/posterior.nc", f"{FIT}/predictive.nc"):
        _assert_same_tree(small_run / nc, second / nc)
    same_bytes = [
        f"{FIT}/diagnostics.tsv",
        *(f"{FIGURES}/{t}.{ext}" for t in ("convergence", "contraction", "group_differences", "priors")
          for ext in ("csv", "tex")),
        f"{DATA_FIGURES}/summary.csv",
        "results/figures/core/behaviours.tsv",
        "results/tidy/katz2000_clamp/measurements.tsv",
    ]
    differ = [p for p in same_bytes if (small_run / p).read_bytes() != (second / p).read_bytes()]
    assert not differ, f"these tables differ between two runs with the same config and seed: {differ}"
    verdicts = [json.loads((d / FIT / "verdict.json").read_text()) for d in (small_run, second)]
    assert verdicts[0] == verdicts[1]
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    methods = [stamp.sub("<time>", (d / FIGURES / "methods.md").read_text()) for d in (small_run, second)]
    assert methods[0] == methods[1]
    # figures: svg output is made deterministic (report/export.py), so equal numbers give equal files
    svgs = sorted(p.relative_to(small_run) for p in (small_run / "results/figures").rglob("*.svg"))
    assert len(svgs) >= len(FIGURE_NAMES) + 2
    differ = [str(p) for p in svgs if (small_run / p).read_bytes() != (second / p).read_bytes()]
    assert not differ, f"these figures differ between the two runs: {differ}"
