"""Validation errors raised by the data layer.

Row convention (used everywhere in :mod:`myoglucose.data`)
---------------------------------------------------------
``row`` is the **line number as a user sees it in a text editor**: the header line of a CSV/TSV is row 1, the
first data row is row 2.  For ``dataset.yaml`` and ``SHA256SUMS`` it is the line of the offending entry.  For an
in-memory :class:`pandas.DataFrame` (for example a tidy table handed to ``validate_measurements``) row ``i + 2``
is the ``i``-th data row (0-based position), i.e. the line it would occupy once written with a header.
Problems that concern a whole file (missing file, missing column, empty table) are reported at row 1 (the
header) or, for an empty table, at row 2 (where the first data row is expected).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["DataValidationError", "ROW_CONVENTION"]

ROW_CONVENTION = "row = line number in the file (header = row 1, first data row = row 2)"


class DataValidationError(ValueError):
    """A precise, user-facing data validation error.

    ``str(err)`` is ``"<file>: row <r>, column '<c>': <message>"``.
    """

    def __init__(self, file: str | Path, row: int, column: str, message: str) -> None:
        self.file = str(file)
        self.row = int(row)
        self.column = str(column)
        self.message = str(message)
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.file}: row {self.row}, column '{self.column}': {self.message}"

    def __reduce__(self):  # keep picklable (multiprocessing, pytest-xdist)
        return (type(self), (self.file, self.row, self.column, self.message))
