"""Simulation of named protocols for people: time courses of every state, observable and key flux, with units."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from .model.equations import STATE_UNITS
from .model.protocol import Protocol, build_inputs, parse_protocol
from .model.simulate import EXTRA_OUTPUTS, OBSERVABLE_UNITS, SolverSettings, observables, solve, trajectory_fluxes
from .model.spec import ModelSpec, load_model, nominal_params


def load_protocol(path: str | Path) -> Protocol:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(2, "file not found", str(path))
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        from .io import yaml_error

        raise ValueError(yaml_error(path, e)) from None
    return parse_protocol(doc, str(path))


def output_grid(protocol: Protocol, points: int) -> np.ndarray:
    """An even grid plus every event boundary (and just before it), so jumps show in the output."""
    grid = np.linspace(0.0, protocol.end, max(points, 2))
    ev = np.array(sorted({s.start for s in protocol.segments} | {s.end for s in protocol.segments}))
    ev = ev[(ev > 0) & (ev < protocol.end)]
    return np.unique(np.concatenate([grid, ev, np.maximum(ev - 1e-3, 0.0)]))


def long_solver(solver: dict | None, protocol: Protocol) -> SolverSettings:
    s = SolverSettings.from_dict(solver)
    need = int(200 + protocol.end / 5.0 + 400 * len(protocol.segments))
    return SolverSettings(name=s.name, rtol=s.rtol, atol=s.atol, max_steps=max(s.max_steps, need), adjoint=s.adjoint,
                          dt0=s.dt0)


def simulate_protocol(spec: ModelSpec, protocol: Protocol, overrides: dict[str, float], body_weight: float,
                      bsa: float, ts: np.ndarray, solver: dict | None = None):
    """Solve one protocol with nominal (+ overridden) parameters. Returns (ok, states, observables, fluxes)."""
    import jax
    import jax.numpy as jnp

    p = {k: jnp.asarray(v) for k, v in nominal_params(spec, overrides).items()}
    u = build_inputs(protocol, body_weight, bsa)
    settings = long_solver(solver, protocol)
    ts_j = jnp.asarray(ts)

    @jax.jit
    def run(p, u, ts):
        sol = solve(p, u, ts, jnp.asarray(protocol.end), settings)
        return sol, observables(p, u, ts, sol), trajectory_fluxes(p, u, ts, sol)

    sol, obs, fl = run(p, u, ts_j)
    return bool(sol.ok), sol, obs, fl


def simulate_protocol_table(model_dir, protocol_path, overrides, body_weight, bsa, points, solver=None) -> pd.DataFrame:
    spec = load_model(model_dir)
    protocol = load_protocol(protocol_path)
    build_inputs(protocol, body_weight, bsa)  # validates covariates
    ts = output_grid(protocol, points)
    ok, sol, obs, fl = simulate_protocol(spec, protocol, overrides, body_weight, bsa, ts, solver)
    if not ok:
        raise ValueError(f"{protocol_path}: the ODE solve failed (too stiff or too many steps); try tighter/looser "
                         f"solver settings or check the parameter overrides")
    cols = {"time [min]": ts}
    for name, unit in STATE_UNITS.items():
        cols[f"{name} [{unit}]"] = np.asarray(getattr(sol.ys, name))
    for name, unit in OBSERVABLE_UNITS.items():
        cols[f"{name} [{unit}]"] = np.asarray(obs[name])
    for name, unit in EXTRA_OUTPUTS.items():
        cols[f"{name} [{unit}]"] = np.asarray(getattr(fl, name))
    return pd.DataFrame(cols)
