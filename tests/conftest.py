"""Test set-up: float64, CPU, EQX_ON_ERROR=nan and a persistent compilation cache (so repeated runs are fast).

The tests run on the CPU; ``MYOGLUCOSE_TEST_DEVICE=auto`` (or ``gpu``) lets JAX see a GPU, which the ``gpu`` tier
(tests/test_gpu.py) needs: with the CPU forced, JAX hides every GPU and those tests skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("MYOGLUCOSE_ROOT", str(ROOT))
os.environ.setdefault("MYOGLUCOSE_CACHE_DIR", str(ROOT / ".jax_cache"))

from myoglucose import runtime  # noqa: E402

runtime.configure(os.environ.get("MYOGLUCOSE_TEST_DEVICE", "cpu"), os.environ["MYOGLUCOSE_CACHE_DIR"])


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def full_spec():
    from myoglucose.model.spec import load_model

    return load_model(ROOT / "models" / "full")


@pytest.fixture(scope="session")
def nominal(full_spec):
    import jax.numpy as jnp

    from myoglucose.model.spec import nominal_params

    return {k: jnp.asarray(v) for k, v in nominal_params(full_spec).items()}


@pytest.fixture(scope="session")
def sorensen():
    """Sorensen 1985 (one condition, 13 measurements, kinetic insulin) as fit data for ``core`` and ``full``:
    variant -> (spec, FitData). ``full`` estimates 6 ODE parameters there (reverse mode under ``adjoint: auto``),
    ``core`` 4 (forward sensitivities)."""
    from myoglucose.data.prepare import prepare_dataset
    from myoglucose.inference.arrays import build_fit_data
    from myoglucose.model.spec import load_model

    t = prepare_dataset(ROOT / "data/sorensen1985_civii", ROOT)
    specs = {v: load_model(ROOT / "models" / v) for v in ("core", "full")}
    return {v: (spec, build_fit_data(t.measurements, t.conditions, ROOT, set(spec.observables)))
            for v, spec in specs.items()}
