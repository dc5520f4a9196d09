# DRL reproduction workflow.  Every job is `drl <stage> ...`; the DAG itself comes from
# drl/workflow.py, which also generates dvc.yaml, so Snakemake and DVC run the same stages.
#   snakemake --cores all demo            # the embedded-data demo (results/demo/)
#   snakemake --cores all                 # everything defined in params.yaml
configfile: "params.yaml"

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        group_targets(config),


rule demo:
    input:
        group_targets(config, "demo"),
