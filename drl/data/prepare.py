"""Stage ``prepare``: raw data -> data/prepared/<dataset>/{train,test}.npy + manifest.json."""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from drl.data.points import load_points, split
from drl.data.toy2d import get_toy
from drl.io import np_save, write_json


def prepared_arrays(cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and test arrays (float32) for a ``datasets`` entry, plus source facts for the manifest."""
    if cfg["source"] == "toy":
        toy = get_toy(cfg["toy"])
        rng = np.random.default_rng(cfg["seed"])
        train, test = toy.sample(cfg.get("n_train", 50000), rng), toy.sample(cfg.get("n_test", 10000), rng)
        source = {"toy": cfg["toy"]}
    else:
        x = load_points(cfg["path"])
        train, test = split(x, cfg.get("test_fraction", 0.1), cfg["seed"])
        source = {"path": cfg["path"], "sha256": hashlib.sha256(Path(cfg["path"]).read_bytes()).hexdigest()}
    return train.astype(np.float32), test.astype(np.float32), source


def prepare(cfg: dict, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    train, test, source = prepared_arrays(cfg)
    np_save(out_dir / "train.npy", train)
    np_save(out_dir / "test.npy", test)
    manifest = {"config": cfg, "source": source, "train": {"shape": list(train.shape)},
                "test": {"shape": list(test.shape)},
                "sha256": {n: hashlib.sha256(a.tobytes()).hexdigest() for n, a in (("train", train), ("test", test))}}
    write_json(out_dir / "manifest.json", manifest)  # written last: its presence means the stage finished
    return manifest
