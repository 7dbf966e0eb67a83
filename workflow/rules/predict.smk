# Posterior -> posterior predictive for the data's conditions and the scenario protocols of config predict.


rule predict:
    input:
        posterior="results/fits/{model}/{dataset}/posterior.nc",
        measurements="results/tidy/{dataset}/measurements.tsv",
        conditions="results/tidy/{dataset}/conditions.tsv",
        model=model_files,
        protocols=dataset_protocols,
        scenarios=config["predict"]["scenarios"],
        config=ancient(RESOLVED_CONFIG),
    output:
        "results/fits/{model}/{dataset}/predictive.nc",
    log:
        "results/logs/predict/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/predict/{model}/{dataset}.tsv"
    params:
        settings=config_sections("solver", "predict"),  # rerun trigger only (common.smk)
    resources:
        mem_mb=8000,
        runtime=120,
        **GPU_RESOURCES,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose predict --posterior {input.posterior} --tidy-dir results/tidy/{wildcards.dataset} "
        "--model models/{wildcards.model} --config {input.config} --out {output} > {log} 2>&1"
