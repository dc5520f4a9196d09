# Shared set-up: validate params.yaml (all problems at once, naming the key), and look every job's
# inputs, command and params up in the stage list of drl/workflow.py (which also generates dvc.yaml).
import json

from drl.config import validate
from drl.paths import PATTERNS, PREPARED_FILES
from drl.workflow import group_targets, stages_by_output

validate(config, "params.yaml")
STAGE_OF = stages_by_output(config)

wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    group="[A-Za-z0-9_-]+",
    run="[A-Za-z0-9_-]+",
    figure="[A-Za-z0-9_-]+",


def _stage(path_key, wc):
    return STAGE_OF[PATTERNS[path_key].format(**wc)]


def inputs_of(path_key):
    """Input function: the file inputs of the stage that writes PATTERNS[path_key]
    (code dependencies are DVC's business; Snakemake tracks code changes itself)."""
    return lambda wc: [d for d in _stage(path_key, wc).deps if not d.startswith("drl/")]


def cmd_of(path_key):
    return lambda wc: _stage(path_key, wc).cmd


def params_of(path_key):
    """The stage's params.yaml values as JSON, so that Snakemake reruns the job when they change."""

    def values(wc):
        out = {}
        for key in _stage(path_key, wc).params:
            node = config
            for part in key.split("."):
                node = node[part]
            out[key] = node
        return json.dumps(out, sort_keys=True)

    return values
