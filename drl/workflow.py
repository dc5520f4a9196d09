"""The pipeline's DAG, from params.yaml alone.

``stages(params)`` is the one description of every job: its command, input files, output files,
the params.yaml keys it reads, and its code.  The Snakemake rules (workflow/rules/*.smk) look their
inputs, outputs and commands up here, and ``dvc.yaml`` is generated from it (`drl dvc-yaml`), so the
two workflow engines cannot drift apart; tests/test_workflow.py checks that they agree.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import yaml

from drl.code_deps import function_code
from drl.config import seed_runs, source_run
from drl.paths import PATTERNS, PREPARED_FILES, table_markdown

# The function behind each kind of stage's `drl` command; its code dependencies (DVC reruns a stage
# when they change, Snakemake when they are newer than its outputs) are derived from its imports.
ENTRY = {"prepare": "drl.stages.data:prepare", "train": "drl.stages.train:train", "sample": "drl.stages.sample:sample",
         "long_run": "drl.stages.sample:long_run", "refstats": "drl.stages.evaluate:refstats",
         "evaluate": "drl.stages.evaluate:evaluate", "figure": "drl.stages.report:figure",
         "table": "drl.stages.report:table"}


def code(kind: str) -> list[str]:
    return function_code(*ENTRY[kind].split(":"))


MODEL_SECTIONS = ("group", "dataset", "diffusion", "energy", "sampler", "objective", "train")


@dataclass
class Stage:
    name: str
    kind: str
    cmd: str
    deps: list[str]
    outs: list[str]
    params: list[str]
    group: str | None = None  # the run/figure/table group whose target list includes this stage
    metrics: list[str] = field(default_factory=list)
    reports: list[str] = field(default_factory=list)  # small committed outputs: figures and tables
    # CSV outputs DVC plots: {path: {x: col, y: col, cache: bool}}; cache: false ones are committed to git
    plots: dict[str, dict] = field(default_factory=dict)

    @property
    def targets(self) -> list[str]:
        return self.outs + self.metrics + self.reports + list(self.plots)


def _run_files(params: dict, run: str) -> dict:
    group = params["runs"][run]["group"]
    return {k: PATTERNS[k].format(group=group, run=run) for k in ("model", "train_log", "train_config", "samples",
                                                                   "sample_grid", "long_run", "hmc_steps", "metrics",
                                                                   "provenance")}


def _prepared(dataset: str, split: str) -> str:
    return f"{PATTERNS['prepared'].format(dataset=dataset)}/{split}.npy"


def extractor_inputs(params: dict, extractor: str) -> list[str]:
    """The file a feature extractor is loaded from (local Inception weights, or the shipped classifier):
    an input no stage writes, so that the measuring instrument never changes as a side effect of a run."""
    return [params["extractors"][extractor]["weights"]]


def reference_statistics(params: dict) -> set[tuple[str, str, str]]:
    """(dataset, split, extractor) of every FID reference the runs need; each is computed once."""
    return {(cfg["dataset"], cfg["evaluate"]["fidelity"].get("reference_split", "train"),
             cfg["evaluate"]["fidelity"]["extractor"])
            for cfg in params["runs"].values() if "fidelity" in cfg["evaluate"]}


def _data_stages(params: dict) -> list[Stage]:
    from drl.data.prepare import raw_inputs

    out = []
    for ds, dcfg in params["datasets"].items():
        prepared = PATTERNS["prepared"].format(dataset=ds)
        out.append(Stage(f"prepare_{ds}", "prepare", f"drl prepare --dataset {ds}", raw_inputs(dcfg) + code("prepare"),
                         [f"{prepared}/{f}" for f in PREPARED_FILES], [f"datasets.{ds}"]))
    for ds, split, ex in sorted(reference_statistics(params)):
        out.append(Stage(f"refstats_{ds}_{split}_{ex}", "refstats",
                         f"drl refstats --dataset {ds} --split {split} --extractor {ex}",
                         [_prepared(ds, split)] + extractor_inputs(params, ex) + code("refstats"),
                         [PATTERNS["refstats"].format(dataset=ds, split=split, extractor=ex)], [f"extractors.{ex}"]))
    return out


def train_command(cfg: dict, run: str) -> str:
    """`drl train`, or with ``resources.gpu: N > 1`` N DistributedDataParallel processes under torchrun."""
    n = cfg.get("resources", {}).get("gpu", 0)
    return f"drl train --run {run}" if n <= 1 else f"torchrun --standalone --nproc_per_node {n} -m drl.cli -- train --run {run}"


def _run_stages(params: dict, run: str) -> list[Stage]:
    cfg, f = params["runs"][run], _run_files(params, run)
    group, ev = cfg["group"], cfg["evaluate"]
    # a seed's copy reads its run's params.yaml keys; its own seed is fixed by its name, so adding a
    # seed adds stages and retrains nothing that exists
    src = source_run(params, run)
    perf = ("perf",) if "perf" in cfg else ()  # optional; it changes the order of floating-point operations
    eval_deps, eval_params = [f["model"]], [f"runs.{src}.{s}" for s in ("evaluate", *perf)] + [f"datasets.{cfg['dataset']}"]
    if "quadrature" in ev or "partition" in ev:
        eval_deps.append(_prepared(cfg["dataset"], "test"))
    if "fidelity" in ev:
        ex, split = ev["fidelity"]["extractor"], ev["fidelity"].get("reference_split", "train")
        # the split itself too: its real-data reference images are drawn from it
        eval_deps += [f["samples"], PATTERNS["refstats"].format(dataset=cfg["dataset"], split=split, extractor=ex),
                      _prepared(cfg["dataset"], split)]
        eval_deps += extractor_inputs(params, ex)
        eval_params.append(f"extractors.{ex}")
    out = [
        Stage(f"train_{run}", "train", train_command(cfg, run), [_prepared(cfg["dataset"], "train")] + code("train"),
              [f["model"], f["train_config"]], [f"runs.{src}.{s}" for s in MODEL_SECTIONS + perf], group,
              plots={f["train_log"]: {"x": "iteration", "y": "loss", "cache": True}}),  # (has wall times)
        Stage(f"sample_{run}", "sample", f"drl sample --run {run}", [f["model"]] + code("sample"),
              [f["samples"], f["sample_grid"]], [f"runs.{src}.{s}" for s in ("sample", *perf)], group),
    ]
    if "long_run" in cfg:  # Section 4.2: adapted HMC step sizes, then chains of each length
        out.append(Stage(f"long_run_{run}", "long_run", f"drl long-run --run {run}", [f["model"]] + code("long_run"),
                         [f["long_run"]], [f"runs.{src}.{s}" for s in ("long_run", *perf)], group,
                         plots={f["hmc_steps"]: {"x": "t", "y": "step_size", "cache": False}}))
        eval_deps.append(f["long_run"])
    eval_deps = list(dict.fromkeys(eval_deps + code("evaluate")))   # the test split may be read twice
    return out + [Stage(f"evaluate_{run}", "evaluate", f"drl evaluate --run {run}", eval_deps, [],
                        eval_params, group, metrics=[f["metrics"]], reports=[f["provenance"]])]


def _report_stages(params: dict) -> list[Stage]:
    out = []
    for fig, fcfg in params.get("figures", {}).items():
        deps = []
        for run in fcfg["runs"]:
            f = _run_files(params, run)
            seeds = [_run_files(params, s)["metrics"] for s in seed_runs(params, run)]
            deps += {"samples": [f["samples"]], "interpolation": [f["model"]], "hmc": [f["long_run"]],
                     "long_run": [f["long_run"]], "seeds": seeds}.get(fcfg["kind"], [f["model"], f["samples"]])
        if fcfg["kind"] == "comparison":
            deps.append(_prepared(params["runs"][fcfg["runs"][0]]["dataset"], "test"))
        read = {"interpolation": "sample", "hmc": "long_run", "long_run": "long_run"}.get(fcfg["kind"], "evaluate")
        out.append(Stage(f"figure_{fig}", "figure", f"drl figure --figure {fig}", deps + code("figure"), [],
                         [f"figures.{fig}"] + [f"runs.{r}.{read}" for r in fcfg["runs"]], fcfg["group"],
                         reports=[PATTERNS["figure"].format(group=fcfg["group"], figure=fig)]))
    for name, tcfg in params.get("tables", {}).items():
        rows = list(dict.fromkeys(r["run"] for r in tcfg["rows"] if "run" in r))
        runs = list(dict.fromkeys(s for r in rows for s in seed_runs(params, r)))
        named = [f"runs.{r}.evaluate.fidelity.extractor" for r in rows if "fidelity" in params["runs"][r]["evaluate"]]
        out.append(Stage(f"table_{name}", "table", f"drl table --table {name}",
                         [_run_files(params, r)["metrics"] for r in runs] + code("table"), [],
                         [f"tables.{name}"] + named,
                         tcfg["group"], reports=[tcfg["output"], str(table_markdown(tcfg["output"]))]))
    return out


def _fetch_stages(params: dict, needed: set[str]) -> list[Stage]:
    """`drl fetch` for each ``downloads`` entry whose path some stage reads.  It depends on the entry
    (address, checksum) alone: a verified file is the same whatever code fetched it.  Its output is
    kept out of DVC's cache (the official server is its source, and many licences forbid
    redistribution) and persists, so that a file in place is verified, not deleted and fetched again."""
    return [Stage(f"fetch_{name}", "fetch", f"drl fetch --name {name}", [], [d["path"]],
                  [f"downloads.{name}"]) for name, d in params.get("downloads", {}).items() if d["path"] in needed]


def stages(params: dict) -> list[Stage]:
    out = _data_stages(params)
    for run in params["runs"]:
        out += _run_stages(params, run)
    out += _report_stages(params)
    made = {t for s in out for t in s.targets}
    return _fetch_stages(params, {d for s in out for d in s.deps if d not in made}) + out


def stages_by_output(params: dict) -> dict[str, Stage]:
    """Every output file mapped to the stage that writes it (built once per workflow)."""
    return {t: s for s in stages(params) for t in s.targets}


def external_inputs(params: dict) -> set[str]:
    """Input files no stage writes: raw datasets and weights with no download address (the user provides them)."""
    made = stages_by_output(params)
    return {d for s in stages(params) for d in s.deps if not d.startswith("drl/") and d not in made}


def groups(params: dict) -> list[str]:
    return sorted({s.group for s in stages(params) if s.group})


def group_targets(params: dict, group: str | None = None) -> list[str]:
    """Every artifact of one group (models, samples, metrics, figures, tables), or of all groups.

    Models and samples are targets too: in a fresh clone the committed metrics and figures exist
    but the models do not, and the demo must then train them rather than report nothing to do."""
    return [t for s in stages(params) if s.group and group in (None, s.group) for t in s.targets]


# Stages that download or read raw datasets or weights live in their own DVC pipeline file, so
# that `dvc repro` (default target: ./dvc.yaml) runs everything that needs nothing from outside the
# repository, and `dvc repro EXTERNAL_DVC_YAML` the rest once the raw data is in place.
EXTERNAL_DVC_YAML = "pipelines/external-data/dvc.yaml"


def needs_external_input(params: dict) -> set[str]:
    """Names of the stages that depend, directly or through other stages, on an external input."""
    made, external = stages_by_output(params), external_inputs(params)
    memo: dict[str, bool] = {}

    def needs(stage: Stage) -> bool:
        if stage.name not in memo:
            memo[stage.name] = stage.kind == "fetch" or any(d in external or (d in made and needs(made[d]))
                                                            for d in stage.deps)
        return memo[stage.name]

    return {s.name for s in stages(params) if needs(s)}


def dvc_files(params: dict) -> dict[str, str]:
    """The text of each generated DVC pipeline file: dvc.yaml and EXTERNAL_DVC_YAML (paths in the
    latter are relative to the project root through ``wdir``)."""
    external = needs_external_input(params)
    wdir = "/".join([".."] * EXTERNAL_DVC_YAML.count("/"))
    docs = {"dvc.yaml": {}, EXTERNAL_DVC_YAML: {}}
    for s in stages(params):
        st = {"cmd": s.cmd, **({"deps": s.deps} if s.deps else {}), "params": [{"params.yaml": s.params}] if s.name in external else s.params}
        if s.name in external:
            st = {"wdir": wdir, **st}
        if s.outs:
            st["outs"] = [{o: {"cache": False, "persist": True}} for o in s.outs] if s.kind == "fetch" else s.outs
        # metrics only where they are committed: DVC warns of every declared metrics file that is missing
        kept = (s.metrics if s.name in external else []) + s.reports
        if s.metrics and s.name not in external:
            st["metrics"] = [{m: {"cache": False}} for m in s.metrics]
        if kept:
            st["outs"] = st.get("outs", []) + [{p: {"cache": False}} for p in kept]
        if s.plots:
            st["plots"] = [{p: props} for p, props in s.plots.items()]
        docs[EXTERNAL_DVC_YAML if s.name in external else "dvc.yaml"][s.name] = st
    header = ("# Generated from params.yaml by `drl dvc-yaml` (drl/workflow.py); do not edit by hand.\n"
              "# The Snakemake rules read the same stage list, so both describe one DAG.\n")
    notes = {"dvc.yaml": "# Stages that need nothing from outside the repository (`dvc repro`).\n",
             EXTERNAL_DVC_YAML: f"# Stages that need raw datasets or weights (`dvc repro {EXTERNAL_DVC_YAML}`).\n"}
    # `dvc plots show` / `dvc plots diff` render the figures (images) beside the stages' CSV plots
    # (top-level plots have no wdir: the external file's paths are relative to its folder)
    prefix = {"dvc.yaml": "", EXTERNAL_DVC_YAML: wdir + "/"}
    figures = {path: [prefix[path] + t for s in stages(params) if s.kind == "figure" and s.name in doc for t in s.reports]
               for path, doc in docs.items()}
    return {path: header + notes[path] + yaml.safe_dump({"stages": doc, **({"plots": figures[path]} if figures[path] else {})},
                                                        sort_keys=False, width=120)
            for path, doc in docs.items()}
