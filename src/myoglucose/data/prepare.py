"""``prepare``: dataset folder -> validated tidy tables (docs/ARCHITECTURE.md section 1).

>>> tables = prepare_dataset(Path("data/katz2000_clamp"), repo_root=Path("."))      # doctest: +SKIP
>>> write_tables(tables, Path("results/tidy/katz2000_clamp"))                        # doctest: +SKIP

``prepare_dataset`` reads and validates everything before anything is written; ``write_tables`` writes the three
TSVs atomically (temp files in the output folder, then ``os.replace``), so a failed prepare leaves no partial
outputs.  All problems are raised as :class:`DataValidationError` (``"<file>: row <r>, column '<c>': <msg>"``).
"""

from __future__ import annotations

import csv
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ..io import default_mode
from .errors import DataValidationError
from .measurement_table import validate_tidy_tables
from .readers import (
    CORRECTION_TIME_TOL,
    DatasetSpec,
    FileSpec,
    load_yaml_with_lines,
    protocol_time_min,
    read_dataset_yaml,
    read_raw_csv,
    read_sha256sums,
    sha256_of,
)
from .schemas import (
    CONDITION_COLUMNS,
    MEASUREMENT_COLUMNS,
    PROVENANCE_COLUMNS,
    RAW_LONG_OPTIONAL,
    RAW_LONG_REQUIRED,
    RAW_WIDE_OPTIONAL,
    RAW_WIDE_REQUIRED,
    SeriesChecker,
    check_columns,
    is_na,
    parse_float,
    parse_int,
)
from .units import ALLOWED_NEGATIVE, CANONICAL_UNITS, UnitConversionError, conversion_for

__all__ = [
    "PreparedTables",
    "prepare_dataset",
    "write_tables",
    "prepare_to_dir",
    "read_tables",
    "TABLE_FILES",
]

TABLE_FILES = {"measurements": "measurements.tsv", "conditions": "conditions.tsv", "provenance": "provenance.tsv"}
_PROTOCOL_KEYS = ("name", "description", "end", "events")


@dataclass
class PreparedTables:
    """The three tidy tables of one dataset, columns exactly as in docs/ARCHITECTURE.md section 1."""

    measurements: pd.DataFrame
    conditions: pd.DataFrame
    provenance: pd.DataFrame


def _label(path: Path, repo_root: Path) -> str:
    """Path shown in error messages: relative to the repository root when inside it."""
    try:
        return path.resolve().relative_to(repo_root.resolve()).as_posix()
    except ValueError:
        return str(path)


# ----------------------------------------------------------------------------------------------- checks
def _check_checksums(dataset_dir: Path, spec: DatasetSpec, repo_root: Path) -> dict[str, str]:
    sums_label = _label(dataset_dir / "SHA256SUMS", repo_root)
    sums = read_sha256sums(dataset_dir / "SHA256SUMS", sums_label)
    raw_dir = dataset_dir / "raw"
    present = sorted(
        p.relative_to(dataset_dir).as_posix()
        for p in (raw_dir.rglob("*") if raw_dir.is_dir() else [])
        if p.is_file() and not p.name.startswith(".")
    )
    digests: dict[str, str] = {}
    for name, (digest, line) in sums.items():
        path = dataset_dir / name
        if not path.is_file():
            raise DataValidationError(sums_label, line, "file", f"listed file '{name}' does not exist")
        actual = sha256_of(path)
        if actual != digest:
            raise DataValidationError(
                sums_label,
                line,
                "sha256",
                f"checksum mismatch for '{name}': SHA256SUMS has {digest}, the file has {actual}; raw files are "
                "immutable - if the change is intended, regenerate SHA256SUMS (`sha256sum raw/* > SHA256SUMS`)",
            )
        digests[name] = actual
    last_line = max((line for _, line in sums.values()), default=0)
    for name in present:
        if name not in sums:
            raise DataValidationError(
                sums_label, last_line + 1, "file", f"raw file '{name}' has no checksum in SHA256SUMS"
            )
    yaml_label = spec.label
    listed = {f.path for f in spec.files}
    for f in spec.files:
        if f.path not in digests:
            raise DataValidationError(
                yaml_label, f.line_of("path"), "path", f"raw file '{f.path}' does not exist or is not in SHA256SUMS"
            )
    for name in present:
        if name not in listed:
            line = spec.raw.get("__key_lines__", {}).get("files", 1)
            raise DataValidationError(
                yaml_label, line, "files", f"raw file '{name}' is not described in the files: list"
            )
    return digests


