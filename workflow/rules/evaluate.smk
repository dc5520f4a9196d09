rule refstats:
    input:
        inputs_of("refstats"),
    output:
        PATTERNS["refstats"],
    params:
        values=params_of("refstats"),
    log:
        "logs/refstats/{dataset}/{split}_{extractor}.log",
    # Every evaluation of the dataset waits on these statistics, so they go first.  Inception over a
    # large split wants threads; the digits classifier's 1617 features take seconds on one, and two
    # would hold its job until every running training had ended (`--cores 2`: the demo's tail).
    priority: 1000
    threads: lambda wc: 8 if config["extractors"][wc.extractor]["kind"] == "inception" else 1
    resources:
        mem_mb=8000,
        runtime=120,
    shell:
        "drl refstats --dataset {wildcards.dataset} --split {wildcards.split} --extractor {wildcards.extractor} > {log} 2>&1"


# Section 4.2: HMC step sizes adapted per time step, then long-run chains of each length.
rule long_run:
    input:
        inputs_of("long_run"),
    output:
        PATTERNS["long_run"],
        report(PATTERNS["hmc_steps"], category="Long-run HMC", caption="../report/hmc.rst"),
    params:
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
        "drl long-run --run {wildcards.run} > {log} 2>&1"


rule evaluate:
    input:
        inputs_of("metrics"),
    output:
        report(PATTERNS["metrics"], category="Metrics", caption="../report/metrics.rst"),
        PATTERNS["provenance"],
    params:
        values=params_of("metrics"),
    log:
        "logs/evaluate/{group}/{run}.log",
    threads: 1
    resources:
        gpu=run_resource("gpu", 0),
        mem_mb=run_resource("mem_mb", 4000),
        runtime=run_resource("runtime", 60),
    shell:
        "drl evaluate --run {wildcards.run} > {log} 2>&1"
