"""XLA:CPU compiles an ODE solve's small step loop into one kernel (runtime.SMALL_LOOP_BYTES): the option is set, it
takes effect in the compiled program, and the solution does not depend on it (benchmarks/bench_xla_flags.py measures
the speed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from myoglucose import runtime

ROOT = Path(__file__).resolve().parents[1]
OPTION = runtime.SMALL_LOOP_OPTION


@pytest.mark.parametrize("flags, threshold, expected", [
    ("", 1000, f"--xla_backend_extra_options={OPTION}=1000"),
    ("--xla_force_host_platform_device_count=4", "65536",
     f"--xla_force_host_platform_device_count=4 --xla_backend_extra_options={OPTION}=65536"),
    ("--xla_backend_extra_options=xla_cpu_disable_loop_unrolling", 5,
     f"--xla_backend_extra_options=xla_cpu_disable_loop_unrolling,{OPTION}=5"),
    ("--xla_backend_extra_options=", 5, f"--xla_backend_extra_options={OPTION}=5"),
    (f"--xla_backend_extra_options={OPTION}=0", 1000, f"--xla_backend_extra_options={OPTION}=0"),  # the user's wins
    ("--xla_dump_to=/tmp/x", "off", "--xla_dump_to=/tmp/x"),
    ("", "0", ""),
    ("", None, ""),
])
def test_small_loop_option_is_added_merged_or_left_to_the_user(flags, threshold, expected):
    assert runtime.with_small_loop_threshold(flags, threshold) == expected


def test_bad_threshold_is_a_clear_error():
    with pytest.raises(ValueError, match="MYOGLUCOSE_XLA_SMALL_LOOP_BYTES"):
        runtime.with_small_loop_threshold("", "lots")


SOLVE = """
import json, sys
import jax, jax.numpy as jnp
from myoglucose.model.protocol import build_inputs
from myoglucose.model.simulate import SolverSettings, active_states, solve
from myoglucose.model.spec import load_model, nominal_params
from myoglucose.simulation import load_protocol

def clamp_solve(root):
    pr = load_protocol(root / "protocols" / "scenarios" / "clamp_120.yaml")
    p = {k: jnp.asarray(v) for k, v in nominal_params(load_model(root / "models" / "core")).items()}
    u = build_inputs(pr, 75.0, 1.9, None)
    ts = jnp.linspace(0.0, pr.end, 25)
    settings = SolverSettings(name="Tsit5", rtol=1e-8, atol=1e-8)
    active = active_states([pr], True)
    f = jax.jit(lambda s: solve(dict(p, akt_ec50=p["akt_ec50"] * s), u, ts, pr.end, settings, active).ys.gp)
    return f, jnp.asarray(1.1)
"""


def _clamp_solve():
    ns: dict = {}
    exec(SOLVE, ns)
    return ns["clamp_solve"](ROOT)


def test_the_configured_process_compiles_the_step_loop_into_one_kernel():
    if OPTION not in os.environ.get("XLA_FLAGS", ""):
        pytest.skip("MYOGLUCOSE_XLA_SMALL_LOOP_BYTES turned the option off")
    assert OPTION in runtime.configure()["xla_flags"]  # recorded for provenance
    f, x = _clamp_solve()
    hlo = f.lower(x).compile().as_text()
    # the solver's step loop (the while loop whose carry holds the states) is outlined into a one-kernel call
    assert 'xla_cpu_small_call="true"' in hlo
    assert np.all(np.isfinite(np.asarray(f(x))))


def test_the_solution_does_not_depend_on_the_threshold(tmp_path):
    f, x = _clamp_solve()
    here = np.asarray(f(x))
    code = ("from myoglucose import runtime\n"
            f"runtime.configure('cpu', {str(tmp_path / 'cache')!r})\n" + SOLVE
            + f"\nfrom pathlib import Path\nf, x = clamp_solve(Path({str(ROOT)!r}))\n"
              "print('RESULT', json.dumps([float(v) for v in f(x)]))\n")
    env = {**os.environ, "MYOGLUCOSE_XLA_SMALL_LOOP_BYTES": "off"}
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    there = np.asarray(json.loads(p.stdout.split("RESULT", 1)[1]))
    # the same program compiled two ways: equal up to the rounding of a different instruction order
    np.testing.assert_allclose(here, there, rtol=1e-10, atol=0)
