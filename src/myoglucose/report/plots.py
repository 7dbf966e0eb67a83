"""Report figures built from a posterior DataTree (ARCHITECTURE.md section 4).

Every function returns a :class:`matplotlib.figure.Figure` and never saves it (saving is
:func:`myoglucose.report.export.save_figure`, called by the CLI).  Figures are created with
``matplotlib.figure.Figure`` directly, not ``pyplot``, so nothing is registered in pyplot's global
figure list (no leaks in long report runs, no backend needed).  Functions that draw a fixed number of
panels accept ``axes`` (a sequence of Axes, at least one per panel) to draw into an existing figure.

Only panels are kept in the figure: unused grid cells are removed, so ``len(fig.axes)`` is the
number of panels.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from scipy import stats as sps

from myoglucose.diagnostics.convergence import SAMPLE_DIMS, iter_elements

__all__ = [
    "OBSERVABLE_UNITS",
    "data_summary",
    "plot_data_conditions",
    "plot_data_overview",
    "plot_forest_groups",
    "plot_pairs",
    "plot_post_exercise",
    "plot_ppc",
    "plot_prior_posterior",
    "plot_rank",
]

#: Canonical units of the observables (ARCHITECTURE.md section 1).
OBSERVABLE_UNITS: dict[str, str] = {
    "glucose_plasma": "mg/dL",
    "glucose_whole_blood": "mg/dL",
    "insulin_plasma": "mU/L",
    "gir": "mg/kg/min",
    "rd": "mg/kg/min",
    "ra": "mg/kg/min",
    "egp": "mg/kg/min",
    "delta_uptake": "mg/kg/min",
    "delta_egp": "mg/kg/min",
    "il6": "pg/mL",
    "ampk_fold": "1",
    "muscle_uptake": "mg/kg/min",
    "glut4_membrane": "1",
}

_MEAS_KEYS = ("observable", "condition", "time", "group")
_BAND_COLOR = "C0"
_PRIOR_COLOR = "0.55"
_POST_COLOR = "C0"


# ------------------------------------------------------------------------------------------ layout
def _grid(n_panels: int, ncols: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    n_panels = max(n_panels, 1)
    ncols = max(1, min(ncols, n_panels))
    nrows = int(np.ceil(n_panels / ncols))
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    grid = np.atleast_1d(fig.subplots(nrows, ncols, squeeze=False)).ravel()
    for ax in grid[n_panels:]:
        fig.delaxes(ax)
    return fig, list(grid[:n_panels])


def _axes_or_grid(
    axes: Sequence[Axes] | Axes | None, n_panels: int, ncols: int, panel_size: tuple[float, float]
) -> tuple[Figure, list[Axes]]:
    if axes is None:
        return _grid(n_panels, ncols, panel_size)
    flat = list(np.ravel(np.asarray(axes, dtype=object)))
    if len(flat) < n_panels:
        raise ValueError(f"need {n_panels} axes, got {len(flat)}")
    fig = flat[0].figure
    return fig, flat[:n_panels]


def _figure_legend(fig: Figure, ax: Axes, ncols: int = 4) -> None:
    """One legend for the whole figure, below the panels (keeps data unobscured)."""
    handles, labels = ax.get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(ncols, len(handles)),
                   fontsize=8, frameon=False)


def _unit_label(name: str, unit: str | None) -> str:
    return f"{name} [{unit}]" if unit else name


def _var_unit(da: xr.DataArray) -> str | None:
    unit = da.attrs.get("units", da.attrs.get("unit"))
    return str(unit) if unit not in (None, "") else None


def _time_scale(t_max: float) -> tuple[float, str]:
    """Divide minutes by the factor to get a readable unit."""
    if t_max > 3 * 1440:
        return 1440.0, "day"
    if t_max > 6 * 60:
        return 60.0, "h"
    return 1.0, "min"


# ---------------------------------------------------------------------------------- data access
def _dataset(tree: xr.DataTree, group: str) -> xr.Dataset:
    if group not in tree.children:
        raise KeyError(f"DataTree has no group {group!r} (groups: {sorted(tree.children)})")
    return tree[group].to_dataset()


def _stack_samples(da: xr.DataArray) -> xr.DataArray:
    dims = [d for d in SAMPLE_DIMS if d in da.dims]
    if not dims:
        return da.expand_dims(sample=[0])
    return da.stack(sample=dims).transpose("sample", ...)


def _measurement_meta(da: xr.DataArray, constant_data: xr.Dataset | None = None) -> pd.DataFrame:
    """observable/condition/time/group per ``measurement`` from the ``measurement_*`` coordinates.

    Falls back to the ``constant_data`` variables (``observable``, ``condition``, ``time``, ``group``).
    """
    if "measurement" not in da.dims:
        raise ValueError(f"variable {da.name!r} has no 'measurement' dimension (dims: {da.dims})")
    n = da.sizes["measurement"]
    cols: dict[str, np.ndarray] = {}
    for key in _MEAS_KEYS:
        coord = f"measurement_{key}"
        if coord in da.coords:
            cols[key] = np.asarray(da.coords[coord].values)
        elif constant_data is not None and key in constant_data and constant_data[key].sizes.get(
            "measurement"
        ) == n:
            cols[key] = np.asarray(constant_data[key].values)
    missing = [k for k in ("observable", "condition", "time") if k not in cols]
    if missing:
        raise ValueError(
            "cannot split measurements by observable/condition: missing coordinates "
            + ", ".join(f"measurement_{k}" for k in missing)
        )
    frame = pd.DataFrame(cols)
    frame["observable"] = frame["observable"].astype(str)
    frame["condition"] = frame["condition"].astype(str)
    frame["time"] = frame["time"].astype(float)
    if "group" in frame:
        frame["group"] = frame["group"].astype(str)
    return frame


def _resolve_elements(ds: xr.Dataset, names: Sequence[str] | None) -> list[tuple[str, xr.DataArray]]:
    """Variable names expand to all their elements; element labels such as ``k_ins[obese]`` select one."""
    if names is None:
        return list(iter_elements(ds))
    if isinstance(names, str):
        names = [names]
    out: list[tuple[str, xr.DataArray]] = []
    all_elements: dict[str, xr.DataArray] | None = None
    for name in names:
        if name in ds.data_vars:
            out.extend(iter_elements(ds, [name]))
            continue
        if all_elements is None:
            all_elements = dict(iter_elements(ds))
        if name not in all_elements:
            raise KeyError(f"{name!r} is neither a variable nor an element of the posterior")
        out.append((name, all_elements[name]))
    return out


# --------------------------------------------------------------------------------------- plots
def plot_ppc(
    tree: xr.DataTree,
    predictive_tree: xr.DataTree | None = None,
    *,
    var_name: str = "obs",
    axes: Sequence[Axes] | None = None,
    ncols: int = 3,
) -> Figure:
    """Posterior predictive median, 50 % and 90 % bands with the observed points.

    One panel per (observable, condition) of ``observed_data``.  Bands come from the
    ``posterior_predictive`` group of ``predictive_tree`` (the ``predict`` output, which may use a
    different, e.g. denser, set of measurements with its own ``measurement_*`` coordinates) or, when it
    is ``None``, of ``tree``.  Observed points get error bars from ``constant_data.sd`` when present.
    """
    observed = _dataset(tree, "observed_data")[var_name]
    constant = _dataset(tree, "constant_data") if "constant_data" in tree.children else None
    meta_obs = _measurement_meta(observed, constant)
    meta_obs["value"] = np.asarray(observed.values, dtype=float)
    if constant is not None and "sd" in constant and constant["sd"].sizes.get("measurement") == len(meta_obs):
        meta_obs["sd"] = np.asarray(constant["sd"].values, dtype=float)

    source = tree if predictive_tree is None else predictive_tree
    if "posterior_predictive" in source.children:
        pred = source["posterior_predictive"].to_dataset()[var_name]
    elif var_name in source.to_dataset():
        pred = source.to_dataset()[var_name]
    else:
        raise KeyError("no posterior_predictive group with variable " + repr(var_name))
    try:
        meta_pred = _measurement_meta(pred, constant if predictive_tree is None else None)
    except ValueError:
        if pred.sizes.get("measurement") != len(meta_obs):
            raise
        meta_pred = meta_obs[list(_MEAS_KEYS[:3])].copy()
    samples = np.asarray(_stack_samples(pred).transpose("sample", "measurement").values, dtype=float)
    qs = np.nanquantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)

    keys = sorted(set(zip(meta_obs["observable"], meta_obs["condition"], strict=True)))
    fig, panels = _axes_or_grid(axes, len(keys), ncols, (3.6, 2.8))
    factor, tunit = _time_scale(float(np.nanmax(np.abs(np.r_[meta_obs["time"], meta_pred["time"]]))))
    for i, (ax, (obs_id, cond)) in enumerate(zip(panels, keys, strict=False)):
        sel = ((meta_pred["observable"] == obs_id) & (meta_pred["condition"] == cond)).to_numpy()
        if sel.any():
            order = np.argsort(meta_pred["time"].to_numpy()[sel], kind="stable")
            t = meta_pred["time"].to_numpy()[sel][order] / factor
            q = qs[:, sel][:, order]
            if t.size > 1:
                ax.fill_between(t, q[0], q[4], color=_BAND_COLOR, alpha=0.2, lw=0, label="90 % interval")
                ax.fill_between(t, q[1], q[3], color=_BAND_COLOR, alpha=0.4, lw=0, label="50 % interval")
                ax.plot(t, q[2], color=_BAND_COLOR, lw=1.5, label="median")
            else:
                ax.errorbar(t, q[2], yerr=[q[2] - q[0], q[4] - q[2]], fmt="s", color=_BAND_COLOR,
                            label="median, 90 % interval")
        rows = meta_obs[(meta_obs["observable"] == obs_id) & (meta_obs["condition"] == cond)]
        yerr = rows["sd"].to_numpy() if "sd" in rows else None
        if yerr is not None and not np.isfinite(yerr).any():
            yerr = None
        ax.errorbar(rows["time"].to_numpy() / factor, rows["value"].to_numpy(), yerr=yerr, fmt="o",
                    color="k", ms=3.5, elinewidth=0.8, capsize=1.5, zorder=3, label="observed")
        group = f" ({rows['group'].iloc[0]})" if "group" in rows and len(rows) else ""
        ax.set_title(f"{obs_id}\n{cond}{group}", fontsize=9)
        ax.set_xlabel(f"time [{tunit}]")
        ax.set_ylabel(_unit_label(obs_id, OBSERVABLE_UNITS.get(obs_id)))
        if i == 0:
            _figure_legend(fig, ax)
    fig.suptitle("Posterior predictive check")
    return fig


def plot_rank(
    tree: xr.DataTree,
    var_names: Sequence[str] | None = None,
    *,
    bins: int | None = None,
    axes: Sequence[Axes] | None = None,
    ncols: int = 4,
) -> Figure:
    """Rank histograms per chain (Vehtari et al. 2021), one panel per scalar posterior element.

    Ranks are taken over all chains pooled; for well-mixed chains each chain's histogram is uniform.
    The grey band is the 99 % interval of a bin count under uniformity.
    """
    post = _dataset(tree, "posterior")
    elements = _resolve_elements(post, var_names)
    fig, panels = _axes_or_grid(axes, len(elements), ncols, (3.0, 2.3))
    for i, (ax, (label, da)) in enumerate(zip(panels, elements, strict=False)):
        values = np.asarray(da.transpose(*[d for d in SAMPLE_DIMS if d in da.dims]).values, dtype=float)
        values = values.reshape(-1, values.shape[-1]) if values.ndim > 1 else values[None, :]
        n_chains, n_draws = values.shape
        nb = bins or int(np.clip(n_draws // 10, 5, 20))
        ranks = sps.rankdata(values, axis=None).reshape(values.shape)
        edges = np.linspace(0.5, values.size + 0.5, nb + 1)
        lo, hi = sps.binom.ppf([0.005, 0.995], n_draws, 1.0 / nb)
        ax.axhspan(lo, hi, color="0.85", lw=0)
        ax.axhline(n_draws / nb, color="0.5", lw=0.8, ls="--")
        for c in range(n_chains):
            counts, _ = np.histogram(ranks[c], bins=edges)
            ax.stairs(counts, edges, color=f"C{c % 10}", lw=1.2, label=f"chain {c}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("rank (all chains)")
        ax.set_ylabel("count")
        ax.set_xlim(edges[0], edges[-1])
        if i == 0:
            _figure_legend(fig, ax, ncols=10)
    fig.suptitle("Rank plots")
    return fig


def _density_image(ax: Axes, x: np.ndarray, y: np.ndarray, bins: int = 32) -> None:
    """A 2-D histogram of (x, y) as one image (empty bins transparent), embedded at its own resolution."""
    from matplotlib.colors import LinearSegmentedColormap, to_hex

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size == 0 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return
    h, xe, ye = np.histogram2d(x, y, bins=bins)
    cmap = LinearSegmentedColormap.from_list("post", ["#dbe9f6", to_hex(_POST_COLOR)])
    ax.imshow(np.ma.masked_equal(h.T, 0), origin="lower", extent=(xe[0], xe[-1], ye[0], ye[-1]), aspect="auto",
              cmap=cmap, interpolation="none")


def plot_pairs(
    tree: xr.DataTree,
    var_names: Sequence[str],
) -> Figure:
    """Pairwise joint densities (lower triangle) and marginal histograms (diagonal).

    ``var_names`` may hold variable names (all elements) or element labels such as ``k_ins[obese]``.
    Each off-diagonal panel is a 2-D histogram of every draw drawn as one small image, so the SVG stays small
    however many draws and panels there are (a scatter of 2000 vector dots per panel made a 47 MB SVG for the 91
    panels of ``full`` on Bergman 1981); every occupied bin is coloured, so the tails stay visible.
    Divergent draws (``sample_stats.diverging``) are shown in red.  Panels: k (k + 1) / 2.
    """
    post = _dataset(tree, "posterior")
    elements = _resolve_elements(post, var_names)
    k = len(elements)
    if k == 0:
        raise ValueError("no parameters selected")
    flat = [np.asarray(_stack_samples(da).values, dtype=float) for _, da in elements]
    n = flat[0].size
    divergent = np.zeros(n, dtype=bool)
    if "sample_stats" in tree.children and "diverging" in tree["sample_stats"].to_dataset():
        div = _stack_samples(tree["sample_stats"].to_dataset()["diverging"])
        if div.size == n:
            divergent = np.asarray(div.values, dtype=bool)

    size = max(1.6, min(2.6, 12.0 / k))
    fig = Figure(figsize=(size * k, size * k), layout="constrained")
    grid = fig.subplots(k, k, squeeze=False)
    for i in range(k):
        for j in range(k):
            ax = grid[i, j]
            if j > i:
                fig.delaxes(ax)
                continue
            if i == j:
                ax.hist(flat[i], bins=30, color=_POST_COLOR, alpha=0.7)
                ax.set_yticks([])
            else:
                _density_image(ax, flat[j], flat[i])
                if divergent.any():
                    ax.scatter(flat[j][divergent], flat[i][divergent], s=8, color="red", lw=0,
                               label="divergent")
                if j > 0:
                    ax.tick_params(labelleft=False)
                else:
                    ax.set_ylabel(elements[i][0], fontsize=8)
            if i == k - 1:
                ax.set_xlabel(elements[j][0], fontsize=8)
            else:
                ax.tick_params(labelbottom=False)
    fig.suptitle("Pairwise posterior")
    return fig


def plot_forest_groups(
    tree: xr.DataTree,
    var_names: Sequence[str] | None = None,
    *,
    group_dim: str = "group",
    show_prior: bool = True,
    axes: Sequence[Axes] | None = None,
    ncols: int = 3,
) -> Figure:
    """Forest plot of group-level parameters (variables with a ``group`` dimension) across groups.

    Per group: median (dot), 50 % (thick) and 90 % (thin) posterior interval; the prior's 90 %
    interval is drawn in grey below when the ``prior`` group has the variable.  One panel per
    variable (per element of any further non-group dimension).  A tree without group-level
    parameters gives a single panel saying so.
    """
    post = _dataset(tree, "posterior")
    prior = _dataset(tree, "prior") if show_prior and "prior" in tree.children else None
    names = [v for v in (var_names or list(post.data_vars)) if group_dim in post[v].dims]
    panels_spec: list[tuple[str, xr.DataArray, xr.DataArray | None]] = []
    for name in names:
        da = post[name]
        other = [d for d in da.dims if d not in (*SAMPLE_DIMS, group_dim)]
        pda = prior[name] if prior is not None and name in prior else None
        if not other:
            panels_spec.append((name, da, pda))
            continue
        for idx in np.ndindex(*[da.sizes[d] for d in other]):
            sel = dict(zip(other, idx, strict=True))
            label = f"{name}[{', '.join(str(da[d].values[i]) for d, i in sel.items())}]"
            panels_spec.append((label, da.isel(sel), pda.isel(sel) if pda is not None else None))

    n_groups = max((post[n].sizes[group_dim] for n in names), default=2)
    fig, panels = _axes_or_grid(axes, max(len(panels_spec), 1), ncols, (3.4, 1.2 + 0.45 * n_groups))
    if not panels_spec:
        panels[0].text(0.5, 0.5, "no group-level parameters", ha="center", va="center",
                       transform=panels[0].transAxes)
        panels[0].set_axis_off()
        return fig
    for p, (ax, (label, da, pda)) in enumerate(zip(panels, panels_spec, strict=False)):
        groups = [str(g) for g in da[group_dim].values]
        y = np.arange(len(groups))[::-1].astype(float)
        samples = np.asarray(_stack_samples(da).transpose("sample", group_dim).values, dtype=float)
        q = np.nanquantile(samples, [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
        ax.hlines(y, q[0], q[4], color=_POST_COLOR, lw=1.2, label="posterior 90 %")
        ax.hlines(y, q[1], q[3], color=_POST_COLOR, lw=4, label="posterior 50 %")
        ax.plot(q[2], y, "o", color="white", mec=_POST_COLOR, ms=5, label="posterior median")
        if pda is not None and group_dim in pda.dims:
            ps = np.asarray(_stack_samples(pda).transpose("sample", group_dim).values, dtype=float)
            pq = np.nanquantile(ps, [0.05, 0.95], axis=0)
            ax.hlines(y - 0.25, pq[0], pq[1], color=_PRIOR_COLOR, lw=1.0, label="prior 90 %")
        ax.set_yticks(y, groups)
        ax.set_ylim(-0.7, len(groups) - 0.4)
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(_unit_label("value", _var_unit(da)))
        if p == 0:
            _figure_legend(fig, ax, ncols=2)
    fig.suptitle("Group-level parameters")
    return fig


def plot_prior_posterior(
    tree: xr.DataTree,
    var_names: Sequence[str] | None = None,
    *,
    bins: int = 40,
    axes: Sequence[Axes] | None = None,
    ncols: int = 4,
) -> Figure:
    """Prior (grey) vs posterior (blue) density per scalar parameter element in both groups.

    The x range covers the central 99 % of both; a log axis is used for positive parameters whose
    prior spans more than two orders of magnitude.
    """
    post = _dataset(tree, "posterior")
    prior = _dataset(tree, "prior")
    names = [v for v in (var_names or list(post.data_vars)) if v in prior.data_vars]
    post_el = _resolve_elements(post, names)
    prior_el = dict(_resolve_elements(prior, names))
    pairs = [(label, da, prior_el[label]) for label, da in post_el if label in prior_el]
    if not pairs:
        raise ValueError("no parameters are present in both 'prior' and 'posterior'")
    fig, panels = _axes_or_grid(axes, len(pairs), ncols, (3.0, 2.3))
    for i, (ax, (label, da, pda)) in enumerate(zip(panels, pairs, strict=False)):
        x_post = np.asarray(da.values, dtype=float).ravel()
        x_prior = np.asarray(pda.values, dtype=float).ravel()
        x_post, x_prior = x_post[np.isfinite(x_post)], x_prior[np.isfinite(x_prior)]
        both = np.r_[np.quantile(x_prior, [0.005, 0.995]), np.quantile(x_post, [0.005, 0.995])]
        lo, hi = float(both.min()), float(both.max())
        log = lo > 0 and np.quantile(x_prior, 0.995) / np.quantile(x_prior, 0.005) > 100
        if hi <= lo:
            hi = lo + 1.0 if lo == 0 else lo + abs(lo) * 0.1
        edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
        ax.hist(x_prior, bins=edges, density=True, color=_PRIOR_COLOR, alpha=0.5, label="prior")
        ax.hist(x_post, bins=edges, density=True, color=_POST_COLOR, alpha=0.6, label="posterior")
        if log:
            ax.set_xscale("log")
        ax.set_yticks([])
        ax.set_title(label, fontsize=9)
        ax.set_xlabel(_unit_label(label, _var_unit(da)))
        ax.set_ylabel("density")
        if i == 0:
            _figure_legend(fig, ax)
    fig.suptitle("Prior vs posterior")
    return fig



def _finite_measurements(measurements_df: pd.DataFrame, required: set[str]) -> pd.DataFrame:
    """The rows of a tidy measurements table with a finite value and time (numeric); refuses missing columns."""
    missing = sorted(required - set(measurements_df.columns))
    if missing:
        raise ValueError(f"measurements table lacks column(s) {missing}")
    df = measurements_df.copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["time_min"] = pd.to_numeric(df["time_min"], errors="coerce")
    return df[np.isfinite(df["value"]) & np.isfinite(df["time_min"])]

def plot_data_overview(measurements_df: pd.DataFrame, *, ncols: int = 3) -> Figure:
    """Tidy measurements (``measurements.tsv``) by dataset and observable, coloured by group.

    One panel per (dataset_id, observable_id); one line per (subject_id, condition_id); error bars
    from ``sd`` (else ``sem``) when present.
    """
    df = _finite_measurements(measurements_df, {"dataset_id", "observable_id", "group", "time_min", "value"})
    keys = sorted(set(zip(df["dataset_id"].astype(str), df["observable_id"].astype(str), strict=True)))
    groups = sorted(df["group"].astype(str).unique())
    colors = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    fig, panels = _grid(len(keys), ncols, (3.6, 2.8))
    factor, tunit = _time_scale(float(df["time_min"].abs().max()) if len(df) else 0.0)
    line_keys = [c for c in ("subject_id", "condition_id") if c in df.columns]
    for ax, (dataset, obs_id) in zip(panels, keys, strict=False):
        sub = df[(df["dataset_id"].astype(str) == dataset) & (df["observable_id"].astype(str) == obs_id)]
        for key, rows in sub.groupby(["group", *line_keys], sort=True, dropna=False):
            group = str(key[0]) if isinstance(key, tuple) else str(key)
            rows = rows.sort_values("time_min")
            err = None
            for col in ("sd", "sem"):
                if col in rows:
                    e = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
                    if np.isfinite(e).any():
                        err = np.where(np.isfinite(e), e, 0.0)
                        break
            ax.errorbar(rows["time_min"].to_numpy(dtype=float) / factor, rows["value"].to_numpy(dtype=float),
                        yerr=err, fmt="o-", ms=3, lw=0.8, elinewidth=0.6, capsize=1.5,
                        color=colors[group], alpha=0.85)
        unit = None
        if "unit" in sub and sub["unit"].notna().any():
            unit = str(sub["unit"].dropna().iloc[0])
        ax.set_title(f"{dataset}\n{obs_id}", fontsize=9)
        ax.set_xlabel(f"time [{tunit}]")
        ax.set_ylabel(_unit_label(obs_id, unit or OBSERVABLE_UNITS.get(obs_id)))
    handles = [
        Line2D([], [], color=colors[g], marker="o", label=g) for g in groups
    ]
    if handles:
        fig.legend(handles=handles, title="group", loc="outside right upper", fontsize=8, frameon=False)
    fig.suptitle("Data overview")
    return fig



def _error_bars(rows: pd.DataFrame) -> tuple[np.ndarray | None, str | None]:
    """Reported spread of each value: ``sd`` if any is given, else ``sem``; NaN becomes no bar."""
    for col in ("sd", "sem"):
        if col in rows:
            e = pd.to_numeric(rows[col], errors="coerce").to_numpy(dtype=float)
            if np.isfinite(e).any():
                return np.where(np.isfinite(e), e, 0.0), col.upper()
    return None, None


def plot_data_conditions(measurements_df: pd.DataFrame, *, title: str | None = None) -> Figure:
    """The tidy measurements of one dataset as published: one panel per (observable, condition).

    Rows are observables (y axis: value in its canonical unit from the ``unit`` column), columns are conditions
    (x axis: time since the protocol origin, in min, h or days per condition); points are coloured by group, one
    line per subject; error bars are the reported SD (else SEM). A condition without an observable shows an empty,
    labelled panel. Panels: n_observables x n_conditions.
    """
    df = _finite_measurements(measurements_df, {"condition_id", "observable_id", "time_min", "value"})
    if df.empty:
        raise ValueError("measurements table has no finite values")
    for col in ("condition_id", "observable_id"):
        df[col] = df[col].astype(str)
    df["group"] = df["group"].astype(str) if "group" in df else "all"
    df["subject_id"] = df["subject_id"].astype(str) if "subject_id" in df else df["group"]
    observables = list(dict.fromkeys(df["observable_id"]))
    conditions = list(dict.fromkeys(df["condition_id"]))
    groups = list(dict.fromkeys(df["group"]))
    colors = {g: f"C{i % 10}" for i, g in enumerate(groups)}
    fig = Figure(figsize=(3.4 * len(conditions), 2.5 * len(observables) + 0.6), layout="constrained")
    axs = fig.subplots(len(observables), len(conditions), squeeze=False, sharey="row")
    for i, obs_id in enumerate(observables):
        unit = None
        if "unit" in df:
            units = df.loc[df["observable_id"] == obs_id, "unit"].dropna().astype(str).unique()
            unit = units[0] if len(units) else None
        labelled = False
        for j, cond in enumerate(conditions):
            ax = axs[i, j]
            in_cond = df[df["condition_id"] == cond]
            factor, tunit = _time_scale(float(in_cond["time_min"].abs().max()))
            if i == 0:
                ax.set_title(f"{cond}\n({', '.join(dict.fromkeys(in_cond['group']))})", fontsize=9)
            sub = in_cond[in_cond["observable_id"] == obs_id]
            if sub.empty:
                ax.text(0.5, 0.5, f"{obs_id}\nnot measured", ha="center", va="center", color="0.5", fontsize=8,
                        transform=ax.transAxes)
                ax.set_axis_off()
                continue
            for (group, _subject), rows in sub.groupby(["group", "subject_id"], sort=False):
                rows = rows.sort_values("time_min", kind="stable")
                err, _ = _error_bars(rows)
                ax.errorbar(rows["time_min"].to_numpy(dtype=float) / factor, rows["value"].to_numpy(dtype=float),
                            yerr=err, fmt="o-", ms=3, lw=0.7, elinewidth=0.6, capsize=1.5, color=colors[group],
                            alpha=0.9)
            ax.set_xlabel(f"time [{tunit}]", fontsize=8)
            ax.tick_params(labelsize=7, labelleft=True)
            if not labelled:
                ax.set_ylabel(_unit_label(obs_id, unit or OBSERVABLE_UNITS.get(obs_id)), fontsize=8)
                labelled = True
    spread = sorted({lab for _, lab in (_error_bars(r) for _, r in df.groupby("observable_id")) if lab})
    handles = [Line2D([], [], color=colors[g], marker="o", label=g) for g in groups]
    fig.legend(handles=handles, title="group" + (f" (error bars: {', '.join(spread)})" if spread else ""),
               loc="outside lower center", ncols=min(len(handles), 6), fontsize=8, title_fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title)
    return fig


DATA_SUMMARY_COLUMNS = ["condition", "group", "subject", "observable", "unit", "n_values", "time_first_min",
                        "time_last_min", "n_subjects", "spread", "value_min", "value_max", "source"]


def data_summary(measurements_df: pd.DataFrame, provenance_df: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (condition, subject, observable): how many values, time span, unit, reported n (subjects behind a
    group mean), which spread was reported (SD, SEM or none), value range and the source (figure/table of the
    publication from ``provenance.tsv`` when given, else the ``source_id``)."""
    df = measurements_df.copy()
    df["value"] = pd.to_numeric(df["value"], errors="coerce")
    df["time_min"] = pd.to_numeric(df["time_min"], errors="coerce")
    for col in ("group", "subject_id", "unit", "source_id"):
        if col not in df:
            df[col] = ""
    where = {}
    if provenance_df is not None and {"source_id", "figure_or_table"} <= set(provenance_df.columns):
        where = dict(zip(provenance_df["source_id"].astype(str), provenance_df["figure_or_table"].astype(str),
                         strict=True))
    rows = []
    keys = ["condition_id", "group", "subject_id", "observable_id"]
    for (cond, group, subject, obs_id), sub in df.groupby(keys, sort=False, dropna=False):
        _, spread = _error_bars(sub)
        n = pd.to_numeric(sub["n"], errors="coerce").dropna() if "n" in sub else pd.Series(dtype=float)
        sources = list(dict.fromkeys(sub["source_id"].astype(str)))
        rows.append({
            "condition": str(cond), "group": str(group), "subject": str(subject), "observable": str(obs_id),
            "unit": ", ".join(dict.fromkeys(sub["unit"].dropna().astype(str))),
            "n_values": int(sub["value"].notna().sum()),
            "time_first_min": float(sub["time_min"].min()), "time_last_min": float(sub["time_min"].max()),
            "n_subjects": int(n.max()) if len(n) else pd.NA,
            "spread": spread or "none",
            "value_min": float(sub["value"].min()), "value_max": float(sub["value"].max()),
            "source": "; ".join(where.get(s, s) for s in sources),
        })
    out = pd.DataFrame(rows, columns=DATA_SUMMARY_COLUMNS)
    out["n_subjects"] = out["n_subjects"].astype("Int64")
    return out


