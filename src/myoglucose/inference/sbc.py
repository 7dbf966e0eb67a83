"""Simulation-based calibration (Talts et al. 2018, arXiv:1804.06788; ECDF bands: Saeilynoja et al. 2022,
Stat Comput 32:32). No file I/O.

One replication: draw every latent from the prior of the fitted NumPyro model (``ModelBuilder.prior_latents``),
simulate a data set with the model's own observation model at the template's design (its conditions, sampling times,
insulin forcing and known measurement errors), fit it with NUTS, and record for every scalar quantity (population
and group parameters on their natural scale, hierarchical spreads, noise scales) the rank of the true value among
``L`` thinned posterior draws. If the sampler, the log density and its gradient are right, every rank is uniform on
{0, ..., L}; a posterior that is too narrow gives a U-shaped histogram, a biased one a sloped ECDF.

A prior draw whose ODE solve fails cannot produce data; it is redrawn (the fitted model assigns it zero density, so
the prior SBC checks is the one truncated to solvable parameters) and the redraws are counted.

The whole chain (initialisation, warmup, sampling) is one compiled program whose only inputs are a key and the data
set, so it compiles once per process and every replication reuses it. Replications run in parallel processes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import pandas as pd


@dataclasses.dataclass(frozen=True)
class SBCSettings:
    reps: int = 100  # replications (Talts et al. use 1000; >= 100 resolves gross miscalibration)
    warmup: int = 200  # NUTS adaptation iterations per replication
    samples: int = 300  # kept NUTS iterations per replication, thinned by ``thin``
    thin: int = 3  # keep every thin-th draw: L = samples // thin ranks (thinning against autocorrelation)
    target_accept: float = 0.9
    dense_mass: bool = False
    max_tree_depth: int = 6
    seed: int = 20261126
    max_redraws: int = 50  # prior draws tried per replication before giving up (failed ODE solves)

    def __post_init__(self):
        problems = []
        if self.reps < 1:
            problems.append(f"sbc.reps must be >= 1 (got {self.reps})")
        if self.warmup < 1 or self.samples < 1:
            problems.append(f"sbc.warmup and sbc.samples must be >= 1 (got {self.warmup}, {self.samples})")
        if not 1 <= self.thin <= self.samples:
            problems.append(f"sbc.thin must be in [1, sbc.samples] (got {self.thin})")
        if not 0.5 <= self.target_accept < 1.0:
            problems.append(f"sbc.target_accept must be in [0.5, 1) (got {self.target_accept})")
        if not 1 <= self.max_tree_depth <= 15:
            problems.append(f"sbc.max_tree_depth must be in [1, 15] (got {self.max_tree_depth})")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def n_ranks(self) -> int:
        """L: thinned posterior draws per replication; ranks take the values 0..L."""
        return self.samples // self.thin

    @classmethod
    def from_dict(cls, d: dict | None) -> "SBCSettings":
        d = dict(d or {})
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in fields})


# ------------------------------------------------------------------------------------------------ quantities
def quantities(builder, lat: dict) -> dict:
    """Scalar quantities checked by SBC, from one set of latents: every estimated parameter on its natural scale
    (one per group / subject where it varies), the hierarchical spreads and the noise scales. Works batched
    (leading draw axis) too."""
    pop, grp, noise = builder.natural(lat)
    out = {}
    for k, v in pop.items():
        out[k] = v
    for k, v in grp.items():
        for i, g in enumerate(builder.groups):
            out[f"{k}[{g}]"] = v[..., i]
        out[f"{k}__omega"] = lat[f"{k}__omega"]
    for k, v in builder.subject_values(lat, pop, grp).items():
        for i, s in enumerate(builder.subjects):
            out[f"{k}[{s}]"] = v[..., i]
        out[f"{k}__tau"] = lat[f"{k}__tau"]
    out.update(noise)
    return out


def ranks_of(truth: dict, draws: dict) -> dict:
    """Rank of each true value among its draws: the number of draws below it (ties broken at random would matter
    only for discrete quantities; ours are continuous)."""
    return {k: int(np.sum(np.asarray(draws[k]) < float(truth[k]))) for k in truth}


# ------------------------------------------------------------------------------------------------ one replication
def make_replication(builder, arrays, settings: SBCSettings):
    """Return ``simulate(key) -> (latents, y, ok)`` and ``chain(key, y) -> (latent draws, diverging, n_steps)``,
    both jitted; ``chain`` runs initialisation, warmup and sampling in one compiled program."""
    import jax
    import jax.numpy as jnp
    from numpyro.distributions.transforms import biject_to
    from numpyro.infer import init_to_median
    from numpyro.infer.hmc import hmc
    from numpyro.infer.util import initialize_model

    fwd = builder.solver.adjoint == "forward"
    info = initialize_model(jax.random.PRNGKey(settings.seed), builder.model, model_args=(arrays,),
                            model_kwargs={"y": arrays.values}, dynamic_args=True,
                            init_strategy=init_to_median(num_samples=15), forward_mode_differentiation=fwd)
    z0 = info.param_info.z  # unconstrained prior medians: every replication starts here
    to_constrained = {name: biject_to(site["fn"].support) for name, site in info.model_trace.items()
                      if site["type"] == "sample" and not site["is_observed"] and name in z0}
    init_kernel, sample_kernel = hmc(potential_fn_gen=info.potential_fn, algo="NUTS")
    W, S, thin = settings.warmup, settings.samples, settings.thin

    @jax.jit
    def simulate(key):
        k_lat, k_obs = jax.random.split(key)
        lat = jax.tree.map(lambda v: v[0], builder.prior_latents(k_lat, 1))
        _, y, n_failed = builder.pointwise(lat, arrays, k_obs)
        ok = (n_failed == 0) & jnp.all(jnp.isfinite(y))
        return lat, y, ok

    @jax.jit
    def chain(key, y):
        kwargs = {"y": y}
        state = init_kernel(z0, num_warmup=W, dense_mass=settings.dense_mass,
                            target_accept_prob=settings.target_accept, max_tree_depth=settings.max_tree_depth,
                            forward_mode_differentiation=fwd, model_args=(arrays,), model_kwargs=kwargs, rng_key=key)

        def warm(s, _):
            return sample_kernel(s, model_args=(arrays,), model_kwargs=kwargs), None

        def draw(s, _):
            s = sample_kernel(s, model_args=(arrays,), model_kwargs=kwargs)
            return s, (s.z, s.diverging, s.num_steps)

        state, _ = jax.lax.scan(warm, state, None, length=W)
        state, (zs, div, steps) = jax.lax.scan(draw, state, None, length=S)
        kept = jax.tree.map(lambda v: v[thin - 1::thin][: S // thin], zs)
        constrained = {k: to_constrained[k](v) for k, v in kept.items()}
        return constrained, div, steps, state.adapt_state.step_size

    return simulate, chain


def run_replications(builder, arrays, settings: SBCSettings, rep_ids, log: Callable[[str], None] = print) -> list:
    """Run the replications ``rep_ids`` (replication r uses keys folded from ``settings.seed`` and r, so the result
    does not depend on how replications are split between processes). Returns one record per replication."""
    import time

    import jax

    simulate, chain = make_replication(builder, arrays, settings)
    q_of = jax.jit(lambda lat: quantities(builder, lat))
    base = jax.random.PRNGKey(settings.seed)
    records = []
    for r in rep_ids:
        t0 = time.perf_counter()
        k_rep = jax.random.fold_in(base, r)
        for attempt in range(settings.max_redraws):
            lat, y, ok = simulate(jax.random.fold_in(k_rep, attempt))
            if bool(ok):
                break
        else:
            raise RuntimeError(f"SBC replication {r}: {settings.max_redraws} prior draws in a row gave a failed ODE "
                               "solve; the prior puts too much mass on unsolvable parameters for this design")
        draws, div, steps, step_size = chain(jax.random.fold_in(k_rep, 10_000), y)
        truth = {k: float(v) for k, v in q_of(lat).items()}
        post = {k: np.asarray(v) for k, v in jax.vmap(lambda z: quantities(builder, z))(draws).items()}
        ranks = ranks_of(truth, post)
        elapsed = time.perf_counter() - t0
        rec = {"rep": int(r), "redraws": attempt, "divergences": int(np.sum(div)),
               "mean_leapfrog": float(np.mean(steps)), "step_size": float(step_size), "seconds": elapsed,
               "truth": truth, "ranks": ranks,
               "post_mean": {k: float(np.mean(v)) for k, v in post.items()},
               "post_sd": {k: float(np.std(v)) for k, v in post.items()}}
        records.append(rec)
        log(f"SBC replication {r}: {elapsed:.1f} s, {rec['divergences']} divergences, "
            f"{rec['mean_leapfrog']:.1f} leapfrog steps per iteration, {attempt} prior redraws")
    return records


def rank_table(records: list, n_ranks: int) -> pd.DataFrame:
    """Long table: one row per (replication, quantity) with the rank, L, the true value and the posterior mean/sd."""
    rows = []
    for rec in records:
        for k, rank in rec["ranks"].items():
            rows.append({"rep": rec["rep"], "quantity": k, "rank": rank, "n_ranks": n_ranks,
                         "true_value": rec["truth"][k], "posterior_mean": rec["post_mean"][k],
                         "posterior_sd": rec["post_sd"][k], "divergences": rec["divergences"],
                         "mean_leapfrog": rec["mean_leapfrog"], "redraws": rec["redraws"],
                         "seconds": rec["seconds"]})
    return pd.DataFrame(rows).sort_values(["quantity", "rep"], kind="stable").reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ uniformity
def ecdf_band(n: int, n_ranks: int, alpha: float = 0.05, sims: int = 2000, seed: int = 0,
              grid: int | None = None) -> dict:
    """Simultaneous (1 - alpha) band for the ECDF of ``n`` fractional ranks ``rank / (L + 1)`` under uniformity,
    evaluated at ``z_i = i / K`` (K = min(L + 1, grid or 100)): pointwise binomial quantiles at a level ``gamma``
    chosen by simulation so that uniform rank samples stay inside every pointwise interval with probability
    ``1 - alpha`` (the calibration of Saeilynoja et al. 2022, by Monte Carlo). Returns z, lower, upper (ECDF
    values) and gamma."""
    from scipy.stats import binom

    K = min(n_ranks + 1, grid or 100)
    z = np.arange(1, K) / K
    rng = np.random.default_rng(seed)
    ranks = rng.integers(0, n_ranks + 1, size=(sims, n))
    u = np.sort((ranks + 0.5) / (n_ranks + 1), axis=1)
    counts = np.stack([np.searchsorted(row, z, side="right") for row in u])  # [sims, K-1]: #u <= z
    # per simulation: the smallest pointwise two-sided tail probability along z
    cdf = binom.cdf(counts, n, z)
    sf = binom.sf(counts - 1, n, z)
    p_min = np.min(2 * np.minimum(cdf, sf), axis=1)
    gamma = float(np.quantile(p_min, alpha))
    lower = binom.ppf(gamma / 2, n, z) / n
    upper = binom.ppf(1 - gamma / 2, n, z) / n
    return {"z": z, "lower": lower, "upper": upper, "gamma": gamma}


def ecdf_of(ranks: np.ndarray, n_ranks: int, z: np.ndarray) -> np.ndarray:
    u = (np.asarray(ranks, float) + 0.5) / (n_ranks + 1)
    return (u[:, None] <= z[None, :]).mean(axis=0)


def uniformity(table: pd.DataFrame, alpha: float = 0.05, bins: int | None = None) -> pd.DataFrame:
    """Per quantity: number of replications, chi-square test of the rank histogram (``bins`` equal bins, default
    about n/10 but at most 20 and at least 4), the largest ECDF deviation, whether the ECDF stays inside the
    simultaneous (1 - alpha) band, and ``passed``: inside the band at the family-wise level 1 - alpha / Q for Q
    quantities (Bonferroni), so that a calibrated model passes every quantity with probability >= 1 - alpha."""
    from scipy.stats import chi2

    out = []
    Q = table["quantity"].nunique()
    for q, sub in table.groupby("quantity", sort=True):
        n, L = len(sub), int(sub["n_ranks"].iloc[0])
        band = ecdf_band(n, L, alpha)
        e = ecdf_of(sub["rank"].to_numpy(), L, band["z"])
        inside = bool(np.all((e >= band["lower"] - 1e-12) & (e <= band["upper"] + 1e-12)))
        fam = ecdf_band(n, L, alpha / Q, sims=max(2000, int(40 * Q / alpha)))
        inside_fam = bool(np.all((e >= fam["lower"] - 1e-12) & (e <= fam["upper"] + 1e-12)))
        B = bins or int(min(20, max(4, n // 10)))
        edges = np.linspace(0, L + 1, B + 1)
        hist, _ = np.histogram(sub["rank"].to_numpy() + 0.5, bins=edges)
        expected = n * np.diff(edges) / (L + 1)
        stat = float(np.sum((hist - expected) ** 2 / expected))
        out.append({"quantity": q, "replications": n, "n_ranks": L, "chi2": stat, "chi2_df": B - 1,
                    "chi2_p": float(chi2.sf(stat, B - 1)), "max_ecdf_deviation": float(np.max(np.abs(e - band["z"]))),
                    "inside_band": inside, "band_level": 1 - alpha,
                    "inside_family_band": inside_fam, "family_band_level": 1 - alpha / Q,
                    "mean_rank_fraction": float((sub["rank"].mean() + 0.5) / (L + 1)),
                    "passed": inside_fam})
    return pd.DataFrame(out)


def split_reps(reps: int, workers: int) -> list[list[int]]:
    """Replications 0..reps-1 dealt round-robin to ``workers`` processes."""
    workers = max(1, min(workers, reps))
    return [list(range(w, reps, workers)) for w in range(workers)]


__all__ = ["SBCSettings", "quantities", "ranks_of", "make_replication", "run_replications", "rank_table",
           "ecdf_band", "ecdf_of", "uniformity", "split_reps"]