def _check_protocols(spec: DatasetSpec, repo_root: Path) -> dict[str, float]:
    """Every condition's protocol file exists and has name/description/end/events; returns end time per condition."""
    ends: dict[str, float] = {}
    for cond in spec.conditions.values():
        path = repo_root / cond.protocol_file
        if not path.is_file():
            raise DataValidationError(
                spec.label,
                cond.line_of("protocol_file"),
                "protocol_file",
                f"protocol file '{cond.protocol_file}' of condition '{cond.id}' does not exist "
                f"(paths are relative to the repository root {repo_root})",
            )
        plabel = _label(path, repo_root)
        doc = load_yaml_with_lines(path, plabel)
        if not isinstance(doc, dict):
            raise DataValidationError(plabel, 1, "name", "a protocol file must be a YAML mapping")
        for key in _PROTOCOL_KEYS:
            if key not in doc:
                raise DataValidationError(plabel, 1, key, f"protocol is missing the required key '{key}'")
        end = protocol_time_min(doc["end"])
        if end is None:
            line = doc.get("__key_lines__", {}).get("end", 1)
            raise DataValidationError(plabel, line, "end", f"cannot read end time {doc['end']!r} (minutes or 'day D HH:MM')")
        if not isinstance(doc["events"], list):
            line = doc.get("__key_lines__", {}).get("events", 1)
            raise DataValidationError(plabel, line, "events", "events must be a list")
        ends[cond.id] = end
    return ends


