"""Solve the model with diffrax: implicit stiff solver, error control, protocol jump times, failures reported.

``solve`` never raises on a failed solve (``throw=False``); it returns ``ok = False`` and the caller masks the
trajectory before any likelihood (see ``inference.numpyro_model``). Set ``EQX_ON_ERROR=nan`` before importing equinox
(``myoglucose.runtime.configure`` does this) so that a linear-solver failure inside the implicit stages becomes NaN
instead of an exception.
"""

from __future__ import annotations

import dataclasses

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .basal import basal_state
from .esdirk import ChordKvaerno5
from .equations import (
    CLAMP_STATES, CORE_STATES, EXERCISE_STATES, INSULIN_KINETIC_STATES, STATE_NAMES, Fluxes, Params, State, fluxes,
    vector_field,
)
from .protocol import InputArrays, Protocol


def active_states(protocols: list[Protocol], insulin_kinetic: bool = True) -> tuple[str, ...]:
    """The states that can move under these protocols (all others stay exactly basal). Static for compilation."""
    names = set(CORE_STATES)
    if insulin_kinetic:
        names |= set(INSULIN_KINETIC_STATES)
    if any(pr.has_clamp for pr in protocols):
        names |= set(CLAMP_STATES)
    if any(s.kind == "exercise" and s.value > 0 for pr in protocols for s in pr.segments):
        names |= set(EXERCISE_STATES) | (set(INSULIN_KINETIC_STATES) if insulin_kinetic else set())
    return tuple(n for n in STATE_NAMES if n in names)


def _reduced_field(active: tuple[str, ...]):
    """The vector field on a flat array of the ``active`` states (in that order).

    The solver sees one float64 vector, not a pytree of scalars: every Runge-Kutta stage combination, error norm and
    Newton update is then one fused vector operation instead of one per state, which is most of a step's cost on CPU
    for a system this small. The equations still work on the named ``State``."""

    def field(t, ya, args):
        p, u, cov, y0 = args
        full = eqx.tree_at(lambda s: [getattr(s, n) for n in active], y0, [ya[i] for i in range(len(active))])
        d = vector_field(t, full, (p, u, cov))
        return jnp.stack([getattr(d, n) for n in active])

    return field


# "Kvaerno5" is this package's implementation of Kvaerno's 5/4 ESDIRK (model/esdirk.py: the same tableau as
# diffrax's, Hairer-Wanner's stage-convergence test, derivatives that reuse the step's LU); "DiffraxKvaerno5" is
# diffrax's own, kept for side-by-side benchmarks (docs/performance.md section 3).
IMPLICIT_SOLVERS = {"Kvaerno3": diffrax.Kvaerno3, "Kvaerno4": diffrax.Kvaerno4, "Kvaerno5": ChordKvaerno5,
                    "DiffraxKvaerno5": diffrax.Kvaerno5}
EXPLICIT_SOLVERS = {"Tsit5": diffrax.Tsit5, "Dopri5": diffrax.Dopri5}
SOLVERS = {**IMPLICIT_SOLVERS, **EXPLICIT_SOLVERS}
# "auto": a fit measures the stiffness of its conditions (model/stiffness.py) and picks Tsit5 or Kvaerno5; anywhere
# the choice has not been made (scenario simulations, behaviours) it means the implicit Kvaerno5.
SOLVER_NAMES = ("auto", *SOLVERS)
ADJOINTS = ("auto", "sensitivity", "reverse", "forward")
# ``adjoint: auto``: reverse mode through an explicit solver once a condition has this many estimated ODE parameters.
# Each forward sensitivity costs about one more primal solve (the tangents do not share the work: the vector field's
# arithmetic, not per-step overhead, is the cost), while one reverse pass costs 3-4 solves whatever their number;
# measured on all 14 bundled fits with Tsit5 (docs/performance.md section 3): at 6 parameters reverse was 1.4-2.5x
# faster on the 9-10-state fits and level on the 27-state ones; at 4 it ranged from 1.5x slower (the 27-state IL-6
# fit) to 1.2x faster, about even overall. Implicit solvers keep forward sensitivities: with diffrax's Kvaerno5 reverse
# mode differentiated every Newton solve (research/inference.md 0b). With the package's Kvaerno5 (model/esdirk.py, one
# derivative rule per step) the 6 estimated parameters of `full` cost 1.9-2.5x a solve in forward sensitivities and all
# 100 parameters 4-6x in reverse mode (docs/performance.md section 3), so forward sensitivities stay.
REVERSE_FROM_PARAMETERS = 5


