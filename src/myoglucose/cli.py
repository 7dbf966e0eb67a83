"""The ``myoglucose`` command line: explicit input and output paths, atomic writes, exit 0 only on success.

Every subcommand parses its options, configures JAX first (float64, device, persistent compilation cache,
``EQX_ON_ERROR=nan``), calls the library and writes the outputs. Errors in user input (data, config, protocols,
parameter tables) print one line ``error: <file>: row <r>, column '<c>': <message>`` and exit with status 2; a fit
that fails its convergence thresholds exits 3 from ``diagnose``.
"""

from __future__ import annotations

import os

# Before anything imports equinox (it reads this once, at import): a failure inside an implicit solver stage must
# become NaN (a rejected proposal), never an exception that ends a fit (shared/research/inference.md 2.3).
os.environ.setdefault("EQX_ON_ERROR", "nan")
# Before jaxlib loads (its C++ log reads this once): hide XLA's compiler log lines (runtime.configure says why).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Optional  # noqa: E402

import numpy as np  # noqa: E402
import typer  # noqa: E402

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Bayesian inference for a multi-scale model of muscle contraction and insulin sensitivity.")

EXIT_INPUT = 2
EXIT_DIAGNOSTICS = 3


def repo_root() -> Path:
    return Path(os.environ.get("MYOGLUCOSE_ROOT", Path.cwd()))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def fail(msg: str, code: int = EXIT_INPUT) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    raise typer.Exit(code)


@contextmanager
def user_errors():
    """Turn input errors into one clear line and a non-zero exit (no traceback)."""
    from .data.errors import DataValidationError
    from .model.protocol import ProtocolError
    from .model.spec import SpecError

    try:
        yield
    except (DataValidationError, ProtocolError, SpecError, ConfigError) as e:
        fail(str(e))
    except FileNotFoundError as e:
        fail(f"{e.filename}: file not found")
    except ValueError as e:
        fail(str(e))


class ConfigError(ValueError):
    pass


def load_config(path: Optional[Path]) -> dict:
    import yaml

    if path is None:
        return {}
    if not path.exists():
        raise ConfigError(f"{path}: config file not found")
    try:
        cfg = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        from .io import yaml_error

        raise ConfigError(yaml_error(path, e)) from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a mapping")
    from .config import validate_config

    validate_config(cfg, str(path))
    return cfg


def write_atomic_text(final: Path, text: str) -> None:
    from .io import write_text

    write_text(final, text)


