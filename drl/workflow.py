"""The pipeline's DAG, from params.yaml alone.

``stages(params)`` is the one description of every job: its command, input files, output files,
the params.yaml keys it reads, and its code.  The Snakemake rules (workflow/rules/*.smk) look their
inputs, outputs and commands up here, and ``dvc.yaml`` is generated from it (`drl dvc-yaml`), so the
two workflow engines cannot drift apart; tests/test_workflow.py checks that they agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from drl.paths import PATTERNS, PREPARED_FILES

# Code each kind of stage runs (DVC reruns a stage when its code changes).
CODE = {
    "prepare": ["drl/data", "drl/io.py"],
    "train": ["drl/train.py", "drl/diffusion.py", "drl/energy.py", "drl/mcmc.py", "drl/objectives.py", "drl/nets"],
    "sample": ["drl/sample.py", "drl/mcmc.py"],
    "evaluate": ["drl/evaluate"],
    "figure": ["drl/report"],
}
MODEL_SECTIONS = ("group", "dataset", "diffusion", "energy", "sampler", "objective", "train")


@dataclass
class Stage:
    name: str
    kind: str
    cmd: str
    deps: list[str]
    outs: list[str]
    params: list[str]
    metrics: list[str] = field(default_factory=list)
    plots: list[str] = field(default_factory=list)

    @property
    def targets(self) -> list[str]:
        return self.outs + self.metrics + self.plots


def _run_files(params: dict, run: str) -> dict:
    group = params["runs"][run]["group"]
    return {k: PATTERNS[k].format(group=group, run=run)
            for k in ("model", "train_log", "train_config", "samples", "metrics")}


def stages(params: dict) -> list[Stage]:
    out = []
    for ds in params["datasets"]:
        prepared = PATTERNS["prepared"].format(dataset=ds)
        deps = list(CODE["prepare"])
        if params["datasets"][ds]["source"] == "points":
            deps.append(params["datasets"][ds]["path"])
        out.append(Stage(f"prepare_{ds}", "prepare", f"drl prepare --dataset {ds}", deps,
                         [f"{prepared}/{f}" for f in PREPARED_FILES], [f"datasets.{ds}"]))
    for run, cfg in params["runs"].items():
        f = _run_files(params, run)
        prepared = PATTERNS["prepared"].format(dataset=cfg["dataset"])
        out.append(Stage(f"train_{run}", "train", f"drl train --run {run}",
                         [f"{prepared}/train.npy"] + CODE["train"],
                         [f["model"], f["train_log"], f["train_config"]],
                         [f"runs.{run}.{s}" for s in MODEL_SECTIONS]))
        out.append(Stage(f"sample_{run}", "sample", f"drl sample --run {run}",
                         [f["model"]] + CODE["sample"], [f["samples"]], [f"runs.{run}.sample"]))
        out.append(Stage(f"evaluate_{run}", "evaluate", f"drl evaluate --run {run}",
                         [f["model"], f"{prepared}/test.npy"] + CODE["evaluate"], [],
                         [f"runs.{run}.evaluate", f"datasets.{cfg['dataset']}"], metrics=[f["metrics"]]))
    for fig, fcfg in params.get("figures", {}).items():
        deps = []
        for run in fcfg["runs"]:
            f = _run_files(params, run)
            deps += [f["model"], f["samples"]]
        deps.append(PATTERNS["prepared"].format(dataset=params["runs"][fcfg["runs"][0]]["dataset"]) + "/test.npy")
        out.append(Stage(f"figure_{fig}", "figure", f"drl figure --figure {fig}", deps + CODE["figure"], [],
                         [f"figures.{fig}"] + [f"runs.{r}.evaluate" for r in fcfg["runs"]],
                         plots=[PATTERNS["figure"].format(group=fcfg["group"], figure=fig)]))
    return out


def stages_by_output(params: dict) -> dict[str, Stage]:
    """Every output file mapped to the stage that writes it (built once per workflow)."""
    return {t: s for s in stages(params) for t in s.targets}


def group_targets(params: dict, group: str | None = None) -> list[str]:
    """Every artifact of one group of runs (models, samples, metrics, figures), or of all groups.

    Models and samples are targets too: in a fresh clone the committed metrics and figures exist
    but the models do not, and the demo must then train them rather than report nothing to do."""
    prefix = "results/" if group is None else f"results/{group}/"
    return [t for s in stages(params) for t in s.targets if t.startswith(prefix)]


def dvc_yaml_text(params: dict) -> str:
    doc = {}
    for s in stages(params):
        st = {"cmd": s.cmd, "deps": s.deps, "params": s.params}
        if s.outs:
            st["outs"] = s.outs
        if s.metrics:
            st["metrics"] = [{m: {"cache": False}} for m in s.metrics]
        if s.plots:
            st["outs"] = st.get("outs", []) + [{p: {"cache": False}} for p in s.plots]
        doc[s.name] = st
    header = ("# Generated from params.yaml by `drl dvc-yaml` (drl/workflow.py); do not edit by hand.\n"
              "# The Snakemake rules read the same stage list, so both describe one DAG.\n")
    return header + yaml.safe_dump({"stages": doc}, sort_keys=False, width=120)
