# Shared set-up: validate params.yaml (all problems at once, naming the key), and look every job's
# inputs and params up in the stage list of drl/workflow.py (which also generates dvc.yaml).
import json
import re

from drl.config import validate
from drl.paths import PATTERNS, PREPARED_FILES, table_markdown
from drl.workflow import external_inputs, group_targets, groups, stages_by_output, train_command

validate(config, "params.yaml")
STAGE_OF = stages_by_output(config)
TABLE_OUTPUTS = [t["output"][: -len(".csv")] for t in config.get("tables", {}).values()]
EXTERNAL_INPUTS = sorted(external_inputs(config))
# downloads some stage reads: a file, or (unpack: zip) a folder, which Snakemake must know as such
_FETCHED = [s.outs[0] for s in STAGE_OF.values() if s.kind == "fetch"]
FETCHED_FILES = sorted(p for p in _FETCHED if not config["downloads"][STAGE_OF[p].name[len("fetch_"):]].get("unpack"))
FETCHED_DIRS = sorted(set(_FETCHED) - set(FETCHED_FILES))


def _alternatives(names):
    return "|".join(re.escape(n) for n in names) or "(?!)"


wildcard_constraints:
    dataset="[A-Za-z0-9_-]+",
    group="[A-Za-z0-9_-]+",
    run="[A-Za-z0-9_-]+",
    figure="[A-Za-z0-9_-]+",
    extractor="[A-Za-z0-9_-]+",
    split="train|test",
    table=_alternatives(TABLE_OUTPUTS),
    raw=_alternatives(EXTERNAL_INPUTS),
    fetched=_alternatives(FETCHED_FILES),
    fetched_dir=_alternatives(FETCHED_DIRS),


def _stage(path_key, wc):
    if path_key == "table":
        return STAGE_OF[f"{wc.table}.csv"]
    if path_key in ("fetched", "fetched_dir"):
        return STAGE_OF[getattr(wc, path_key)]
    return STAGE_OF[PATTERNS[path_key].format(**wc)]


def inputs_of(path_key):
    """Input function: the inputs of the stage that writes PATTERNS[path_key], its code included (the
    drl modules its command imports, drl/code_deps.py): Snakemake's own code trigger sees only the
    rule's shell command, so an edited module reruns its stages through the modification-time trigger."""
    return lambda wc: _stage(path_key, wc).deps


def name_of(path_key, kind):
    """The params.yaml name in the stage that writes PATTERNS[path_key], e.g. a table's or a download's."""
    return lambda wc: _stage(path_key, wc).name[len(kind) + 1 :]


def launcher(wc):
    """`drl`, or for `resources.gpu: N > 1` torchrun with N processes (drl/workflow.py train_command)."""
    return train_command(config["runs"][wc.run], wc.run).removesuffix(f" train --run {wc.run}")


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


def run_resource(name, default):
    """A run's `resources.<name>` from params.yaml (GPUs, memory, minutes), for train/sample/evaluate."""
    return lambda wc: config["runs"][wc.run].get("resources", {}).get(name, default)


def run_priority(wc):
    """Longest jobs first: a run's `resources.runtime` (minutes) as the job's priority, so that on a
    few cores the long trainings start at once and the short ones fill in around them."""
    return config["runs"][wc.run].get("resources", {}).get("runtime", 0)
