# Figures and tables for the papers and the HTML report (snakemake --report results/report.html).


rule report_fit:
    input:
        posterior="results/fits/{model}/{dataset}/posterior.nc",
        predictive="results/fits/{model}/{dataset}/predictive.nc",
        diagnostics="results/fits/{model}/{dataset}/diagnostics.tsv",
    output:
        figures=fit_figures(),  # svg, one caption each (common.smk)
        copies=fit_figure_copies(),  # pdf/png of config report.formats
        convergence=fit_report_item("convergence.csv", "Convergence", "convergence table"),
        contraction=fit_report_item("contraction.csv", "Posterior", "prior-to-posterior contraction"),
        latex=expand("results/figures/{{model}}/{{dataset}}/{table}.tex", table=["convergence", "contraction"]),
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
        "--diagnostics {input.diagnostics} --out-dir results/figures/{wildcards.model}/{wildcards.dataset} "
        "> {log} 2>&1"


rule behaviours:
    input:
        model=model_files,
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
    log:
        "results/logs/behaviours/{model}.log",
    benchmark:
        "results/benchmarks/behaviours/{model}.tsv"
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose behaviours --model models/{wildcards.model} "
        "--out-dir results/figures/{wildcards.model} > {log} 2>&1"


rule model_comparison:
    input:
        posteriors=comparison_posteriors,
    output:
        report(
            "results/tables/loo_{dataset}.csv",
            caption="../report/loo.rst",
            category="Model comparison",
            labels={"dataset": "{dataset}", "figure": "PSIS-LOO"},
        ),
    log:
        "results/logs/model_comparison/{dataset}.log",
    benchmark:
        "results/benchmarks/model_comparison/{dataset}.tsv"
    params:
        labels=comparison_labels,  # model ids, in the order of the posteriors
    resources:
        mem_mb=8000,
        runtime=60,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose compare --posteriors {input.posteriors} --labels {params.labels} --out {output} > {log} 2>&1"
