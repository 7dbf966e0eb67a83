# Posterior -> convergence table and pass/fail verdict (thresholds: config diagnostics).


rule diagnose:
    input:
        posterior="results/fits/{model}/{dataset}/posterior.nc",
        config=ancient(RESOLVED_CONFIG),
    output:
        table=report(
            "results/fits/{model}/{dataset}/diagnostics.tsv",
            caption="../report/diagnostics.rst",
            category="Convergence",
            subcategory="{model} / {dataset}",
            labels={"model": "{model}", "dataset": "{dataset}", "figure": "diagnostics table"},
        ),
        verdict="results/fits/{model}/{dataset}/verdict.json",
    log:
        "results/logs/diagnose/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/diagnose/{model}/{dataset}.tsv"
    params:
        flags=DIAGNOSE_FLAGS,  # --no-fail when diagnostics.fail_on_bad is false
        settings=config_sections("diagnostics"),  # rerun trigger only (common.smk)
    resources:
        mem_mb=4000,
        runtime=30,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose diagnose --posterior {input.posterior} --config {input.config} "
        "--out-table {output.table} --out-verdict {output.verdict} {params.flags} > {log} 2>&1"
