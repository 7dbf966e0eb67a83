"""``solver.adjoint: auto`` -- how a fit differentiates its ODE solves (``model.simulate.choose_adjoint``).

The rule: reverse mode (RecursiveCheckpointAdjoint) when the fit's solver is explicit and each condition has at least
``REVERSE_FROM_PARAMETERS`` estimated ODE parameters, else forward sensitivities in a custom VJP
(docs/performance.md section 3 has the measurements behind it). The two modes must give the same gradient of the
fit's log density: the sampler may take either. Sorensen 1985 (one condition, 13 measurements), kinetic insulin:
``full`` estimates 6 ODE parameters there, ``core`` 4.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from myoglucose.model.simulate import REVERSE_FROM_PARAMETERS, SolverSettings, choose_adjoint

ROOT = Path(__file__).resolve().parents[1]


def test_auto_takes_reverse_mode_for_many_parameters_with_an_explicit_solver():
    tsit = SolverSettings(name="Tsit5", adjoint="auto")
    few, why_few = choose_adjoint(tsit, REVERSE_FROM_PARAMETERS - 1)
    many, why_many = choose_adjoint(tsit, REVERSE_FROM_PARAMETERS)
    assert few.adjoint == "sensitivity" and "fewer than" in why_few
    assert many.adjoint == "reverse" and f"{REVERSE_FROM_PARAMETERS} estimated ODE parameters" in why_many
    assert dataclasses.replace(many, adjoint="auto") == tsit  # nothing else changes
    stiff, why = choose_adjoint(SolverSettings(name="Kvaerno5", adjoint="auto"), 40)
    assert stiff.adjoint == "sensitivity" and "implicit Kvaerno5" in why
    for named in ("sensitivity", "reverse", "forward"):  # a named mode is kept, with no reason
        s = SolverSettings(name="Tsit5", adjoint=named)
        assert choose_adjoint(s, 40) == (s, "")
    assert SolverSettings().adjoint == "auto"
    with pytest.raises(ValueError, match="solver.adjoint must be one of"):
        SolverSettings(adjoint="adjoint")


def test_fit_builders_resolve_auto_from_their_estimated_parameters(sorensen):
    from myoglucose.inference.numpyro_model import ModelBuilder

    for variant, mode in (("core", "sensitivity"), ("full", "reverse")):
        spec, data = sorensen[variant]
        b = ModelBuilder(spec, data, SolverSettings(name="Tsit5", adjoint="auto"))
        n = len(b.estimated)
        print(f"{variant}: {n} estimated ODE parameters -> {b.solver.adjoint} ({b.adjoint_choice})")
        assert b.solver.adjoint == mode and f"{n} estimated ODE parameters" in b.adjoint_choice
        named = ModelBuilder(spec, data, SolverSettings(name="Tsit5", adjoint="forward"))
        assert named.solver.adjoint == "forward" and named.adjoint_choice == ""


def test_reverse_mode_and_sensitivities_give_the_same_gradient(sorensen):
    """The fit's potential (negative log density on the unconstrained space) and its gradient, at the prior median
    and two points around it, in both modes: the same discrete solution differentiated two ways."""
    from numpyro.infer import init_to_median
    from numpyro.infer.util import potential_energy

    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.inference.sample import _init_z

    spec, data = sorensen["full"]
    a = data.arrays
    out = {}
    for mode in ("sensitivity", "reverse"):
        b = ModelBuilder(spec, data, SolverSettings(name="Tsit5", rtol=1e-9, atol=1e-9, adjoint=mode))
        x0, unravel = ravel_pytree(_init_z(b, a, jax.random.PRNGKey(0), init_to_median(num_samples=5)))
        xs = [x0] + [x0 + 0.1 * np.random.default_rng(i).standard_normal(x0.shape) for i in (1, 2)]
        vg = jax.jit(jax.value_and_grad(lambda x, b=b, unravel=unravel: potential_energy(
            b.model, (a,), {"y": a.values}, unravel(x))))
        out[mode] = [tuple(map(np.asarray, vg(x))) for x in xs]
    for (v_s, g_s), (v_r, g_r) in zip(out["sensitivity"], out["reverse"]):
        rel = np.max(np.abs(g_r - g_s)) / np.max(np.abs(g_s))
        print(f"potential {float(v_s):.6f} vs {float(v_r):.6f}; gradient max rel diff {rel:.2e}; |g| {np.max(np.abs(g_s)):.3g}")
        assert np.isfinite(v_s) and np.all(np.isfinite(g_s))
        assert abs(float(v_r) - float(v_s)) <= 1e-9 * max(1.0, abs(float(v_s)))
        assert rel < 1e-7


def test_a_failed_solve_is_a_rejected_proposal_with_a_finite_gradient_in_both_modes(sorensen):
    """``max_steps`` 16 cannot integrate the protocol: the potential is +inf (NUTS rejects the proposal) and the
    gradient stays finite in both modes (the failed solve's values are masked before the likelihood)."""
    from numpyro.infer import init_to_median
    from numpyro.infer.util import potential_energy

    from myoglucose.inference.numpyro_model import ModelBuilder
    from myoglucose.inference.sample import _init_z

    spec, data = sorensen["full"]
    a = data.arrays
    for mode in ("sensitivity", "reverse"):
        b = ModelBuilder(spec, data, SolverSettings(name="Tsit5", max_steps=16, adjoint=mode))
        x0, unravel = ravel_pytree(_init_z(b, a, jax.random.PRNGKey(0), init_to_median(num_samples=5)))
        v, g = jax.jit(jax.value_and_grad(lambda x, b=b, unravel=unravel: potential_energy(
            b.model, (a,), {"y": a.values}, unravel(x))))(x0)
        print(f"{mode}: potential {float(v)}, gradient finite {bool(np.all(np.isfinite(np.asarray(g))))}")
        assert float(v) == np.inf and np.all(np.isfinite(np.asarray(g)))
