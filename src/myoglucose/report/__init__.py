"""Report figures and tables from posterior DataTrees (ARCHITECTURE.md section 4).

Only :mod:`myoglucose.report.export` writes files.
"""

from myoglucose.report.export import save_figure, save_table
from myoglucose.report.plots import (
    data_summary,
    plot_data_conditions,
    plot_data_overview,
    plot_forest_groups,
    plot_pairs,
    plot_post_exercise,
    plot_ppc,
    plot_prior_posterior,
    plot_rank,
)
from myoglucose.report.tables import (
    loo_compare,
    methods_paragraph,
    post_exercise_table,
    posterior_contraction,
    to_latex,
)

__all__ = [
    "data_summary",
    "loo_compare",
    "methods_paragraph",
    "plot_data_conditions",
    "plot_data_overview",
    "plot_forest_groups",
    "plot_pairs",
    "plot_post_exercise",
    "plot_ppc",
    "plot_prior_posterior",
    "plot_rank",
    "post_exercise_table",
    "posterior_contraction",
    "save_figure",
    "save_table",
    "to_latex",
]
