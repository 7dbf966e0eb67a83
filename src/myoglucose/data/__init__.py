"""Datasets: curated raw files -> validated tidy tables (docs/ARCHITECTURE.md section 1)."""

from .errors import DataValidationError
from .measurement_table import validate_conditions, validate_measurements, validate_provenance, validate_tidy_tables
from .prepare import PreparedTables, prepare_dataset, prepare_to_dir, read_tables, write_tables

__all__ = [
    "DataValidationError",
    "PreparedTables",
    "prepare_dataset",
    "prepare_to_dir",
    "read_tables",
    "validate_conditions",
    "validate_measurements",
    "validate_provenance",
    "validate_tidy_tables",
    "write_tables",
]
