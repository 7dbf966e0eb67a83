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
    "methods_paragraph",
    "posterior_contraction",
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


# ------------------------------------------------------------------------------------------- LOO
def loo_compare(trees: Mapping[str, xr.DataTree], var_name: str = "obs") -> pd.DataFrame:
    """PSIS-LOO per model and their comparison (arviz_stats ``loo`` and ``compare``, stacking weights).

    Columns: model, rank (0 = best), elpd_loo, se, p_loo, elpd_diff (vs the best model, <= 0), dse,
    weight, n_pareto_k_gt_0_7, n_data_points.  Models must share the same observations.
    A single model gives one row with elpd_diff = 0 and weight = 1.
    """
    if not trees:
        raise ValueError("no models to compare")
    loos = {name: azs.loo(tree, pointwise=True, var_name=var_name) for name, tree in trees.items()}
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
    parts = [f"{_plural(len(p), 'parameter')} were estimated"]
    if n_pop or n_grp:
        detail = f"{n_pop} population-level and {n_grp} group-level"
        if n_grp and n_groups:
            detail += f" (one value per group, {_plural(int(n_groups), 'group')})"
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
) -> str:
    """A methods paragraph from the posterior's root attrs (ARCHITECTURE.md section 4) and sampler settings.

    ``sampler`` keys (aliases accepted): chains/num_chains, warmup/num_warmup, draws/num_samples,
    target_accept/target_accept_prob, dense_mass, max_tree_depth, optional n_parameters, n_groups,
    package_versions.  Missing sampler keys are taken from the ``sampler``/``nuts``/``mcmc`` section
    of the ``config_yaml`` attr.  ``parameters`` (a PEtab-like ``parameters.tsv`` table) gives the
    parameter and prior summary.  Package versions come from the attrs ``package_versions`` (JSON) or
    ``<package>_version``; if absent, the versions installed now are used and the text says so.
    """
    attrs = dict(tree_attrs)
    cfg = _config(attrs.get("config_yaml"))
    settings = {**_canonical(_config_sampler(cfg)), **_canonical(sampler)}
    solver_cfg = cfg.get("solver") if isinstance(cfg.get("solver"), dict) else {}
    sentences: list[str] = []

    variant = attrs.get("model_variant", "unknown")
    dataset = attrs.get("dataset_id")
    first = f"We fitted the myoglucose ODE model (variant \u201c{variant}\u201d)"
    if dataset:
        first += f" to the data set \u201c{dataset}\u201d"
    if n_measurements is not None:
        first += f" ({_plural(int(n_measurements), 'observation')})"
    sentences.append(first + ".")
    prior_txt = _priors_sentence(parameters, settings.get("n_parameters"), settings.get("n_groups"))
    if prior_txt:
        sentences.append(prior_txt[0].upper() + prior_txt[1:])

    solver = attrs.get("solver")
    if solver:
        tol = []
        if attrs.get("rtol") is not None:
            tol.append(f"relative tolerance {float(attrs['rtol']):g}")
        if attrs.get("atol") is not None:
            tol.append(f"absolute tolerance {float(attrs['atol']):g}")
        if solver_cfg.get("max_steps") is not None:
            tol.append(f"at most {int(solver_cfg['max_steps'])} steps per solve")
        sentences.append(
            f"The ODEs were integrated with the {solver} solver of diffrax"
            + (f" ({', '.join(tol)})" if tol else "")
            + "."
        )

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
        detail.append(txt + (f" from {int(starts)} optimisation starts" if starts else ""))
    elif init == "median":
        detail.append("chains initialised at the prior medians")
    elif init:
        detail.append(f"initialisation: {init}")
    sentences.append(nuts + (f" ({'; '.join(detail)})" if detail else "") + ".")

    seed = attrs.get("seed")
    if seed is not None:
        sentences.append(f"The random seed was {seed}.")

    versions, fell_back = _package_versions(attrs, settings)
    if attrs.get("myoglucose_version") is not None:
        versions["myoglucose"] = str(attrs["myoglucose_version"])
    ver_txt = ", ".join(f"{pkg} {versions[pkg]}" for pkg in _PACKAGES if pkg in versions)
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
