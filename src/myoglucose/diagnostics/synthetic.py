"""Small synthetic posterior DataTrees that follow docs/ARCHITECTURE.md section 4.

Used by the tests of ``diagnostics`` and ``report`` (and usable by CLI tests): no model, no sampler,
just arrays of the right shapes, dimension names, coordinates and root attributes.
"""

from __future__ import annotations

import json

import numpy as np
import xarray as xr
from arviz_base import from_dict

__all__ = ["MEASUREMENT_COORDS", "make_posterior_tree", "measurement_design"]

#: Non-index coordinates carried by the ``measurement`` dimension (ARCHITECTURE.md section 4).
MEASUREMENT_COORDS = (
    "measurement_observable",
    "measurement_condition",
    "measurement_time",
    "measurement_group",
)


def measurement_design() -> dict[str, np.ndarray]:
    """A small design: 2 observables x 2 conditions (one per group) x 4 time points = 16 measurements."""
    observables, conditions, groups, times = [], [], [], []
    for condition, group in (("clamp_nonobese", "nonobese"), ("clamp_obese", "obese")):
        for observable in ("glucose_plasma", "gir"):
            for t in (0.0, 30.0, 60.0, 120.0):
                observables.append(observable)
                conditions.append(condition)
                groups.append(group)
                times.append(t)
    return {
        "observable": np.array(observables),
        "condition": np.array(conditions),
        "group": np.array(groups),
        "time": np.array(times, dtype=float),
    }