# ------------------------------------------------------------------------------------------ raw -> rows
def _file_rows(
    dataset_dir: Path,
    spec: DatasetSpec,
    fs: FileSpec,
    ends: dict[str, float],
    repo_root: Path,
    global_seen: dict[tuple[str, str, float], tuple[str, int]],
) -> tuple[list[dict], list[str], list[str]]:
    """Measurement records of one raw file + (units as published, conversions) for provenance."""
    label = _label(dataset_dir / fs.path, repo_root)
    table = read_raw_csv(dataset_dir / fs.path, label)
    is_long = "observable_id" in table.header
    yl = spec.label
    if is_long:
        check_columns(table.header, RAW_LONG_REQUIRED, RAW_LONG_OPTIONAL, label)
        for key in ("observable_id", "unit"):
            if getattr(fs, key):
                raise DataValidationError(
                    yl, fs.line_of(key), key, f"'{fs.path}' is a long-form file with its own '{key}' column; remove '{key}' here"
                )
        if "condition_id" not in table.header and fs.condition is None:
            raise DataValidationError(
                yl, fs.line, "condition", f"'{fs.path}' has no condition_id column, so its entry needs 'condition:'"
            )
    else:
        check_columns(table.header, RAW_WIDE_REQUIRED, RAW_WIDE_OPTIONAL, label)
        for key in ("observable_id", "unit", "condition"):
            if not getattr(fs, key):
                raise DataValidationError(
                    yl, fs.line, key, f"'{fs.path}' has one series (time_min,value), so its entry needs '{key}:'"
                )
        if fs.observable_id not in CANONICAL_UNITS:
            raise DataValidationError(
                yl, fs.line_of("observable_id"), "observable_id",
                f"unknown observable '{fs.observable_id}'; known: {', '.join(CANONICAL_UNITS)}",
            )
        try:
            conversion_for(fs.observable_id, fs.unit)  # unit known? (covariates checked per row)
        except UnitConversionError as exc:
            if "unknown unit" in str(exc):
                raise DataValidationError(yl, fs.line_of("unit"), "unit", str(exc)) from None
    if not table.rows:
        raise DataValidationError(label, 2, "time_min", "table has no data rows (at least one is required)")

    series = SeriesChecker(label)
    records: list[dict] = []
    units_pub: dict[str, str] = {}
    conversions: dict[str, str] = {}
    source_id = f"{spec.dataset_id}:{Path(fs.path).stem}"
    applied: dict = {}  # correction -> the raw line it matched
    for line, cells in table.rows:
        # condition / subject / group
        if is_long and "condition_id" in cells and not is_na(cells["condition_id"]):
            cond_id = cells["condition_id"]
            if cond_id not in spec.conditions:
                raise DataValidationError(
                    label, line, "condition_id",
                    f"condition '{cond_id}' is not listed under conditions: in dataset.yaml ({', '.join(spec.conditions)})",
                )
        elif fs.condition is not None:
            cond_id = fs.condition
        else:
            raise DataValidationError(label, line, "condition_id", "missing condition_id (and no default 'condition:')")
        cond = spec.conditions[cond_id]
        subj = spec.subjects[cond.subject]
        for col, expected in (("subject_id", subj.id), ("group", subj.group)):
            if col in cells and not is_na(cells[col]) and cells[col] != expected:
                raise DataValidationError(
                    label, line, col, f"{col} '{cells[col]}' does not match '{expected}' of condition '{cond_id}'"
                )
        # observable / unit
        if is_long:
            obs = cells["observable_id"]
            if obs not in CANONICAL_UNITS:
                raise DataValidationError(
                    label, line, "observable_id", f"unknown observable '{obs}'; known: {', '.join(CANONICAL_UNITS)}"
                )
            unit = cells["unit"]
        else:
            obs, unit = fs.observable_id, fs.unit
        try:
            conv = conversion_for(obs, unit, subj.body_weight_kg, subj.bsa_m2)
        except UnitConversionError as exc:
            if is_long:
                raise DataValidationError(label, line, "unit", str(exc)) from None
            raise DataValidationError(yl, fs.line_of("unit"), "unit", str(exc)) from None
        units_pub[f"{obs}: {unit}"] = unit
        conversions[f"{obs}: {conv.description}"] = conv.description
        # numbers
        t = parse_float(cells["time_min"], label, line, "time_min", what="time")
        corr = next((c for c in fs.corrections if abs(c.time_min - t) < CORRECTION_TIME_TOL), None)
        if corr is not None:
            if corr in applied:
                raise DataValidationError(yl, corr.line, "time_min",
                                          f"the correction at {corr.time_min:g} min matches more than one row of "
                                          f"'{fs.path}' (it matched {label} row {applied[corr]} and row {line})")
            applied[corr] = line
            if corr.exclude:
                continue
            t = corr.set_time_min
        v = parse_float(cells["value"], label, line, "value", nonnegative=obs not in ALLOWED_NEGATIVE, what=f"{obs} value")
        sd = parse_float(cells.get("sd"), label, line, "sd", allow_na=True, nonnegative=True, what="sd")
        sem = parse_float(cells.get("sem"), label, line, "sem", allow_na=True, nonnegative=True, what="sem")
        n = parse_int(cells.get("n"), label, line, "n", allow_na=True, minimum=1)
        if n is None:
            n = fs.n if fs.n is not None else subj.n
        assert t is not None and v is not None
        desc = f"series (condition '{cond_id}', observable '{obs}')"
        series.add((cond_id, obs), t, line, desc)
        prev = global_seen.get((cond_id, obs, t))
        if prev is not None:
            raise DataValidationError(
                label, line, "time_min",
                f"duplicate row: {desc} already has a value at time_min {t:g} in {prev[0]} row {prev[1]}",
            )
        global_seen[(cond_id, obs, t)] = (label, line)
        if t > ends[cond_id] + 1e-9:
            raise DataValidationError(
                label, line, "time_min",
                f"time_min {t:g} is after the end ({ends[cond_id]:g} min) of protocol '{cond.protocol_file}'",
            )
        f = conv.factor
        records.append(
            {
                "dataset_id": spec.dataset_id,
                "subject_id": subj.id,
                "group": subj.group,
                "condition_id": cond_id,
                "observable_id": obs,
                "time_min": t,
                "value": v * f,
                "unit": CANONICAL_UNITS[obs],
                "sd": None if sd is None else sd * f,
                "sem": None if sem is None else sem * f,
                "n": n,
                "source_id": source_id,
            }
        )
    for c in fs.corrections:
        if c not in applied:
            raise DataValidationError(yl, c.line, "time_min",
                                      f"the correction at {c.time_min:g} min matches no row of '{fs.path}'")
    return records, list(units_pub), list(conversions)


