"""Stage ``prepare``: raw data -> data/prepared/<dataset>/{train,test}.npy + manifest.json.

2-D points and toys are stored float32 (N, D); images uint8 (N, H, W, C), preprocessed as in the
paper's Appendix B (drl/data/images.py).  The manifest records counts, shapes, dtypes, the sha256 of
each array, hashes of the raw inputs and the preprocessing settings."""
from __future__ import annotations

import hashlib
from contextlib import ExitStack
from pathlib import Path

import numpy as np

from drl.data import celeba, cifar10, digits, image_folder, lsun
from drl.data.images import ImageStream, write_images
from drl.data.points import load_points, split
from drl.data.raw import file_sha256
from drl.data.toy2d import get_toy
from drl.io import atomic_path, write_json

RAW_KEYS = ("path", "partition_file", "test_path")  # params.yaml keys that name raw files or folders
# Sources whose images are decoded here, in ``workers`` processes; the others are ready-made arrays.
DECODED_SOURCES = ("celeba", "lsun", "image_folder")


def _toy(cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    toy = get_toy(cfg["toy"])
    rng = np.random.default_rng(cfg["seed"])
    train, test = toy.sample(cfg.get("n_train", 50000), rng), toy.sample(cfg.get("n_test", 10000), rng)
    return train.astype(np.float32), test.astype(np.float32), {"source": {"toy": cfg["toy"]}}


def _points(cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    train, test = split(load_points(cfg["path"]), cfg.get("test_fraction", 0.1), cfg["seed"])
    return train.astype(np.float32), test.astype(np.float32), {
        "source": {"path": cfg["path"], "sha256": file_sha256(cfg["path"])}}


LOADERS = {"toy": _toy, "points": _points, "cifar10": cifar10.load, "celeba": celeba.load, "lsun": lsun.load,
           "image_folder": image_folder.load, "digits": digits.load}


def raw_inputs(cfg: dict) -> list[str]:
    """The raw files and folders a ``datasets`` entry reads (none for toy and digits)."""
    return [cfg[k] for k in RAW_KEYS if k in cfg]


def prepare(cfg: dict, out_dir: str | Path, workers: int = 1) -> dict:
    """Write train.npy, test.npy and labels.npz (all or none), then manifest.json; returns the manifest.
    Raw inputs are checked before anything is written; a stale manifest is removed first, so a
    manifest always describes the arrays beside it.  ``workers`` processes decode images; the files
    are the same for any number."""
    out_dir = Path(out_dir)
    train, test, facts = LOADERS[cfg["source"]](cfg)
    labels = facts.pop("labels", None) or {s: np.zeros(0, dtype=np.int64) for s in ("train", "test")}
    (out_dir / "manifest.json").unlink(missing_ok=True)
    manifest = {"config": cfg, **facts, "sha256": {}}
    with ExitStack() as renames:
        for split_name, data in (("train", train), ("test", test)):
            tmp = renames.enter_context(atomic_path(out_dir / f"{split_name}.npy"))
            manifest[split_name], manifest["sha256"][split_name], skipped = _write(tmp, data, cfg, split_name, workers)
            if len(labels[split_name]):  # one label per stream item: a skipped image takes its label with it
                labels[split_name] = np.delete(labels[split_name], skipped)
        manifest["labels"] = {s: len(v) for s, v in labels.items()}
        with open(renames.enter_context(atomic_path(out_dir / "labels.npz")), "wb") as fh:
            np.savez(fh, **labels)  # class labels where the source has them (CIFAR-10, digits), else empty
    write_json(out_dir / "manifest.json", manifest)  # written last: its presence means the stage finished
    return manifest


def _write(path: Path, data: np.ndarray | ImageStream, cfg: dict, split_name: str,
           workers: int) -> tuple[dict, str, list[int]]:
    if isinstance(data, ImageStream):
        return write_images(path, data, skip_corrupt=cfg.get("skip_corrupt", False),
                            desc=f"{cfg['source']} {split_name}", workers=workers)
    with open(path, "wb") as fh:
        np.save(fh, data)
    return {"shape": list(data.shape), "dtype": str(data.dtype)}, hashlib.sha256(data.tobytes()).hexdigest(), []