def make_posterior_tree(
    *,
    n_chains: int = 4,
    n_draws: int = 200,
    seed: int = 0,
    chain_offsets: tuple[float, ...] | None = None,
    n_divergent: int = 0,
    n_ode_failed: int = 0,
    tree_depth: int | np.ndarray = 4,
    posterior_equals_prior: bool = False,
    posterior_sd: float = 0.1,
    attrs: dict | None = None,
) -> xr.DataTree:
    """Build a DataTree with every group of ARCHITECTURE.md section 4.

    Posterior variables: ``v_max`` (population, ``(chain, draw)``), ``k_ins`` (group level,
    ``(chain, draw, group)``), ``sigma_glucose_plasma`` and ``sigma_gir`` (noise scales).
    Draws are iid normal, so R-hat is ~1 and ESS ~ n_chains * n_draws unless ``chain_offsets``
    shifts the chains of ``v_max`` (one offset per chain).
    Prior: ``v_max ~ N(2, 1)``, ``k_ins ~ N(0.5, 1)``, sigmas half-normal(1), one chain of
    ``n_chains * n_draws`` draws.  With ``posterior_equals_prior`` the posterior is drawn from the prior.
    """
    rng = np.random.default_rng(seed)
    c, d = n_chains, n_draws
    design = measurement_design()
    m = design["time"].size
    groups = ["nonobese", "obese"]
    n_prior = c * d

    prior = {
        "v_max": rng.normal(2.0, 1.0, size=(1, n_prior)),
        "k_ins": rng.normal(0.5, 1.0, size=(1, n_prior, 2)),
        "sigma_glucose_plasma": np.abs(rng.normal(0.0, 1.0, size=(1, n_prior))),
        "sigma_gir": np.abs(rng.normal(0.0, 1.0, size=(1, n_prior))),
    }
    if posterior_equals_prior:
        posterior = {
            "v_max": rng.normal(2.0, 1.0, size=(c, d)),
            "k_ins": rng.normal(0.5, 1.0, size=(c, d, 2)),
            "sigma_glucose_plasma": np.abs(rng.normal(0.0, 1.0, size=(c, d))),
            "sigma_gir": np.abs(rng.normal(0.0, 1.0, size=(c, d))),
        }
    else:
        posterior = {
            "v_max": rng.normal(2.0, posterior_sd, size=(c, d)),
            "k_ins": rng.normal([0.4, 0.8], posterior_sd, size=(c, d, 2)),
            "sigma_glucose_plasma": np.abs(rng.normal(0.3, posterior_sd / 10, size=(c, d))),
            "sigma_gir": np.abs(rng.normal(0.2, posterior_sd / 10, size=(c, d))),
        }
    if chain_offsets is not None:
        posterior["v_max"] = posterior["v_max"] + np.asarray(chain_offsets, dtype=float)[:, None]

    diverging = np.zeros(c * d, dtype=bool)
    diverging[rng.choice(c * d, size=n_divergent, replace=False)] = True
    ode_failed = np.zeros(c * d, dtype=bool)
    ode_failed[rng.choice(c * d, size=n_ode_failed, replace=False)] = True
    depth = np.broadcast_to(np.asarray(tree_depth), (c, d)).astype(np.int64)
    sample_stats = {
        "diverging": diverging.reshape(c, d),
        "tree_depth": depth,
        "n_steps": (2**depth - 1).astype(np.int64),
        "energy": rng.normal(10.0, 1.0, size=(c, d)),
        "acceptance_rate": rng.uniform(0.7, 1.0, size=(c, d)),
        "lp": rng.normal(-50.0, 2.0, size=(c, d)),
        "ode_failed": ode_failed.reshape(c, d),
    }

    # "true" curve per measurement; observations scatter around it
    truth = np.where(design["observable"] == "gir", 2.0 + design["time"] / 60.0, 90.0 - design["time"] / 10.0)
    obs = truth + rng.normal(0.0, 1.0, size=m)
    pp = truth + rng.normal(0.0, 1.0, size=(c, d, m))
    prior_pp = truth + rng.normal(0.0, 10.0, size=(1, n_prior, m))
    # pointwise log-likelihood of the observations under draws of the mean (noise sd 1)
    mu = truth + rng.normal(0.0, 0.2, size=(c, d, m))
    log_lik = -0.5 * (obs - mu) ** 2 - 0.5 * np.log(2 * np.pi)

    root_attrs = {
        "myoglucose_version": "0.1.0",
        "git_commit": "0123456789abcdef0123456789abcdef01234567",
        "config_yaml": (
            "solver:\n  name: Kvaerno5\n  rtol: 1.0e-6\n  atol: 1.0e-9\n  max_steps: 8192\n"
            "sampler:\n  chains: 4\n  warmup: 1000\n  samples: 1000\n  target_accept: 0.9\n"
            "  dense_mass: false\n  max_tree_depth: 10\n  init: map\n  map_starts: 8\n  seed: 20240611\n"
            "diagnostics:\n  r_hat_max: 1.01\n  fail_on_bad: true\n"
        ),
        "seed": 20240611,
        "data_sha256": json.dumps({"measurements.tsv": "a" * 64, "conditions.tsv": "b" * 64}),
        "model_variant": "base",
        "dataset_id": "katz2000_clamp",
        "created_utc": "2024-06-11T12:00:00Z",
        "solver": "Kvaerno5",
        "rtol": 1e-6,
        "atol": 1e-9,
    }
    if attrs:
        root_attrs.update(attrs)

    tree = from_dict(
        {
            "posterior": posterior,
            "sample_stats": sample_stats,
            "log_likelihood": {"obs": log_lik},
            "observed_data": {"obs": obs},
            "constant_data": {
                "time": design["time"],
                "observable": design["observable"],
                "condition": design["condition"],
                "subject": design["group"],
                "group": design["group"],
                "sd": np.full(m, 1.0),
                "n": np.full(m, 8, dtype=np.int64),
            },
            "prior": prior,
            "prior_predictive": {"obs": prior_pp},
            "posterior_predictive": {"obs": pp},
        },
        coords={"group": groups, "measurement": np.arange(m)},
        dims={"k_ins": ["group"], "obs": ["measurement"], **{k: ["measurement"] for k in
              ("time", "observable", "condition", "subject", "group", "sd", "n")}},
        attrs={"/": root_attrs},
    )
    # from_dict only creates index coordinates; the measurement_* coordinates are added afterwards
    mcoords = {
        "measurement_observable": ("measurement", design["observable"]),
        "measurement_condition": ("measurement", design["condition"]),
        "measurement_time": ("measurement", design["time"]),
        "measurement_group": ("measurement", design["group"]),
    }
    per_measurement = (
        "log_likelihood", "observed_data", "constant_data", "prior_predictive", "posterior_predictive",
    )
    for name in per_measurement:
        tree[name] = tree[name].to_dataset().assign_coords(mcoords)
    return tree
