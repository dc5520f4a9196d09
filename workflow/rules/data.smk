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
