"""Convergence diagnostics for posterior DataTrees (ARCHITECTURE.md section 4)."""

from myoglucose.diagnostics.convergence import (
    Thresholds,
    convergence_table,
    sampler_summary,
    verdict,
)

__all__ = ["Thresholds", "convergence_table", "sampler_summary", "verdict"]
