"""scikit-learn's handwritten digits (1,797 grayscale 8x8 images, values 0..16; shipped inside the
wheel, no download): the small embedded image dataset that runs the image pipeline on a laptop.
Values are scaled to uint8 0..255; a seeded train/test split by ``test_fraction``; optionally resized
to ``resolution`` with antialiasing as the paper's datasets (Appendix B)."""
from __future__ import annotations

import hashlib

import numpy as np
import sklearn
from PIL import Image
from sklearn.datasets import load_digits

from drl.data.images import Preprocess, split_indices

NATIVE = 8
MAX_VALUE = 16


def load(cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and test uint8 (N, R, R, 1), R = ``resolution`` (default 8), and the manifest facts."""
    digits = load_digits()
    raw = digits.images
    pixels = np.rint(raw * (255 / MAX_VALUE)).astype(np.uint8)
    pre = Preprocess.from_config(cfg, resolution=NATIVE, mode="L")
    images = np.stack([pre(Image.fromarray(p)) for p in pixels])
    fraction = cfg.get("test_fraction", 0.1)
    train, test = split_indices(len(images), fraction, cfg["seed"])
    return images[train], images[test], {
        "labels": {"train": digits.target[train].astype(np.int64), "test": digits.target[test].astype(np.int64)},
        "source": {"sklearn": sklearn.__version__, "images": len(images),
                   "sha256": hashlib.sha256(np.ascontiguousarray(raw).tobytes()).hexdigest(),
                   "split": {"test_fraction": fraction, "seed": cfg["seed"]}},
        "preprocessing": {**pre.manifest(), "scale": f"round(v * 255 / {MAX_VALUE})"}}
