rule prepare:
    input:
        inputs_of("manifest"),
    output:
        [f"{PATTERNS['prepared']}/{f}" for f in PREPARED_FILES],
    params:
        cmd=cmd_of("manifest"),
        values=params_of("manifest"),
    log:
        "logs/prepare/{dataset}.log",
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "{params.cmd} > {log} 2>&1"


# Raw datasets and weights are never made by the workflow.  When one is missing this job stands in
# for it: a dry run (`snakemake -n`) lists it, and a real run stops here, before any other work,
# with the exact path expected, its format and where to obtain it.
rule missing_input:
    output:
        "{raw}",
    shell:
        "drl missing-input --path {output:q}"
