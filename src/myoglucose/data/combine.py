"""Joint datasets: the tidy tables of two or more prepared datasets as one set of tables, fitted as one dataset.

A joint fit is how a modeller uses two protocols run on the same people (Katz 2000: an isoglycemic clamp and an
insulin-modified FSIVGTT in the same three groups). One protocol alone may not separate two mechanisms; together they
can (docs/inference.md, "Joint fits"). Rules:

* every row keeps its member's ``dataset_id`` (provenance and the data figures stay per source dataset);
* groups are matched by id: a group ``t2d`` in two members is one group with one set of group-level parameters;
* subjects are matched by id only when the member datasets declare the same people (``same_subjects``). Then a
  subject found in several members must have the same group, body weight and body surface area in each. Otherwise
  each subject id is prefixed with its dataset id (``katz2000_clamp:nonobese``) so that different people never share
  subject-level parameters by accident;
* condition ids must be unique across the members (the model keys its conditions by id); a clash is an error that
  names both places.

Pure functions on DataFrames (no file I/O): ``myoglucose combine`` reads the members with
:func:`myoglucose.data.read_tables` and writes the result with :func:`myoglucose.data.write_tables`.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from .errors import DataValidationError
from .prepare import PreparedTables

__all__ = ["SUBJECT_SEPARATOR", "combine_tables"]

SUBJECT_SEPARATOR = ":"  # prefix separator of subject ids when the members are different people


def combine_tables(
    members: Sequence[tuple[str, PreparedTables]],
    same_subjects: bool,
    labels: Sequence[str] | None = None,
) -> PreparedTables:
    """Concatenate validated tidy tables of ``members`` ((name, tables) pairs, in order) into one joint set.

    ``labels`` name each member's tidy folder in error messages (default: the member names). Raises
    :class:`DataValidationError` naming the member's ``conditions.tsv``, the row and the column on a condition id
    used twice, or (``same_subjects``) on a subject whose group or covariates differ between members.
    """
    if len(members) < 2:
        raise ValueError(f"a joint dataset needs at least two member datasets, got {len(members)}")
    names = [name for name, _ in members]
    if len(set(names)) != len(names):
        raise ValueError(f"a joint dataset lists a member twice: {names}")
    labels = list(labels) if labels is not None else names
    seen_cond: dict[str, tuple[str, int]] = {}
    seen_subj: dict[str, tuple[str, int, dict]] = {}
    meas, conds, provs = [], [], []
    for (_name, tables), label in zip(members, labels, strict=True):
        c = tables.conditions.copy()
        m = tables.measurements.copy()
        file = f"{label}/conditions.tsv"
        for i, row in enumerate(c.itertuples(index=False)):
            r = i + 2
            if row.condition_id in seen_cond:
                other, other_row = seen_cond[row.condition_id]
                raise DataValidationError(
                    file, r, "condition_id",
                    f"condition '{row.condition_id}' is also in {other} row {other_row}; the conditions of a joint "
                    "dataset need distinct ids (rename one in its dataset.yaml)",
                )
            seen_cond[row.condition_id] = (file, r)
            if not same_subjects:
                continue
            values = {"group": row.group, "body_weight_kg": float(row.body_weight_kg), "bsa_m2": float(row.bsa_m2)}
            if row.subject_id in seen_subj:
                other, other_row, first = seen_subj[row.subject_id]
                for column, value in values.items():
                    if value != first[column]:
                        raise DataValidationError(
                            file, r, column,
                            f"subject '{row.subject_id}' has {column} {value!r} here but {first[column]!r} in {other} "
                            f"row {other_row}; the members of a joint dataset with same_subjects must describe each "
                            "subject the same way",
                        )
            else:
                seen_subj[row.subject_id] = (file, r, values)
        if not same_subjects:
            c["subject_id"] = c["dataset_id"].astype(str) + SUBJECT_SEPARATOR + c["subject_id"].astype(str)
            m["subject_id"] = m["dataset_id"].astype(str) + SUBJECT_SEPARATOR + m["subject_id"].astype(str)
        meas.append(m)
        conds.append(c)
        provs.append(tables.provenance)
    return PreparedTables(
        measurements=pd.concat(meas, ignore_index=True),
        conditions=pd.concat(conds, ignore_index=True),
        provenance=pd.concat(provs, ignore_index=True),
    )
