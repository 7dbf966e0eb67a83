"""Sampling until converged (``sampler.max_samples``): after ``samples`` draws the fit checks R-hat and bulk/tail ESS
against the config's ``diagnostics`` and, while they fail, continues every chain from its checkpoint. The extended
chains are the same Markov chains as a fixed-length run of the final length (bit for bit), the projection of the next
length is what its docstring says, and a bad setting is refused naming the file and the entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from myoglucose.cli import ConfigError, load_config
from myoglucose.inference.fit import next_length
from myoglucose.inference.sample import SamplerSettings

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------- next length
def test_next_length_projects_the_ess_shortfall_with_a_margin():
    # bulk ESS 200 of 400 after 250 draws: 2 x 250 x 1.2 = 600
    assert next_length(250, 250, 2000, 2.0) == 600
    # a small shortfall still runs at least half a round more (every round restarts the chain processes)
    assert next_length(250, 250, 2000, 1.05) == 400
    # R-hat alone (ESS fine): one more round of `samples`
    assert next_length(250, 250, 2000, 0.5) == 500
    assert next_length(250, 250, 2000, float("nan")) == 500
    # never past max_samples
    assert next_length(250, 250, 300, 10.0) == 300


def test_settings_refuse_a_limit_below_the_first_round():
    assert SamplerSettings(samples=250, max_samples=None).sample_limit == 250
    assert SamplerSettings(samples=250, max_samples=1000).sample_limit == 1000
    with pytest.raises(ValueError, match="max_samples must be >= sampler.samples"):
        SamplerSettings(samples=250, max_samples=200)


@pytest.mark.parametrize(("cfg", "where"), [
    ({"sampler": {"samples": 300, "max_samples": 200}}, "sampler: max_samples (200) must be >= samples (300)"),
    ({"sampler": {"max_samples": 300}}, "sampler: max_samples (300) must be >= samples (500)"),
    ({"sampler": {"samples": 250, "max_samples": 1000},
      "fits": [{"dataset": "katz2000_clamp", "model": "core", "sampler": {"samples": 1500}}]},
     "fits.0.sampler (over `sampler`): max_samples (1000) must be >= samples (1500)"),
])
def test_config_refuses_a_limit_below_samples_naming_file_and_entry(tmp_path, cfg, where):
    p = tmp_path / "config.yaml"
    p.write_text(yaml.safe_dump({"datasets": ["katz2000_clamp"], "models": ["core"], **cfg}))
    with pytest.raises(ConfigError) as err:
        load_config(p)
    assert str(p) in str(err.value) and where in str(err.value), str(err.value)


# ------------------------------------------------------------------------------------------- a real fit
@pytest.fixture(scope="module")
def job(tmp_path_factory):
    from myoglucose.data.prepare import prepare_to_dir
    from myoglucose.inference.fit import FitJob

    tidy = tmp_path_factory.mktemp("tidy") / "katz2000_clamp"
    prepare_to_dir(ROOT / "data/katz2000_clamp", tidy, ROOT)
    sampler = {"chains": 2, "warmup": 40, "samples": 20, "chain_method": "sequential", "init": "map",
               "map_starts": 1, "map_steps": 30, "progress": False, "seed": 5, "checkpoint_every": 0}
    return FitJob(tidy_dir=str(tidy), model_dir=str(ROOT / "models/core"), repo_root=str(ROOT),
                  solver={"name": "Tsit5", "rtol": 1e-6, "atol": 1e-6}, sampler=sampler,
                  cache_dir=str(ROOT / ".jax_cache"))


def test_unmet_thresholds_extend_the_same_chains_to_the_limit(job):
    """With thresholds no 2 x 20 draws can meet, the fit extends to max_samples = 70 in rounds 20 -> 70 (the ESS
    shortfall is huge, so the projection hits the limit), and the draws equal a fixed-length 70-draw fit's: the
    extension continues each chain, with no new warmup."""
    import dataclasses

    from myoglucose.inference.fit import run_fit

    msgs: list[str] = []
    strict = dataclasses.replace(job, sampler={**job.sampler, "max_samples": 70},
                                 convergence={"r_hat_max": 1.01, "ess_bulk_min": 1e6, "ess_tail_min": 1e6})
    s_ext, st_ext, _ = run_fit(strict, log=msgs.append)
    fixed = dataclasses.replace(job, sampler={**job.sampler, "samples": 70})
    s_fix, st_fix, _ = run_fit(fixed, log=print)
    print("\n".join(msgs))
    assert [r["draws_per_chain"] for r in st_ext["_rounds"]] == [20, 70]
    assert not st_ext["_rounds"][-1]["passed"]
    assert any("extending every chain to 70 draws" in m for m in msgs)
    assert any("not converged at max_samples = 70" in m for m in msgs)
    for k in s_fix:
        assert s_ext[k].shape[:2] == (2, 70), k
        np.testing.assert_array_equal(s_ext[k], s_fix[k], err_msg=k)
    np.testing.assert_array_equal(st_ext["diverging"], st_fix["diverging"])
    assert "_rounds" not in st_fix
    # warmup ran once: its gradient count is the fixed fit's, not twice it
    assert int(np.sum(st_ext["_warmup_gradients"])) == int(np.sum(st_fix["_warmup_gradients"]))


@pytest.mark.slow  # 30 s on 2 cores; the extension test above covers the rounds in the fast tier
def test_met_thresholds_stop_after_the_first_round(job):
    import dataclasses

    from myoglucose.inference.fit import run_fit

    msgs: list[str] = []
    lenient = dataclasses.replace(job, sampler={**job.sampler, "max_samples": 70},
                                  convergence={"r_hat_max": 10.0, "ess_bulk_min": 1, "ess_tail_min": 1})
    s, st, _ = run_fit(lenient, log=msgs.append)
    assert [r["draws_per_chain"] for r in st["_rounds"]] == [20]
    assert st["_rounds"][0]["passed"] and next(iter(s.values())).shape[:2] == (2, 20)
    assert any("20 draws per chain" in m and m.endswith("converged") for m in msgs), msgs


@pytest.mark.slow  # two worker processes compile the model: about 1.5 min on 2 cores
def test_chain_processes_reuse_their_kernel_and_give_the_sequential_draws(job):
    """3 chains on 2 worker processes (one worker runs two chains, reusing its problem, kernel and compiled step),
    extended from 20 to 40 draws in a second round of the same workers: the same draws as 3 chains run one after
    another in this process at a fixed 40 draws."""
    import dataclasses

    from myoglucose.inference.fit import run_fit

    base = {**job.sampler, "chains": 3}
    msgs: list[str] = []
    proc = dataclasses.replace(job, sampler={**base, "chain_method": "processes", "max_samples": 40},
                               convergence={"r_hat_max": 1.01, "ess_bulk_min": 1e6, "ess_tail_min": 1e6})
    s_p, st_p, _ = run_fit(proc, log=msgs.append)
    assert [r["draws_per_chain"] for r in st_p["_rounds"]] == [20, 40], msgs
    seq = dataclasses.replace(job, sampler={**base, "samples": 40})
    s_s, _, _ = run_fit(seq, log=print)
    for k in s_s:
        np.testing.assert_array_equal(s_p[k], s_s[k], err_msg=k)
