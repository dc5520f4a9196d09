rule figure:
    input:
        inputs_of("figure"),
    output:
        report(PATTERNS["figure"], category="Figures", caption="../report/figures.rst"),
    params:
        values=params_of("figure"),
    log:
        "logs/figure/{group}/{figure}.log",
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    shell:
        "drl figure --figure {wildcards.figure} > {log} 2>&1"


rule table:
    input:
        inputs_of("table"),
    output:
        csv=report("{table}.csv", category="Tables", caption="../report/tables.rst"),
        md="{table}.md",
    params:
        name=name_of("table", "table"),
        values=params_of("table"),
    log:
        "logs/table/{table}.log",
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "drl table --table {params.name} > {log} 2>&1"