def _join(items: list[str]) -> str:
    """'obs: text' items -> 'text' when there is a single observable, else 'obs: text; obs: text'."""
    if len(items) == 1:
        return items[0].split(": ", 1)[1]
    return "; ".join(items)


# -------------------------------------------------------------------------------------------------- API
def prepare_dataset(dataset_dir: Path, repo_root: Path) -> PreparedTables:
    """Validate ``dataset_dir`` (dataset.yaml, SHA256SUMS, raw/*, referenced protocols) and build tidy tables.

    Raises :class:`DataValidationError` on the first problem found. Reads files, writes nothing.
    """
    dataset_dir = Path(dataset_dir)
    repo_root = Path(repo_root)
    if not dataset_dir.is_dir():
        raise DataValidationError(_label(dataset_dir, repo_root), 1, "*", "dataset folder does not exist")
    spec = read_dataset_yaml(dataset_dir, _label(dataset_dir / "dataset.yaml", repo_root))
    digests = _check_checksums(dataset_dir, spec, repo_root)
    ends = _check_protocols(spec, repo_root)

    records: list[dict] = []
    prov_rows: list[dict] = []
    global_seen: dict[tuple[str, str, float], tuple[str, int]] = {}
    for fs in spec.files:
        recs, units_pub, convs = _file_rows(dataset_dir, spec, fs, ends, repo_root, global_seen)
        records.extend(recs)
        cit = spec.citations[fs.citation]
        how = fs.how_obtained
        if fs.measurement_error:
            how += f" Measurement error: {fs.measurement_error}"
        if fs.corrections:
            how += " Curation: " + "; ".join(c.describe() for c in fs.corrections) + "."
        prov_rows.append(
            {
                "source_id": f"{spec.dataset_id}:{Path(fs.path).stem}",
                "dataset_id": spec.dataset_id,
                "citation": cit.formatted(),
                "doi_or_url": cit.doi_or_url,
                "figure_or_table": fs.figure_or_table,
                "how_obtained": how,
                "units_as_published": _join(units_pub),
                "conversion": _join(convs),
                "raw_file": _label(dataset_dir / fs.path, repo_root),
                "sha256": digests[fs.path],
            }
        )
    stems = [r["source_id"] for r in prov_rows]
    for fs, stem in zip(spec.files, stems):
        if stems.count(stem) > 1:
            raise DataValidationError(
                spec.label, fs.line_of("path"), "path", f"two raw files share the name stem of '{fs.path}' (source ids must be unique)"
            )

    used = {r["condition_id"] for r in records}
    with_insulin = {r["condition_id"] for r in records if r["observable_id"] == "insulin_plasma"}
    cond_rows = []
    for cond in spec.conditions.values():
        if cond.id not in used:
            raise DataValidationError(spec.label, cond.line_of("id"), "id", f"condition '{cond.id}' has no measurements")
        if cond.insulin_mode == "forced" and cond.id not in with_insulin:
            raise DataValidationError(
                spec.label, cond.line_of("insulin_mode"), "insulin_mode",
                f"condition '{cond.id}' is 'forced' (measured insulin drives the model) but has no insulin_plasma data",
            )
        subj = spec.subjects[cond.subject]
        notes = f"covariates: {subj.covariate_basis}"
        if cond.notes:
            notes = f"{cond.notes} | {notes}"
        cond_rows.append(
            {
                "condition_id": cond.id,
                "dataset_id": spec.dataset_id,
                "subject_id": subj.id,
                "group": subj.group,
                "protocol_file": cond.protocol_file,
                "body_weight_kg": subj.body_weight_kg,
                "bsa_m2": subj.bsa_m2,
                "insulin_mode": cond.insulin_mode,
                "notes": notes,
            }
        )

    meas = pd.DataFrame(records, columns=list(MEASUREMENT_COLUMNS))
    order_c = {c: i for i, c in enumerate(spec.conditions)}
    order_o = {o: i for i, o in enumerate(CANONICAL_UNITS)}
    meas = (
        meas.assign(_c=meas["condition_id"].map(order_c), _o=meas["observable_id"].map(order_o))
        .sort_values(["_c", "_o", "time_min"], kind="stable")
        .drop(columns=["_c", "_o"])
        .reset_index(drop=True)
    )
    cond_df = pd.DataFrame(cond_rows, columns=list(CONDITION_COLUMNS))
    prov_df = pd.DataFrame(prov_rows, columns=list(PROVENANCE_COLUMNS))
    tag = f" (prepared from {_label(dataset_dir, repo_root)})"
    m, c, p = validate_tidy_tables(
        meas, cond_df, prov_df, labels=tuple(f"{f}{tag}" for f in TABLE_FILES.values()), repo_root=repo_root
    )
    return PreparedTables(measurements=m, conditions=c, provenance=p)


