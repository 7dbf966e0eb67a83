"""Per-fit sampler settings: a `fits` entry's `sampler` over the config's `sampler` section.

The config is checked with the section's own rules (unknown keys and bad values refused, naming the entry), the CLI
fit uses the merged settings and records them, and diagnose judges tree-depth saturation by the depth the fit ran
with. The workflow side (threads, rerun trigger, report text) is tested in tests/test_workflow.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from myoglucose.cli import ConfigError, load_config
from myoglucose.config import sampler_for_fit

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "myoglucose.cli"]
BASE = {"datasets": ["katz2000_clamp", "sorensen1978_clamp"], "models": ["core", "full"],
        "sampler": {"chains": 4, "warmup": 500, "samples": 500, "max_tree_depth": 8}}


def _write(tmp_path: Path, cfg: dict) -> Path:
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_the_matching_entry_overrides_only_its_own_keys():
    cfg = {**BASE, "fits": [{"dataset": "katz2000_clamp", "model": "core"},
                            {"dataset": "sorensen1978_clamp", "model": "full",
                             "sampler": {"samples": 1000, "max_tree_depth": 10}}]}
    assert sampler_for_fit(cfg, "sorensen1978_clamp", "full") == {"chains": 4, "warmup": 500, "samples": 1000,
                                                                   "max_tree_depth": 10}
    # other fits, other pairs of the same dataset or model, and a config without fits: the section as it is
    for dataset, model in [("katz2000_clamp", "core"), ("sorensen1978_clamp", "core"), ("katz2000_clamp", "full")]:
        assert sampler_for_fit(cfg, dataset, model) == BASE["sampler"]
    assert sampler_for_fit(BASE, "sorensen1978_clamp", "full") == BASE["sampler"]
    assert cfg["sampler"] == BASE["sampler"]  # not modified in place


@pytest.mark.parametrize(("override", "words"), [
    ({"sample": 1000}, ["fits.1.sampler", "unknown sampler setting", "sample"]),
    ({"samples": 0}, ["fits.1.sampler.samples", "less than the minimum of 1"]),
    ({"chain_method": "threads"}, ["fits.1.sampler.chain_method", "'threads' is not one of"]),
    ({"target_accept": "high"}, ["fits.1.sampler.target_accept", "'high' is not of type 'number'"]),
    ({}, ["fits.1.sampler", "should be non-empty"]),
])
def test_a_bad_override_is_refused_naming_file_entry_and_key(tmp_path, override, words):
    p = _write(tmp_path, {**BASE, "fits": [{"dataset": "katz2000_clamp", "model": "core"},
                                           {"dataset": "sorensen1978_clamp", "model": "full", "sampler": override}]})
    with pytest.raises(ConfigError) as err:
        load_config(p)
    msg = str(err.value)
    assert str(p) in msg and all(w in msg for w in words), msg


def test_a_pair_listed_twice_is_refused(tmp_path):
    p = _write(tmp_path, {**BASE, "fits": [{"dataset": "katz2000_clamp", "model": "core"},
                                           {"dataset": "katz2000_clamp", "model": "core", "sampler": {"seed": 3}}]})
    with pytest.raises(ConfigError, match=r"fits\.1: \(katz2000_clamp, core\) is listed twice"):
        load_config(p)


@pytest.mark.slow
def test_cli_fit_uses_and_records_the_entry_settings_and_diagnose_its_tree_depth(tmp_path):
    """A real (tiny) fit: the section asks for 3 draws at tree depth 3, the fits entry for 7 draws at depth 2. The
    posterior has 7 draws per chain and records the merged settings; diagnose counts saturation against depth 2."""
    import xarray as xr

    from myoglucose.data.prepare import prepare_to_dir

    tidy = tmp_path / "katz2000_clamp"  # the folder's name is the dataset id the entry is matched by
    prepare_to_dir(ROOT / "data/katz2000_clamp", tidy, ROOT)
    cfg = _write(tmp_path, {
        "datasets": ["katz2000_clamp"], "models": ["core"], "device": "cpu",
        "sampler": {"chains": 1, "warmup": 4, "samples": 3, "init": "median", "max_tree_depth": 3, "seed": 5,
                    "predictive_draws": 4},
        "fits": [{"dataset": "katz2000_clamp", "model": "core", "sampler": {"samples": 7, "max_tree_depth": 2}}],
        "solver": {"rtol": 1e-5, "atol": 1e-5}})
    env = dict(os.environ, MYOGLUCOSE_ROOT=str(ROOT))
    out = tmp_path / "fit" / "posterior.nc"
    r = subprocess.run([*EXE, "fit", "--tidy-dir", str(tidy), "--model", str(ROOT / "models/core"), "--config",
                        str(cfg), "--out", str(out)], capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "sampler settings of the fits entry (katz2000_clamp, core)" in r.stderr
    tree = xr.open_datatree(out, engine="h5netcdf")
    assert tree["posterior"].sizes["draw"] == 7
    ran = json.loads(tree.attrs["sampler_settings"])
    assert ran["samples"] == 7 and ran["max_tree_depth"] == 2 and ran["warmup"] == 4
    depth = tree["sample_stats"]["tree_depth"].values
    assert depth.max() <= 2

    verdict = tmp_path / "fit" / "verdict.json"
    r = subprocess.run([*EXE, "diagnose", "--posterior", str(out), "--config", str(cfg), "--out-table",
                        str(tmp_path / "fit" / "diag.tsv"), "--out-verdict", str(verdict), "--no-fail"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    summ = json.loads(verdict.read_text())["summary"]
    assert summ["max_tree_depth"] == 2 and summ["n_draws"] == 7
    assert summ["treedepth_saturated"] == int((depth >= 2).sum())