def choose_adjoint(settings: "SolverSettings", n_parameters: int) -> tuple["SolverSettings", str]:
    """Resolve ``adjoint: auto`` for a fit whose solver is already chosen (not ``auto``) and whose conditions each
    have ``n_parameters`` estimated ODE parameters: the settings with the adjoint to use, and the reason. A named
    adjoint is kept as it is (reason ``""``). Deterministic, so every chain worker makes the same choice."""
    if settings.adjoint != "auto":
        return settings, ""
    if settings.name in EXPLICIT_SOLVERS and n_parameters >= REVERSE_FROM_PARAMETERS:
        why = (f"{n_parameters} estimated ODE parameters per condition with the explicit {settings.name}: one reverse "
               f"pass costs less than {n_parameters} forward sensitivities")
        return dataclasses.replace(settings, adjoint="reverse"), why
    if settings.name in EXPLICIT_SOLVERS:
        why = (f"{n_parameters} estimated ODE parameters per condition with the explicit {settings.name}: fewer than "
               f"{REVERSE_FROM_PARAMETERS}, where forward sensitivities cost about as much as a reverse pass")
    else:
        why = (f"the implicit {settings.name}: forward sensitivities (with the package's Kvaerno5 a fit's 6 estimated "
               f"parameters cost 1.9-2.5x a solve this way, a reverse pass 4-6x; docs/performance.md section 3)")
    return dataclasses.replace(settings, adjoint="sensitivity"), why


@dataclasses.dataclass(frozen=True)
class SolverSettings:
    """ODE solver settings (from the config's ``solver`` section)."""

    name: str = "auto"  # auto | Kvaerno3/4/5 (implicit) | Tsit5, Dopri5 (explicit; only for non-stiff protocols)
    rtol: float = 1e-6
    atol: float = 1e-6
    max_steps: int = 4096
    # auto (a fit resolves it: ``choose_adjoint``) | sensitivity (forward sensitivities in a custom VJP) | reverse
    # (RecursiveCheckpointAdjoint) | forward (ForwardMode and forward-mode NUTS); a plain solve is not differentiated
    adjoint: str = "auto"
    dt0: float = 0.05  # first step [min]

    def __post_init__(self):
        if self.name not in SOLVER_NAMES:
            raise ValueError(f"solver.name must be one of {list(SOLVER_NAMES)}, got {self.name!r}")
        if not (0 < self.rtol < 1 and 0 < self.atol < 1):
            raise ValueError(f"solver tolerances must be in (0, 1), got rtol={self.rtol}, atol={self.atol}")
        if self.max_steps < 16:
            raise ValueError(f"solver.max_steps must be >= 16, got {self.max_steps}")
        if self.adjoint not in ADJOINTS:
            raise ValueError(f"solver.adjoint must be one of {list(ADJOINTS)}, got {self.adjoint!r}")

    @classmethod
    def from_dict(cls, d: dict | None) -> "SolverSettings":
        d = dict(d or {})
        return cls(**{k: d[k] for k in ("name", "rtol", "atol", "max_steps", "adjoint", "dt0") if k in d})


def make_solver(settings: SolverSettings):
    """The diffrax solver of ``settings`` (``auto``, where a fit has not resolved it, is the implicit Kvaerno5)."""
    name = "Kvaerno5" if settings.name == "auto" else settings.name
    if name == "Kvaerno5":
        # one derivative rule for every adjoint: each step's stages linearised together (model/esdirk.py)
        return ChordKvaerno5(rtol=settings.rtol, atol=settings.atol)
    return SOLVERS[name]()


class Solution(eqx.Module):
    ys: State  # states at ``ts`` (leading axis = time)
    ok: Array  # solve succeeded [bool]
    num_steps: Array  # accepted + rejected steps
    y0: State  # basal state
    cov: dict  # derived basal constants


