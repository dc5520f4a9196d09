rule evaluate:
    input:
        inputs_of("metrics"),
    output:
        PATTERNS["metrics"],
    params:
        cmd=cmd_of("metrics"),
        values=params_of("metrics"),
    log:
        "logs/evaluate/{group}/{run}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{params.cmd} > {log} 2>&1"
