"""Every raw image format goes through `prepare` and then trains for a few iterations of the
Table 4 network through the same code path as the paper runs (uint8 arrays converted per batch,
random flips), ending in a loadable checkpoint that samples images of the prepared shape."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from drl.data.prepare import prepare
from drl.train import load_model, train
from image_fixtures import (cifar_batches, framed, lsun_entries, write_celeba, write_cifar_tarball, write_images,
                            write_lmdb)


def _raw(kind: str, root):
    if kind == "cifar10":
        return {"source": "cifar10", "path": str(write_cifar_tarball(root / "cifar-10-python.tar.gz", cifar_batches(4)))}
    if kind == "celeba":
        images, partition = write_celeba(root, as_zip=True)
        return {"source": "celeba", "path": str(images), "partition_file": str(partition), "resolution": 16}
    if kind == "lsun":
        return {"source": "lsun", "path": str(write_lmdb(root / "train_lmdb", lsun_entries(6))),
                "test_path": str(write_lmdb(root / "val_lmdb", lsun_entries(2))), "resolution": 16}
    if kind == "image_folder":
        files = {f"train/cls{i % 2}/{i}.png": framed(20, 24) for i in range(5)} | {"test/a.webp": framed(24, 20)}
        return {"source": "image_folder", "path": str(write_images(root / "mine", files)), "resolution": 16, "seed": 0}
    return {"source": "digits", "seed": 0}


def _run_cfg(resolution: int, channels: int) -> dict:
    return {
        "diffusion": {"schedule": "released", "T": 6, "top_level": "marginal"},
        "energy": {"parameterisation": "net_over_s2",
                   "net": {"kind": "wrn", "resolution": resolution, "in_channels": channels, "ch": 8,
                           "ch_mult": [1, 2], "n_blocks": 1, "temb_dim": 16, "head": "temb", "spectral_norm": True}},
        "sampler": {"K": 2, "step_size": "released", "b": 0.0141421356, "noise_scale": 1.0},
        "objective": {"name": "recovery_likelihood", "loss_weights": "released"},
        "train": {"iterations": 3, "batch_size": 4, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7,
                  "warmup": 1, "ema": 0.9, "seed": 0, "checkpoint_every": 2, "log_every": 1,
                  "max_abs_energy": 1e6, "hflip": True},
    }


@pytest.mark.parametrize("kind", ["cifar10", "celeba", "lsun", "image_folder", "digits"])
def test_each_raw_format_prepares_and_trains(tmp_path, kind):
    cfg = _raw(kind, tmp_path / "raw")
    manifest = prepare(cfg, tmp_path / "prepared")
    data = np.load(tmp_path / "prepared" / "train.npy", mmap_mode="r")
    n, h, w, c = data.shape
    assert data.dtype == np.uint8 and h == w and manifest["train"]["shape"] == [n, h, w, c]
    final = train(_run_cfg(h, c), data, tmp_path / "run", progress=False)
    ebm, ckpt = load_model(final)
    assert ckpt["iteration"] == 3 and all(math.isfinite(r["loss"]) for r in ckpt["log"])
    with torch.no_grad():
        f = ebm(torch.zeros(2, c, h, w), torch.zeros(2, dtype=torch.long))
    assert f.shape == (2,) and torch.isfinite(f).all()
