# Raw data -> validated tidy tables (ARCHITECTURE.md section 1).


rule prepare:
    input:
        meta="data/{dataset}/dataset.yaml",
        checksums="data/{dataset}/SHA256SUMS",
        raw=raw_files,
    output:
        measurements="results/tidy/{dataset}/measurements.tsv",
        conditions="results/tidy/{dataset}/conditions.tsv",
        provenance="results/tidy/{dataset}/provenance.tsv",
    log:
        "results/logs/prepare/{dataset}.log",
    benchmark:
        "results/benchmarks/prepare/{dataset}.tsv"
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose prepare --dataset-dir data/{wildcards.dataset} "
        "--out-dir results/tidy/{wildcards.dataset} > {log} 2>&1"
