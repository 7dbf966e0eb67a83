"""Joint datasets (config `joint`, `myoglucose combine`): two prepared datasets become one set of tidy tables that the
fit reads as one dataset, with subjects matched by id only when the members studied the same people."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from myoglucose.data import DataValidationError, prepare_dataset, validate_tidy_tables
from myoglucose.data.combine import combine_tables
from myoglucose.inference.arrays import build_fit_data

ROOT = Path(__file__).resolve().parents[1]
CLAMP, FSIVGTT = "katz2000_clamp", "katz2000_fsivgtt"


@pytest.fixture(scope="module")
def katz():
    return [(d, prepare_dataset(ROOT / "data" / d, ROOT)) for d in (CLAMP, FSIVGTT)]


def test_same_subjects_share_one_subject_per_group(katz):
    joint = combine_tables(katz, same_subjects=True)
    m, c, p = validate_tidy_tables(joint.measurements, joint.conditions, joint.provenance)
    assert len(m) == sum(len(t.measurements) for _, t in katz)
    assert len(c) == 6 and len(p) == sum(len(t.provenance) for _, t in katz)
    assert sorted(c["subject_id"].unique()) == ["nonobese", "obese", "t2d"]
    assert set(m["dataset_id"]) == {CLAMP, FSIVGTT}  # every row keeps its source dataset
    data = build_fit_data(m, c, ROOT)
    assert data.subjects == ("nonobese", "obese", "t2d") and data.groups == ("nonobese", "obese", "t2d")
    # the clamp and the FSIVGTT of one group are two conditions of ONE subject: they share its parameters
    cond_subject = np.asarray(data.arrays.cond_subject)
    by_condition = dict(zip(data.conditions, cond_subject, strict=True))
    for group in data.groups:
        assert by_condition[f"clamp120_{group}"] == by_condition[f"fsivgtt_{group}"]
    # mixed insulin modes survive: forced clamp, kinetic FSIVGTT
    modes = dict(zip(c["condition_id"], c["insulin_mode"], strict=True))
    assert modes["clamp120_t2d"] == "forced" and modes["fsivgtt_t2d"] == "kinetic"


def test_different_people_get_distinct_subjects_in_shared_groups(katz):
    joint = combine_tables(katz, same_subjects=False)
    m, c, _ = validate_tidy_tables(joint.measurements, joint.conditions, joint.provenance)
    assert sorted(c["subject_id"]) == sorted(f"{d}:{g}" for d in (CLAMP, FSIVGTT) for g in ("nonobese", "obese", "t2d"))
    assert (m["subject_id"].str.split(":").str[0] == m["dataset_id"]).all()
    data = build_fit_data(m, c, ROOT)
    assert len(data.subjects) == 6 and data.groups == ("nonobese", "obese", "t2d")
    group_of = np.asarray(data.arrays.subject_group)
    assert sorted(np.bincount(group_of).tolist()) == [2, 2, 2]  # two subjects (one per protocol) in each group


def test_condition_id_clash_names_file_row_and_column(katz):
    name, tables = katz[1]
    clash = tables.conditions.copy()
    clash.loc[1, "condition_id"] = "clamp120_nonobese"
    meas = tables.measurements.copy()
    meas.loc[meas["condition_id"] == "fsivgtt_obese", "condition_id"] = "clamp120_nonobese"
    bad = type(tables)(measurements=meas, conditions=clash, provenance=tables.provenance)
    with pytest.raises(DataValidationError) as err:
        combine_tables([katz[0], (name, bad)], same_subjects=False, labels=["tidy/a", "tidy/b"])
    msg = str(err.value)
    assert "tidy/b/conditions.tsv" in msg and "row 3" in msg and "condition_id" in msg
    assert "also in tidy/a/conditions.tsv row 2" in msg


@pytest.mark.parametrize(("column", "value"), [("body_weight_kg", 75.0), ("bsa_m2", 1.9), ("group", "obese")])
def test_same_subjects_must_agree_on_group_and_covariates(katz, column, value):
    name, tables = katz[1]
    conds = tables.conditions.copy()
    conds.loc[0, column] = value  # fsivgtt_nonobese
    bad = type(tables)(measurements=tables.measurements, conditions=conds, provenance=tables.provenance)
    with pytest.raises(DataValidationError) as err:
        combine_tables([katz[0], (name, bad)], same_subjects=True)
    msg = str(err.value)
    assert f"{FSIVGTT}/conditions.tsv" in msg and "row 2" in msg and f"'{column}'" in msg
    assert "subject 'nonobese'" in msg and f"{CLAMP}/conditions.tsv row 2" in msg
    combine_tables([katz[0], (name, bad)], same_subjects=False)  # different people may differ


def test_a_joint_dataset_needs_two_distinct_members(katz):
    with pytest.raises(ValueError, match="at least two"):
        combine_tables(katz[:1], same_subjects=True)
    with pytest.raises(ValueError, match="twice"):
        combine_tables([katz[0], katz[0]], same_subjects=True)


def _cli(*args):
    env = dict(os.environ, MYOGLUCOSE_ROOT=str(ROOT))
    return subprocess.run([sys.executable, "-m", "myoglucose.cli", *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


def test_cli_combines_prepared_folders_and_leaves_nothing_on_error(tmp_path):
    dirs = []
    for d in (CLAMP, FSIVGTT):
        r = _cli("prepare", "--dataset-dir", ROOT / "data" / d, "--out-dir", tmp_path / d)
        assert r.returncode == 0, r.stderr
        dirs += ["--tidy-dir", tmp_path / d]
    r = _cli("combine", *dirs, "--same-subjects", "--out-dir", tmp_path / "katz2000")
    assert r.returncode == 0, r.stderr
    conds = pd.read_csv(tmp_path / "katz2000/conditions.tsv", sep="\t")
    assert len(conds) == 6 and set(conds["subject_id"]) == {"nonobese", "obese", "t2d"}
    # a member that is not a tidy folder: one message naming the file, exit 2, no output folder
    r = _cli("combine", "--tidy-dir", tmp_path / CLAMP, "--tidy-dir", tmp_path / "nothing", "--out-dir",
             tmp_path / "broken")
    assert r.returncode == 2
    assert "nothing/measurements.tsv" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "broken").exists()
