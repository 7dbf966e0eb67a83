"""All figures and tables of one fit, and the overview of one dataset (called by the CLI ``report``; the only writes
go through report.export)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Mapping

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .model.simulate import OBSERVABLE_UNITS  # noqa: E402
from .report import (  # noqa: E402
    data_summary,
    methods_paragraph,
    plot_data_conditions,
    plot_forest_groups,
    plot_pairs,
    plot_post_exercise,
    plot_ppc,
    plot_prior_posterior,
    plot_rank,
    post_exercise_table,
    posterior_contraction,
    save_figure,
    save_table,
)
from .report.tables import group_differences, prior_table, provenance_markdown  # noqa: E402

SCENARIO_OBSERVABLES = ("glucose_plasma", "insulin_plasma", "gir", "muscle_uptake")
#: Slow quantities of the training figure (prediction.SLOW_QUANTITIES), with their axis labels.
TRAINING_QUANTITIES = {
    "mito": "mitochondrial density [rel.]",
    "lipid": "DAG/ceramide [rel.]",
    "infl": "inflammatory tone [rel.]",
    "sig_efficiency": "insulin-signalling efficiency [1]",
    "fat_share": "fat share of muscle fuel [1]",
}
TRAINING_MARKERS = ("training", "detraining")


def plot_condition_curves(pred: xr.DataTree, post: xr.DataTree) -> Figure:
    """Posterior median and 90 % band of each observable on a dense grid, with the data, per condition."""
    ds = pred["conditions"].to_dataset()
    obs = post["observed_data"].to_dataset()["obs"]
    m_obs = obs["measurement_observable"].values.astype(str)
    m_cond = obs["measurement_condition"].values.astype(str)
    m_t = obs["measurement_time"].values.astype(float)
    observables = [o for o in dict.fromkeys(m_obs)]
    conds = list(ds["condition"].values.astype(str))
    fig = Figure(figsize=(4.2 * len(conds), 3.0 * len(observables)), layout="constrained")
    axs = fig.subplots(len(observables), len(conds), squeeze=False)
    for i, o in enumerate(observables):
        oi = list(ds["observable"].values).index(o)
        for j, c in enumerate(conds):
            ax = axs[i, j]
            t = ds["time"].values[j]
            y = ds["mean"].values[:, j, oi, :]
            q = np.nanquantile(y, [0.05, 0.5, 0.95], axis=0)
            ax.fill_between(t, q[0], q[2], color="C0", alpha=0.25, label="90 % credible band")
            ax.plot(t, q[1], color="C0", label="posterior median")
            sel = (m_obs == o) & (m_cond == c)
            ax.plot(m_t[sel], obs.values[sel], "o", color="k", ms=3, label="data")
            ax.set_title(f"{c}", fontsize=9)
            ax.set_xlabel("time [min]")
            ax.set_ylabel(f"{o} [{OBSERVABLE_UNITS[o]}]")
    axs[0, 0].legend(fontsize=7)
    return fig


def scenario_markers(ds: xr.Dataset) -> dict[str, list[tuple[str, float]]] | None:
    """Markers (``training``, ``detraining``, ...) per scenario from the ``markers`` attribute of the predictive
    ``scenarios`` group; None for files written before it existed."""
    raw = ds.attrs.get("markers")
    if not isinstance(raw, str):
        return None
    return {k: [(str(m), float(t)) for m, t in v] for k, v in json.loads(raw).items()}


def training_scenarios(ds: xr.Dataset) -> list[str]:
    """Scenarios with a training or detraining phase (weeks long: shown by :func:`plot_training`, not by
    :func:`plot_scenarios`). Without recorded markers: scenarios longer than 7 days."""
    names = [str(s) for s in ds["scenario"].values]
    markers = scenario_markers(ds)
    if markers is None:
        return [n for i, n in enumerate(names) if float(ds["time"].values[i][-1]) > 7 * 1440.0]
    return [n for n in names if any(m in TRAINING_MARKERS for m, _ in markers.get(n, []))]


def plot_scenarios(pred: xr.DataTree) -> Figure:
    """Named scenarios per group (all but the training ones): posterior median and 90 % band of key observables."""
    ds = pred["scenarios"].to_dataset()
    skip = set(training_scenarios(ds))
    scen = [(i, s) for i, s in enumerate(ds["scenario"].values.astype(str)) if s not in skip]
    if not scen:
        raise ValueError("no scenario without a training phase (see plot_training)")
    groups = list(ds["group"].values.astype(str))
    obs_names = [o for o in SCENARIO_OBSERVABLES if o in list(ds["observable"].values)]
    fig = Figure(figsize=(4.0 * len(obs_names), 2.8 * len(scen)), layout="constrained")
    axs = fig.subplots(len(scen), len(obs_names), squeeze=False)
    for row, (i, s) in enumerate(scen):
        t = ds["time"].values[i]
        scale, unit = (1440.0, "day") if t[-1] > 3 * 1440 else ((60.0, "h") if t[-1] > 600 else (1.0, "min"))
        for j, o in enumerate(obs_names):
            ax = axs[row, j]
            oi = list(ds["observable"].values).index(o)
            for g_i, g in enumerate(groups):
                y = ds["mean"].values[i, :, g_i, oi, :]
                q = np.nanquantile(y, [0.05, 0.5, 0.95], axis=0)
                ax.fill_between(t / scale, q[0], q[2], color=f"C{g_i}", alpha=0.2)
                ax.plot(t / scale, q[1], color=f"C{g_i}", label=g)
            ax.set_title(f"{s}", fontsize=9)
            ax.set_xlabel(f"time [{unit}]")
            ax.set_ylabel(f"{o} [{OBSERVABLE_UNITS[o]}]")
    axs[0, 0].legend(fontsize=7, title="group")
    return fig


def plot_training(pred: xr.DataTree) -> Figure:
    """Training and detraining scenarios per group: posterior median and 90 % band of the slow adaptive quantities
    (mitochondrial density, DAG/ceramide, inflammatory tone, insulin-signalling efficiency, fat share of muscle fuel)
    over days; the training phase is shaded and the start of detraining marked."""
    ds = pred["scenarios"].to_dataset()
    names = training_scenarios(ds)
    if not names:
        raise ValueError("no scenario with a training or detraining phase")
    if "slow" not in ds:
        raise ValueError("the predictive file has no slow quantities (written by an older `myoglucose predict`); "
                         "re-run predict")
    all_names = list(ds["scenario"].values.astype(str))
    quantities = [q for q in TRAINING_QUANTITIES if q in list(ds["quantity"].values.astype(str))]
    groups = list(ds["group"].values.astype(str))
    markers = scenario_markers(ds) or {}
    fig = Figure(figsize=(3.4 * len(quantities), 2.8 * len(names) + 0.5), layout="constrained")
    axs = fig.subplots(len(names), len(quantities), squeeze=False)
    for row, name in enumerate(names):
        i = all_names.index(name)
        t = ds["time"].values[i] / 1440.0
        marks = markers.get(name, [])
        t_train = [tm / 1440.0 for m, tm in marks if m == "training"]
        t_detrain = [tm / 1440.0 for m, tm in marks if m == "detraining"]
        for j, qname in enumerate(quantities):
            ax = axs[row, j]
            qi = list(ds["quantity"].values.astype(str)).index(qname)
            if t_train:
                end = min([d for d in t_detrain if d > t_train[0]], default=float(t[-1]))
                ax.axvspan(t_train[0], end, color="0.92", lw=0, label="training")
            for d in t_detrain:
                ax.axvline(d, color="0.4", lw=0.8, ls="--", label="detraining starts")
            for g_i, g in enumerate(groups):
                y = ds["slow"].values[i, :, g_i, qi, :]
                q = np.nanquantile(y, [0.05, 0.5, 0.95], axis=0)
                ax.fill_between(t, q[0], q[2], color=f"C{g_i}", alpha=0.2, lw=0)
                ax.plot(t, q[1], color=f"C{g_i}", lw=1.2, label=g)
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("time [day]")
            ax.set_ylabel(TRAINING_QUANTITIES[qname], fontsize=8)
            ax.tick_params(labelsize=7)
    handles, labels = axs[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    fig.suptitle("Training and detraining: posterior median and 90 % band per group")
    return fig


def key_parameters(post: xr.DataTree, limit: int = 6) -> list[str]:
    ds = post["posterior"].to_dataset()
    names = [v for v in ds.data_vars if not v.startswith("sigma_")]
    return names[:limit]


def spec_tables(spec) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A loaded model variant (``model.spec.ModelSpec``, parents and overrides resolved) as a PEtab-like
    parameters table and its prior table (estimated parameters and every noise scale of the variant)."""
    params = pd.DataFrame([
        {"parameterId": r.id, "unit": r.unit, "nominalValue": r.nominal, "lowerBound": r.lower,
         "upperBound": r.upper, "parameterScale": r.scale, "priorType": r.prior, "priorLoc": r.loc,
         "priorScale": r.prior_scale, "estimate": int(r.estimate), "level": r.level, "description": r.description,
         "reference": r.reference}
        for r in spec.params.values()
    ])
    kinds, units = {}, {}
    for o in spec.observables.values():
        kinds.setdefault(o.noise_parameter, o.noise)
        units.setdefault(o.noise_parameter, "1" if o.noise in ("proportional", "lognormal") else o.unit)
    return params, prior_table(params, dict(spec.noise_priors), kinds, units)


