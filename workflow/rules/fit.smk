# Tidy tables + model variant -> posterior samples (NumPyro NUTS over the diffrax ODE model).
# --resume: a fit that was killed (time limit, pre-emption, Ctrl-C) continues from its checkpoints in
# posterior.nc.ckpt/ when Snakemake runs it again, with the same draws as an uninterrupted fit (docs/reliability.md).


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
        settings=fit_settings,  # rerun trigger only (common.smk)
    threads: lambda wildcards: fit_sampler(wildcards)["chains"]
    resources:
        mem_mb=8000,
        runtime=720,
        **GPU_RESOURCES,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose fit --tidy-dir results/tidy/{wildcards.dataset} --model models/{wildcards.model} "
        "--config {input.config} --out {output} --resume > {log} 2>&1"
