"""Column specifications and cell-level checks shared by the raw-file reader and the tidy-table validators.

All checks are hand-written (no pandera) so that every failure can name the file, the row (see
:mod:`myoglucose.data.errors` for the row convention) and the column.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from .errors import DataValidationError

__all__ = [
    "NA_STRINGS",
    "MEASUREMENT_COLUMNS",
    "CONDITION_COLUMNS",
    "PROVENANCE_COLUMNS",
    "RAW_WIDE_REQUIRED",
    "RAW_WIDE_OPTIONAL",
    "RAW_LONG_REQUIRED",
    "RAW_LONG_OPTIONAL",
    "INSULIN_MODES",
    "check_columns",
    "is_na",
    "parse_float",
    "parse_int",
    "parse_str",
    "SeriesChecker",
]

#: Cell spellings that mean "missing" (only accepted where a column may be NA).
NA_STRINGS = frozenset({"", "NA"})

MEASUREMENT_COLUMNS: tuple[str, ...] = (
    "dataset_id",
    "subject_id",
    "group",
    "condition_id",
    "observable_id",
    "time_min",
    "value",
    "unit",
    "sd",
    "sem",
    "n",
    "source_id",
)
CONDITION_COLUMNS: tuple[str, ...] = (
    "condition_id",
    "dataset_id",
    "subject_id",
    "group",
    "protocol_file",
    "body_weight_kg",
    "bsa_m2",
    "insulin_mode",
    "notes",
)
PROVENANCE_COLUMNS: tuple[str, ...] = (
    "source_id",
    "dataset_id",
    "citation",
    "doi_or_url",
    "figure_or_table",
    "how_obtained",
    "units_as_published",
    "conversion",
    "raw_file",
    "sha256",
)

#: Raw file, one series per file: observable, unit, condition come from dataset.yaml.
RAW_WIDE_REQUIRED: tuple[str, ...] = ("time_min", "value")
RAW_WIDE_OPTIONAL: tuple[str, ...] = ("sd", "sem", "n")
#: Raw file already in long form (a user's own export).
RAW_LONG_REQUIRED: tuple[str, ...] = ("time_min", "observable_id", "value", "unit")
RAW_LONG_OPTIONAL: tuple[str, ...] = ("group", "subject_id", "condition_id", "sd", "sem", "n")

INSULIN_MODES = ("kinetic", "forced")


def check_columns(
    header: Sequence[str], required: Sequence[str], optional: Sequence[str], file: str
) -> None:
    """Header must contain every required column, no unknown column and no repeated column (row 1)."""
    seen: set[str] = set()
    for col in header:
        if col in seen:
            raise DataValidationError(file, 1, col, "column appears more than once in the header")
        seen.add(col)
    for col in required:
        if col not in seen:
            raise DataValidationError(
                file, 1, col, f"missing required column '{col}' (header has: {', '.join(header) or 'nothing'})"
            )
    allowed = set(required) | set(optional)
    for col in header:
        if col not in allowed:
            raise DataValidationError(
                file, 1, col, f"unknown column '{col}'; allowed columns: {', '.join([*required, *optional])}"
            )


def is_na(cell: Any) -> bool:
    if cell is None:
        return True
    if isinstance(cell, str):
        return cell.strip() in NA_STRINGS
    try:
        import pandas as pd

        if cell is pd.NA or cell is pd.NaT:
            return True
    except ImportError:  # pragma: no cover
        pass
    return isinstance(cell, float) and math.isnan(cell)


def parse_str(cell: Any, file: str, row: int, column: str, *, allow_na: bool = False) -> str | None:
    if is_na(cell):
        if allow_na:
            return None
        raise DataValidationError(file, row, column, "missing value (empty or NA) where text is required")
    if isinstance(cell, int) and not isinstance(cell, bool):
        cell = str(cell)  # an id such as "1" that a reader typed as an integer
    if not isinstance(cell, str):
        raise DataValidationError(file, row, column, f"expected text, got {type(cell).__name__} {cell!r}")
    text = cell.strip()
    if any(ch in text for ch in "\t\n\r"):
        raise DataValidationError(file, row, column, "text contains a tab or newline")
    return text


def parse_float(
    cell: Any,
    file: str,
    row: int,
    column: str,
    *,
    allow_na: bool = False,
    nonnegative: bool = False,
    positive: bool = False,
    what: str = "value",
) -> float | None:
    """Parse a finite float; NA only where allowed; optional sign constraints."""
    if is_na(cell):  # empty/NA text, None, pandas NA, or NaN in an already-typed frame
        if allow_na:
            return None
        raise DataValidationError(
            file, row, column, f"missing {what} (empty, NA or NaN); a finite number is required"
        )
    if isinstance(cell, bool):
        raise DataValidationError(file, row, column, f"{what} {cell!r} is not a number")
    if isinstance(cell, str):
        text = cell.strip()
        try:
            x = float(text)
        except ValueError:
            raise DataValidationError(file, row, column, f"{what} '{text}' is not a number") from None
    else:
        try:
            x = float(cell)
        except (TypeError, ValueError):
            raise DataValidationError(file, row, column, f"{what} {cell!r} is not a number") from None
    if not math.isfinite(x):
        raise DataValidationError(file, row, column, f"{what} {x!r} is not finite (NaN and inf are not allowed)")
    if positive and x <= 0:
        raise DataValidationError(file, row, column, f"{what} {x:g} must be > 0")
    if nonnegative and x < 0:
        raise DataValidationError(file, row, column, f"{what} {x:g} is negative; it must be >= 0")
    return x


def parse_int(
    cell: Any, file: str, row: int, column: str, *, allow_na: bool = False, minimum: int | None = None
) -> int | None:
    if is_na(cell):
        if allow_na:
            return None
        raise DataValidationError(file, row, column, "missing value (empty or NA); an integer is required")
    if isinstance(cell, bool):
        raise DataValidationError(file, row, column, f"{cell!r} is not an integer")
    if isinstance(cell, str):
        text = cell.strip()
        try:
            x = int(text)
        except ValueError:
            try:
                f = float(text)
            except ValueError:
                raise DataValidationError(file, row, column, f"'{text}' is not an integer") from None
            if not (math.isfinite(f) and f.is_integer()):
                raise DataValidationError(file, row, column, f"'{text}' is not an integer") from None
            x = int(f)
    else:
        try:
            f = float(cell)
        except (TypeError, ValueError):
            raise DataValidationError(file, row, column, f"{cell!r} is not an integer") from None
        if not (math.isfinite(f) and f.is_integer()):
            raise DataValidationError(file, row, column, f"{cell!r} is not an integer")
        x = int(f)
    if minimum is not None and x < minimum:
        raise DataValidationError(file, row, column, f"{x} must be >= {minimum}")
    return x


class SeriesChecker:
    """Checks that times strictly increase within each series, in the order rows are fed.

    A repeated time in the same series is reported as a duplicate row, a decreasing time as non-monotone.
    """

    def __init__(self, file: str, time_column: str = "time_min") -> None:
        self.file = file
        self.time_column = time_column
        self._last: dict[Hashable, tuple[float, int]] = {}
        self._seen: dict[tuple[Hashable, float], int] = {}

    def add(self, key: Hashable, time: float, row: int, describe: str, file: str | None = None) -> None:
        file = self.file if file is None else file
        prev_row = self._seen.get((key, time))
        if prev_row is not None:
            raise DataValidationError(
                file,
                row,
                self.time_column,
                f"duplicate row: {describe} already has a value at time_min {time:g} (row {prev_row})",
            )
        last = self._last.get(key)
        if last is not None and time < last[0]:
            raise DataValidationError(
                file,
                row,
                self.time_column,
                f"times are not increasing within {describe}: time_min {time:g} comes after "
                f"{last[0]:g} (row {last[1]}); sort the series by time",
            )
        self._last[key] = (time, row)
        self._seen[(key, time)] = row