def write_fit_report(post: xr.DataTree, pred: xr.DataTree, diagnostics_tsv: Path, out_dir: Path,
                     model_dir: Path | None, cfg: dict, log: Callable[[str], None] = print,
                     spec=None) -> list[Path]:
    """Every figure and table of one fit. ``spec`` (the loaded model variant) gives the prior table and the priors
    of the methods paragraph; without it, ``model_dir/parameters.tsv`` is used when the variant has its own."""
    rep = cfg.get("report") or {}
    formats = tuple(rep.get("formats", ("svg", "pdf", "png")))
    dpi = int(rep.get("dpi", 300))
    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def fig(name, make):
        try:
            f = make()
        except Exception as e:  # a figure that cannot be drawn is an error: report it with its name
            raise RuntimeError(f"figure {name!r} failed: {e}") from e
        files.extend(save_figure(f, out_dir / name, formats=formats, dpi=dpi))
        log(f"figure {name}")

    fig("ppc", lambda: plot_ppc(post))
    fig("rank", lambda: plot_rank(post))
    fig("pairs", lambda: plot_pairs(post, key_parameters(post)))
    fig("forest_groups", lambda: plot_forest_groups(post))
    fig("prior_posterior", lambda: plot_prior_posterior(post))
    fig("curves", lambda: plot_condition_curves(pred, post))
    if "scenarios" in pred.children:
        scen = pred["scenarios"].to_dataset()
        training = training_scenarios(scen)
        if len(training) < scen.sizes["scenario"]:
            fig("scenarios", lambda: plot_scenarios(pred))
        if training:
            fig("training", lambda: plot_training(pred))
    if "post_exercise" in pred.children:
        post_ex = pred["post_exercise"].to_dataset()
        fig("post_exercise", lambda: plot_post_exercise(post_ex))
        files.extend(save_table(post_exercise_table(post_ex), out_dir / "post_exercise_gir", caption=(
            "Predicted steady-state glucose infusion rate (GIR, mg/kg/min; mean of the last "
            f"{float(post_ex.attrs.get('steady_state_min', 30)):g} min) of a "
            f"{float(post_ex.attrs.get('clamp_rate', float('nan'))):g} mU/m$^2$/min euglycemic clamp starting "
            "delay\\_h hours after the end of one exercise bout, and its ratio to the same clamp without exercise "
            "(control): posterior median and 90 \\% credible interval (q05, q95) per group"),
            label="tab:post-exercise"))
        log("table post_exercise_gir")
    conv = pd.read_csv(diagnostics_tsv, sep="\t")
    files.extend(save_table(conv, out_dir / "convergence", caption="Convergence diagnostics per parameter "
                            "(rank-normalised split R-hat, bulk and tail ESS, MCSE)", label="tab:convergence"))
    gdiff = group_differences(post)
    files.extend(save_table(gdiff, out_dir / "group_differences", caption="Group differences: posterior ratio of each "
                            "group-level parameter to the reference group (median, 90 \\% interval), the probability "
                            "that it is larger, and the group's prior-to-posterior contraction",
                            label="tab:group-differences"))
    contr = posterior_contraction(post)
    files.extend(save_table(contr, out_dir / "contraction", caption="Prior and posterior mean and sd per parameter, "
                            "with the contraction 1 - var(post)/var(prior)", label="tab:contraction"))
    params_df, priors = None, None
    if spec is not None:
        params_df, priors = spec_tables(spec)
        fitted = set(post["posterior"].to_dataset().data_vars)
        priors = priors[(priors["level"] != "noise") | priors["parameter"].isin(fitted)].reset_index(drop=True)
        variant = post.attrs.get("model_variant", getattr(spec, "id", ""))
        files.extend(save_table(priors, out_dir / "priors", caption=f"Priors of the estimated parameters and noise "
                                f"scales of model variant {variant}".replace("_", "\\_"), label="tab:priors"))
    elif model_dir is not None and (Path(model_dir) / "parameters.tsv").exists():
        params_df = pd.read_csv(Path(model_dir) / "parameters.tsv", sep="\t")
    sampler = _json_mapping(post.attrs.get("sampler_settings"))
    if sampler.get("max_samples"):  # sampled until converged: the draws kept are the posterior's, not `samples`
        summary = _json_mapping(post.attrs.get("fit_summary"))
        sampler = {**sampler, "first_round": sampler.get("samples"), "rounds": summary.get("rounds") or [],
                   "samples": int(post["posterior"].to_dataset().sizes["draw"])}
    text = methods_paragraph(dict(post.attrs), sampler, parameters=params_df,
                             n_measurements=int(post["observed_data"].to_dataset()["obs"].size), priors=priors)
    from .report.export import atomic_write

    markdown = "# Methods\n\n" + text + "\n\n" + provenance_markdown(post.attrs)

    def write_md(tmp: str) -> None:
        Path(tmp).write_text(markdown, encoding="utf-8")

    files.append(atomic_write(out_dir / "methods.md", write_md))
    return files


def _json_mapping(value) -> dict:
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str):
        try:
            out = json.loads(value)
        except json.JSONDecodeError:
            return {}
        return out if isinstance(out, dict) else {}
    return {}


def write_data_overview(measurements: pd.DataFrame, provenance: pd.DataFrame | None, out_dir: Path, cfg: dict,
                        dataset: str, log: Callable[[str], None] = print) -> list[Path]:
    """The data as published, before any fit: ``overview.{svg,pdf,png}`` (one panel per observable and condition)
    and ``summary.{csv,tex}`` (values, time span, unit, n and source per condition, subject and observable)."""
    rep = cfg.get("report") or {}
    formats = tuple(rep.get("formats", ("svg", "pdf", "png")))
    dpi = int(rep.get("dpi", 300))
    files = save_figure(plot_data_conditions(measurements, title=f"Data: {dataset}"), out_dir / "overview",
                        formats=formats, dpi=dpi)
    log("figure overview")
    files += save_table(data_summary(measurements, provenance), out_dir / "summary",
                        caption=f"Measurements of dataset {dataset}".replace("_", "\\_"),
                        label=f"tab:data-{dataset}")
    return files
