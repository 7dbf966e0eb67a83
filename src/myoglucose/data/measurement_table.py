"""Validation of the three tidy tables (docs/ARCHITECTURE.md section 1), usable on any in-memory DataFrame.

These functions are pure (no file I/O except, optionally, checking that protocol files exist).  ``fit`` can call
:func:`validate_measurements` on a ``measurements.tsv`` it has read, so a malformed tidy table gives the same
precise ``DataValidationError`` as ``prepare``.  Row numbers follow :mod:`myoglucose.data.errors`: data row ``i``
(0-based position in the frame) is reported as row ``i + 2`` (the header is row 1).

Reading tip: read TSVs with ``dtype=str, keep_default_na=False`` (see :func:`myoglucose.data.readers.read_tidy_dir`)
so that the checks see exactly what is in the file.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import DataValidationError
from .schemas import (
    CONDITION_COLUMNS,
    INSULIN_MODES,
    MEASUREMENT_COLUMNS,
    PROVENANCE_COLUMNS,
    SeriesChecker,
    check_columns,
    parse_float,
    parse_int,
    parse_str,
)
from .units import ALLOWED_NEGATIVE, CANONICAL_UNITS, UNIT_ALIASES, allowed_units

__all__ = [
    "validate_measurements",
    "validate_conditions",
    "validate_provenance",
    "validate_tidy_tables",
]


def _require_rows(df: pd.DataFrame, file_label: str, first_column: str) -> None:
    if len(df) == 0:
        raise DataValidationError(file_label, 2, first_column, "table has no data rows (at least one is required)")


def _cells(df: pd.DataFrame, column: str) -> list:
    return df[column].tolist()


def validate_measurements(df: pd.DataFrame, file_label: str) -> pd.DataFrame:
    """Validate a tidy measurements table and return a typed copy in canonical column order.

    Checks: exact column set; non-empty; text columns non-empty; known observable; canonical unit; finite
    ``time_min``; finite ``value`` (>= 0 except for ``delta_*`` increments); ``sd``/``sem`` NA or finite >= 0;
    ``n`` NA or integer >= 1; no duplicate (dataset_id, condition_id, observable_id, time_min); times strictly
    increasing within each (dataset_id, condition_id, observable_id) series in row order; one subject and group
    per condition.
    """
    label = str(file_label)
    check_columns([str(c) for c in df.columns], MEASUREMENT_COLUMNS, (), label)
    _require_rows(df, label, "time_min")
    out: dict[str, list] = {c: [] for c in MEASUREMENT_COLUMNS}
    series = SeriesChecker(label)
    cond_owner: dict[tuple[str, str], tuple[str, str, int]] = {}
    cols = {c: _cells(df, c) for c in MEASUREMENT_COLUMNS}
    for i in range(len(df)):
        r = i + 2
        rec = {}
        for c in ("dataset_id", "subject_id", "group", "condition_id", "observable_id", "unit", "source_id"):
            rec[c] = parse_str(cols[c][i], label, r, c)
        obs = rec["observable_id"]
        if obs not in CANONICAL_UNITS:
            raise DataValidationError(
                label, r, "observable_id", f"unknown observable '{obs}'; known: {', '.join(CANONICAL_UNITS)}"
            )
        unit = rec["unit"]
        canon = CANONICAL_UNITS[obs]
        if UNIT_ALIASES.get(unit, unit) != canon:
            if UNIT_ALIASES.get(unit, unit) in allowed_units(obs):
                msg = (
                    f"unit '{unit}' is not the canonical unit '{canon}' of {obs}; a tidy table must be in "
                    "canonical units (run `myoglucose prepare` to convert)"
                )
            else:
                msg = f"unknown unit '{unit}' for observable '{obs}'; the canonical unit is '{canon}'"
            raise DataValidationError(label, r, "unit", msg)
        rec["unit"] = canon
        rec["time_min"] = parse_float(cols["time_min"][i], label, r, "time_min", what="time")
        rec["value"] = parse_float(
            cols["value"][i], label, r, "value", nonnegative=obs not in ALLOWED_NEGATIVE, what=f"{obs} value"
        )
        rec["sd"] = parse_float(cols["sd"][i], label, r, "sd", allow_na=True, nonnegative=True, what="sd")
        rec["sem"] = parse_float(cols["sem"][i], label, r, "sem", allow_na=True, nonnegative=True, what="sem")
        rec["n"] = parse_int(cols["n"][i], label, r, "n", allow_na=True, minimum=1)
        key = (rec["dataset_id"], rec["condition_id"])
        owner = cond_owner.setdefault(key, (rec["subject_id"], rec["group"], r))
        if owner[:2] != (rec["subject_id"], rec["group"]):
            col = "subject_id" if owner[0] != rec["subject_id"] else "group"
            raise DataValidationError(
                label,
                r,
                col,
                f"condition '{key[1]}' has subject/group '{rec['subject_id']}'/'{rec['group']}' here but "
                f"'{owner[0]}'/'{owner[1]}' at row {owner[2]}; a condition belongs to one subject",
            )
        series.add(
            (rec["dataset_id"], rec["condition_id"], obs),
            rec["time_min"],
            r,
            f"series (condition '{rec['condition_id']}', observable '{obs}')",
        )
        for c in MEASUREMENT_COLUMNS:
            out[c].append(rec[c])
    res = pd.DataFrame(out, columns=list(MEASUREMENT_COLUMNS))
    for c in ("time_min", "value", "sd", "sem"):
        res[c] = pd.to_numeric(res[c], errors="raise").astype("float64")
    res["n"] = pd.array(out["n"], dtype="Int64")
    return res


def validate_conditions(
    df: pd.DataFrame, file_label: str, repo_root: str | Path | None = None
) -> pd.DataFrame:
    """Validate a tidy conditions table; if ``repo_root`` is given, protocol files must exist under it."""
    label = str(file_label)
    check_columns([str(c) for c in df.columns], CONDITION_COLUMNS, (), label)
    _require_rows(df, label, "condition_id")
    out: dict[str, list] = {c: [] for c in CONDITION_COLUMNS}
    seen: dict[tuple[str, str], int] = {}
    cols = {c: _cells(df, c) for c in CONDITION_COLUMNS}
    for i in range(len(df)):
        r = i + 2
        rec = {}
        for c in ("condition_id", "dataset_id", "subject_id", "group", "protocol_file", "insulin_mode"):
            rec[c] = parse_str(cols[c][i], label, r, c)
        rec["notes"] = parse_str(cols["notes"][i], label, r, "notes", allow_na=True) or ""
        rec["body_weight_kg"] = parse_float(
            cols["body_weight_kg"][i], label, r, "body_weight_kg", positive=True, what="body weight"
        )
        rec["bsa_m2"] = parse_float(cols["bsa_m2"][i], label, r, "bsa_m2", positive=True, what="body surface area")
        if rec["insulin_mode"] not in INSULIN_MODES:
            raise DataValidationError(
                label, r, "insulin_mode", f"insulin_mode '{rec['insulin_mode']}' must be one of {INSULIN_MODES}"
            )
        key = (rec["dataset_id"], rec["condition_id"])
        if key in seen:
            raise DataValidationError(
                label, r, "condition_id", f"duplicate condition '{key[1]}' (also at row {seen[key]})"
            )
        seen[key] = r
        if repo_root is not None and not (Path(repo_root) / rec["protocol_file"]).is_file():
            raise DataValidationError(
                label, r, "protocol_file", f"protocol file '{rec['protocol_file']}' does not exist under {repo_root}"
            )
        for c in CONDITION_COLUMNS:
            out[c].append(rec[c])
    res = pd.DataFrame(out, columns=list(CONDITION_COLUMNS))
    for c in ("body_weight_kg", "bsa_m2"):
        res[c] = res[c].astype("float64")
    return res


def validate_provenance(df: pd.DataFrame, file_label: str) -> pd.DataFrame:
    label = str(file_label)
    check_columns([str(c) for c in df.columns], PROVENANCE_COLUMNS, (), label)
    _require_rows(df, label, "source_id")
    out: dict[str, list] = {c: [] for c in PROVENANCE_COLUMNS}
    seen: dict[str, int] = {}
    cols = {c: _cells(df, c) for c in PROVENANCE_COLUMNS}
    required = ("source_id", "dataset_id", "citation", "how_obtained", "units_as_published", "raw_file", "sha256")
    for i in range(len(df)):
        r = i + 2
        rec = {c: parse_str(cols[c][i], label, r, c, allow_na=c not in required) or "" for c in PROVENANCE_COLUMNS}
        sha = rec["sha256"]
        if len(sha) != 64 or any(ch not in "0123456789abcdef" for ch in sha):
            raise DataValidationError(label, r, "sha256", f"'{sha}' is not a lower-case hex sha256 digest")
        if rec["source_id"] in seen:
            raise DataValidationError(
                label, r, "source_id", f"duplicate source_id '{rec['source_id']}' (also at row {seen[rec['source_id']]})"
            )
        seen[rec["source_id"]] = r
        for c in PROVENANCE_COLUMNS:
            out[c].append(rec[c])
    return pd.DataFrame(out, columns=list(PROVENANCE_COLUMNS))


def validate_tidy_tables(
    measurements: pd.DataFrame,
    conditions: pd.DataFrame,
    provenance: pd.DataFrame,
    labels: tuple[str, str, str] = ("measurements.tsv", "conditions.tsv", "provenance.tsv"),
    repo_root: str | Path | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Validate the three tables and their cross-references; return typed copies.

    Every measurement's (dataset_id, condition_id) must be in conditions with the same subject_id and group;
    every source_id must be in provenance; every ``forced`` condition must have insulin_plasma measurements.
    """
    m = validate_measurements(measurements, labels[0])
    c = validate_conditions(conditions, labels[1], repo_root)
    p = validate_provenance(provenance, labels[2])
    cond_index = {
        (row.dataset_id, row.condition_id): (row.subject_id, row.group) for row in c.itertuples(index=False)
    }
    sources = set(p["source_id"])
    for i, row in enumerate(m.itertuples(index=False)):
        r = i + 2
        key = (row.dataset_id, row.condition_id)
        if key not in cond_index:
            raise DataValidationError(
                labels[0], r, "condition_id", f"condition '{row.condition_id}' is not in {labels[1]}"
            )
        subj, grp = cond_index[key]
        if row.subject_id != subj:
            raise DataValidationError(
                labels[0], r, "subject_id", f"subject '{row.subject_id}' differs from '{subj}' in {labels[1]}"
            )
        if row.group != grp:
            raise DataValidationError(labels[0], r, "group", f"group '{row.group}' differs from '{grp}' in {labels[1]}")
        if row.source_id not in sources:
            raise DataValidationError(labels[0], r, "source_id", f"source_id '{row.source_id}' is not in {labels[2]}")
    with_insulin = set(
        zip(m.loc[m["observable_id"] == "insulin_plasma", "dataset_id"], m.loc[m["observable_id"] == "insulin_plasma", "condition_id"])
    )
    for i, row in enumerate(c.itertuples(index=False)):
        if row.insulin_mode == "forced" and (row.dataset_id, row.condition_id) not in with_insulin:
            raise DataValidationError(
                labels[1],
                i + 2,
                "insulin_mode",
                f"condition '{row.condition_id}' is 'forced' but has no insulin_plasma measurements to drive the model",
            )
    return m, c, p
