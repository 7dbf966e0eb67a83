# Figures and tables for the papers and the HTML report (snakemake --report results/report.html): the data overview
# of each dataset, the figures and tables of each fit, the nine behaviours of each model, the LOO comparison.


rule report_fit:
    input:
        posterior="results/fits/{model}/{dataset}/posterior.nc",
        predictive="results/fits/{model}/{dataset}/predictive.nc",
        diagnostics="results/fits/{model}/{dataset}/diagnostics.tsv",
        model=model_files,  # parameters.tsv feeds the methods paragraph
        config=ancient(RESOLVED_CONFIG),
    output:
        figures=fit_figures(),  # svg, one caption each (common.smk)
        copies=fit_figure_copies(),  # pdf/png of config report.formats
        convergence=fit_report_item("convergence.csv", "Convergence", "convergence table"),
        contraction=fit_report_item("contraction.csv", "Posterior", "prior-to-posterior contraction"),
        group_differences=fit_report_item("group_differences.csv", "Posterior", "group differences"),
        priors=fit_report_item("priors.csv", "Methods", "priors"),
        tables=fit_tables(),  # e.g. post_exercise_gir.csv (common.smk)
        latex=expand(
            "results/figures/{{model}}/{{dataset}}/{table}.tex",
            table=["convergence", "contraction", "group_differences", "priors", *FIT_TABLES],
        ),
        methods=fit_report_item("methods.md", "Methods", "methods paragraph"),
    log:
        "results/logs/report_fit/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/report_fit/{model}/{dataset}.tsv"
    params:
        settings=config_sections("report"),  # rerun trigger only (common.smk)
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose report --posterior {input.posterior} --predictive {input.predictive} "
        "--diagnostics {input.diagnostics} --model models/{wildcards.model} --config {input.config} "
        "--out-dir results/figures/{wildcards.model}/{wildcards.dataset} > {log} 2>&1"


rule data_overview:
    input:
        measurements="results/tidy/{dataset}/measurements.tsv",
        provenance="results/tidy/{dataset}/provenance.tsv",
        config=ancient(RESOLVED_CONFIG),
    output:
        figure=report(
            "results/figures/data/{dataset}/overview.svg",
            caption="../report/data_overview.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "measurements"},
        ),
        table=report(
            "results/figures/data/{dataset}/summary.csv",
            caption="../report/data_summary.rst",
            category="Data",
            subcategory="{dataset}",
            labels={"dataset": "{dataset}", "figure": "summary table"},
        ),
        copies=expand("results/figures/data/{{dataset}}/overview.{fmt}", fmt=OTHER_FORMATS),
        latex="results/figures/data/{dataset}/summary.tex",
    log:
        "results/logs/data_overview/{dataset}.log",
    benchmark:
        "results/benchmarks/data_overview/{dataset}.tsv"
    params:
        settings=config_sections("report"),  # rerun trigger only (common.smk)
    resources:
        mem_mb=2000,
        runtime=30,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose report --tidy-dir results/tidy/{wildcards.dataset} --config {input.config} "
        "--out-dir results/figures/data/{wildcards.dataset} > {log} 2>&1"


rule behaviours:
    input:
        model=model_files,
        config=ancient(RESOLVED_CONFIG),
    output:
        figure=report(
            "results/figures/{model}/behaviours.svg",
            caption="../report/behaviours.rst",
            category="Model behaviours",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "nine behaviours"},
        ),
        table=report(
            "results/figures/{model}/behaviours.tsv",
            caption="../report/behaviours_table.rst",
            category="Model behaviours",
            subcategory="{model}",
            labels={"model": "{model}", "figure": "checked numbers"},
        ),
        copies=expand("results/figures/{{model}}/behaviours.{fmt}", fmt=OTHER_FORMATS),
        latex="results/figures/{model}/behaviours.tex",
    log:
        "results/logs/behaviours/{model}.log",
    benchmark:
        "results/benchmarks/behaviours/{model}.tsv"
    params:
        settings=config_sections("solver", "report"),  # rerun trigger only (common.smk)
    resources:
        mem_mb=4000,
        runtime=60,
        **GPU_RESOURCES,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose behaviours --model models/{wildcards.model} --config {input.config} "
        "--out-dir results/figures/{wildcards.model} > {log} 2>&1"


rule model_comparison:
    input:
        posteriors=comparison_posteriors,
    output:
        table=report(
            "results/tables/loo_{dataset}.csv",
            caption="../report/loo.rst",
            category="Model comparison",
            labels={"dataset": "{dataset}", "figure": "PSIS-LOO"},
        ),
        latex="results/tables/loo_{dataset}.tex",
    log:
        "results/logs/model_comparison/{dataset}.log",
    benchmark:
        "results/benchmarks/model_comparison/{dataset}.tsv"
    params:
        args=comparison_args,  # --posterior <posterior.nc> --label <model>, per model (common.smk)
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose compare {params.args} --out {output.table} > {log} 2>&1"
