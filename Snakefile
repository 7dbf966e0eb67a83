# myoglucose workflow: table of contents. The rules live in workflow/rules/, the map of outputs and how to run
# them (locally, on SLURM, on GPUs) in docs/workflow.md, the configuration in config/README.md.

from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"  # config validation, results/config.resolved.yaml, helpers
include: "workflow/rules/data.smk"  # prepare: data/<dataset>/ -> results/tidy/<dataset>/
include: "workflow/rules/fit.smk"  # fit: -> results/fits/<model>/<dataset>/posterior.nc
include: "workflow/rules/diagnostics.smk"  # diagnose: -> diagnostics.tsv, verdict.json
include: "workflow/rules/predict.smk"  # predict: -> predictive.nc
include: "workflow/rules/report.smk"  # data_overview, report_fit, behaviours, model_comparison -> results/figures/
include: "workflow/rules/sbc.smk"  # sbc_run, sbc_figures; target `sbc` -> results/sbc/, results/figures/sbc/


rule all:
    input:
        final_outputs(),
    default_target: True
