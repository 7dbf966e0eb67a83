"""A posterior DataTree (ARCHITECTURE.md section 4) survives to_netcdf(engine="h5netcdf") / open_datatree.

Write:  ``tree.to_netcdf(path, engine="h5netcdf")``
Read:   ``xarray.load_datatree(path, engine="h5netcdf")`` (eager, closes the file) or
        ``with xarray.open_datatree(path, engine="h5netcdf") as t: ...`` (lazy).

Gotchas checked here:
* h5netcdf needs ``h5py`` (its write backend); without it every write raises ImportError.
* ``DataTree.to_netcdf`` does NOT run xarray's attribute validation (``Dataset.to_netcdf`` does), so a
  dict attr reaches h5py and fails there; JSON-encode dicts (``data_sha256``) yourself.
* bool attrs are rejected by h5netcdf (CompatibilityError) unless ``invalid_netcdf=True``: store 0/1 or
  "true"/"false".  bool *variables* (``diverging``, ``ode_failed``) are fine: xarray stores them as int8
  with ``dtype: bool`` and decodes them back to bool.
* str index/non-index coordinates come back with dtype object (values equal); compare with ``astype(str)``.
* list-of-str attrs (ArviZ's per-group ``sample_dims``) come back as a list, but a one-element list comes
  back as a plain str and an empty list as an empty float array.
"""

from __future__ import annotations

import json
from numbers import Number

import numpy as np
import pytest
import xarray as xr

from myoglucose.diagnostics.synthetic import MEASUREMENT_COORDS, make_posterior_tree

GROUPS = {
    "posterior",
    "sample_stats",
    "log_likelihood",
    "observed_data",
    "constant_data",
    "prior",
    "prior_predictive",
    "posterior_predictive",
}
ROOT_ATTRS = {
    "myoglucose_version",
    "git_commit",
    "config_yaml",
    "seed",
    "data_sha256",
    "model_variant",
    "dataset_id",
    "created_utc",
    "solver",
    "rtol",
    "atol",
}


@pytest.fixture(scope="module")
def tree():
    return make_posterior_tree(n_chains=2, n_draws=20, n_divergent=2, n_ode_failed=1, seed=5)


def test_root_attrs_are_netcdf_safe(tree):
    """Runs without h5py: the contract is str or (non-bool) number for every root attr."""
    assert ROOT_ATTRS <= set(tree.attrs)
    for key, value in tree.attrs.items():
        assert isinstance(value, str | Number) and not isinstance(value, bool), key
    assert isinstance(json.loads(tree.attrs["data_sha256"]), dict)
    assert set(tree.children) == GROUPS


def test_roundtrip_h5netcdf(tree, tmp_path):
    pytest.importorskip("h5py", reason="h5netcdf needs h5py to write NetCDF4 files")
    path = tmp_path / "posterior.nc"
    tree.to_netcdf(path, engine="h5netcdf")
    back = xr.load_datatree(path, engine="h5netcdf")

    assert set(back.children) == GROUPS
    for key in ROOT_ATTRS:
        got, want = back.attrs[key], tree.attrs[key]
        if isinstance(want, float):
            assert float(got) == want, key
        else:
            assert got == want, key
    assert json.loads(back.attrs["data_sha256"]) == json.loads(tree.attrs["data_sha256"])

    post = back["posterior"]
    assert post["k_ins"].dims == ("chain", "draw", "group")
    assert list(post["group"].values.astype(str)) == ["nonobese", "obese"]
    np.testing.assert_array_equal(post["k_ins"].values, tree["posterior"]["k_ins"].values)

    stats = back["sample_stats"]
    assert stats["diverging"].dtype == bool and int(stats["diverging"].sum()) == 2
    assert stats["ode_failed"].dtype == bool and int(stats["ode_failed"].sum()) == 1

    for group in ("observed_data", "log_likelihood", "posterior_predictive", "constant_data"):
        ds = back[group].to_dataset()
        for coord in MEASUREMENT_COORDS:
            assert coord in ds.coords, (group, coord)
            assert ds[coord].dims == ("measurement",)
        want = tree[group].to_dataset()
        np.testing.assert_array_equal(
            ds["measurement_observable"].values.astype(str), want["measurement_observable"].values
        )
        np.testing.assert_array_equal(ds["measurement_time"].values, want["measurement_time"].values)
    assert back["log_likelihood"]["obs"].dims == ("chain", "draw", "measurement")
    assert back["observed_data"]["obs"].dims == ("measurement",)

    # the diagnostics run unchanged on the re-read tree
    from myoglucose.diagnostics import convergence_table

    assert len(convergence_table(back)) == 5


def test_dict_and_bool_attrs_are_rejected(tree, tmp_path):
    pytest.importorskip("h5py", reason="h5netcdf needs h5py to write NetCDF4 files")
    for bad in ({"a": "b"}, True):
        t = tree.copy()
        t.attrs["bad"] = bad
        with pytest.raises(Exception):  # noqa: B017 - h5py TypeError / h5netcdf CompatibilityError
            t.to_netcdf(tmp_path / "bad.nc", engine="h5netcdf")
