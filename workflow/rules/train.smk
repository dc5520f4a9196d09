rule train:
    input:
        inputs_of("model"),
    output:
        model=PATTERNS["model"],
        log_csv=PATTERNS["train_log"],
        config=PATTERNS["train_config"],
    params:
        launch=launcher,
        values=params_of("model"),
    log:
        "logs/train/{group}/{run}.log",
    # The demo's small networks gain little from a second thread, so runs go side by side.
    priority: run_priority
    threads: 1
    resources:
        gpu=run_resource("gpu", 0),
        mem_mb=run_resource("mem_mb", 4000),
        runtime=run_resource("runtime", 24 * 60),
    shell:
        "{params.launch} train --run {wildcards.run} > {log} 2>&1"


rule sample:
    input:
        inputs_of("samples"),
    output:
        samples=PATTERNS["samples"],
        grid=report(PATTERNS["sample_grid"], category="Samples", caption="../report/samples.rst"),
    params:
        values=params_of("samples"),
    log:
        "logs/sample/{group}/{run}.log",
    # One thread, as train: on a few cores a 2-thread job waits until every running training has ended.
    threads: 1
    resources:
        gpu=run_resource("gpu", 0),
        mem_mb=run_resource("mem_mb", 4000),
        runtime=run_resource("runtime", 60),
    shell:
        "drl sample --run {wildcards.run} > {log} 2>&1"
