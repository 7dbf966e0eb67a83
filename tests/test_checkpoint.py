"""Sampler checkpoints and determinism on a toy model (seconds, no ODE): an interrupted and resumed run gives the
same draws, bit for bit, as an uninterrupted one; the same seed gives the same draws; stale or broken checkpoints
are ignored. The same code runs the real fits (tests/test_reliability.py kills a real `myoglucose fit`)."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from myoglucose.inference import checkpoint as ckpt
from myoglucose.inference.sample import EXTRA_FIELDS, SamplerSettings, run_nuts


class ToyBuilder:
    """The two attributes of ``ModelBuilder`` that the sampler uses: ``model`` and ``solver.adjoint``."""

    solver = types.SimpleNamespace(adjoint="reverse")

    def model(self, a, y=None):
        mu = numpyro.sample("mu", dist.Normal(0.0, 5.0))
        sd = numpyro.sample("sigma_x", dist.HalfNormal(2.0))
        with numpyro.plate("n", a.values.shape[0]):
            numpyro.sample("obs", dist.Normal(mu, sd), obs=y)


ARRAYS = types.SimpleNamespace(values=jnp.asarray(np.random.default_rng(0).normal(1.0, 2.0, 30)))
SETTINGS = SamplerSettings(chains=2, warmup=12, samples=10, init="median", seed=3, progress=False,
                           checkpoint_every=5, chain_method="sequential")


def fit(settings=SETTINGS, **kw):
    return run_nuts(ToyBuilder(), ARRAYS, settings, None, list(range(settings.chains)), **kw)


def assert_same(a, b):
    assert a["samples"].keys() == b["samples"].keys()
    for k in a["samples"]:
        assert np.array_equal(a["samples"][k], b["samples"][k]), k
    for k in a["stats"]:
        if not k.startswith("_"):
            assert np.array_equal(a["stats"][k], b["stats"][k]), k


@pytest.fixture(scope="module")
def reference():
    return fit()


class Killed(Exception):
    pass


def kill_after(monkeypatch, n_saves: int):
    """Make the n-th checkpoint save the last thing the run does (the file is written, then the run 'dies')."""
    original, calls = ckpt.save_state, {"n": 0}

    def save_then_die(*args, **kwargs):
        original(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n_saves:
            raise Killed

    monkeypatch.setattr(ckpt, "save_state", save_then_die)


# saves of chain 0 happen after iterations 5, 10, 12 (end of warmup), 15, 20, 22 (end); then chain 1's
@pytest.mark.parametrize("n_saves", [2, 3, 8])
def test_interrupted_and_resumed_equals_uninterrupted(reference, tmp_path, monkeypatch, n_saves):
    kill_after(monkeypatch, n_saves)
    with pytest.raises(Killed):
        fit(checkpoint_dir=tmp_path, fingerprint="fp")
    monkeypatch.undo()
    resumed = fit(checkpoint_dir=tmp_path, fingerprint="fp")
    assert_same(resumed, reference)
    # everything is checkpointed at the end: running again restores and samples nothing
    again = fit(checkpoint_dir=tmp_path, fingerprint="fp")
    assert_same(again, reference)


def test_vectorized_chains_resume_too(reference, tmp_path, monkeypatch):
    """Chains vectorised in one program (the GPU path) share one checkpoint file, chains0-1.npz."""
    ref = fit(vectorized=True)
    np.testing.assert_allclose(ref["samples"]["mu"], reference["samples"]["mu"], rtol=1e-9)  # batched linear algebra
    kill_after(monkeypatch, 3)
    with pytest.raises(Killed):
        fit(vectorized=True, checkpoint_dir=tmp_path, fingerprint="fp")
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["chains0-1.npz"]
    assert_same(fit(vectorized=True, checkpoint_dir=tmp_path, fingerprint="fp"), ref)


def test_same_seed_same_draws_other_seed_other_draws(reference):
    assert_same(fit(), reference)
    other = fit(SamplerSettings(**{**SETTINGS.__dict__, "seed": 4}))
    assert not np.array_equal(other["samples"]["mu"], reference["samples"]["mu"])
    assert not np.array_equal(reference["samples"]["mu"][0], reference["samples"]["mu"][1])  # chains differ


def test_same_markov_chain_as_numpyro_mcmc(reference):
    """The hand-driven loop makes the same kernel calls as numpyro's MCMC.run with the chain's key."""
    from numpyro.infer import MCMC, NUTS, init_to_median

    kernel = NUTS(ToyBuilder().model, target_accept_prob=SETTINGS.target_accept,
                  max_tree_depth=SETTINGS.max_tree_depth, init_strategy=init_to_median(num_samples=15))
    mcmc = MCMC(kernel, num_warmup=SETTINGS.warmup, num_samples=SETTINGS.samples, progress_bar=False)
    mcmc.run(jax.random.fold_in(jax.random.PRNGKey(SETTINGS.seed), 1), ARRAYS, y=ARRAYS.values,
             extra_fields=EXTRA_FIELDS)
    np.testing.assert_allclose(np.asarray(mcmc.get_samples()["mu"]), reference["samples"]["mu"][1], rtol=1e-12)


def test_checkpoint_cadence_does_not_change_draws(reference, tmp_path):
    for every in (0, 1):
        s = SamplerSettings(**{**SETTINGS.__dict__, "checkpoint_every": every})
        assert_same(fit(s, checkpoint_dir=tmp_path / str(every), fingerprint="fp"), reference)


def test_more_samples_continue_the_chain(reference, tmp_path):
    short = SamplerSettings(**{**SETTINGS.__dict__, "samples": 6})
    fit(short, checkpoint_dir=tmp_path, fingerprint="fp")
    assert_same(fit(checkpoint_dir=tmp_path, fingerprint="fp"), reference)  # 6 draws restored, 4 more sampled


def test_foreign_or_broken_checkpoints_are_ignored(reference, tmp_path, capsys):
    fit(SamplerSettings(**{**SETTINGS.__dict__, "seed": 4}), checkpoint_dir=tmp_path, fingerprint="other fit")
    (tmp_path / "chain1.npz").write_bytes(b"PK\x03\x04 truncated")
    assert_same(fit(checkpoint_dir=tmp_path, fingerprint="fp"), reference)
    err = capsys.readouterr().err
    assert "chain0.npz: it belongs to a different fit" in err and "unreadable checkpoint" in err


def test_prepare_dir_keeps_only_matching_checkpoints(tmp_path):
    d = tmp_path / "posterior.nc.ckpt"
    assert ckpt.checkpoint_dir_for(tmp_path / "posterior.nc") == d
    ckpt.prepare_dir(d, "fp", resume=True, log=lambda m: None)
    (d / "chain0.npz").write_bytes(b"x")
    ckpt.prepare_dir(d, "fp", resume=True, log=lambda m: None)
    assert (d / "chain0.npz").exists()  # same fit, resumed: kept
    msgs = []
    ckpt.prepare_dir(d, "fp2", resume=True, log=msgs.append)
    assert not (d / "chain0.npz").exists() and "different fit" in msgs[0]
    (d / "chain0.npz").write_bytes(b"x")
    ckpt.prepare_dir(d, "fp2", resume=False, log=msgs.append)
    assert not (d / "chain0.npz").exists() and "--no-resume" in msgs[-1]
    init = {"a__z": np.arange(3.0)}
    ckpt.save_init(d, init, "fp2")
    assert np.array_equal(ckpt.load_init(d, "fp2")["a__z"], init["a__z"])
    assert ckpt.load_init(d, "fp3") is None
    starts = [{"a__z": np.arange(3.0) + c, "b": np.asarray(c * 1.5)} for c in range(3)]  # init: dispersed
    ckpt.save_init(d, starts, "fp2")
    back = ckpt.load_init(d, "fp2")
    assert isinstance(back, list) and len(back) == 3
    for s, b in zip(starts, back):
        assert set(b) == {"a__z", "b"} and all(np.array_equal(s[k], b[k]) for k in s)
