"""MCMC convergence diagnostics on a posterior DataTree (ARCHITECTURE.md section 4).

All ArviZ calls of the diagnostics package live here (arviz_stats 1.x: ``rhat``, ``ess``, ``mcse``,
``bfmi`` applied to the ``xarray.DataTree``).  Nothing here reads or writes files.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import arviz_stats as azs
import numpy as np
import pandas as pd
import xarray as xr

__all__ = [
    "SAMPLE_DIMS",
    "TABLE_COLUMNS",
    "Thresholds",
    "convergence_table",
    "element_label",
    "iter_elements",
    "sampler_summary",
    "verdict",
]

SAMPLE_DIMS = ("chain", "draw")
_NON_THRESHOLD_KEYS = frozenset({"fail_on_bad"})
TABLE_COLUMNS = ["parameter", "mean", "sd", "q05", "q95", "r_hat", "ess_bulk", "ess_tail", "mcse_mean"]


@dataclass(frozen=True)
class Thresholds:
    """Pass/fail limits for :func:`verdict`."""

    r_hat_max: float = 1.01
    ess_bulk_min: float = 400.0
    ess_tail_min: float = 400.0
    max_divergences: int = 0
    e_bfmi_min: float = 0.3
    max_treedepth_fraction: float = 0.01
    max_ode_failure_fraction: float = 0.01

    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> Thresholds:
        """Build from a mapping (e.g. the ``diagnostics`` section of a config); missing keys keep defaults.

        Unknown keys raise ``ValueError`` (catches typos such as ``rhat_max``); ``None`` values and the
        non-threshold key ``fail_on_bad`` of the config's ``diagnostics`` section are ignored.
        """
        if values is None:
            return cls()
        values = {k: v for k, v in values.items() if k not in _NON_THRESHOLD_KEYS}
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(f"unknown threshold(s) {unknown}; allowed: {sorted(fields)}")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if value is None:
                continue
            try:
                kwargs[key] = int(value) if key == "max_divergences" else float(value)
            except (TypeError, ValueError) as err:
                raise ValueError(f"threshold {key!r} must be a number, got {value!r}") from err
        return cls(**kwargs)

    def to_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------- helpers
def _group(tree: xr.DataTree, name: str) -> xr.Dataset:
    if name not in tree.children:
        raise KeyError(f"DataTree has no group {name!r} (groups: {sorted(tree.children)})")
    return tree[name].to_dataset()


def element_label(name: str, dims: tuple[str, ...], coords: tuple[Any, ...]) -> str:
    """``k_ins`` + ``('group',)`` + ``('nonobese',)`` -> ``k_ins[nonobese]``."""
    del dims
    if not coords:
        return str(name)
    return f"{name}[{', '.join(str(c) for c in coords)}]"


def iter_elements(ds: xr.Dataset, var_names: list[str] | None = None) -> Iterator[tuple[str, xr.DataArray]]:
    """Yield ``(label, DataArray)`` for every scalar element of every numeric variable.

    The yielded DataArray keeps only the sample dimensions that the variable has (chain, draw).
    """
    names = list(ds.data_vars) if var_names is None else list(var_names)
    for name in names:
        da = ds[name]
        if not (np.issubdtype(da.dtype, np.number) or np.issubdtype(da.dtype, np.bool_)):
            continue
        extra = [d for d in da.dims if d not in SAMPLE_DIMS]
        if not extra:
            yield element_label(name, (), ()), da
            continue
        sizes = [da.sizes[d] for d in extra]
        for idx in np.ndindex(*sizes):
            sel = dict(zip(extra, idx, strict=True))
            coords = tuple(
                (da[d].values[i].item() if d in da.coords else i) for d, i in zip(extra, idx, strict=True)
            )
            yield element_label(name, tuple(extra), coords), da.isel(sel)


def _flatten(ds: xr.Dataset, var_names: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for label, da in iter_elements(ds, var_names):
        out[label] = float(da.values)
    return out


def _as_dataset(result: Any) -> xr.Dataset:
    if isinstance(result, xr.DataTree):
        return result.to_dataset()
    return result


# ------------------------------------------------------------------------------------- public API
def convergence_table(tree: xr.DataTree, var_names: list[str] | None = None) -> pd.DataFrame:
    """One row per scalar posterior element (e.g. ``k_ins[nonobese]``).

    Columns: parameter, mean, sd, q05, q95, r_hat (rank-normalised split R-hat, Vehtari et al. 2021),
    ess_bulk, ess_tail, mcse_mean.  All numeric columns are floats (unrounded).
    """
    post = _group(tree, "posterior")
    names = [
        v
        for v in (list(post.data_vars) if var_names is None else var_names)
        if np.issubdtype(post[v].dtype, np.number)
    ]
    if not names:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    post = post[names]
    dims = [d for d in SAMPLE_DIMS if d in post.dims]

    stats = {
        "mean": post.mean(dim=dims),
        "sd": post.std(dim=dims, ddof=1),
        "q05": post.quantile(0.05, dim=dims).drop_vars("quantile"),
        "q95": post.quantile(0.95, dim=dims).drop_vars("quantile"),
        "r_hat": _as_dataset(azs.rhat(tree, group="posterior", var_names=names, method="rank")),
        "ess_bulk": _as_dataset(azs.ess(tree, group="posterior", var_names=names, method="bulk")),
        "ess_tail": _as_dataset(azs.ess(tree, group="posterior", var_names=names, method="tail")),
        "mcse_mean": _as_dataset(azs.mcse(tree, group="posterior", var_names=names, method="mean")),
    }
    flat = {key: _flatten(ds, names) for key, ds in stats.items()}
    labels = list(flat["mean"])
    rows = [{"parameter": label, **{key: flat[key][label] for key in stats}} for label in labels]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def sampler_summary(tree: xr.DataTree, max_tree_depth: int) -> dict[str, Any]:
    """Sampler-level diagnostics from ``sample_stats`` (JSON-serialisable values only).

    Keys: n_chains, n_draws, n_samples, divergences, divergences_per_chain, divergence_fraction,
    e_bfmi (list per chain), e_bfmi_min, max_tree_depth, treedepth_saturated,
    treedepth_saturation_fraction, ode_failures, ode_failure_fraction.
    Tree depth counts as saturated when ``tree_depth >= max_tree_depth`` (ArviZ's numpyro converter
    defines ``tree_depth = floor(log2(n_steps)) + 1``, so NumPyro's cap of ``2**max_tree_depth - 1``
    leapfrog steps gives exactly ``max_tree_depth``).  Missing statistics give ``None``.
    """
    stats = _group(tree, "sample_stats")
    post = _group(tree, "posterior")
    ref = stats if "chain" in stats.dims else post
    n_chains = int(ref.sizes.get("chain", 1))
    n_draws = int(ref.sizes.get("draw", 0))
    n_samples = n_chains * n_draws
    out: dict[str, Any] = {
        "n_chains": n_chains,
        "n_draws": n_draws,
        "n_samples": n_samples,
        "max_tree_depth": int(max_tree_depth),
    }

    def frac(count: int | None) -> float | None:
        return None if count is None or n_samples == 0 else count / n_samples

    if "diverging" in stats:
        div = stats["diverging"].astype(bool)
        out["divergences"] = int(div.sum())
        other = [d for d in div.dims if d != "chain"]
        out["divergences_per_chain"] = [int(v) for v in np.atleast_1d(div.sum(dim=other).values)]
    else:
        out["divergences"] = None
        out["divergences_per_chain"] = None
    out["divergence_fraction"] = frac(out["divergences"])

    if "energy" in stats:
        bfmi = _as_dataset(azs.bfmi(tree, group="sample_stats", var_names="energy"))["energy"]
        values = [float(v) for v in np.atleast_1d(bfmi.values)]
        out["e_bfmi"] = values
        out["e_bfmi_min"] = min(values) if values else None
    else:
        out["e_bfmi"] = None
        out["e_bfmi_min"] = None

    if "tree_depth" in stats:
        saturated: int | None = int((stats["tree_depth"] >= max_tree_depth).sum())
    elif "n_steps" in stats:
        saturated = int((stats["n_steps"] >= 2**max_tree_depth - 1).sum())
    else:
        saturated = None
    out["treedepth_saturated"] = saturated
    out["treedepth_saturation_fraction"] = frac(saturated)

    if "ode_failed" in stats:
        out["ode_failures"] = int((stats["ode_failed"] != 0).sum())
    else:
        out["ode_failures"] = None
    out["ode_failure_fraction"] = frac(out["ode_failures"])
    return out


def _listing(labels: list[str], limit: int = 8) -> str:
    shown = ", ".join(labels[:limit])
    return shown + (f" and {len(labels) - limit} more" if len(labels) > limit else "")


def verdict(table: pd.DataFrame, summary: Mapping[str, Any], thresholds: Thresholds | None = None) -> dict:
    """Compare diagnostics with thresholds.

    Returns ``{"passed": bool, "failures": [str, ...], "thresholds": {...}}``.  A NaN R-hat or ESS
    (e.g. a constant chain) counts as a failure; a missing sampler statistic is not checked.
    """
    th = thresholds or Thresholds()
    failures: list[str] = []

    def rows(mask: pd.Series) -> list[str]:
        return [str(p) for p in table.loc[mask, "parameter"]]

    if len(table):
        r_hat = table["r_hat"].astype(float)
        bad = rows(r_hat > th.r_hat_max)
        if bad:
            failures.append(f"R-hat > {th.r_hat_max:g} for {len(bad)} parameter(s): {_listing(bad)}")
        for col, lim, name in (
            ("ess_bulk", th.ess_bulk_min, "bulk ESS"),
            ("ess_tail", th.ess_tail_min, "tail ESS"),
        ):
            bad = rows(table[col].astype(float) < lim)
            if bad:
                failures.append(f"{name} < {lim:g} for {len(bad)} parameter(s): {_listing(bad)}")
        nan = rows(table[["r_hat", "ess_bulk", "ess_tail"]].astype(float).isna().any(axis=1))
        if nan:
            failures.append(f"R-hat or ESS is NaN for {len(nan)} parameter(s): {_listing(nan)}")

    div = summary.get("divergences")
    if div is not None and div > th.max_divergences:
        failures.append(
            f"{div} divergent transition(s) (allowed: {th.max_divergences}; "
            f"per chain: {summary.get('divergences_per_chain')})"
        )
    bfmi = summary.get("e_bfmi")
    if bfmi:
        low = [(i, v) for i, v in enumerate(bfmi) if not (v >= th.e_bfmi_min)]
        if low:
            txt = ", ".join(f"chain {i}: {v:.3g}" for i, v in low)
            failures.append(f"E-BFMI < {th.e_bfmi_min:g} ({txt})")
    tdf = summary.get("treedepth_saturation_fraction")
    if tdf is not None and tdf > th.max_treedepth_fraction:
        failures.append(
            f"{summary.get('treedepth_saturated')} draw(s) ({tdf:.2%}) hit the maximum tree depth "
            f"{summary.get('max_tree_depth')} (allowed: {th.max_treedepth_fraction:.2%})"
        )
    odf = summary.get("ode_failure_fraction")
    if odf is not None and odf > th.max_ode_failure_fraction:
        failures.append(
            f"ODE solver failed in {summary.get('ode_failures')} draw(s) ({odf:.2%}; "
            f"allowed: {th.max_ode_failure_fraction:.2%})"
        )
    n = summary.get("n_samples")
    if n is not None and n == 0:
        failures.append("no posterior draws")
    return {"passed": not failures, "failures": failures, "thresholds": th.to_dict()}

