rule figure:
    input:
        inputs_of("figure"),
    output:
        report(PATTERNS["figure"], category="Figures"),
    params:
        cmd=cmd_of("figure"),
        values=params_of("figure"),
    log:
        "logs/figure/{group}/{figure}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "{params.cmd} > {log} 2>&1"