def _to_tsv(df: pd.DataFrame, fh) -> None:
    df.to_csv(fh, sep="\t", index=False, na_rep="NA", float_format="%.12g", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)


def write_tables(tables: PreparedTables, out_dir: Path) -> dict[str, Path]:
    """Write measurements.tsv, conditions.tsv and provenance.tsv into ``out_dir`` atomically.

    The tables are re-validated first; each file is written to a temporary file in ``out_dir`` and moved into
    place with ``os.replace`` only after all three were written.  On any error the temporary files are removed
    (and ``out_dir`` too if this call created it and it is empty), so no partial outputs remain.
    """
    out_dir = Path(out_dir)
    m, c, p = validate_tidy_tables(tables.measurements, tables.conditions, tables.provenance)
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    temps: dict[str, str] = {}
    try:
        for key, df in (("measurements", m), ("conditions", c), ("provenance", p)):
            fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=f".{TABLE_FILES[key]}.", suffix=".tmp")
            temps[key] = tmp
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
                _to_tsv(df, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, default_mode())  # the usual permissions, not mkstemp's private 0600
        finals = {}
        for key, tmp in temps.items():
            final = out_dir / TABLE_FILES[key]
            os.replace(tmp, final)
            finals[key] = final
        temps.clear()
        return finals
    finally:
        for tmp in temps.values():
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
        if created and out_dir.is_dir() and not any(out_dir.iterdir()):
            out_dir.rmdir()  # only possible after a failure: this call made the folder and wrote nothing


def prepare_to_dir(dataset_dir: Path, out_dir: Path, repo_root: Path) -> PreparedTables:
    """``prepare_dataset`` + ``write_tables`` (what ``myoglucose prepare`` does)."""
    tables = prepare_dataset(dataset_dir, repo_root)
    write_tables(tables, out_dir)
    return tables


def read_tables(tidy_dir: Path, repo_root: Path | None = None) -> PreparedTables:
    """Read and validate the three TSVs of a tidy folder (for ``fit``/``predict``); typed DataFrames back."""
    tidy_dir = Path(tidy_dir)
    frames = []
    labels = []
    for name in TABLE_FILES.values():
        path = tidy_dir / name
        label = str(path)
        if not path.is_file():
            raise DataValidationError(label, 1, "*", "file does not exist (run `myoglucose prepare` first)")
        try:
            df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_filter=False, encoding="utf-8")
        except (pd.errors.ParserError, UnicodeDecodeError) as exc:
            raise DataValidationError(label, 1, "*", f"cannot parse TSV: {exc}") from None
        frames.append(df)
        labels.append(label)
    m, c, p = validate_tidy_tables(frames[0], frames[1], frames[2], labels=tuple(labels), repo_root=repo_root)
    return PreparedTables(measurements=m, conditions=c, provenance=p)
