"""All figures and tables of one fit (called by the CLI ``report``; the only writes go through report.export)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .model.simulate import OBSERVABLE_UNITS  # noqa: E402
from .report import (  # noqa: E402
    methods_paragraph,
    plot_forest_groups,
    plot_pairs,
    plot_ppc,
    plot_prior_posterior,
    plot_rank,
    posterior_contraction,
    save_figure,
    save_table,
)

SCENARIO_OBSERVABLES = ("glucose_plasma", "insulin_plasma", "gir", "muscle_uptake")


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


def plot_scenarios(pred: xr.DataTree) -> Figure:
    """Named scenarios per group: posterior median and 90 % band of key observables."""
    ds = pred["scenarios"].to_dataset()
    scen = list(ds["scenario"].values.astype(str))
    groups = list(ds["group"].values.astype(str))
    obs_names = [o for o in SCENARIO_OBSERVABLES if o in list(ds["observable"].values)]
    fig = Figure(figsize=(4.0 * len(obs_names), 2.8 * len(scen)), layout="constrained")
    axs = fig.subplots(len(scen), len(obs_names), squeeze=False)
    for i, s in enumerate(scen):
        t = ds["time"].values[i]
        scale, unit = (1440.0, "day") if t[-1] > 3 * 1440 else ((60.0, "h") if t[-1] > 600 else (1.0, "min"))
        for j, o in enumerate(obs_names):
            ax = axs[i, j]
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


def key_parameters(post: xr.DataTree, limit: int = 6) -> list[str]:
    ds = post["posterior"].to_dataset()
    names = [v for v in ds.data_vars if not v.startswith("sigma_")]
    return names[:limit]


def write_fit_report(post: xr.DataTree, pred: xr.DataTree, diagnostics_tsv: Path, out_dir: Path,
                     model_dir: Path | None, cfg: dict, log: Callable[[str], None] = print) -> list[Path]:
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
        fig("scenarios", lambda: plot_scenarios(pred))
    conv = pd.read_csv(diagnostics_tsv, sep="\t")
    files.extend(save_table(conv, out_dir / "convergence", caption="Convergence diagnostics per parameter "
                            "(rank-normalised split R-hat, bulk and tail ESS, MCSE)", label="tab:convergence"))
    contr = posterior_contraction(post)
    files.extend(save_table(contr, out_dir / "contraction", caption="Prior and posterior mean and sd per parameter, "
                            "with the contraction 1 - var(post)/var(prior)", label="tab:contraction"))
    params_df = None
    if model_dir is not None and (Path(model_dir) / "parameters.tsv").exists():
        params_df = pd.read_csv(Path(model_dir) / "parameters.tsv", sep="\t")
    import json

    sampler = json.loads(post.attrs.get("sampler_settings", "{}")) if isinstance(post.attrs.get("sampler_settings"),
                                                                                 str) else {}
    text = methods_paragraph(dict(post.attrs), sampler, parameters=params_df,
                             n_measurements=int(post["observed_data"].to_dataset()["obs"].size))
    from .report.export import atomic_write

    def write_md(tmp: str) -> None:
        Path(tmp).write_text("# Methods\n\n" + text + "\n")

    files.append(atomic_write(out_dir / "methods.md", write_md))
    return files
