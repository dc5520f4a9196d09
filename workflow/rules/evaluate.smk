rule refstats:
    input:
        inputs_of("refstats"),
    output:
        PATTERNS["refstats"],
    params:
        cmd=cmd_of("refstats"),
        values=params_of("refstats"),
    log:
        "logs/refstats/{dataset}/{split}_{extractor}.log",
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "{params.cmd} > {log} 2>&1"


# Section 4.2: HMC step sizes adapted per time step, then long-run chains of each length.
rule long_run:
    input:
        inputs_of("long_run"),
    output:
        PATTERNS["long_run"],
        report(PATTERNS["hmc_steps"], category="Long-run HMC"),
    params:
        cmd=cmd_of("long_run"),
        values=params_of("long_run"),
    log:
        "logs/long_run/{group}/{run}.log",
    priority: run_priority
    threads: 1
    resources:
        gpu=run_resource("gpu", 0),
        mem_mb=run_resource("mem_mb", 4000),
        runtime=run_resource("runtime", 60),
    shell:
        "{params.cmd} > {log} 2>&1"


rule evaluate:
    input:
        inputs_of("metrics"),
    output:
        report(PATTERNS["metrics"], category="Metrics"),
        PATTERNS["provenance"],
    params:
        cmd=cmd_of("metrics"),
        values=params_of("metrics"),
    log:
        "logs/evaluate/{group}/{run}.log",
    threads: 1
    resources:
        gpu=run_resource("gpu", 0),
        mem_mb=run_resource("mem_mb", 4000),
        runtime=run_resource("runtime", 60),
    shell:
        "{params.cmd} > {log} 2>&1"