def solve(p: Params, u: InputArrays, ts: Array, t1: Array, settings: SolverSettings,
          active: tuple[str, ...] = STATE_NAMES) -> Solution:
    """Integrate from the basal fasting state at t = 0 to ``t1``, saving at ``ts`` (minutes, sorted, <= t1).

    The protocol's segments (between input jumps) are integrated one after the other (``lax.scan`` over the padded
    segments, one compiled solve), each with its inputs held constant. Kvaerno5 evaluates a stage beyond the end of
    its step (c3 = 1.23), so a single solve with jump times still "sees" the next segment's inputs and its step size
    crawls towards every jump; piecewise integration removes that and restarts cleanly after each jump.
    Only the ``active`` states are integrated (see ``active_states``); the others are held at their basal values.
    Saved times before 0 (pre-test basal samples) return the basal state.
    """
    y0, cov = basal_state(p, u)
    ts = jnp.asarray(ts)
    T = ts.shape
    solver = make_solver(settings)
    controller = diffrax.ClipStepSizeController(
        diffrax.PIDController(rtol=settings.rtol, atol=settings.atol, pcoeff=0.3, icoeff=0.4, dtmax=120.0),
        step_ts=jnp.where(u.insulin_forced > 0.5, u.ins_t, u.t_break[0]),
    )
    # reverse mode needs the checkpointed loop; any other solve (forward sensitivities, or no derivative at all) runs
    # the plain while loop
    adjoint = diffrax.RecursiveCheckpointAdjoint() if settings.adjoint == "reverse" else diffrax.ForwardMode()
    term = diffrax.ODETerm(_reduced_field(active))
    starts = jnp.minimum(u.t_break, t1)
    ends = jnp.minimum(jnp.concatenate([u.t_break[1:], jnp.full((1,), jnp.inf)]), t1)
    ya0 = jnp.stack([getattr(y0, n) for n in active])  # [A]
    out0 = jnp.broadcast_to(ya0, T + ya0.shape)  # [T, A]

    def body(carry, k):
        y, out, ok, steps = carry
        a, b = starts[k], ends[k]
        empty = b <= a
        b_eff = jnp.where(empty, a + 1e-6, b)
        seg = u.segment(k)
        sol = diffrax.diffeqsolve(
            term, solver, t0=a, t1=b_eff, dt0=None, y0=y, args=(p, seg, cov, y0),
            saveat=diffrax.SaveAt(ts=jnp.clip(ts, a, b_eff), t1=True), stepsize_controller=controller,
            max_steps=settings.max_steps, throw=False, adjoint=adjoint,
        )
        in_seg = ((ts > a) & (ts <= b)) | ((k == 0) & (ts <= a))
        take = (in_seg & ~empty)[:, None]
        out = jnp.where(take, sol.ys[:-1], out)
        y_next = jnp.where(empty, y, sol.ys[-1])
        ok = ok & (empty | (sol.result == diffrax.RESULTS.successful))
        steps = steps + jnp.where(empty, 0, sol.stats["num_steps"] + sol.stats.get("num_rejected_steps", 0))
        return (y_next, out, ok, steps), None

    init = (ya0, out0, jnp.asarray(True), jnp.asarray(0, dtype=jnp.int64))
    (_, out, ok, steps), _ = jax.lax.scan(body, init, jnp.arange(u.t_break.shape[0]))
    ys = eqx.tree_at(
        lambda s: [getattr(s, n) for n in STATE_NAMES],
        y0,
        [out[:, active.index(n)] if n in active else jnp.broadcast_to(getattr(y0, n), T) for n in STATE_NAMES],
    )
    finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in jax.tree_util.tree_leaves(ys)]))
    ok = ok & finite
    # sanitise before anything downstream touches it: NaN/inf in either branch of a where poisons gradients
    ys = jax.tree_util.tree_map(lambda a, b: jnp.where(ok, a, b), ys,
                                jax.tree_util.tree_map(lambda b: jnp.broadcast_to(b, T + b.shape), y0))
    return Solution(ys=ys, ok=ok, num_steps=steps, y0=y0, cov=cov)


def trajectory_fluxes(p: Params, u: InputArrays, ts: Array, sol: Solution) -> Fluxes:
    """Fluxes at every saved time (vectorised over time)."""
    return jax.vmap(lambda t, y: fluxes(y, p, u.at(t), sol.cov))(ts, sol.ys)


def basal_fluxes(p: Params, u: InputArrays, sol: Solution) -> Fluxes:
    return fluxes(sol.y0, p, u.rest(), sol.cov)


def observables(p: Params, u: InputArrays, ts: Array, sol: Solution) -> dict[str, Array]:
    """Every observable of ``models/*/observables.tsv`` at the saved times (canonical units)."""
    f = trajectory_fluxes(p, u, ts, sol)
    fb = basal_fluxes(p, u, sol)
    return {
        "glucose_plasma": f.glucose,  # [mg/dL]
        "glucose_whole_blood": f.glucose * p["r_wb"],  # [mg/dL]
        "insulin_plasma": f.insulin,  # [mU/L]
        "gir": f.gir,  # [mg/kg/min]
        "rd": f.rd,  # [mg/kg/min]
        "ra": f.egp + f.gir,  # [mg/kg/min]
        "egp": f.egp,  # [mg/kg/min]
        "delta_uptake": f.rd - fb.rd,  # [mg/kg/min]
        "delta_egp": f.egp - fb.egp,  # [mg/kg/min]
        "il6": sol.ys.il6,  # [pg/mL]
        "ampk_fold": f.ampk_fold,  # [-]
        "muscle_uptake": f.u_muscle,  # [mg/kg/min]
        "glut4_membrane": sol.ys.glut4_pm,  # [-]
    }


OBSERVABLE_UNITS = {
    "glucose_plasma": "mg/dL", "glucose_whole_blood": "mg/dL", "insulin_plasma": "mU/L", "gir": "mg/kg/min",
    "rd": "mg/kg/min", "ra": "mg/kg/min", "egp": "mg/kg/min", "delta_uptake": "mg/kg/min", "delta_egp": "mg/kg/min",
    "il6": "pg/mL", "ampk_fold": "1", "muscle_uptake": "mg/kg/min", "glut4_membrane": "1",
}
EXTRA_OUTPUTS = {  # algebraic quantities written by `simulate` besides states and observables
    "u_cns": "mg/kg/min", "u_other": "mg/kg/min", "renal": "mg/kg/min", "sig_efficiency": "1", "fat_ox": "mg/kg/min",
    "fat_share": "1",
}
