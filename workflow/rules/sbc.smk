# Simulation-based calibration (Talts et al. 2018) of the inference engine: `snakemake --cores all sbc`.
# Each replication draws every parameter from the prior of the variant config sbc.model, simulates a data set at the
# design of the template dataset config sbc.dataset (its conditions, sampling times, insulin forcing), fits it with
# NUTS and ranks the true values among the posterior draws. Added to `all` (and the report) when sbc.enabled.


rule sbc_run:
    input:
        measurements="results/tidy/{dataset}/measurements.tsv",
        conditions="results/tidy/{dataset}/conditions.tsv",
        model=model_files,
        protocols=dataset_protocols,
        config=ancient(RESOLVED_CONFIG),
    output:
        ranks="results/sbc/{model}/{dataset}/ranks.csv",
        uniformity=report(
            "results/sbc/{model}/{dataset}/uniformity.csv",
            caption="../report/sbc_uniformity.rst",
            category="Calibration (SBC)",
            labels={"model": "{model}", "template": "{dataset}", "figure": "uniformity table"},
        ),
        latex="results/sbc/{model}/{dataset}/uniformity.tex",
        summary="results/sbc/{model}/{dataset}/summary.json",
    log:
        "results/logs/sbc/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/sbc/{model}/{dataset}.tsv"
    params:
        settings=config_sections("solver", "sbc"),  # rerun trigger only (common.smk)
    threads: sbc_threads()
    resources:
        mem_mb=8000,
        runtime=240,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose sbc --tidy-dir results/tidy/{wildcards.dataset} --model models/{wildcards.model} "
        "--config {input.config} --workers {threads} --out-dir results/sbc/{wildcards.model}/{wildcards.dataset} "
        "> {log} 2>&1"


rule sbc_figures:
    input:
        ranks="results/sbc/{model}/{dataset}/ranks.csv",
        config=ancient(RESOLVED_CONFIG),
    output:
        ecdf=report(
            "results/figures/sbc/{model}/{dataset}/rank_ecdf.svg",
            caption="../report/sbc_rank_ecdf.rst",
            category="Calibration (SBC)",
            labels={"model": "{model}", "template": "{dataset}", "figure": "rank ECDF"},
        ),
        hist=report(
            "results/figures/sbc/{model}/{dataset}/rank_hist.svg",
            caption="../report/sbc_rank_hist.rst",
            category="Calibration (SBC)",
            labels={"model": "{model}", "template": "{dataset}", "figure": "rank histograms"},
        ),
        zscores=report(
            "results/figures/sbc/{model}/{dataset}/zscores.svg",
            caption="../report/sbc_zscores.rst",
            category="Calibration (SBC)",
            labels={"model": "{model}", "template": "{dataset}", "figure": "posterior z-scores"},
        ),
        copies=expand(
            "results/figures/sbc/{{model}}/{{dataset}}/{name}.{fmt}",
            name=["rank_ecdf", "rank_hist", "zscores"],
            fmt=[f for f in config["report"]["formats"] if f != "svg"],
        ),
    log:
        "results/logs/sbc_figures/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/sbc_figures/{model}/{dataset}.tsv"
    params:
        settings=config_sections("report"),  # rerun trigger only (common.smk)
    resources:
        mem_mb=2000,
        runtime=10,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose sbc-figures --ranks {input.ranks} --config {input.config} "
        "--out-dir results/figures/sbc/{wildcards.model}/{wildcards.dataset} > {log} 2>&1"


rule sbc:
    input:
        sbc_outputs(),