def write_tree(tree, final: Path) -> None:
    from .io import atomic_write

    atomic_write(final, lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"), suffix=".nc")


def write_csv(df, final: Path, **kw) -> None:
    from .io import atomic_write

    atomic_write(final, lambda tmp: df.to_csv(tmp, **kw))


def read_tree(path: Path):
    import xarray as xr

    if not path.exists():
        raise ConfigError(f"{path}: file not found")
    return xr.load_datatree(path, engine="h5netcdf")


def setup_runtime(cfg: dict, host_devices: int = 1) -> dict:
    from . import runtime

    cache = (cfg.get("compilation_cache") or {}).get("dir") if isinstance(cfg.get("compilation_cache"), dict) \
        else cfg.get("compilation_cache")
    return runtime.configure(cfg.get("device", "auto"), cache, host_devices)


# ----------------------------------------------------------------------------------------------------------------
@app.command()
def prepare(
    dataset_dir: Path = typer.Option(..., "--dataset-dir", help="data/<dataset_id>/ with dataset.yaml, raw/, SHA256SUMS"),
    out_dir: Path = typer.Option(..., "--out-dir", help="where measurements.tsv, conditions.tsv, provenance.tsv go"),
):
    """Raw curated data -> validated tidy tables (checksums, units, schema)."""
    from .data import prepare_to_dir

    with user_errors():
        t0 = time.perf_counter()
        tables = prepare_to_dir(dataset_dir, out_dir, repo_root())
        log(f"prepared {dataset_dir}: {len(tables.measurements)} measurements, {len(tables.conditions)} conditions "
            f"-> {out_dir} ({time.perf_counter() - t0:.1f} s)")


@app.command()
def combine(
    tidy_dirs: list[Path] = typer.Option(..., "--tidy-dir",
                                         help="tidy folder of a member dataset (from `prepare`); give two or more"),
    same_subjects: bool = typer.Option(False, "--same-subjects",
                                       help="the members studied the same people: match subjects by id (else each "
                                            "subject id is prefixed with its dataset id)"),
    out_dir: Path = typer.Option(..., "--out-dir", help="where the joint measurements.tsv, conditions.tsv, "
                                                        "provenance.tsv go (results/tidy/<joint id>/)"),
):
    """Tidy tables of two or more datasets -> one joint dataset, fitted as one (config `joint`)."""
    from .data import read_tables, write_tables
    from .data.combine import combine_tables

    with user_errors():
        t0 = time.perf_counter()
        members = [(d.name, read_tables(d, repo_root())) for d in tidy_dirs]
        tables = combine_tables(members, same_subjects, labels=[str(d) for d in tidy_dirs])
        write_tables(tables, out_dir)
        log(f"combined {', '.join(d.name for d in tidy_dirs)} ({'same' if same_subjects else 'different'} subjects): "
            f"{len(tables.measurements)} measurements, {len(tables.conditions)} conditions -> {out_dir} "
            f"({time.perf_counter() - t0:.1f} s)")


@app.command()
def simulate(
    model: Path = typer.Option(..., "--model", help="model variant folder, e.g. models/full"),
    protocol: Path = typer.Option(..., "--protocol", help="protocol YAML file"),
    out: Path = typer.Option(..., "--out", help="CSV of every state and observable over time"),
    params: Optional[Path] = typer.Option(None, "--params", help="TSV (parameterId, value) or YAML mapping of overrides"),
    body_weight: float = typer.Option(70.0, "--body-weight", help="body weight [kg]"),
    bsa: float = typer.Option(1.8, "--bsa", help="body surface area [m^2]"),
    points: int = typer.Option(1441, "--points", help="output time points (plus every protocol event time)"),
    config: Optional[Path] = typer.Option(None, "--config", help="config YAML (solver settings, device)"),
):
    """Simulate a protocol from the basal fasting state; writes a CSV with units in the header."""
    with user_errors():
        cfg = load_config(config)
        setup_runtime(cfg)
        from .simulation import simulate_protocol_table

        overrides = _read_param_overrides(params) if params else {}
        df = simulate_protocol_table(model, protocol, overrides, body_weight, bsa, points, cfg.get("solver"))
        write_csv(df, out, index=False, float_format="%.10g")
        log(f"simulated {protocol} with {model}: {len(df)} time points -> {out}")


def _read_param_overrides(path: Path) -> dict[str, float]:
    import pandas as pd
    import yaml

    if path.suffix in (".yaml", ".yml"):
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            from .io import yaml_error

            raise ConfigError(yaml_error(path, e)) from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path}: expected a mapping parameterId: value")
        items = doc.items()
    else:
        df = pd.read_csv(path, sep="\t")
        if not {"parameterId", "value"} <= set(df.columns):
            raise ConfigError(f"{path}: row 1: expected columns 'parameterId' and 'value'")
        items = zip(df["parameterId"], df["value"])
    from .model.equations import PARAMETER_UNITS

    out = {}
    for i, (k, v) in enumerate(items):
        if k not in PARAMETER_UNITS:
            raise ConfigError(f"{path}: row {i + 2}, column 'parameterId': unknown parameter {k!r}")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{path}: row {i + 2}, column 'value': not a number: {v!r}") from None
    return out


