"""Reliability (issue #9): a killed fit resumes with the same draws, failed ODE solves are rejected without ending a
run, outputs and compilation-cache entries are written atomically. The toy-model checkpoint tests are in
tests/test_checkpoint.py, the bad-input corpus in tests/test_bad_inputs.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXE = [sys.executable, "-m", "myoglucose.cli"]


# ------------------------------------------------------------------------------------------- atomic file writes
def test_atomic_write_failure_keeps_previous_file(tmp_path):
    from myoglucose.io import atomic_write, write_text

    f = tmp_path / "sub" / "out.tsv"
    write_text(f, "old\n")

    def half_then_fail(tmp: Path) -> None:
        tmp.write_text("half a fi")
        raise KeyboardInterrupt  # e.g. Ctrl-C, or any error in the writer

    with pytest.raises(KeyboardInterrupt):
        atomic_write(f, half_then_fail)
    assert f.read_text() == "old\n"
    assert [p.name for p in f.parent.iterdir()] == ["out.tsv"]  # no temporary file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert f.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's private 0600


def test_cli_writes_only_through_atomic_helpers():
    """cli.py writes files only through its atomic helpers (myoglucose.io: temporary file + os.replace), or through
    report.export and data.write_tables, which do the same."""
    import ast

    tree = ast.parse((ROOT / "src/myoglucose/cli.py").read_text())
    helpers = {"write_atomic_text", "write_tree", "write_csv"}
    writers = {"write_text", "write_bytes", "to_netcdf", "savefig", "to_csv", "to_parquet", "dump"}
    bad = []
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef) or fn.name in helpers:
            continue
        for node in ast.walk(fn):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name == "open" or (name in writers and (node.args or any(k.arg in ("path", "path_or_buf")
                                                                            for k in node.keywords))):
                bad.append(f"line {node.lineno}: {name} in {fn.name}")
    assert not bad, bad


# ---------------------------------------------------------------------------------------- compilation cache
def test_compilation_cache_entries_are_written_atomically(tmp_path, monkeypatch):
    from jax._src import lru_cache

    from myoglucose import runtime

    assert runtime.configure()["atomic_cache_writes"] is True  # conftest configured the runtime
    assert runtime.atomic_compilation_cache_writes()
    cache = lru_cache.LRUCache(str(tmp_path), max_size=-1)
    cache.put("k1", b"x" * 1000)
    assert cache.get("k1") == b"x" * 1000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k1-cache"]

    def killed(src, dst):  # the process dies between writing the temporary file and renaming it
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        cache.put("k2", b"y" * 1000)
    monkeypatch.undo()
    assert cache.get("k2") is None  # no truncated entry that later runs would read (and never rewrite)
    cache.put("k2", b"y" * 1000)
    assert cache.get("k2") == b"y" * 1000


def test_concurrent_processes_share_one_compilation_cache(tmp_path):
    """Two processes compile the same programs into one empty cache at the same time; both succeed, and a third
    process loads the programs from the cache instead of compiling them."""
    script = (
        "import os, sys, jax, jax.numpy as jnp\n"
        "from myoglucose import runtime\n"
        f"runtime.configure('cpu', {str(tmp_path / 'cache')!r})\n"
        "jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)\n"
        "f = jax.jit(lambda x: jnp.linalg.solve(x @ x.T + jnp.eye(40), jnp.sin(x).sum(1)))\n"
        "print(float(f(jnp.ones((40, 40)) / 7).sum()))\n"
        "g = jax.jit(lambda x: jnp.cumsum(jnp.exp(-x) * x ** 3))\n"
        "print(float(g(jnp.arange(1000.0)).sum()))\n"
    )
    env = dict(os.environ, JAX_LOG_COMPILES="0")
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    assert outs[0][0] == outs[1][0]
    entries = sorted(p.name for p in (tmp_path / "cache").iterdir())
    assert entries and all(e.endswith("-cache") for e in entries), entries  # no stray temporary files
    third = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert third.returncode == 0 and third.stdout == outs[0][0]
    assert "Error reading persistent compilation cache" not in third.stderr
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == entries  # all hits, nothing new written


# ------------------------------------------------------------------------------------------------ kill, resume
def _fit_cmd(tidy: Path, cfg: Path, out: Path, *extra: str) -> list[str]:
    return [*EXE, "fit", "--tidy-dir", str(tidy), "--model", str(ROOT / "models/core"), "--config", str(cfg),
            "--out", str(out), *extra]


def _iteration(ckpt_file: Path) -> int:
    try:
        with np.load(ckpt_file, allow_pickle=False) as z:
            return int(json.loads(str(z["meta"]))["iteration"])
    except Exception:  # noqa: BLE001 - not there yet
        return -1


@pytest.mark.slow
def test_killed_fit_resumes_with_identical_draws(tmp_path):
    """SIGKILL a `myoglucose fit` in the middle of sampling, run it again with --resume: the posterior equals that of
    an uninterrupted fit with the same seed, bit for bit (which also shows that the same seed gives the same draws
    in two processes), and the checkpoints are gone once the posterior is written."""
    import xarray as xr

    from myoglucose.data.prepare import prepare_to_dir

    tidy = tmp_path / "tidy"
    prepare_to_dir(ROOT / "data/katz2000_clamp", tidy, ROOT)
    warmup, samples = 6, 200  # once compiled, an iteration takes ~30 ms here: sampling lasts seconds
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "datasets": ["katz2000_clamp"], "models": ["core"], "device": "cpu",
        "sampler": {"chains": 1, "warmup": warmup, "samples": samples, "init": "median", "max_tree_depth": 3,
                    "checkpoint_every": 2, "seed": 5, "predictive_draws": 5},
        "solver": {"rtol": 1e-5, "atol": 1e-5}}))
    env = dict(os.environ, MYOGLUCOSE_ROOT=str(ROOT))

    ref = tmp_path / "ref" / "posterior.nc"
    r = subprocess.run(_fit_cmd(tidy, cfg, ref), capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (tmp_path / "ref" / "posterior.nc.ckpt").exists()

    out = tmp_path / "run" / "posterior.nc"
    ckpt_file = tmp_path / "run" / "posterior.nc.ckpt" / "chain0.npz"
    log = open(tmp_path / "killed.log", "w")
    p = subprocess.Popen(_fit_cmd(tidy, cfg, out), stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 1200
        while _iteration(ckpt_file) < warmup + 4 and p.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        killed_at = _iteration(ckpt_file)
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.wait()
        log.close()
    assert warmup + 4 <= killed_at < warmup + samples, (killed_at, (tmp_path / "killed.log").read_text()[-3000:])
    assert not out.exists()  # nothing that looks like a result
    assert not [f for f in out.parent.iterdir() if f.is_file() and not f.name.startswith(".")]

    r = subprocess.run(_fit_cmd(tidy, cfg, out, "--resume"), capture_output=True, text=True, env=env, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming after iteration" in r.stderr
    assert not ckpt_file.parent.exists()
    a, b = xr.open_datatree(ref, engine="h5netcdf"), xr.open_datatree(out, engine="h5netcdf")
    for group in ("posterior", "unconstrained_posterior", "sample_stats", "log_likelihood", "posterior_predictive",
                  "prior", "prior_predictive"):
        assert set(a[group].data_vars) == set(b[group].data_vars), group
        for v in a[group].data_vars:
            assert np.array_equal(a[group][v].values, b[group][v].values), (group, v)
    assert a["posterior"].sizes["draw"] == samples


# ------------------------------------------------------------------------------------------- numerical faults
@pytest.mark.slow
def test_proposals_that_break_the_ode_are_rejected_without_ending_the_run():
    """Parameters 300 prior sds above their medians make every solve fail; NUTS with a huge fixed step size
    proposes such values on every trajectory: each transition is rejected (divergent) and the run ends normally with
    finite draws at the starting point."""
    import jax
    import jax.numpy as jnp

    from myoglucose.data.prepare import prepare_dataset
    from myoglucose.inference.arrays import build_fit_data
    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.inference.sample import SamplerSettings, make_kernel, pointwise_draws, sample_chains
    from myoglucose.model.simulate import SolverSettings
    from myoglucose.model.spec import load_model

    spec = load_model(ROOT / "models/core")
    t = prepare_dataset(ROOT / "data/katz2000_clamp", ROOT)
    data = build_fit_data(t.measurements, t.conditions, ROOT, set(spec.observables))
    builder = ModelBuilder(spec, data, SolverSettings.from_dict({"rtol": 1e-5, "atol": 1e-5}))
    arrays = data.arrays

    # the injected value really breaks the solver: failed solves, log likelihood -inf, no exception
    lat = {k: jnp.zeros((2,) + v.shape[1:]) + (0.5 if k.startswith("sigma_") or k.endswith("__omega") else 0.0)
           for k, v in builder.prior_latents(jax.random.PRNGKey(0), 1).items()}  # prior medians (about)
    for k in ("k_ins_int__z", "glut4_capacity__z", "gb__z_mu"):  # exp(300 prior sds): rates of 1e50 and more
        lat[k] = lat[k].at[1].set(300.0)
    pw = pointwise_draws(builder, arrays, lat, jax.random.PRNGKey(1), batch=2)
    assert pw["ode_failed"][0] == 0 and pw["ode_failed"][1] > 0
    assert np.all(np.isneginf(pw["log_likelihood"][1]))

    settings = SamplerSettings(chains=1, warmup=1, samples=3, init="median", max_tree_depth=3)
    kernel = make_kernel(builder, settings, None, step_size=1e3, adapt_step_size=False, adapt_mass_matrix=False)
    res = sample_chains(kernel, (arrays,), {"y": arrays.values}, jax.random.PRNGKey(2), settings.warmup,
                        settings.samples)
    stats, draws = res["stats"], res["samples"]
    assert stats["diverging"].all()
    assert np.all(np.isfinite(stats["potential_energy"]))
    for k, v in draws.items():
        assert np.all(np.isfinite(v)), k
        assert np.all(v == v[:, :1]), k  # every proposal rejected: the chain stays at its start
