"""Figures of simulation-based calibration: rank ECDF differences with simultaneous bands, and rank histograms.

Library code: returns matplotlib Figures; the CLI saves them. Input is the long rank table of
``inference/sbc.rank_table`` (columns quantity, rank, n_ranks).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from ..inference.sbc import ecdf_band, ecdf_of


def _grid(n: int, ncols: int = 3, size=(3.2, 2.4)) -> tuple[Figure, list]:
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def plot_rank_ecdf(table: pd.DataFrame, alpha: float = 0.05, ncols: int = 3) -> Figure:
    """One panel per quantity: ECDF of the fractional ranks minus the uniform CDF, with the simultaneous
    (1 - alpha) band of uniform ranks (grey). A curve leaving the band is evidence of miscalibration: above zero
    throughout, the ranks are too small (posteriors biased high); below zero, biased low; positive then negative,
    posteriors too narrow (a U-shaped rank histogram); negative then positive, too wide."""
    qs = sorted(table["quantity"].unique())
    fig, axes = _grid(len(qs), ncols)
    for ax, q in zip(axes, qs):
        sub = table[table["quantity"] == q]
        n, L = len(sub), int(sub["n_ranks"].iloc[0])
        band = ecdf_band(n, L, alpha)
        z = band["z"]
        e = ecdf_of(sub["rank"].to_numpy(), L, z)
        inside = np.all((e >= band["lower"] - 1e-12) & (e <= band["upper"] + 1e-12))
        ax.fill_between(z, band["lower"] - z, band["upper"] - z, color="0.85", step="mid",
                        label=f"{100 * (1 - alpha):.0f} % simultaneous band")
        ax.step(z, e - z, where="mid", color="C0" if inside else "C3", lw=1.4, label="ECDF - uniform")
        ax.axhline(0.0, color="0.4", lw=0.6)
        ax.set_title(f"{q}" + ("" if inside else "  (outside band)"), fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_xlabel("fractional rank", fontsize=8)
        ax.set_ylabel("ECDF difference", fontsize=8)
        ax.tick_params(labelsize=7)
    if axes:
        axes[0].legend(fontsize=7, loc="lower left", frameon=False)
    reps = int(table["rep"].nunique())
    fig.suptitle(f"Simulation-based calibration: rank ECDF differences ({reps} replications, "
                 f"L = {int(table['n_ranks'].iloc[0])})", fontsize=10)
    return fig


def plot_rank_histograms(table: pd.DataFrame, bins: int | None = None, ncols: int = 3) -> Figure:
    """One panel per quantity: histogram of ranks with the 99 % range of a bin count under uniformity."""
    from scipy.stats import binom

    qs = sorted(table["quantity"].unique())
    fig, axes = _grid(len(qs), ncols)
    for ax, q in zip(axes, qs):
        sub = table[table["quantity"] == q]
        n, L = len(sub), int(sub["n_ranks"].iloc[0])
        B = bins or int(min(20, max(4, n // 10)))
        edges = np.linspace(0, L + 1, B + 1)
        p = 1.0 / B
        lo, hi = binom.ppf(0.005, n, p), binom.ppf(0.995, n, p)
        ax.axhspan(lo, hi, color="0.88")
        ax.axhline(n * p, color="0.5", lw=0.8)
        ax.hist(sub["rank"].to_numpy() + 0.5, bins=edges, color="C0", edgecolor="white")
        ax.set_title(q, fontsize=9)
        ax.set_xlabel("rank of the true value", fontsize=8)
        ax.set_ylabel("replications", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Simulation-based calibration: rank histograms (grey: 99 % range of a bin under uniformity)",
                 fontsize=10)
    return fig


def plot_sbc_shrinkage(table: pd.DataFrame, ncols: int = 3) -> Figure:
    """Posterior z-score ((mean - truth) / sd) against the true value per quantity: calibration says the z-scores
    scatter around 0 with sd about 1 across the prior's range."""
    qs = sorted(table["quantity"].unique())
    fig, axes = _grid(len(qs), ncols)
    for ax, q in zip(axes, qs):
        sub = table[table["quantity"] == q]
        z = (sub["posterior_mean"] - sub["true_value"]) / sub["posterior_sd"].where(sub["posterior_sd"] > 0)
        ax.scatter(sub["true_value"], z, s=8, color="C0", alpha=0.8)
        ax.axhline(0.0, color="0.4", lw=0.6)
        for y in (-2, 2):
            ax.axhline(y, color="0.7", lw=0.6, ls="--")
        ax.set_title(f"{q}: sd(z) = {np.nanstd(z):.2f}", fontsize=9)
        ax.set_xlabel("true value", fontsize=8)
        ax.set_ylabel("posterior z-score", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Simulation-based calibration: posterior z-scores against the true values", fontsize=10)
    return fig


__all__ = ["plot_rank_ecdf", "plot_rank_histograms", "plot_sbc_shrinkage"]
