"""How stiff is the model under these protocols? Measured, to choose the solver (``solver.name: auto``).

An explicit Runge-Kutta method is stable only while ``h * |lambda|`` stays inside its stability region (for Tsit5
about 3.5 along the negative real axis), where ``lambda`` are the eigenvalues of the Jacobian of the vector field. Over
a horizon ``T`` it therefore needs at least ``|lambda|_max * T / 3.5`` steps whatever the tolerance; an implicit
method (Kvaerno5) does not, but every step costs a Newton iteration per stage, a Jacobian and an LU factorisation
(measured on the Katz clamp fit: about 20x the log-density cost of the explicit method; docs/performance.md).

The probe integrates each condition at the nominal parameters and at a few prior draws with the explicit solver,
evaluates the Jacobian of the integrated (``active``) states at evenly spaced times and returns the largest
spectral radius ``rho`` (1/min). ``choose`` keeps the implicit solver unless the explicit one is stable in a small
fraction of ``max_steps`` for every probed point (``rho * T / 3.5 <= max_steps / 8``) and every probe solve succeeded.

Measured (models/core, Katz 2000 clamps with forced insulin): rho = 0.8 /min over 240 min -> explicit (~60 steps for
stability). With exercise the AMPK, myokine and training-memory states span seconds to weeks: implicit.
A draw that turns out stiffer during sampling is still solved accurately by the explicit method (its step-size
controller keeps it stable), only with more steps; ``sample_stats.ode_failed`` counts any solve that hits
``max_steps``, and ``diagnose`` reports it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from .basal import basal_state
from .simulate import SolverSettings, _reduced_field, solve

STABILITY_INTERVAL = 3.5  # Tsit5's stability interval on the negative real axis, |h * lambda| (Tsitouras 2011)
PROBE_POINTS = 48  # times per condition at which the Jacobian is evaluated
EXPLICIT = "Tsit5"
IMPLICIT = "Kvaerno5"


@dataclasses.dataclass(frozen=True)
class StiffnessReport:
    rho: np.ndarray  # [D, C] largest spectral radius of the Jacobian along each probe solve [1/min]
    horizon: np.ndarray  # [C] integration horizon [min]
    ok: np.ndarray  # [D, C] the explicit probe solve succeeded
    stability_steps: float  # max over probes of rho * T / STABILITY_INTERVAL
    chosen: str  # solver name chosen
    reason: str

    def as_dict(self) -> dict:
        return {"rho_max_per_min": float(np.nanmax(self.rho)) if self.rho.size else float("nan"),
                "horizon_min": float(np.max(self.horizon)), "stability_steps": float(self.stability_steps),
                "probe_solves_failed": int((~self.ok).sum()), "chosen": self.chosen, "reason": self.reason}


def spectral_radius(p: dict, u, t1, active: tuple[str, ...], settings: SolverSettings):
    """Largest |eigenvalue| of the Jacobian of the integrated states along an explicit solve of one condition."""
    ts = jnp.linspace(0.0, 1.0, PROBE_POINTS) * t1
    probe_settings = dataclasses.replace(settings, name=EXPLICIT, adjoint="reverse")
    sol = solve(p, u, ts, t1, probe_settings, active)
    y0, cov = basal_state(p, u)
    field = _reduced_field(active)

    def rho_at(k):
        t = ts[k]
        ya = jnp.stack([getattr(sol.ys, n)[k] for n in active])
        seg = u.segment(jnp.clip(jnp.searchsorted(u.t_break, t, side="left") - 1, 0, u.t_break.shape[0] - 1))
        jac = jax.jacfwd(lambda y: field(t, y, (p, seg, cov, y0)))(ya)
        return jnp.max(jnp.abs(jnp.linalg.eigvals(jac)))

    rho = jnp.max(jax.vmap(rho_at)(jnp.arange(PROBE_POINTS)))
    return rho, sol.ok


def probe(params: dict, inputs, t1, active: tuple[str, ...], settings: SolverSettings) -> tuple[np.ndarray, np.ndarray]:
    """``params``: dict of arrays [D, C]; ``inputs``: InputArrays batched over C; ``t1``: [C]. Returns (rho, ok) [D, C]."""
    f = jax.jit(jax.vmap(jax.vmap(lambda p, u, t: spectral_radius(p, u, t, active, settings), in_axes=(0, 0, 0)),
                         in_axes=(0, None, None)))
    rho, ok = f(params, inputs, t1)
    return np.asarray(rho), np.asarray(ok)


def choose(settings: SolverSettings, rho: np.ndarray, ok: np.ndarray, horizon: np.ndarray) -> StiffnessReport:
    """Resolve ``auto`` to the explicit or the implicit solver (see the module docstring for the rule)."""
    horizon = np.asarray(horizon, float)
    steps = rho * horizon[None, :] / STABILITY_INTERVAL
    worst = float(np.nanmax(np.where(np.isfinite(steps), steps, np.inf))) if steps.size else np.inf
    limit = settings.max_steps / 8
    if not np.all(ok):
        return StiffnessReport(rho, horizon, ok, worst, IMPLICIT,
                               f"{int((~ok).sum())} explicit probe solve(s) failed: implicit {IMPLICIT}")
    if worst <= limit:
        return StiffnessReport(rho, horizon, ok, worst, EXPLICIT,
                               f"not stiff: explicit stability needs <= {worst:.0f} steps (limit {limit:.0f} = "
                               f"max_steps/8): explicit {EXPLICIT}")
    return StiffnessReport(rho, horizon, ok, worst, IMPLICIT,
                           f"stiff: explicit stability would need {worst:.0f} steps (> {limit:.0f} = max_steps/8): "
                           f"implicit {IMPLICIT}")

