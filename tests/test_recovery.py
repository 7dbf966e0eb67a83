"""The population -> group -> subject hierarchy: structure (fast) and parameter recovery on a synthetic cohort (slow).

Recovery: a cohort drawn with the fit's own hierarchy (``simulate-cohort``: population value, group offsets, subject
offsets, measurement noise) is fitted with NUTS; the true subject values must fall inside their 90 % posterior
intervals at about the nominal rate.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binom

ROOT = Path(__file__).resolve().parents[1]


def _cohort_tables(n_subjects: int, groups: list[str]):
    rows, conds = [], []
    for i in range(n_subjects):
        sid, g = f"s{i + 1:02d}", groups[i % len(groups)]
        conds.append({"condition_id": f"clamp_{sid}", "dataset_id": "syn", "subject_id": sid, "group": g,
                      "protocol_file": "protocols/scenarios/clamp_40.yaml", "body_weight_kg": 75.0, "bsa_m2": 1.9,
                      "insulin_mode": "kinetic", "notes": ""})
        for t in (0.0, 60.0, 120.0):
            for o, v in (("glucose_plasma", 90.0), ("gir", 5.0)):
                rows.append({"dataset_id": "syn", "subject_id": sid, "group": g, "condition_id": f"clamp_{sid}",
                             "observable_id": o, "time_min": t, "value": v, "unit": "", "sd": np.nan,
                             "sem": np.nan, "n": 1, "source_id": "syn"})
    return pd.DataFrame(rows), pd.DataFrame(conds)


def _builder(n_subjects: int, groups: list[str], model: str = "core"):
    from myoglucose.inference.arrays import build_fit_data
    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.model.simulate import SolverSettings
    from myoglucose.model.spec import load_model

    spec = load_model(ROOT / "models" / model)
    meas, conds = _cohort_tables(n_subjects, groups)
    data = build_fit_data(meas, conds, ROOT, set(spec.observables))
    return ModelBuilder(spec, data, SolverSettings(name="Tsit5")), data


def test_subject_level_appears_only_when_groups_hold_several_subjects():
    import jax

    b, data = _builder(6, ["a", "b"])
    assert data.subjects == ("s01", "s02", "s03", "s04", "s05", "s06")
    assert np.asarray(data.arrays.subject_group).tolist() == [0, 1, 0, 1, 0, 1]
    assert b.subject_level() == ["akt_ec50", "gb"] and b.group_level() == ["akt_ec50", "gb"]
    lat = b.prior_latents(jax.random.PRNGKey(0), 3)
    assert lat["akt_ec50__zs"].shape == (3, 6) and lat["akt_ec50__tau"].shape == (3,)
    one = jax.tree.map(lambda v: v[0], lat)
    pop, grp, _ = b.natural(one)
    subj = b.subject_values(one, pop, grp)
    # each subject's value is its group's typical value times exp(tau * z_s) (log-normal prior)
    g = np.asarray(data.arrays.subject_group)
    expect = np.asarray(grp["akt_ec50"])[g] * np.exp(float(one["akt_ec50__tau"]) * np.asarray(one["akt_ec50__zs"]))
    np.testing.assert_allclose(np.asarray(subj["akt_ec50"]), expect, rtol=1e-12)
    p = b.condition_params(pop, grp, data.arrays.cond_group, subj, data.arrays.cond_subject)
    np.testing.assert_allclose(np.asarray(p["akt_ec50"]), np.asarray(subj["akt_ec50"]), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(p["k_ins_int"]), float(pop["k_ins_int"]), rtol=1e-12)

    # one subject per group (group means, e.g. Katz 2000): no subject level, the parameters stay group-level
    b1, _ = _builder(2, ["a", "b"])
    assert b1.subject_level() == [] and b1.group_level() == ["akt_ec50", "gb"]
    assert "akt_ec50__zs" not in b1.prior_latents(jax.random.PRNGKey(0), 1)
    # one group of several subjects: population -> subject
    b2, _ = _builder(4, ["cohort"])
    assert b2.group_level() == [] and b2.subject_level() == ["akt_ec50", "gb"]
    one = jax.tree.map(lambda v: v[0], b2.prior_latents(jax.random.PRNGKey(1), 1))
    pop, grp, _ = b2.natural(one)
    assert np.asarray(b2.subject_values(one, pop, grp)["gb"]).shape == (4,)


def test_a_subject_in_two_groups_is_an_error():
    from myoglucose.inference.arrays import build_fit_data

    meas, conds = _cohort_tables(2, ["a", "b"])
    conds.loc[1, "subject_id"] = "s01"
    meas.loc[meas["condition_id"] == "clamp_s02", "subject_id"] = "s01"
    with pytest.raises(ValueError, match="subject 's01' appears in two groups"):
        build_fit_data(meas, conds, ROOT)


def test_cohort_draws_follow_the_parameter_levels():
    from myoglucose.cohort import draw_parameters
    from myoglucose.model.spec import load_model

    spec = load_model(ROOT / "models/core")
    truth = draw_parameters(spec, ["a", "b"], 6, np.random.default_rng(0)).pivot(
        index="subject_id", columns="parameterId", values="value")
    assert truth["k_ins_int"].nunique() == 1 and truth["glut4_capacity"].nunique() == 1  # population level
    assert truth["akt_ec50"].nunique() == 6 and truth["gb"].nunique() == 6  # subject level


@pytest.mark.slow
def test_parameter_recovery_on_a_synthetic_cohort(tmp_path):
    """8 virtual subjects in 2 groups on a 40 mU/m^2/min clamp (glucose, GIR and insulin every 15 min), fitted with
    the core variant (subject-level insulin-arm EC50 and basal glucose): the 16 true subject values fall inside
    their 90 % intervals at a rate compatible with 0.9 (binomial lower tail > 1 %), and the population values
    inside their 98 % intervals."""
    import xarray as xr
    import yaml

    env = dict(os.environ, MYOGLUCOSE_ROOT=str(ROOT))
    env.setdefault("JAX_COMPILATION_CACHE_DIR", str(ROOT / ".jax_cache"))

    def run(*args):
        r = subprocess.run([sys.executable, "-m", "myoglucose.cli", *map(str, args)], capture_output=True,
                           text=True, env=env, cwd=ROOT)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    cohort = tmp_path / "cohort"
    run("simulate-cohort", "--model", ROOT / "models/core", "--protocol", ROOT / "protocols/scenarios/clamp_40.yaml",
        "--n", "8", "--seed", "11", "--groups", "a,b", "--observables", "glucose_plasma,gir,insulin_plasma",
        "--every", "15", "--out-dir", cohort)
    cfg = yaml.safe_load((ROOT / "config/config.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["sampler"].update(chains=2, warmup=150, samples=150, max_samples=None, map_starts=2, map_steps=150,
                          max_tree_depth=6, predictive_draws=20, seed=3)  # a fixed length (config.yaml extends)
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run("fit", "--tidy-dir", cohort, "--model", ROOT / "models/core", "--config", tmp_path / "cfg.yaml",
        "--out", tmp_path / "post.nc")
    post = xr.load_datatree(tmp_path / "post.nc", engine="h5netcdf")["posterior"].to_dataset()
    truth = pd.read_csv(cohort / "true_parameters.tsv", sep="\t")
    hits, total = 0, 0
    for k in ("akt_ec50", "gb"):
        draws = post[f"{k}_subject"].values.reshape(-1, post.sizes["subject_id"])
        lo, hi = np.quantile(draws, [0.05, 0.95], axis=0)
        true = truth[truth["parameterId"] == k].set_index("subject_id").loc[post["subject_id"].values, "value"]
        inside = (true.to_numpy() >= lo) & (true.to_numpy() <= hi)
        print(k, "true", np.round(true.to_numpy(), 2), "90% lo", np.round(lo, 2), "hi", np.round(hi, 2))
        hits, total = hits + int(inside.sum()), total + inside.size
    p_low = binom.cdf(hits, total, 0.9)
    print(f"subject-level coverage of 90 % intervals: {hits}/{total} (P[X <= {hits}] = {p_low:.3f})")
    assert p_low > 0.01
    for k in ("k_ins_int", "glut4_capacity"):
        lo, hi = np.quantile(post[k].values.ravel(), [0.01, 0.99])
        true = truth.loc[truth["parameterId"] == k, "value"].iloc[0]
        print(k, true, lo, hi)
        assert lo <= true <= hi

    # the posterior predictive of each data condition uses its own subject's values: basal glucose per subject
    cfg["predict"] = {"scenarios": [], "draws": 10, "post_exercise": {"enabled": False}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    run("predict", "--posterior", tmp_path / "post.nc", "--tidy-dir", cohort, "--model", ROOT / "models/core",
        "--config", tmp_path / "cfg.yaml", "--out", tmp_path / "pred.nc")
    cond = xr.load_datatree(tmp_path / "pred.nc", engine="h5netcdf")["conditions"].to_dataset()
    basal = cond["mean"].sel(observable="glucose_plasma").isel(time_index=0).median("draw").to_series()
    conds = pd.read_csv(cohort / "conditions.tsv", sep="\t").set_index("condition_id")["subject_id"]
    gb = truth[truth["parameterId"] == "gb"].set_index("subject_id")["value"]
    err = np.abs(basal.to_numpy() - gb.loc[conds.loc[basal.index]].to_numpy())
    print("basal glucose per condition, |predicted - true gb|:", np.round(err, 2))
    assert err.max() < 3.0  # subjects' gb span 88-122 mg/dL; group-typical values would miss by up to ~15


def test_cohort_from_a_posterior_takes_its_group_values_spreads_and_noise():
    """``posterior_typicals`` picks one posterior draw: the group values, the within-group spread and the noise
    scales of that draw; subjects scatter around their group's value with that spread. Unknown groups and a
    posterior of another variant are errors that name the file."""
    import xarray as xr

    from myoglucose.cohort import draw_parameters, posterior_typicals
    from myoglucose.model.spec import load_model

    spec = load_model(ROOT / "models/core_ivgtt")
    C, D = 1, 3
    g = ["lean", "obese"]
    # a core_ivgtt posterior of a fit whose conditions all took measured insulin: no insulin-kinetic parameters in it
    post = xr.Dataset(
        {"k_ins_int": (("chain", "draw"), np.full((C, D), 0.07)),
         "k1": (("chain", "draw"), np.full((C, D), 0.05)),
         "k2": (("chain", "draw"), np.full((C, D), 0.08)),
         "v_g": (("chain", "draw"), np.full((C, D), 1.6)),
         "glut4_capacity": (("chain", "draw"), np.full((C, D), 0.8)),
         "akt_ec50": (("chain", "draw", "group"), np.tile([50.0, 200.0], (C, D, 1))),
         "gb": (("chain", "draw", "group"), np.tile([90.0, 110.0], (C, D, 1))),
         "akt_ec50_sd_subject": (("chain", "draw"), np.full((C, D), 0.05)),
         "gb_sd_subject": (("chain", "draw"), np.full((C, D), 0.0)),
         "sigma_gir": (("chain", "draw"), np.full((C, D), 0.12))},
        coords={"group": g})
    typical, noise, groups = posterior_typicals(post, spec, None, np.random.default_rng(0), "fit.nc")
    assert groups == g and noise == {"sigma_gir": 0.12}
    assert typical["akt_ec50"] == {"groups": {"lean": 50.0, "obese": 200.0}, "sd_subject": 0.05}
    truth = draw_parameters(spec, groups, 40, np.random.default_rng(1), typical).pivot(
        index="subject_id", columns="parameterId", values="value")
    grp = np.array([g[i % 2] for i in range(40)])
    np.testing.assert_allclose(truth["gb"].to_numpy(), np.where(grp == "lean", 90.0, 110.0))  # spread 0
    lean = np.log(truth["akt_ec50"].to_numpy()[grp == "lean"] / 50.0)
    assert abs(lean.mean()) < 0.04 and 0.03 < lean.std() < 0.07
    assert set(truth["k_ins_int"]) == {0.07}
    assert "ib" not in typical and "ib" not in truth.columns  # held at its nominal value, as in the fit
    with pytest.raises(ValueError, match=r"fit.nc: group\(s\) \['t2d'\] not in the posterior"):
        posterior_typicals(post, spec, ["t2d"], np.random.default_rng(0), "fit.nc")
    with pytest.raises(ValueError, match="fit.nc: no posterior for parameter"):
        posterior_typicals(post.drop_vars("gb"), spec, None, np.random.default_rng(0), "fit.nc")


def test_centred_and_non_centred_hierarchies_are_the_same_prior():
    """``hierarchy: centered`` (gb in full/core) changes the geometry, not the model: the group values drawn through
    NumPyro's sampling sites of the centred form and through ``prior_latents`` of the non-centred form have the same
    distribution (two-sample KS on 4000 draws), and the centred sites are the group values in prior-scale units."""
    import dataclasses

    import jax
    from numpyro import handlers
    from scipy.stats import ks_2samp

    b, _ = _builder(3, ["a", "b", "c"])
    assert b.spec.params["gb"].centered and b.group_level() == ["akt_ec50", "gb"]
    nc = dataclasses.replace(b.spec.params["gb"], hierarchy="noncentered")
    b_nc, _ = _builder(3, ["a", "b", "c"])
    b_nc.spec = dataclasses.replace(b.spec, params={**b.spec.params, "gb": nc})
    b_nc.estimated = [nc if r.id == "gb" else r for r in b_nc.estimated]

    def centred_draw(key):
        with handlers.seed(rng_seed=key):
            lat = b.sample_latents()
        return b.natural(lat)[1]["gb"]

    cen = np.asarray(jax.vmap(centred_draw)(jax.random.split(jax.random.PRNGKey(3), 4000)))
    lat = b_nc.prior_latents(jax.random.PRNGKey(4), 4000)
    non = np.asarray(jax.vmap(lambda one: b_nc.natural(one)[1]["gb"])(lat))
    for g in range(3):
        assert ks_2samp(np.log(cen[:, g]), np.log(non[:, g])).pvalue > 1e-3, g
    # between-group differences too (they carry omega)
    assert ks_2samp(np.log(cen[:, 0] / cen[:, 1]), np.log(non[:, 0] / non[:, 1])).pvalue > 1e-3
    # centred latents: log(gb_g / loc) = s * z_g
    one = jax.tree.map(lambda v: v[0], b.prior_latents(jax.random.PRNGKey(5), 1))
    r = b.spec.params["gb"]
    np.testing.assert_allclose(np.log(np.asarray(b.natural(one)[1]["gb"]) / r.loc),
                               r.prior_scale * np.asarray(one["gb__z"]), rtol=1e-12)
