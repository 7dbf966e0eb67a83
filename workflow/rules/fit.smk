# Tidy tables + model variant -> posterior samples (NumPyro NUTS over the diffrax ODE model).


rule fit:
    input:
        measurements="results/tidy/{dataset}/measurements.tsv",
        conditions="results/tidy/{dataset}/conditions.tsv",
        model=model_files,
        protocols=dataset_protocols,
        config=ancient(RESOLVED_CONFIG),
    output:
        "results/fits/{model}/{dataset}/posterior.nc",
    log:
        "results/logs/fit/{model}/{dataset}.log",
    benchmark:
        "results/benchmarks/fit/{model}/{dataset}.tsv"
    params:
        settings=config_sections("solver", "sampler"),  # rerun trigger only (common.smk)
    threads: config["sampler"]["chains"]
    resources:
        mem_mb=8000,
        runtime=720,
        **GPU_RESOURCES,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose fit --tidy-dir results/tidy/{wildcards.dataset} --model models/{wildcards.model} "
        "--config {input.config} --out {output} > {log} 2>&1"
