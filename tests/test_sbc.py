"""Simulation-based calibration: the uniformity checks on known rank distributions (fast), and a small SBC run of
the reduced variant through the CLI (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myoglucose.inference.sbc import (SBCSettings, ecdf_band, ecdf_of, rank_table, ranks_of, split_reps,
                                      uniformity)

ROOT = Path(__file__).resolve().parents[1]


def _table(ranks_by_q: dict, L: int) -> pd.DataFrame:
    rows = []
    for q, ranks in ranks_by_q.items():
        for r, k in enumerate(ranks):
            rows.append({"rep": r, "quantity": q, "rank": int(k), "n_ranks": L, "true_value": 0.0,
                         "posterior_mean": 0.0, "posterior_sd": 1.0})
    return pd.DataFrame(rows)


def test_ecdf_band_has_its_nominal_simultaneous_coverage():
    """Uniform ranks stay inside the 95 % simultaneous band in about 95 % of fresh samples (Monte Carlo check
    with other random numbers than the ones that calibrated the band)."""
    n, L = 100, 100
    band = ecdf_band(n, L, alpha=0.05, sims=3000, seed=1)
    rng = np.random.default_rng(99)
    inside = []
    for _ in range(600):
        e = ecdf_of(rng.integers(0, L + 1, n), L, band["z"])
        inside.append(np.all((e >= band["lower"]) & (e <= band["upper"])))
    cover = float(np.mean(inside))
    print(f"simultaneous coverage of uniform ranks: {cover:.3f} (nominal 0.95, gamma {band['gamma']:.4f})")
    assert 0.92 <= cover <= 0.98
    assert band["gamma"] < 0.05  # simultaneous: pointwise level stricter than the family level


def test_uniformity_accepts_uniform_ranks_and_rejects_biased_and_overconfident_ones():
    rng = np.random.default_rng(3)
    n, L = 200, 100
    uniform = rng.integers(0, L + 1, n)
    biased = np.minimum(L, rng.integers(0, L + 1, n) // 2 + L // 3)  # true values sit high in the posterior
    u_shaped = np.where(rng.random(n) < 0.5, rng.integers(0, 15, n), rng.integers(L - 14, L + 1, n))  # too narrow
    hump = rng.binomial(L, 0.5, n)  # posteriors too wide
    res = uniformity(_table({"a_uniform": uniform, "b_biased": biased, "c_narrow": u_shaped, "d_wide": hump}, L))
    res = res.set_index("quantity")
    print(res[["chi2_p", "max_ecdf_deviation", "inside_band", "passed"]])
    assert bool(res.loc["a_uniform", "passed"]) and res.loc["a_uniform", "chi2_p"] > 0.01
    for q in ("b_biased", "c_narrow", "d_wide"):
        assert not res.loc[q, "passed"], q
        assert res.loc[q, "chi2_p"] < 1e-3, q
    assert (res["family_band_level"] > res["band_level"]).all()


def test_ranks_count_draws_below_the_truth_and_reps_split_without_overlap():
    assert ranks_of({"x": 0.5, "y": -3.0}, {"x": np.array([0.1, 0.4, 0.6, 0.9]), "y": np.zeros(4)}) == {"x": 2, "y": 0}
    parts = split_reps(10, 3)
    assert sorted(r for p in parts for r in p) == list(range(10))
    assert split_reps(2, 8) == [[0], [1]]
    rec = [{"rep": 0, "ranks": {"x": 3}, "truth": {"x": 1.0}, "post_mean": {"x": 1.1}, "post_sd": {"x": 0.2},
            "divergences": 0, "mean_leapfrog": 7.0, "redraws": 0, "seconds": 1.0}]
    t = rank_table(rec, 10)
    assert t.loc[0, "rank"] == 3 and t.loc[0, "n_ranks"] == 10


def test_sbc_settings_reject_bad_values():
    with pytest.raises(ValueError, match="sbc.thin"):
        SBCSettings(samples=10, thin=20)
    with pytest.raises(ValueError, match="sbc.reps"):
        SBCSettings(reps=0)
    assert SBCSettings(samples=300, thin=3).n_ranks == 100


def test_sbc_cli_rejects_an_unknown_template_condition(tmp_path):
    cfg = _config(tmp_path, {"conditions": ["no_such_condition"], "reps": 2})
    tidy = _tidy(tmp_path)
    r = _run("sbc", "--tidy-dir", tidy, "--model", ROOT / "models/core_sbc", "--config", cfg,
             "--out-dir", tmp_path / "out")
    assert r.returncode == 2, r.stderr
    assert "no_such_condition" in r.stderr and "conditions.tsv" in r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_sbc_small_run_is_calibrated_and_reproducible(tmp_path):
    """24 replications of the reduced variant on one Katz clamp condition: every quantity's rank ECDF stays inside
    the family-wise band, no divergences, and the ranks do not depend on how replications are split over
    processes."""
    cfg = _config(tmp_path, {"conditions": ["clamp120_nonobese"], "reps": 24, "warmup": 150, "samples": 200,
                             "thin": 2, "seed": 7})
    tidy = _tidy(tmp_path)
    out1, out2 = tmp_path / "sbc1", tmp_path / "sbc2"
    r = _run("sbc", "--tidy-dir", tidy, "--model", ROOT / "models/core_sbc", "--config", cfg, "--out-dir", out1,
             "--workers", "2")
    assert r.returncode == 0, r.stderr
    summary = json.loads((out1 / "summary.json").read_text())
    uni = pd.read_csv(out1 / "uniformity.csv")
    print(uni.to_string())
    print({k: summary[k] for k in ("verdict", "wall_s", "seconds_per_replication_median", "divergences_total")})
    assert summary["replications"] == 24
    assert summary["verdict"] == "calibrated", summary["quantities_outside_band"]
    assert summary["provenance"]["seed"] == 7 or str(summary["provenance"]["seed"]) == "7"
    ranks = pd.read_csv(out1 / "ranks.csv")
    assert set(ranks["quantity"]) >= {"akt_ec50", "gb", "glut4_capacity", "k_ins_int", "sigma_gir",
                                      "sigma_glucose_plasma"}
    assert ranks["rank"].between(0, 100).all()
    # the first 4 replications again, in one process: identical ranks (keys depend only on seed and replication)
    r = _run("sbc", "--tidy-dir", tidy, "--model", ROOT / "models/core_sbc", "--config", cfg, "--out-dir", out2,
             "--workers", "1", "--reps", "4")
    assert r.returncode == 0, r.stderr
    again = pd.read_csv(out2 / "ranks.csv")
    first = ranks[ranks["rep"] < 4].reset_index(drop=True)
    pd.testing.assert_series_equal(first["rank"], again["rank"])
    r = _run("sbc-figures", "--ranks", out1 / "ranks.csv", "--out-dir", tmp_path / "fig", "--config", cfg)
    assert r.returncode == 0, r.stderr
    for name in ("rank_ecdf", "rank_hist", "zscores"):
        assert (tmp_path / "fig" / f"{name}.svg").stat().st_size > 5000


# ------------------------------------------------------------------------------------------------ helpers
def _run(*args):
    env = dict(os.environ, MYOGLUCOSE_ROOT=str(ROOT))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))
    return subprocess.run([sys.executable, "-m", "myoglucose.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=ROOT)


def _config(tmp_path: Path, sbc: dict) -> Path:
    import yaml

    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["sbc"] = {**cfg.get("sbc", {}), **sbc}
    cfg["report"] = {"formats": ["svg"], "dpi": 100}
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def _tidy(tmp_path: Path) -> Path:
    out = tmp_path / "tidy"
    r = _run("prepare", "--dataset-dir", ROOT / "data/katz2000_clamp", "--out-dir", out)
    assert r.returncode == 0, r.stderr
    return out