@app.command()
def fit(
    tidy_dir: Path = typer.Option(..., "--tidy-dir", help="results/tidy/<dataset>/ from `prepare`"),
    model: Path = typer.Option(..., "--model", help="model variant folder"),
    config: Path = typer.Option(..., "--config", help="config YAML (solver, sampler, device)"),
    out: Path = typer.Option(..., "--out", help="posterior NetCDF (ArviZ DataTree)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="override sampler.seed"),
    resume: bool = typer.Option(False, "--resume/--no-resume",
                                help="continue a killed fit from the checkpoints in <out>.ckpt/ (only those of the "
                                     "same settings, data, model and code; others are discarded); --no-resume "
                                     "discards them"),
):
    """Tidy data + model variant + sampler settings -> posterior NetCDF.

    The sampler state is saved atomically to <out>.ckpt/ after warmup and every sampler.checkpoint_every
    iterations; `--resume` continues from there with the same draws as an uninterrupted fit with the same seed.
    The folder is removed once <out> is written."""
    with user_errors():
        cfg = load_config(config)
        import yaml

        from .config import sampler_for_fit

        # the `sampler` section, with this fit's own settings over it (the `fits` entry of this dataset and model)
        sampler = sampler_for_fit(cfg, tidy_dir.name, model.name)
        overridden = {k: v for k, v in sampler.items() if (cfg.get("sampler") or {}).get(k, object()) != v}
        if overridden:
            log(f"sampler settings of the fits entry ({tidy_dir.name}, {model.name}): {overridden}")
        if seed is not None:
            sampler["seed"] = seed
        from .inference.sample import SamplerSettings

        settings = SamplerSettings.from_dict(sampler)
        spec, info = _checked_inputs(cfg, model, tidy_dir)
        from .inference.checkpoint import checkpoint_dir_for
        from .inference.fit import FitJob, build_tree, fit_summary, run_fit
        from .io import remove_tree
        from .provenance import provenance_attrs

        ckpt = checkpoint_dir_for(out)
        job = FitJob(tidy_dir=str(tidy_dir), model_dir=str(model), repo_root=str(repo_root()),
                     solver=dict(cfg.get("solver") or {}), sampler=dataclasses_asdict(settings),
                     device=cfg.get("device", "auto"), cache_dir=info.get("cache_dir") or None,
                     checkpoint_dir=str(ckpt), resume=resume, convergence=dict(cfg.get("diagnostics") or {}))
        t0 = time.perf_counter()
        samples, stats, problem = run_fit(job, log=log)
        data_files = [tidy_dir / n for n in ("measurements.tsv", "conditions.tsv", "provenance.tsv")]
        attrs = provenance_attrs(
            config_yaml=yaml.safe_dump(cfg, sort_keys=True), seed=settings.seed, data_files=data_files,
            model_files=spec.sha_inputs(),
            extra={"model_variant": spec.id, "dataset_id": tidy_dir.name,
                   # the datasets behind the tidy tables: one, or the members of a joint dataset
                   "source_datasets": ",".join(sorted(set(problem[1].covariates["dataset_id"].astype(str)))),
                   "solver": problem[2].solver.name,
                   # estimated in the variant, held at nominal here: no condition can inform them
                   "not_informed_parameters": ",".join(problem[2].not_informed),
                   "solver_requested": job.solver.get("name", "auto"),
                   "solver_choice": json.dumps(problem[2].stiffness.as_dict()) if problem[2].stiffness else "",
                   "adjoint": problem[2].solver.adjoint, "adjoint_requested": job.solver.get("adjoint", "auto"),
                   "adjoint_choice": problem[2].adjoint_choice,
                   "rtol": problem[2].solver.rtol, "atol": problem[2].solver.atol,
                   "backend": info["backend"], "xla_flags": info.get("xla_flags", ""),
                   "active_states": list(problem[1].active),
                   "sampler_settings": dataclasses_asdict(settings)},
        )
        tree = build_tree(samples, stats, problem, settings, attrs, log=log)
        summ = fit_summary(stats, tree)
        summ["total_wall_s"] = time.perf_counter() - t0
        tree.attrs["fit_summary"] = json.dumps(summ)
        write_tree(tree, out)
        remove_tree(ckpt)
        log(f"wrote {out}: {summ}")


def _checked_inputs(cfg: dict, model: Path, tidy_dir: Path):
    """Validate the solver settings, configure JAX, load the model variant and validate the tidy tables, before any
    expensive work. Returns (spec, runtime info)."""
    from .data import read_tables
    from .model.simulate import SolverSettings
    from .model.spec import load_model

    SolverSettings.from_dict(cfg.get("solver"))
    info = setup_runtime(cfg)
    spec = load_model(model)
    read_tables(tidy_dir, repo_root())
    return spec, info


def dataclasses_asdict(x) -> dict:
    import dataclasses

    return dataclasses.asdict(x)


@app.command()
def diagnose(
    posterior: Path = typer.Option(..., "--posterior", help="posterior NetCDF from `fit`"),
    config: Path = typer.Option(..., "--config", help="config YAML (diagnostics thresholds)"),
    out_table: Path = typer.Option(..., "--out-table", help="convergence table (TSV)"),
    out_verdict: Path = typer.Option(..., "--out-verdict", help="verdict JSON"),
    no_fail: bool = typer.Option(False, "--no-fail", help="exit 0 even when thresholds are not met"),
):
    """Convergence table (R-hat, ESS, divergences, E-BFMI, tree depth, ODE failures) and a pass/fail verdict."""
    with user_errors():
        cfg = load_config(config)
        from .diagnostics import Thresholds, convergence_table, sampler_summary, verdict

        tree = read_tree(posterior)
        th = Thresholds.from_dict(cfg.get("diagnostics") or {})
        table = convergence_table(tree)
        # the tree depth the fit ran with (its fits entry may override the sampler section's)
        try:
            ran = json.loads(tree.attrs.get("sampler_settings", "{}"))
        except (TypeError, ValueError):
            ran = {}
        ran = ran if isinstance(ran, dict) else {}
        depth = ran.get("max_tree_depth", (cfg.get("sampler") or {}).get("max_tree_depth", 10))
        summ = sampler_summary(tree, int(depth))
        v = verdict(table, summ, th)
        v["summary"] = summ
        write_csv(table, out_table, sep="\t", index=False, float_format="%.6g")
        write_atomic_text(out_verdict, json.dumps(v, indent=2, default=float))
        status = "PASSED" if v["passed"] else "FAILED"
        log(f"convergence {status}" + ("" if v["passed"] else ": " + "; ".join(v["failures"])))
        if not v["passed"] and not no_fail:
            raise typer.Exit(EXIT_DIAGNOSTICS)


@app.command()
def predict(
    posterior: Path = typer.Option(..., "--posterior", help="posterior NetCDF from `fit`"),
    tidy_dir: Path = typer.Option(..., "--tidy-dir", help="tidy tables the fit used"),
    model: Path = typer.Option(..., "--model", help="model variant folder"),
    config: Path = typer.Option(..., "--config", help="config YAML (predict.scenarios, predict.draws, "
                                "predict.post_exercise, solver)"),
    out: Path = typer.Option(..., "--out", help="predictive NetCDF"),
):
    """Posterior predictive time courses for every data condition and every named scenario, per group, and the
    post-exercise clamp GIR at a grid of delays after one bout (config predict.post_exercise)."""
    with user_errors():
        cfg = load_config(config)
        setup_runtime(cfg)
        from .prediction import predictive_tree

        tree = read_tree(posterior)
        pcfg = cfg.get("predict") or {}
        scen = [Path(s) for s in (pcfg.get("scenarios") or [])]
        pred = predictive_tree(tree, tidy_dir, model, scen, int(pcfg.get("draws", 200)), cfg.get("solver"),
                               repo_root(), log=log, post_exercise=pcfg.get("post_exercise"))
        write_tree(pred, out)
        log(f"wrote {out}")


@app.command()
def report(
    out_dir: Path = typer.Option(..., "--out-dir", help="folder for figures and tables"),
    posterior: Optional[Path] = typer.Option(None, "--posterior", help="posterior NetCDF (fit report)"),
    predictive: Optional[Path] = typer.Option(None, "--predictive", help="predictive NetCDF (fit report)"),
    diagnostics: Optional[Path] = typer.Option(None, "--diagnostics", help="convergence table TSV (fit report)"),
    model: Optional[Path] = typer.Option(None, "--model", help="model variant folder (priors table, methods)"),
    tidy_dir: Optional[Path] = typer.Option(None, "--tidy-dir",
                                            help="results/tidy/<dataset>/: draw the data overview instead"),
    config: Optional[Path] = typer.Option(None, "--config", help="config YAML (report formats, dpi)"),
):
    """Figures (svg, pdf, png) and tables (csv, tex) of one fit (--posterior, --predictive, --diagnostics), or the
    data overview of one dataset (--tidy-dir: overview.{svg,pdf,png}, summary.{csv,tex})."""
    with user_errors():
        cfg = load_config(config)
        fit_inputs = (posterior, predictive, diagnostics)
        if tidy_dir is None and None in fit_inputs:
            raise ConfigError("give --posterior, --predictive and --diagnostics (a fit), or --tidy-dir (the data)")
        if tidy_dir is not None and any(x is not None for x in fit_inputs):
            raise ConfigError("--tidy-dir draws the data overview alone; leave out --posterior, --predictive and "
                              "--diagnostics")
        if tidy_dir is not None:
            import pandas as pd

            from .reporting import write_data_overview

            meas_file = tidy_dir / "measurements.tsv"
            if not meas_file.exists():
                raise ConfigError(f"{meas_file}: file not found (run `myoglucose prepare` first)")
            meas = pd.read_csv(meas_file, sep="\t")
            prov_file = tidy_dir / "provenance.tsv"
            prov = pd.read_csv(prov_file, sep="\t") if prov_file.exists() else None
            files = write_data_overview(meas, prov, out_dir, cfg, dataset=tidy_dir.name, log=log)
            log(f"wrote {len(files)} files to {out_dir}")
            return
        from .reporting import write_fit_report

        spec = None
        if model is not None:
            from .model.spec import load_model

            spec = load_model(model)
        files = write_fit_report(read_tree(posterior), read_tree(predictive), diagnostics, out_dir, model, cfg,
                                 log=log, spec=spec)
        log(f"wrote {len(files)} files to {out_dir}")


@app.command()
def behaviours(
    model: Path = typer.Option(..., "--model", help="model variant folder"),
    out_dir: Path = typer.Option(..., "--out-dir", help="folder for behaviours.{svg,pdf,png} and behaviours.tsv"),
    config: Optional[Path] = typer.Option(None, "--config", help="config YAML (solver, device, report formats)"),
):
    """The nine behaviours of MODEL.md: one panel figure and a table of the checked numbers."""
    with user_errors():
        cfg = load_config(config)
        setup_runtime(cfg)
        from .behaviours import check_behaviours, plot_behaviours
        from .model.spec import load_model
        from .report.export import save_figure, save_table

        spec = load_model(model)
        res = check_behaviours(spec, cfg.get("solver"), repo_root(), log=log)
        out_dir.mkdir(parents=True, exist_ok=True)
        rep = (cfg.get("report") or {})
        save_figure(plot_behaviours(res), out_dir / "behaviours", formats=tuple(rep.get("formats", ("svg", "pdf", "png"))),
                    dpi=int(rep.get("dpi", 300)))
        save_table(res.table, out_dir / "behaviours", caption=f"The nine behaviours of {spec.id}",
                   label=f"tab:behaviours-{spec.id}")
        tsv = out_dir / "behaviours.tsv"
        write_atomic_text(tsv, res.table.to_csv(sep="\t", index=False, float_format="%.6g"))
        n_ok = int(res.table["passed"].sum())
        log(f"behaviours: {n_ok}/{len(res.table)} checks pass -> {out_dir}")


@app.command()
def compare(
    posteriors: list[Path] = typer.Option(..., "--posterior", help="posterior NetCDF (repeat per model)"),
    labels: list[str] = typer.Option(..., "--label", help="model label (repeat, same order)"),
    out: Path = typer.Option(..., "--out", help="CSV of the PSIS-LOO comparison (a .tex is written beside it)"),
):
    """PSIS-LOO comparison of model variants fitted to the same data, with Pareto-k counts."""
    with user_errors():
        if len(posteriors) != len(labels):
            raise ConfigError("give one --label per --posterior")
        from .report import loo_compare
        from .report.export import save_table

        df = loo_compare({lab: read_tree(p) for lab, p in zip(labels, posteriors)})
        save_table(df, out.with_suffix(""), caption="PSIS-LOO comparison of model variants",
                   label="tab:loo")
        log(f"wrote {out}")


@app.command("simulate-cohort")
def simulate_cohort_cmd(
    model: Path = typer.Option(..., "--model", help="model variant folder (its estimated parameters are drawn)"),
    protocol: Path = typer.Option(..., "--protocol", help="protocol YAML every subject runs"),
    n: int = typer.Option(..., "--n", help="number of virtual subjects"),
    seed: int = typer.Option(..., "--seed", help="random seed (parameters and noise)"),
    out_dir: Path = typer.Option(..., "--out-dir", help="tidy tables + true_parameters.tsv"),
    groups: Optional[str] = typer.Option(None, "--groups", help="comma-separated group names (subjects cycle "
                                         "through); default 'cohort', or every group of --posterior"),
    observables_: str = typer.Option("glucose_plasma,insulin_plasma", "--observables",
                                     help="comma-separated observables to sample"),
    every: float = typer.Option(10.0, "--every", help="sampling interval [min]"),
    config: Optional[Path] = typer.Option(None, "--config", help="config YAML (solver, device)"),
    posterior: Optional[Path] = typer.Option(None, "--posterior", help="draw the group values, within-group spreads "
                                             "and noise scales from one random draw of this fit's posterior.nc "
                                             "(fitted with the same --model) instead of the priors"),
):
    """N virtual subjects (hierarchical draws from the priors or from a posterior), one protocol, measurement noise
    -> tidy tables + true_parameters.tsv."""
    with user_errors():
        cfg = load_config(config)
        setup_runtime(cfg)
        from .cohort import default_times, simulate_cohort
        from .data import PreparedTables, write_tables
        from .model.spec import load_model
        from .simulation import load_protocol

        spec = load_model(model)
        prot = load_protocol(protocol)
        post = read_tree(posterior)["posterior"].to_dataset() if posterior is not None else None
        group_list = [g.strip() for g in groups.split(",") if g.strip()] if groups else None
        c = simulate_cohort(spec, str(protocol), n, seed, group_list,
                            [o.strip() for o in observables_.split(",") if o.strip()],
                            default_times(prot.end, every), solver=cfg.get("solver"), posterior=post,
                            posterior_source=str(posterior))
        write_tables(PreparedTables(measurements=c.measurements, conditions=c.conditions, provenance=c.provenance),
                     out_dir)
        write_atomic_text(out_dir / "true_parameters.tsv", c.truth.to_csv(sep="\t", index=False))
        log(f"simulated {n} subjects -> {out_dir} ({len(c.measurements)} measurements)")


@app.command()
def sbc(
    tidy_dir: Path = typer.Option(..., "--tidy-dir", help="template dataset results/tidy/<dataset>/ (its design)"),
    model: Path = typer.Option(..., "--model", help="model variant folder to calibrate"),
    config: Path = typer.Option(..., "--config", help="config YAML (its sbc, solver and device sections)"),
    out_dir: Path = typer.Option(..., "--out-dir", help="folder for ranks.csv, uniformity.csv and summary.json"),
    reps: Optional[int] = typer.Option(None, "--reps", help="override sbc.reps"),
    workers: Optional[int] = typer.Option(None, "--workers", help="override sbc.workers (0: one per CPU core)"),
):
    """Simulation-based calibration: prior draw -> simulated data at the template's design -> NUTS -> ranks.

    Writes ranks.csv (one row per replication and quantity), uniformity.csv (per quantity: chi-square test of the
    rank histogram and whether the rank ECDF stays inside the simultaneous 95 % band) and summary.json (settings,
    timings, provenance). Exit 0 means the replications ran, whatever the calibration verdict (read summary.json)."""
    with user_errors():
        cfg = load_config(config)
        import concurrent.futures as cf
        import multiprocessing as mp

        from .inference.sbc import SBCSettings, rank_table, split_reps, uniformity

        scfg = dict(cfg.get("sbc") or {})
        if reps is not None:
            scfg["reps"] = reps
        settings = SBCSettings.from_dict(scfg)
        spec, info = _checked_inputs(cfg, model, tidy_dir)
        from .inference.fit import FitJob
        from .provenance import provenance_attrs

        conds = scfg.get("conditions")
        job = FitJob(tidy_dir=str(tidy_dir), model_dir=str(model), repo_root=str(repo_root()),
                     solver=dict(cfg.get("solver") or {}), sampler={}, device=cfg.get("device", "auto"),
                     cache_dir=info.get("cache_dir") or None, conditions=tuple(conds) if conds else None)
        n_workers = scfg.get("workers", 0) if workers is None else workers
        n_workers = n_workers or (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
        parts = split_reps(settings.reps, n_workers)
        log(f"SBC of {spec.id} on the design of {tidy_dir.name}: {settings.reps} replications x "
            f"({settings.warmup} warmup + {settings.samples} draws, thinned to L = {settings.n_ranks}) in "
            f"{len(parts)} process(es)")
        t0 = time.perf_counter()
        from .inference.sbc_worker import resolve_solver, sbc_worker

        job = resolve_solver(job, log)  # measure stiffness once, not in every worker
        if len(parts) == 1:
            records = sbc_worker((job, settings, parts[0]))
        else:
            with cf.ProcessPoolExecutor(max_workers=len(parts), mp_context=mp.get_context("spawn")) as pool:
                records = [r for part in pool.map(sbc_worker, [(job, settings, p) for p in parts]) for r in part]
        wall = time.perf_counter() - t0
        records.sort(key=lambda r: r["rep"])
        table = rank_table(records, settings.n_ranks)
        uni = uniformity(table)
        data_files = [tidy_dir / n for n in ("measurements.tsv", "conditions.tsv", "provenance.tsv")]
        attrs = provenance_attrs(config_yaml=__import__("yaml").safe_dump(cfg, sort_keys=True), seed=settings.seed,
                                 data_files=data_files, model_files=spec.sha_inputs(),
                                 extra={"model_variant": spec.id, "dataset_id": tidy_dir.name})
        summary = {
            "verdict": "calibrated" if bool(uni["passed"].all()) else "miscalibrated",
            "quantities_outside_band": uni.loc[~uni["passed"], "quantity"].tolist(),
            "settings": dataclasses_asdict(settings), "conditions": list(conds) if conds else None,
            "solver": job.solver, "replications": len(records), "wall_s": wall,
            "seconds_per_replication_median": float(np.median([r["seconds"] for r in records])),
            "divergences_total": int(sum(r["divergences"] for r in records)),
            "prior_redraws_total": int(sum(r["redraws"] for r in records)),
            "provenance": {k: v for k, v in attrs.items()},
        }
        from .report.export import save_table

        write_csv(table, out_dir / "ranks.csv", index=False)
        save_table(uni, out_dir / "uniformity", caption=f"Simulation-based calibration of {spec.id}: rank "
                   f"uniformity per quantity ({len(records)} replications)", label="tab:sbc")
        write_atomic_text(out_dir / "summary.json", json.dumps(summary, indent=2, default=str))
        log(f"SBC {summary['verdict']} ({len(records)} replications in {wall:.0f} s; outside the band: "
            f"{summary['quantities_outside_band'] or 'none'}) -> {out_dir}")


@app.command("sbc-figures")
def sbc_figures(
    ranks: Path = typer.Option(..., "--ranks", help="ranks.csv written by `myoglucose sbc`"),
    out_dir: Path = typer.Option(..., "--out-dir", help="folder for rank_ecdf, rank_hist and zscores figures"),
    config: Optional[Path] = typer.Option(None, "--config", help="config YAML (report.formats, report.dpi)"),
):
    """Figures of an SBC run: rank ECDF differences with simultaneous 95 % bands, rank histograms, z-scores."""
    with user_errors():
        cfg = load_config(config)
        import pandas as pd

        from .report.sbc_plots import plot_rank_ecdf, plot_rank_histograms, plot_sbc_shrinkage

        if not ranks.exists():
            raise ConfigError(f"{ranks}: file not found")
        table = pd.read_csv(ranks)
        missing = {"rep", "quantity", "rank", "n_ranks", "true_value", "posterior_mean", "posterior_sd"} - set(table)
        if missing or table.empty:
            raise ConfigError(f"{ranks}: not an SBC rank table (missing columns {sorted(missing)} or no rows)")
        rep = cfg.get("report") or {}
        formats, dpi = rep.get("formats", ["svg", "pdf", "png"]), rep.get("dpi", 300)
        from .report.export import save_figure

        for name, fig in (("rank_ecdf", plot_rank_ecdf(table)), ("rank_hist", plot_rank_histograms(table)),
                          ("zscores", plot_sbc_shrinkage(table))):
            save_figure(fig, out_dir / name, formats, dpi)
        log(f"SBC figures -> {out_dir}")


def main() -> None:  # console-script entry point
    app()


if __name__ == "__main__":
    main()
