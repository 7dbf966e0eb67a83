"""Report tables: posterior contraction, PSIS-LOO comparison, LaTeX, and a methods paragraph.

ArviZ calls of the report package live here (arviz_stats 1.x ``loo`` / ``compare``).  Nothing here
writes files (see :mod:`myoglucose.report.export`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from importlib import metadata
from typing import Any

import arviz_stats as azs
import numpy as np
import pandas as pd
import xarray as xr
import yaml

from myoglucose.diagnostics.convergence import iter_elements

__all__ = [
    "CONTRACTION_COLUMNS",
    "LOO_COLUMNS",
    "loo_compare",
    "POST_EXERCISE_COLUMNS",
    "PRIOR_COLUMNS",
    "GROUP_DIFF_COLUMNS",
    "group_differences",
    "methods_paragraph",
    "post_exercise_table",
    "posterior_contraction",
    "prior_table",
    "provenance_markdown",
    "to_latex",
]

CONTRACTION_COLUMNS = ["parameter", "prior_mean", "prior_sd", "posterior_mean", "posterior_sd", "contraction"]
LOO_COLUMNS = [
    "model",
    "rank",
    "elpd_loo",
    "se",
    "p_loo",
    "elpd_diff",
    "dse",
    "weight",
    "n_pareto_k_gt_0_7",
    "n_data_points",
]
PARETO_K_BAD = 0.7
GROUP_DIFF_COLUMNS = ["parameter", "group", "reference", "ratio_median", "ratio_q05", "ratio_q95", "prob_greater",
                      "differs_90", "contraction"]
POST_EXERCISE_COLUMNS = ["group", "clamp", "delay_h", "gir_median", "gir_q05", "gir_q95", "ratio_median",
                         "ratio_q05", "ratio_q95", "n_draws"]
PRIOR_COLUMNS = ["parameter", "unit", "level", "prior", "location", "scale", "lower", "upper", "distribution",
                 "reference"]


def _dataset(tree: xr.DataTree, group: str) -> xr.Dataset:
    if group not in tree.children:
        raise KeyError(f"DataTree has no group {group!r} (groups: {sorted(tree.children)})")
    return tree[group].to_dataset()


# ----------------------------------------------------------------------------------- contraction
def posterior_contraction(tree: xr.DataTree, var_names: list[str] | None = None) -> pd.DataFrame:
    """Per scalar parameter element in both ``prior`` and ``posterior``:
    prior/posterior mean and sd and ``contraction = 1 - var_post / var_prior`` (Schad et al. 2021;
    ~0: the data taught nothing, ~1: the posterior is much tighter than the prior; negative values mean
    the posterior is wider than the prior)."""
    post = _dataset(tree, "posterior")
    prior = _dataset(tree, "prior")
    names = [v for v in (var_names or list(post.data_vars)) if v in prior.data_vars]
    prior_el = dict(iter_elements(prior, names))
    rows = []
    for label, da in iter_elements(post, names):
        if label not in prior_el:
            continue
        x_post = np.asarray(da.values, dtype=float).ravel()
        x_prior = np.asarray(prior_el[label].values, dtype=float).ravel()
        v_post = float(np.nanvar(x_post, ddof=1))
        v_prior = float(np.nanvar(x_prior, ddof=1))
        rows.append(
            {
                "parameter": label,
                "prior_mean": float(np.nanmean(x_prior)),
                "prior_sd": math.sqrt(v_prior),
                "posterior_mean": float(np.nanmean(x_post)),
                "posterior_sd": math.sqrt(v_post),
                "contraction": 1.0 - v_post / v_prior if v_prior > 0 else float("nan"),
            }
        )
    return pd.DataFrame(rows, columns=CONTRACTION_COLUMNS)


# ------------------------------------------------------------------------------------- group differences
def group_differences(tree: xr.DataTree, reference: str | None = None) -> pd.DataFrame:
    """Which mechanisms differ between groups: for every group-level parameter (posterior variables with a
    ``group`` dimension, the group's typical value) and every group other than ``reference`` (default: the first
    group), the posterior of the ratio theta_group / theta_reference (median and 90 % interval), the posterior
    probability that the group's value is the larger one, whether the 90 % interval excludes 1 (``differs_90``),
    and the group's own prior-to-posterior contraction (how much the data taught about it). Empty when the fit has
    one group."""
    post = _dataset(tree, "posterior")
    contr = posterior_contraction(tree).set_index("parameter")["contraction"]
    rows = []
    for name, da in post.data_vars.items():
        if "group" not in da.dims or da.sizes["group"] < 2 or name.endswith(("_subject", "_sd_subject")):
            continue
        groups = [str(g) for g in da["group"].values]
        ref = reference if reference in groups else groups[0]
        x_ref = da.sel(group=ref).values.ravel()
        for g in groups:
            if g == ref:
                continue
            r = da.sel(group=g).values.ravel() / x_ref
            q05, q50, q95 = np.nanquantile(r, [0.05, 0.5, 0.95])
            label = f"{name}[{g}]"
            rows.append({"parameter": name, "group": g, "reference": ref, "ratio_median": float(q50),
                         "ratio_q05": float(q05), "ratio_q95": float(q95),
                         "prob_greater": float(np.nanmean(r > 1.0)), "differs_90": bool(q05 > 1.0 or q95 < 1.0),
                         "contraction": float(contr.get(label, np.nan))})
    return pd.DataFrame(rows, columns=GROUP_DIFF_COLUMNS)


# ------------------------------------------------------------------------------------------- LOO
def loo_compare(trees: Mapping[str, xr.DataTree], var_name: str = "obs") -> pd.DataFrame:
    """PSIS-LOO per model and their comparison (arviz_stats ``loo`` and ``compare``, stacking weights).

    Columns: model, rank (0 = best), elpd_loo, se, p_loo, elpd_diff (vs the best model, <= 0), dse,
    weight, n_pareto_k_gt_0_7, n_data_points.  Models must share the same observations.
    A single model gives one row with elpd_diff = 0 and weight = 1.
    """
    if not trees:
        raise ValueError("no models to compare")
    loos = {name: _loo(tree, var_name) for name, tree in trees.items()}
    # NaN k (failed fit of the tail) counts as bad too
    n_bad = {
        name: int((~(np.asarray(res.pareto_k, dtype=float) <= PARETO_K_BAD)).sum())
        for name, res in loos.items()
    }
    if len(loos) == 1:
        ((name, res),) = loos.items()
        df = pd.DataFrame(
            [
                {
                    "model": name,
                    "rank": 0,
                    "elpd_loo": float(res.elpd),
                    "se": float(res.se),
                    "p_loo": float(res.p),
                    "elpd_diff": 0.0,
                    "dse": 0.0,
                    "weight": 1.0,
                }
            ]
        )
    else:
        cmp = azs.compare(dict(loos), round_to="none")
        df = pd.DataFrame(
            {
                "model": [str(i) for i in cmp.index],
                "rank": cmp["rank"].astype(int).to_numpy(),
                "elpd_loo": cmp["elpd"].astype(float).to_numpy(),
                "se": cmp["se"].astype(float).to_numpy(),
                "p_loo": cmp["p"].astype(float).to_numpy(),
                "elpd_diff": cmp["elpd_diff"].astype(float).to_numpy(),
                "dse": cmp["dse"].astype(float).to_numpy(),
                "weight": cmp["weight"].astype(float).to_numpy(),
            }
        )
    df["n_pareto_k_gt_0_7"] = [n_bad[m] for m in df["model"]]
    df["n_data_points"] = [int(loos[m].n_data_points) for m in df["model"]]
    return df[LOO_COLUMNS].reset_index(drop=True)


# ------------------------------------------------------------------------------------------ priors
def _g(x: float) -> str:
    return f"{float(x):.4g}"


def prior_table(
    parameters: pd.DataFrame,
    noise_priors: Mapping[str, float] | None = None,
    noise_kinds: Mapping[str, str] | None = None,
    units: Mapping[str, str] | None = None,
) -> pd.DataFrame:
    """The priors of the estimated parameters, one row each, then the noise scales.

    ``parameters`` is a PEtab-like table (``models/<variant>/parameters.tsv`` columns: parameterId, unit, priorType,
    priorLoc, priorScale, lowerBound, upperBound, estimate, level, reference). Log-normal priors are written with
    their median (``priorLoc``) and the sd of the log (``priorScale``); group-level parameters are hierarchical and
    non-centred as in ``inference/numpyro_model.py``: ``log theta_g = log(loc) + scale * z_mu + omega * z_g`` with
    ``z ~ Normal(0, 1)`` and ``omega ~ HalfNormal(scale / 2)`` (one value per group). ``noise_priors`` maps each
    noise scale ``sigma_<observable>`` to its half-normal scale, ``noise_kinds`` to its noise model (normal,
    proportional, lognormal) and ``units`` to its unit.
    """
    p = parameters
    if "estimate" in p:
        p = p[pd.to_numeric(p["estimate"], errors="coerce").fillna(0).astype(int) == 1]
    rows = []
    for rec in p.to_dict("records"):
        prior = str(rec.get("priorType", ""))
        loc, scale = float(rec.get("priorLoc", math.nan)), float(rec.get("priorScale", math.nan))
        level = str(rec.get("level", "population"))
        if prior == "lognormal":
            dist = f"LogNormal(log {_g(loc)}, {_g(scale)})"
        elif prior == "normal":
            dist = f"Normal({_g(loc)}, {_g(scale)})"
        else:
            dist = f"{prior}({_g(loc)}, {_g(scale)})"
        if level == "group":
            link = "log " if prior == "lognormal" else ""
            dist = (f"per group: {link}theta_g = {link}{_g(loc)} + {_g(scale)} z_mu + omega z_g, z ~ Normal(0, 1), "
                    f"omega ~ HalfNormal({_g(scale / 2)})")
        rows.append({
            "parameter": str(rec.get("parameterId")), "unit": str(rec.get("unit", "")), "level": level,
            "prior": prior, "location": loc, "scale": scale,
            "lower": float(rec.get("lowerBound", math.nan)), "upper": float(rec.get("upperBound", math.nan)),
            "distribution": dist, "reference": str(rec.get("reference", "")),
        })
    for name, s in (noise_priors or {}).items():
        kind = (noise_kinds or {}).get(name, "")
        rows.append({
            "parameter": name, "unit": (units or {}).get(name, ""), "level": "noise", "prior": "halfnormal",
            "location": 0.0, "scale": float(s), "lower": 0.0, "upper": math.inf,
            "distribution": f"HalfNormal({_g(s)})" + (f", {kind} noise" if kind else ""), "reference": "",
        })
    return pd.DataFrame(rows, columns=PRIOR_COLUMNS)


def _priors_detail(priors: pd.DataFrame) -> str:
    """One sentence naming every prior of :func:`prior_table`."""
    par = priors[priors["level"] != "noise"]
    noise = priors[priors["level"] == "noise"]
    items = []
    for r in par.itertuples(index=False):
        unit = f" {r.unit}" if r.unit and r.unit != "1" else ""
        if r.prior == "lognormal":
            d = f"log-normal with median {_g(r.location)}{unit} and log-sd {_g(r.scale)}"
        elif r.prior == "normal":
            d = f"normal with mean {_g(r.location)}{unit} and sd {_g(r.scale)}"
        else:
            d = f"{r.prior} ({_g(r.location)}, {_g(r.scale)})"
        items.append(f"{r.parameter} ({'per group, ' if r.level == 'group' else ''}{d})")
    text = ""
    if items:
        text = "Priors (natural scale): " + "; ".join(items) + "."
    group = par[par["level"] == "group"]
    if len(group):
        if (group["prior"] == "lognormal").all():
            link, sd = "log theta_g = log(median)", "log-sd"
        else:
            link, sd = "theta_g (log theta_g for log-normal priors) = location", "scale"
        text += (f" Group-level parameters are hierarchical and non-centred: {link} + s z_mu + omega z_g with "
                 f"z ~ N(0, 1) and a between-group spread omega ~ HalfNormal(s/2), s the prior {sd}.")
    if len(noise):
        text += " Noise scales: " + "; ".join(
            f"{r.parameter} ~ HalfNormal({_g(r.scale)})" for r in noise.itertuples(index=False)) + "."
    return text.strip()


def _loo(tree: xr.DataTree, var_name: str):
    """``arviz_stats.loo`` that also works when some observations have the same log-likelihood in every draw.

    Such an observation does not depend on the parameters (for example a glucose infusion rate of zero at the start
    of a clamp under proportional noise with a floor): its leave-one-out density is exactly its likelihood, its
    importance weights are exactly uniform, but the Pareto fit of PSIS fails on a constant tail ("All tail values
    are the same"). PSIS is run on the other observations; the constant ones get uniform log weights and k = 0.
    """
    ll = _dataset(tree, "log_likelihood")[var_name]
    sample_dims = [d for d in ("chain", "draw") if d in ll.dims]
    obs_dims = [d for d in ll.dims if d not in sample_dims]
    spread = (ll.max(sample_dims) - ll.min(sample_dims)).values
    const = np.asarray(spread < 1e-12 * np.maximum(1.0, np.abs(ll.mean(sample_dims).values)))
    if not const.any() or len(obs_dims) != 1:
        return azs.loo(tree, pointwise=True, var_name=var_name)
    dim = obs_dims[0]
    keep = np.flatnonzero(~const)
    reduced = tree.copy()
    reduced["log_likelihood"] = xr.DataTree(_dataset(tree, "log_likelihood")[[var_name]].isel({dim: keep}))
    part = azs.loo(reduced, pointwise=True, var_name=var_name)
    n_samples = int(np.prod([ll.sizes[d] for d in sample_dims]))
    log_weights = xr.full_like(ll, -math.log(n_samples), dtype=float)
    log_weights[{dim: keep}] = part.log_weights.transpose(*ll.dims).values
    pareto_k = xr.zeros_like(ll.isel({d: 0 for d in sample_dims}, drop=True), dtype=float)
    pareto_k[{dim: keep}] = np.asarray(part.pareto_k.transpose(dim).values, dtype=float)
    return azs.loo(tree, pointwise=True, var_name=var_name, log_weights=log_weights, pareto_k=pareto_k)



# ------------------------------------------------------------------------------- post-exercise clamp
def post_exercise_table(ds: xr.Dataset) -> pd.DataFrame:
    """Median and 90 % credible interval (5 and 95 % quantiles) of the steady-state GIR [mg/kg/min] and of its
    ratio to the control clamp [1], per group: first the control (the same clamp without exercise; ratio 1), then
    each delay from the end of exercise to the clamp start (``delay_h`` [h]). ``ds`` is the ``post_exercise`` group
    of the predictive file; failed solves (NaN) are left out, ``n_draws`` counts the draws that remain. GIR is
    rounded to 0.001 mg/kg/min, the ratio to 0.0001."""

    def row(group: str, clamp: str, delay: float, gir: np.ndarray, ratio: np.ndarray) -> dict:
        gir, ratio = gir[np.isfinite(gir)], ratio[np.isfinite(ratio)]
        qg = np.quantile(gir, [0.5, 0.05, 0.95]) if gir.size else np.full(3, np.nan)
        qr = np.quantile(ratio, [0.5, 0.05, 0.95]) if ratio.size else np.full(3, np.nan)
        qg, qr = np.round(qg, 3), np.round(qr, 4)  # GIR to 0.001 mg/kg/min, ratio to 0.01 %
        return {"group": group, "clamp": clamp, "delay_h": delay, "gir_median": qg[0], "gir_q05": qg[1],
                "gir_q95": qg[2], "ratio_median": qr[0], "ratio_q05": qr[1], "ratio_q95": qr[2],
                "n_draws": int(gir.size)}

    rows = []
    for g in ds["group"].values:
        ctrl = np.asarray(ds["gir_control"].sel(group=g).values, dtype=float)
        rows.append(row(str(g), "control (no exercise)", float("nan"), ctrl, ctrl / ctrl))
        for d in ds["delay_h"].values:
            sel = {"group": g, "delay_h": d}
            rows.append(row(str(g), "after exercise", float(d), np.asarray(ds["gir"].sel(sel).values, float),
                            np.asarray(ds["ratio"].sel(sel).values, float)))
    return pd.DataFrame(rows, columns=POST_EXERCISE_COLUMNS)

# ----------------------------------------------------------------------------------------- LaTeX
def _fmt_number(x: Any) -> str:
    if isinstance(x, bool | np.bool_):
        return str(bool(x))
    if isinstance(x, int | np.integer):
        return str(int(x))
    if isinstance(x, float | np.floating):
        x = float(x)
        if not math.isfinite(x):
            return "--" if math.isnan(x) else ("$\\infty$" if x > 0 else "$-\\infty$")
        if x == 0:
            return "0"
        if abs(x) >= 1000 or (x == round(x) and abs(x) >= 100):
            return f"{x:.0f}"
        if abs(x) < 1e-3:
            return f"{x:.2e}"
        return f"{x:.4g}"
    return str(x)


def _escape(text: str) -> str:
    table = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(table.get(ch, ch) for ch in str(text))


def to_latex(df: pd.DataFrame, caption: str, label: str, *, index: bool = False) -> str:
    """A ``table`` environment (booktabs rules) for ``df``.

    Column names and text cells are escaped (``k_ins`` -> ``k\\_ins``); numbers are formatted with
    four significant digits (integers and values >= 1000 without decimals).  ``caption`` and ``label``
    are inserted verbatim, so they may contain LaTeX (escape ``_`` yourself).  Needs
    ``\\usepackage{booktabs}``.
    """
    body = df.reset_index() if index else df
    columns = [str(c) for c in body.columns]
    align = "".join("r" if pd.api.types.is_numeric_dtype(body[c]) else "l" for c in body.columns)
    lines = [
        r"\begin{table}[htbp]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{{label}}}",
        rf"\begin{{tabular}}{{{align}}}",
        r"\toprule",
        " & ".join(_escape(c) for c in columns) + r" \\",
        r"\midrule",
    ]
    for row in body.itertuples(index=False):
        cells = [_escape(v) if isinstance(v, str) else _fmt_number(v) for v in row]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------------------- methods text
_SAMPLER_ALIASES = {
    "chains": ("chains", "num_chains", "n_chains"),
    "warmup": ("warmup", "num_warmup", "n_warmup", "tune"),
    "draws": ("draws", "num_samples", "n_draws", "samples"),
    "target_accept": ("target_accept", "target_accept_prob"),
    "dense_mass": ("dense_mass", "mass_matrix"),
    "max_tree_depth": ("max_tree_depth",),
    "chain_method": ("chain_method",),
}
_PACKAGES = ("myoglucose", "jax", "diffrax", "numpyro", "arviz")


def _solver_words(solver: str) -> str:
    """How the methods paragraph names a solver: Kvaerno5 is the package's own implementation (model/esdirk.py)."""
    if solver == "Kvaerno5":
        return ("the Kvaerno5 solver (Kvaerno's 5/4 ESDIRK as implemented in myoglucose on diffrax's integration loop: "
                "chord Newton with one Jacobian per step, stage derivatives by the implicit function theorem)")
    if solver == "DiffraxKvaerno5":
        return "the Kvaerno5 solver of diffrax"
    return f"the {solver} solver of diffrax"
# named in the paragraph only when the fit recorded them
_MORE_PACKAGES = ("jaxlib", "equinox", "lineax", "arviz-stats", "numpy", "scipy", "xarray", "snakemake")


def _config(config_yaml: Any) -> dict[str, Any]:
    if not isinstance(config_yaml, str) or not config_yaml.strip():
        return {}
    try:
        cfg = yaml.safe_load(config_yaml)
    except yaml.YAMLError:
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _config_sampler(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The sampler section of the config (config/config.yaml: ``sampler``; also ``nuts``/``mcmc``)."""
    for key in ("sampler", "nuts", "mcmc"):
        if isinstance(cfg.get(key), dict):
            return dict(cfg[key])
    inference = cfg.get("inference")
    if isinstance(inference, dict):
        for key in ("sampler", "nuts", "mcmc"):
            if isinstance(inference.get(key), dict):
                return dict(inference[key])
        return dict(inference)
    return {}


def _canonical(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Map alias keys (num_warmup, target_accept_prob, ...) to the canonical ones; keep other keys."""
    out = dict(settings)
    for key, aliases in _SAMPLER_ALIASES.items():
        for alias in aliases:
            if settings.get(alias) is not None:
                out[key] = settings[alias]
                break
    return out


def _pick(settings: Mapping[str, Any], key: str) -> Any:
    return settings.get(key)


def _json_attr(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def _package_versions(
    tree_attrs: Mapping[str, Any], sampler: Mapping[str, Any]
) -> tuple[dict[str, str], bool]:
    """Versions recorded with the fit (attr ``package_versions`` JSON, or ``<pkg>_version`` attrs,
    or sampler['package_versions']); otherwise the installed versions (flagged)."""
    recorded: dict[str, str] = {}
    pv = _json_attr(tree_attrs.get("package_versions"))
    if isinstance(pv, Mapping):
        recorded.update({str(k): str(v) for k, v in pv.items()})
    spv = sampler.get("package_versions")
    if isinstance(spv, Mapping):
        recorded.update({str(k): str(v) for k, v in spv.items()})
    for pkg in _PACKAGES:
        if f"{pkg}_version" in tree_attrs:
            recorded.setdefault(pkg, str(tree_attrs[f"{pkg}_version"]))
    fell_back = False
    for pkg in _PACKAGES:
        if pkg not in recorded:
            try:
                recorded[pkg] = metadata.version(pkg)
            except metadata.PackageNotFoundError:
                if pkg == "myoglucose":
                    continue
                recorded[pkg] = "unknown"
            fell_back = True
    return recorded, fell_back


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _priors_sentence(parameters: pd.DataFrame | None, n_parameters: Any, n_groups: Any) -> str:
    if parameters is None:
        if n_parameters is None:
            return ""
        return f"The model has {_plural(int(n_parameters), 'estimated parameter')}."
    p = parameters
    if "estimate" in p:
        p = p[pd.to_numeric(p["estimate"], errors="coerce").fillna(0).astype(int) == 1]
    levels = p["level"].astype(str).value_counts() if "level" in p else pd.Series(dtype=int)
    n_pop = int(levels.get("population", 0))
    n_grp = int(levels.get("group", 0))
    n_sub = int(levels.get("subject", 0))
    parts = [f"{_plural(len(p), 'parameter')} were estimated"]
    if n_pop or n_grp or n_sub:
        detail = f"{n_pop} population-level, {n_grp} group-level and {n_sub} subject-level"
        if (n_grp or n_sub) and n_groups:
            detail += f" (group and subject levels over {_plural(int(n_groups), 'group')})"
        parts.append(f"({detail})")
    sentence = " ".join(parts)
    if "priorType" in p and len(p):
        counts = p["priorType"].astype(str).value_counts()
        prior_txt = ", ".join(f"{v} {k}" for k, v in counts.items())
        sentence += f", with priors {prior_txt}"
        if "parameterScale" in p:
            scales = sorted(p["parameterScale"].astype(str).unique())
            sentence += f" (parameter scale: {', '.join(scales)})"
    return sentence + "."


def methods_paragraph(
    tree_attrs: Mapping[str, Any],
    sampler: Mapping[str, Any],
    *,
    parameters: pd.DataFrame | None = None,
    n_measurements: int | None = None,
    priors: pd.DataFrame | None = None,
) -> str:
    """A methods paragraph from the posterior's root attrs (ARCHITECTURE.md section 4) and sampler settings.

    ``sampler`` keys (aliases accepted): chains/num_chains, warmup/num_warmup, draws/num_samples,
    target_accept/target_accept_prob, dense_mass, max_tree_depth, optional n_parameters, n_groups,
    package_versions.  Missing sampler keys are taken from the ``sampler``/``nuts``/``mcmc`` section
    of the ``config_yaml`` attr.  ``parameters`` (a PEtab-like ``parameters.tsv`` table) gives the
    parameter and prior summary.  Package versions come from the attrs ``package_versions`` (JSON) or
    ``<package>_version``; if absent, the versions installed now are used and the text says so.
    ``priors`` (:func:`prior_table`) adds the prior of every estimated parameter and noise scale.
    """
    attrs = dict(tree_attrs)
    cfg = _config(attrs.get("config_yaml"))
    settings = {**_canonical(_config_sampler(cfg)), **_canonical(sampler)}
    solver_cfg = cfg.get("solver") if isinstance(cfg.get("solver"), dict) else {}
    sentences: list[str] = []

    variant = attrs.get("model_variant", "unknown")
    dataset = attrs.get("dataset_id")
    first = f"We fitted the myoglucose ODE model (variant \u201c{variant}\u201d)"
    sources = [d for d in str(attrs.get("source_datasets") or "").split(",") if d]
    if dataset and len(sources) > 1:  # a joint dataset (config joint): name its members
        first += f" jointly to the data sets {', '.join(sources)} (joint data set \u201c{dataset}\u201d)"
    elif dataset:
        first += f" to the data set \u201c{dataset}\u201d"
    if n_measurements is not None:
        first += f" ({_plural(int(n_measurements), 'observation')})"
    sentences.append(first + ".")
    prior_txt = _priors_sentence(parameters, settings.get("n_parameters"), settings.get("n_groups"))
    if prior_txt:
        sentences.append(prior_txt[0].upper() + prior_txt[1:])
    if priors is not None and len(priors):
        sentences.append(_priors_detail(priors))

    solver = attrs.get("solver")
    if solver:
        tol = []
        if attrs.get("rtol") is not None:
            tol.append(f"relative tolerance {float(attrs['rtol']):g}")
        if attrs.get("atol") is not None:
            tol.append(f"absolute tolerance {float(attrs['atol']):g}")
        if solver_cfg.get("max_steps") is not None:
            tol.append(f"at most {int(solver_cfg['max_steps'])} steps per solve")
        if solver_cfg.get("dt0") is not None:
            tol.append(f"first step {float(solver_cfg['dt0']):g} min")
        sentences.append(
            f"The ODEs were integrated in float64 with {_solver_words(solver)}"
            + (" and PID step-size control" if tol else "")
            + (f" ({', '.join(tol)})" if tol else "")
            + ", piecewise between the protocol's input discontinuities, from each subject's basal steady state."
        )
        choice = attrs.get("solver_choice")
        if choice:
            try:
                c = json.loads(choice) if isinstance(choice, str) else dict(choice)
                sentences.append(
                    f"The solver was chosen by measuring stiffness before sampling: the largest spectral radius of "
                    f"the Jacobian along every condition's protocol, at the nominal parameters and 8 prior draws, was "
                    f"{float(c['rho_max_per_min']):.3g}/min over {float(c['horizon_min']):.0f} min, so explicit "
                    f"stability needs about {float(c['stability_steps']):.0f} steps ({c['reason']}).")
            except (ValueError, KeyError, TypeError):
                pass
        choice = _json_attr(attrs.get("solver_choice"))
        if str(attrs.get("solver_requested", "")) == "auto":
            why = f" ({choice['reason']})" if isinstance(choice, Mapping) and choice.get("reason") else ""
            sentences.append(f"The solver was chosen automatically from a stiffness probe of the data's "
                             f"conditions{why}.")
        # the mode the fit used (``auto`` resolved); fits written before it was recorded have only the config's
        adjoint = attrs.get("adjoint") or solver_cfg.get("adjoint")
        if adjoint and str(adjoint) != "auto":
            how = {"sensitivity": "forward sensitivities of the estimated ODE parameters inside a custom "
                                  "vector-Jacobian product",
                   "forward": "forward-mode differentiation through the solver",
                   "reverse": "reverse-mode differentiation through the solver (recursive checkpointing)"}
            why = attrs.get("adjoint_choice")
            why = f", chosen automatically ({why})" if why else ""
            sentences.append(f"Gradients of the log density used {how.get(str(adjoint), str(adjoint))}{why}.")

    chains, warmup, draws = _pick(settings, "chains"), _pick(settings, "warmup"), _pick(settings, "draws")
    nuts = "Posterior samples were drawn with the No-U-Turn Sampler (NUTS) of NumPyro"
    detail = []
    if chains is not None:
        detail.append(_plural(int(chains), "chain"))
    if warmup is not None:
        detail.append(f"{int(warmup)} warm-up iterations")
    if draws is not None:
        detail.append(f"{int(draws)} retained draws per chain")
    ta = _pick(settings, "target_accept")
    if ta is not None:
        detail.append(f"target acceptance probability {float(ta):g}")
    dense = _pick(settings, "dense_mass")
    if dense is not None:
        if isinstance(dense, str):
            detail.append(f"{dense} mass matrix")
        else:
            detail.append(f"{'dense' if bool(dense) else 'diagonal'} mass matrix adapted during warm-up")
    mtd = _pick(settings, "max_tree_depth")
    if mtd is not None:
        detail.append(f"maximum tree depth {int(mtd)}")
    init = settings.get("init")
    if init == "map":
        starts = settings.get("map_starts")
        txt = "chains initialised at multi-start MAP estimates"
        spread = settings.get("map_spread")
        detail.append(txt + (f" from {int(starts)} optimisation starts" if starts else "")
                      + (f" over-dispersed {float(spread):g}x around the prior median"
                         if spread and starts and float(spread) != 1.0 else ""))
        if settings.get("metric_init", "identity") == "laplace":
            detail.append("warm-up mass matrix started at the inverse Hessian of the log posterior at the MAP "
                          "(Laplace approximation)")
    elif init == "median":
        detail.append("chains initialised at the prior medians")
    elif init:
        detail.append(f"initialisation: {init}")
    shrink = float(settings.get("metric_shrinkage") or 0.0)
    if shrink > 0 and dense not in (False, "diagonal"):
        towards = ("the warm-up's starting metric" if settings.get("metric_shrinkage_target") == "initial"
                   else "the previous metric")
        detail.append(f"each warm-up window's dense covariance estimate shrunk towards the principal axes of {towards} "
                      f"({shrink:g} pseudo-draw{'' if shrink == 1 else 's'} per dimension)")
    sentences.append(nuts + (f" ({'; '.join(detail)})" if detail else "") + ".")
    if settings.get("max_samples") and settings.get("first_round"):
        rounds = [int(r["draws_per_chain"]) for r in settings.get("rounds") or []]
        sentences.append(
            f"Chains were run until converged: after {int(settings['first_round'])} draws per chain, while the "
            "rank-normalised R-hat or the bulk or tail effective sample size of any parameter missed its threshold, "
            "every chain continued (the same Markov chain, without new warm-up) to a length projected from the "
            f"shortfall, up to {int(settings['max_samples'])} draws per chain"
            + (f"; this fit kept {' -> '.join(map(str, rounds))} draws per chain in {_plural(len(rounds), 'round')}"
               if rounds else "") + ".")

    seed = attrs.get("seed")
    if seed is not None:
        sentences.append(
            f"The random seed was {seed}; the MAP starting points, every chain and the prior predictive draws "
            "derive from it deterministically."
        )

    versions, fell_back = _package_versions(attrs, settings)
    if attrs.get("myoglucose_version") is not None:
        versions["myoglucose"] = str(attrs["myoglucose_version"])
    shown = [*_PACKAGES, *(p for p in _MORE_PACKAGES if p in versions)]
    ver_txt = ", ".join(f"{pkg} {versions[pkg]}" for pkg in shown if pkg in versions)
    sentences.append(
        f"Software: {ver_txt}"
        + (" (versions installed when this report was generated)" if fell_back else "")
        + "."
    )

    commit = attrs.get("git_commit")
    created = attrs.get("created_utc")
    if commit or created:
        txt = "The analysis"
        if commit:
            txt += f" used code at git commit {commit}"
        if created:
            txt += f"{' and' if commit else ''} was run on {created} (UTC)"
        sentences.append(txt + ".")

    checks = _json_attr(attrs.get("data_sha256"))
    if isinstance(checks, Mapping) and checks:
        items = "; ".join(f"{name}: {str(h)[:12]}" for name, h in sorted(checks.items()))
        sentences.append(f"SHA-256 checksums of the input data (first 12 hex digits): {items}.")
    elif isinstance(checks, str) and checks:
        sentences.append(f"SHA-256 checksum of the input data: {checks}.")
    return " ".join(sentences)


def provenance_markdown(tree_attrs: Mapping[str, Any]) -> str:
    """Markdown list of everything needed to reproduce a fit, in full: git commit, seed, creation time, package
    versions, and the SHA-256 of every data and model file (the root attributes of ``posterior.nc``)."""
    attrs = dict(tree_attrs)
    lines = ["## Provenance", ""]
    for key, label in (("model_variant", "model variant"), ("dataset_id", "dataset"), ("git_commit", "git commit"),
                       ("seed", "seed"), ("created_utc", "fit created (UTC)"), ("backend", "JAX backend"),
                       ("solver", "solver"), ("solver_requested", "solver requested"),
                       ("solver_choice", "solver choice"), ("adjoint", "gradient mode"),
                       ("adjoint_requested", "gradient mode requested"), ("adjoint_choice", "gradient mode choice"),
                       ("rtol", "rtol"), ("atol", "atol")):
        if attrs.get(key) not in (None, ""):
            lines.append(f"- {label}: `{attrs[key]}`")
    versions = _json_attr(attrs.get("package_versions"))
    if isinstance(versions, Mapping) and versions:
        lines += ["", "Package versions:", ""]
        lines += [f"- {k} {v}" for k, v in sorted(versions.items())]
    for key, label in (("data_sha256", "Data files (SHA-256)"), ("model_sha256", "Model files (SHA-256)")):
        sums = _json_attr(attrs.get(key))
        if isinstance(sums, Mapping) and sums:
            lines += ["", f"{label}:", ""]
            lines += [f"- `{name}`: `{digest}`" for name, digest in sorted(sums.items())]
    sampler = _json_attr(attrs.get("sampler_settings"))
    if isinstance(sampler, Mapping) and sampler:
        lines += ["", "Sampler settings: " + ", ".join(f"{k}={v}" for k, v in sorted(sampler.items()))]
    return "\n".join(lines) + "\n"
