# Raw data -> validated tidy tables (ARCHITECTURE.md section 1); a joint dataset (config joint) combines the tidy
# tables of its members.

ruleorder: combine > prepare


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


rule combine:
    input:
        joint_member_tables,
    output:
        measurements="results/tidy/{dataset}/measurements.tsv",
        conditions="results/tidy/{dataset}/conditions.tsv",
        provenance="results/tidy/{dataset}/provenance.tsv",
    log:
        "results/logs/combine/{dataset}.log",
    benchmark:
        "results/benchmarks/combine/{dataset}.tsv"
    wildcard_constraints:
        dataset=JOINT_PATTERN,
    params:
        args=joint_args,  # also the rerun trigger: other members or same_subjects re-combine
    resources:
        mem_mb=2000,
        runtime=15,
    conda:
        "../envs/myoglucose.yaml"
    shell:
        "myoglucose combine {params.args} --out-dir results/tidy/{wildcards.dataset} > {log} 2>&1"
