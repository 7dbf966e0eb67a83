"""The solver's step loop runs as one kernel on the CPU (docs/performance.md section 1b).

XLA:CPU's thunk runtime (jax >= 0.4.32) dispatches every fused operation of a while loop's body separately, on every
iteration, unless its small-loop pass compiles the loop into one kernel; users of small ODE loops report 3-60x
slowdowns where it does not. With jax 0.12 and XLA's default threshold our solves' step loops are compiled into one
kernel each (benchmarks/bench_xla_flags.py: raising the threshold changes nothing that matters). This guards it: an
upgrade that stops doing so would make every solver step a few dozen dispatches."""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="XLA:CPU only")
def test_the_step_loop_of_a_vmapped_solve_compiles_into_one_kernel():
    from myoglucose.model.protocol import build_inputs
    from myoglucose.model.simulate import SolverSettings, active_states, solve
    from myoglucose.model.spec import load_model, nominal_params
    from myoglucose.simulation import load_protocol

    pr = load_protocol(ROOT / "protocols" / "scenarios" / "clamp_120.yaml")
    p = {k: jnp.asarray(v) for k, v in nominal_params(load_model(ROOT / "models" / "core")).items()}
    u = build_inputs(pr, 75.0, 1.9, None)
    ts = jnp.linspace(0.0, pr.end, 25)
    settings = SolverSettings(name="Tsit5", rtol=1e-8, atol=1e-8)
    active = active_states([pr], True)
    f = jax.jit(jax.vmap(lambda s: solve(dict(p, akt_ec50=p["akt_ec50"] * s), u, ts, pr.end, settings, active).ys.gp))
    hlo = f.lower(jnp.linspace(0.8, 1.2, 16)).compile().as_text()
    # the one-kernel calls' targets: the while loop whose carry holds 16 lanes of the integrated states is among them
    targets = [line.split("to_apply=%", 1)[1].split(",", 1)[0] for line in hlo.splitlines()
               if 'xla_cpu_small_call="true"' in line and "to_apply=%" in line]
    headers = [line for line in hlo.splitlines() if any(line.startswith(f"%{t} ") for t in targets)]
    assert any(f"f64[16,{len(active)}]" in h for h in headers), (targets, len(active))
