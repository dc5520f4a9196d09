from drl.data.prepare import DECODED_SOURCES


rule prepare:
    input:
        inputs_of("manifest"),
    output:
        [f"{PATTERNS['prepared']}/{f}" for f in PREPARED_FILES],
    params:
        values=params_of("manifest"),
    log:
        "logs/prepare/{dataset}.log",
    # Image sources are decoded in one process per thread (`--workers`); the arrays are the same for
    # any count, so it is not part of the DVC command.  Snakemake lowers 8 to --cores when fewer are
    # given; more with e.g. `--set-threads prepare=32`.
    threads: lambda wc: 8 if config["datasets"][wc.dataset]["source"] in DECODED_SOURCES else 1
    resources:
        mem_mb=2000,
        runtime=30,
    shell:
        "drl prepare --dataset {wildcards.dataset} --workers {threads} > {log} 2>&1"


# Raw datasets and weights with a download address (params.yaml `downloads`): fetched from it and
# verified against their pinned checksum; a file already in place with that checksum is used as is.
rule fetch:
    output:
        "{fetched}",
    params:
        name=name_of("fetched", "fetch"),
        values=params_of("fetched"),
    log:
        "logs/fetch/{fetched}.log",
    resources:
        runtime=600,
    shell:
        "drl fetch --name {params.name} > {log} 2>&1"


# The same for an archive (LSUN's LMDB zips), unpacked into the folder the dataset names.
rule fetch_unpacked:
    output:
        directory("{fetched_dir}"),
    params:
        name=name_of("fetched_dir", "fetch"),
        values=params_of("fetched_dir"),
    log:
        "logs/fetch/{fetched_dir}.log",
    resources:
        runtime=1440,
    shell:
        "drl fetch --name {params.name} > {log} 2>&1"


# Raw datasets and weights without an address are never made by the workflow.  When one is missing this job stands in
# for it: a dry run (`snakemake -n`) lists it, and a real run stops here, before any other work,
# with the exact path expected, its format and where to obtain it.
rule missing_input:
    output:
        "{raw}",
    log:
        "logs/missing_input/{raw}.log",
    shell:  # on the terminal as well as in the log: this message is the point of the job
        "drl missing-input --path {output:q} 2>&1 | tee {log}"