# ------------------------------------------------------------------------------ post-exercise clamp
def _post_exercise_ds(pred: xr.DataTree | xr.Dataset) -> xr.Dataset:
    if isinstance(pred, xr.DataTree):
        if "post_exercise" not in pred.children:
            raise KeyError("the predictive file has no post_exercise group (config predict.post_exercise.enabled "
                           "was false, or it was written by an older `myoglucose predict`); re-run predict")
        return pred["post_exercise"].to_dataset()
    return pred


def plot_post_exercise(pred: xr.DataTree | xr.Dataset, *, axes: Sequence[Axes] | None = None) -> Figure:
    """Post-exercise insulin sensitivity: two panels against the hours from the end of an exercise bout to the start
    of a euglycemic clamp, (1) the steady-state glucose infusion rate and (2) its ratio to the same clamp without
    exercise. Per group (one colour each): posterior median (line and dots) with 50 % and 90 % credible bands; the
    control is a dashed reference (its median GIR per group on panel 1, the ratio 1 on panel 2).

    ``pred`` is the ``predict`` output (DataTree with a ``post_exercise`` group) or that group's Dataset
    (``prediction.post_exercise_dataset``: ``gir``/``ratio`` (draw, group, delay_h), ``gir_control`` (draw, group)).
    """
    ds = _post_exercise_ds(pred)
    fig, (ax_gir, ax_ratio) = _axes_or_grid(axes, 2, 2, (5.0, 3.6))
    delays = np.asarray(ds["delay_h"].values, dtype=float)
    groups = [str(g) for g in ds["group"].values]
    unit = _var_unit(ds["gir"]) or "mg/kg/min"
    for g_i, g in enumerate(groups):
        color = f"C{g_i}"
        for ax, name in ((ax_gir, "gir"), (ax_ratio, "ratio")):
            y = np.asarray(ds[name].sel(group=g).transpose("draw", "delay_h").values, dtype=float)
            q = np.full((5, delays.size), np.nan)
            has = np.isfinite(y).any(axis=0)
            if has.any():
                q[:, has] = np.nanquantile(y[:, has], [0.05, 0.25, 0.5, 0.75, 0.95], axis=0)
            ax.fill_between(delays, q[0], q[4], color=color, alpha=0.15, lw=0)
            ax.fill_between(delays, q[1], q[3], color=color, alpha=0.35, lw=0)
            ax.plot(delays, q[2], "-o", color=color, ms=3, lw=1.4, label=g)
        ctrl = np.asarray(ds["gir_control"].sel(group=g).values, dtype=float)
        if np.isfinite(ctrl).any():
            ax_gir.axhline(float(np.nanmedian(ctrl)), color=color, ls="--", lw=1.0)
    ax_ratio.axhline(1.0, color="0.3", ls="--", lw=1.0)
    control = Line2D([], [], color="0.3", ls="--", lw=1.0, label="control: same clamp without exercise (dashed, median)")
    bands = [Patch(facecolor="0.5", alpha=a, lw=0, label=f"{w} % credible band") for a, w in ((0.35, 50), (0.15, 90))]
    ax_gir.set_ylabel(_unit_label("steady-state GIR", unit))
    ax_ratio.set_ylabel("GIR / GIR of the control clamp [1]")
    ax_gir.set_title("glucose infusion rate (last 30 min of the clamp)", fontsize=9)
    ax_ratio.set_title("ratio to the same clamp without exercise", fontsize=9)
    step = 12.0 if delays.max(initial=0.0) >= 24 else None
    for ax in (ax_gir, ax_ratio):
        ax.set_xlabel("hours from the end of exercise to the clamp start [h]")
        if step is not None:
            ax.set_xticks(np.arange(0.0, delays.max() + step / 2, step))
        ax.grid(alpha=0.3, lw=0.5)
    handles, labels = ax_gir.get_legend_handles_labels()
    fig.legend([*handles, control, *bands], [*labels, control.get_label(), *(b.get_label() for b in bands)],
               loc="outside lower center", ncols=min(len(handles) + 3, 6), fontsize=8, frameon=False)
    rate, dur = ds.attrs.get("clamp_rate"), ds.attrs.get("exercise_min")
    inten = ds.attrs.get("intensity")
    if rate is not None and dur is not None and inten is not None:
        fig.suptitle(f"Post-exercise insulin sensitivity: {float(rate):g} mU/m$^2$/min euglycemic clamp after "
                     f"{float(dur):g} min at {100 * float(inten):g} % VO$_2$max (posterior median, 50/90 % bands)",
                     fontsize=10)
    else:
        fig.suptitle("Post-exercise insulin sensitivity (posterior median, 50/90 % bands)", fontsize=10)
    return fig

