rule train:
    input:
        inputs_of("model"),
    output:
        model=PATTERNS["model"],
        log_csv=PATTERNS["train_log"],
        config=PATTERNS["train_config"],
    params:
        cmd=cmd_of("model"),
        values=params_of("model"),
    log:
        "logs/train/{group}/{run}.log",
    # The 2-D toy MLPs gain nothing from a second thread, so runs go side by side.
    threads: 1
    resources:
        gpu=0,
        mem_mb=8000,
        runtime=24 * 60,
    shell:
        "{params.cmd} > {log} 2>&1"


rule sample:
    input:
        inputs_of("samples"),
    output:
        PATTERNS["samples"],
    params:
        cmd=cmd_of("samples"),
        values=params_of("samples"),
    log:
        "logs/sample/{group}/{run}.log",
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    shell:
        "{params.cmd} > {log} 2>&1"
