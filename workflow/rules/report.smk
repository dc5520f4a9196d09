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


rule table:
    input:
        inputs_of("table"),
    output:
        csv=report("{table}.csv", category="Tables"),
        md="{table}.md",
    params:
        cmd=cmd_of("table"),
        values=params_of("table"),
    log:
        "logs/table/{table}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "{params.cmd} > {log} 2>&1"
