"""The parameter and observable tables tie one to one to the equations; malformed tables are refused clearly."""

from __future__ import annotations

import shutil

import pandas as pd
import pytest

from myoglucose.model.equations import PARAMETER_NAMES, STATE_NAMES, State
from myoglucose.model.simulate import OBSERVABLE_UNITS
from myoglucose.model.spec import SpecError, load_model


def test_parameter_table_matches_equations(full_spec):
    assert set(full_spec.params) == set(PARAMETER_NAMES)
    for r in full_spec.params.values():
        assert r.unit and r.reference and r.description, r.id


def test_observables_match_code(full_spec):
    assert set(full_spec.observables) == set(OBSERVABLE_UNITS)
    for o in full_spec.observables.values():
        assert o.unit == OBSERVABLE_UNITS[o.id]


def test_state_names_are_the_state_fields():
    assert tuple(State.__dataclass_fields__) == STATE_NAMES


def test_equations_use_every_parameter(root):
    src = "".join((root / "src/myoglucose/model" / f).read_text() for f in ("equations.py", "basal.py", "simulate.py"))
    unused = [p for p in PARAMETER_NAMES if f'p["{p}"]' not in src]
    assert not unused, f"parameters declared but never used in the equations: {unused}"


@pytest.mark.parametrize("variant", ["full", "core", "no_memory", "no_myokines"])
def test_variants_load(root, variant):
    spec = load_model(root / "models" / variant)
    assert spec.estimated


def _write_bad(tmp_path, root, edit):
    d = tmp_path / "bad"
    shutil.copytree(root / "models" / "full", d)
    df = pd.read_csv(d / "parameters.tsv", sep="\t", dtype=str, keep_default_na=False)
    edit(df)
    df.to_csv(d / "parameters.tsv", sep="\t", index=False)
    return d


@pytest.mark.parametrize(
    "edit, column, message",
    [
        (lambda df: df.loc.__setitem__((3, "unit"), ""), "unit", "has no unit"),
        (lambda df: df.loc.__setitem__((3, "lowerBound"), "1e9"), "lowerBound", "lower bound"),
        (lambda df: df.loc.__setitem__((3, "priorLoc"), "1e9"), "priorLoc", "outside the bounds"),
        (lambda df: df.loc.__setitem__((3, "parameterId"), "k_unknown"), "parameterId", "unknown parameter"),
        (lambda df: df.loc.__setitem__((3, "priorType"), "cauchy"), "priorType", "unknown prior"),
        (lambda df: df.loc.__setitem__((3, "nominalValue"), "abc"), "nominalValue", "expected a number"),
        (lambda df: df.loc.__setitem__((3, "hierarchy"), "partial"), "hierarchy", "unknown hierarchy"),
        # row 5 is a population-level parameter: centring needs a group level
        (lambda df: df.loc.__setitem__((3, "hierarchy"), "centered"), "hierarchy", "applies to group"),
    ],
)
def test_bad_parameter_tables(tmp_path, root, edit, column, message):
    d = _write_bad(tmp_path, root, edit)
    with pytest.raises(SpecError) as e:
        load_model(d)
    assert "parameters.tsv" in str(e.value) and "row 5" in str(e.value) and column in str(e.value)
    assert message in str(e.value)


def test_every_citation_key_is_in_the_bibliography(root, full_spec):
    import re

    bib = (root / "models/references.bib").read_text()
    keys = set(re.findall(r"@\w+\{([^,]+),", bib))
    used = set(re.findall(r"@([A-Za-z]+\d{4})", (root / "src/myoglucose/model/equations.py").read_text()))
    used |= {r.reference for r in full_spec.params.values()}
    assert used <= keys, f"citation keys missing from models/references.bib: {sorted(used - keys)}"


def test_hierarchy_column_is_optional_and_inherited(tmp_path, root):
    """Without the column every parameter is non-centred; a variant inherits its parent's centring, and an override to
    the population level drops it (no error from the inherited value)."""
    d = _write_bad(tmp_path, root, lambda df: df.__delitem__("hierarchy"))
    assert all(not r.centered for r in load_model(d).params.values())
    full = load_model(root / "models" / "full")
    assert full.params["gb"].centered and not full.params["akt_ec50"].centered
    assert load_model(root / "models" / "core").params["gb"].centered
    sbc = load_model(root / "models" / "core_sbc")  # every parameter at population level
    assert sbc.params["gb"].level == "population" and not sbc.params["gb"].centered
