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
    "metrics": "results/{group}/metrics/{run}.json",
    "figure": "results/{group}/figures/{figure}.png",
}
PREPARED_FILES = ("train.npy", "test.npy", "manifest.json")


def prepared_dir(dataset: str) -> Path:
    return Path(PATTERNS["prepared"].format(dataset=dataset))


def run_dir(group: str, run: str) -> Path:
    return Path(PATTERNS["run"].format(group=group, run=run))


def samples_file(group: str, run: str) -> Path:
    return Path(PATTERNS["samples"].format(group=group, run=run))


def metrics_file(group: str, run: str) -> Path:
    return Path(PATTERNS["metrics"].format(group=group, run=run))


def figure_file(group: str, figure: str) -> Path:
    return Path(PATTERNS["figure"].format(group=group, figure=figure))
