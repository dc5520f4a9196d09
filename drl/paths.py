"""Where every artifact lives.  The patterns are shared by the Snakemake rules (as wildcard
patterns) and by the stages and dvc.yaml (formatted), so the two DAGs name the same files."""
from __future__ import annotations

from pathlib import Path

PATTERNS = {
    "prepared": "data/prepared/{dataset}",
    "manifest": "data/prepared/{dataset}/manifest.json",
    "run": "results/{group}/runs/{run}",
    "model": "results/{group}/runs/{run}/model.pt",
    "train_log": "results/{group}/runs/{run}/train_log.csv",
    "train_config": "results/{group}/runs/{run}/config.json",
    "samples": "results/{group}/runs/{run}/samples.npy",
    "sample_grid": "results/{group}/runs/{run}/samples.png",
    "long_run": "results/{group}/runs/{run}/long_run.npz",
    "hmc_steps": "results/{group}/runs/{run}/hmc_steps.csv",
    "metrics": "results/{group}/metrics/{run}.json",
    "provenance": "results/{group}/provenance/{run}.json",
    "figure": "results/{group}/figures/{figure}.png",
    "refstats": "data/stats/{dataset}/{split}_{extractor}.npz",
}
PREPARED_FILES = ("train.npy", "test.npy", "labels.npz", "manifest.json")


def prepared_dir(dataset: str) -> Path:
    return Path(PATTERNS["prepared"].format(dataset=dataset))


def run_dir(group: str, run: str) -> Path:
    return Path(PATTERNS["run"].format(group=group, run=run))


def samples_file(group: str, run: str) -> Path:
    return Path(PATTERNS["samples"].format(group=group, run=run))


def sample_grid_file(group: str, run: str) -> Path:
    return Path(PATTERNS["sample_grid"].format(group=group, run=run))


def long_run_file(group: str, run: str) -> Path:
    return Path(PATTERNS["long_run"].format(group=group, run=run))


def hmc_steps_file(group: str, run: str) -> Path:
    return Path(PATTERNS["hmc_steps"].format(group=group, run=run))


def metrics_file(group: str, run: str) -> Path:
    return Path(PATTERNS["metrics"].format(group=group, run=run))


def figure_file(group: str, figure: str) -> Path:
    return Path(PATTERNS["figure"].format(group=group, figure=figure))


def provenance_file(group: str, run: str) -> Path:
    return Path(PATTERNS["provenance"].format(group=group, run=run))


def refstats_file(dataset: str, split: str, extractor: str) -> Path:
    return Path(PATTERNS["refstats"].format(dataset=dataset, split=split, extractor=extractor))


def table_markdown(csv_path: str | Path) -> Path:
    """The Markdown rendering written beside each table CSV."""
    return Path(csv_path).with_suffix(".md")
