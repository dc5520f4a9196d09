"""What every stage does around its computation: find its inputs (with an error naming the command
that makes a missing one), load the prepared data, the trained model, samples and chains, and pick
the device."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from drl import paths
from drl.data.points import DataError


def require(path: Path, producer: str) -> Path:
    """An input of this stage, or a clear error naming it and the command that makes it."""
    if not Path(path).exists():
        raise DataError(f"{path} not found; run `{producer}` (or the workflow) first")
    return Path(path)


def prepared(dataset: str, split: str, mmap: bool = False) -> np.ndarray:
    """A prepared split, optionally memory-mapped (prepared LSUN bedroom 128 is ~150 GB)."""
    return np.load(require(paths.prepared_dir(dataset) / f"{split}.npy", f"drl prepare --dataset {dataset}"),
                   mmap_mode="r" if mmap else None)


def device(name: str = "auto") -> str:
    """``auto``: CUDA when present, else the CPU; otherwise ``name`` as given."""
    import torch

    if name != "auto":
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def trained_model(cfg: dict, run: str, device: str = "cpu"):
    """The run's trained EBM (EMA weights) on ``device``, its checkpoint, and the run's ``perf``
    switches (channels-last applied to the model; the others for ``drl.perf.execution``)."""
    from drl import perf
    from drl.model import load_model

    ebm, ckpt = load_model(require(paths.run_dir(cfg["group"], run) / "model.pt", f"drl train --run {run}"))
    return ebm.to(device), ckpt, perf.configure(ebm, cfg.get("perf"), device)


def samples(cfg: dict, run: str) -> np.ndarray:
    return np.load(require(paths.samples_file(cfg["group"], run), f"drl sample --run {run}"))


def long_run_chains(cfg: dict, run: str):
    return np.load(require(paths.long_run_file(cfg["group"], run), f"drl long-run --run {run}"))
