"""The peer benchmark's plain-numpy translation (benchmarks/stan/scipy_model.py, which mirrors the Stan program line for
line) gives the same log density as NumPyro's model, at tight tolerances, at the prior median and away from it.

The Stan program itself is checked by ``benchmarks/stan/validate.py`` (it needs a Stan build, minutes); this test keeps
its numpy twin, and with it the parameter export the Stan program shares, from drifting when the model's hierarchy or
priors change. (It did drift once: the centred hierarchy of ``gb`` reached the Stan program but not the numpy one,
and the scipy baseline's log density was off by 1.2 at the prior median.)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
TIGHT = 1e-10


@pytest.fixture(scope="module")
def translation(tmp_path_factory):
    sys.path.insert(0, str(ROOT / "benchmarks" / "stan"))
    import jax_side
    from export import export

    from myoglucose.data import prepare_dataset, write_tables

    tidy = tmp_path_factory.mktemp("tidy") / "katz2000_clamp"
    write_tables(prepare_dataset(ROOT / "data/katz2000_clamp", ROOT), tidy)
    solver = {"name": "Tsit5", "rtol": TIGHT, "atol": TIGHT, "max_steps": 100000}
    _, spec, data, builder = jax_side.load(str(tidy), str(ROOT / "models/core"), solver)
    d, meta = export(spec, data, builder, TIGHT, TIGHT, 100000)
    return jax_side, builder, d, meta


@pytest.mark.parametrize("point", ["median", "random"])
def test_numpy_translation_log_density_equals_numpyro(translation, point) -> None:
    import scipy_model

    jax_side, builder, d, meta = translation
    lat = jax_side.median_latents(builder) if point == "median" else jax_side.random_latents(builder, 2, spread=1.0)
    dens = jax_side.Density(builder)
    u = dens.unconstrain(lat)
    numpyro_lp = -float(dens.potential(u))
    numpy_lp = scipy_model.ScipyModel(d, method="LSODA").log_prob(jax_side.flat_in_stan_order(u, d, meta))
    print(f"{point}: log p NumPyro {numpyro_lp:.9f}, numpy/scipy translation {numpy_lp:.9f}, "
          f"difference {numpy_lp - numpyro_lp:.2e}")
    assert np.isfinite(numpyro_lp)
    # Both solve to 1e-10; a translation error (a prior, a hierarchy term, an equation) moves log p by far more.
    assert numpy_lp == pytest.approx(numpyro_lp, abs=1e-5)
