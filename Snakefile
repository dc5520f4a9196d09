# DRL reproduction workflow.  Every job is `drl <stage> ...`, written out in its rule; the DAG
# (inputs, outputs, params) comes from drl/workflow.py, which also generates dvc.yaml, so Snakemake
# and DVC run the same stages (tests/test_workflow.py checks commands, inputs and outputs agree).
#   snakemake --cores all demo            # the embedded-data demo (results/demo/)
#   snakemake --cores all results/table2.csv   # one paper table (needs the raw datasets in data/raw/)
#   snakemake --cores all                 # everything defined in params.yaml
from snakemake.utils import min_version

min_version("9.0")


configfile: "params.yaml"

include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        group_targets(config),


# One target rule per group of runs in params.yaml, e.g. `snakemake --cores all demo`.
for _group in groups(config):

    rule:
        name:
            _group
        input:
            group_targets(config, _group),
