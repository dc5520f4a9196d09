"""CIFAR-10 from the official python tarball, paper Appendix B: 32x32 images, 50,000 train and
10,000 test, used as they are.  The tarball is read in one streaming pass, never extracted."""
from __future__ import annotations

import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from drl.data.points import DataError
from drl.data.raw import file_sha256, require

URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
SIDE = 32


class _ArrayUnpickler(pickle.Unpickler):
    """Loads dicts of numpy arrays and nothing else: an arbitrary pickle can run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def load(cfg: dict) -> tuple[np.ndarray, np.ndarray, dict]:
    """Train and test uint8 (N, 32, 32, 3), at most ``max_images`` each, and the manifest facts."""
    path = require(cfg["path"], "the CIFAR-10 python version, cifar-10-python.tar.gz (a gzip tarball)",
                   f"Download it from {URL} ('CIFAR-10 python version') into data/raw/.")
    batches = _read_batches(path)
    cap = cfg.get("max_images")
    train = np.concatenate([batches[b][0] for b in TRAIN_BATCHES])[:cap]
    test = batches[TEST_BATCH][0][:cap]
    labels = {"train": np.concatenate([batches[b][1] for b in TRAIN_BATCHES])[:cap], "test": batches[TEST_BATCH][1][:cap]}
    return train, test, {"labels": labels,
        "source": {"path": str(path), "sha256": file_sha256(path), "format": "cifar-10-python.tar.gz"},
        "preprocessing": {"crop": None, "resolution": SIDE, "layout": "NHWC uint8",
                          "from": "rows of 3072 bytes: R, G, B planes of 32x32, row-major"}}


def _read_batches(path: Path) -> dict[str, np.ndarray]:
    wanted = {f"{FOLDER}/{b}": b for b in (*TRAIN_BATCHES, TEST_BATCH)}
    batches = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                if member.name in wanted:
                    batches[wanted[member.name]] = _images(tar.extractfile(member), f"{path}: {member.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{path}: unreadable or truncated gzip tarball ({exc}); download it again from {URL}") from exc
    missing = [name for name, b in wanted.items() if b not in batches]
    if missing:
        raise DataError(f"{path}: lacks {missing}; expected the CIFAR-10 python version from {URL}")
    return batches


def _images(fh, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch file: b"data" rows of 3072 bytes (CHW) -> uint8 (N, 32, 32, 3) (HWC), and b"labels"."""
    try:
        batch = _ArrayUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, ValueError) as exc:
        raise DataError(f"{where}: not a CIFAR-10 batch ({exc})") from exc
    data = batch.get(b"data") if isinstance(batch, dict) else None
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3 * SIDE * SIDE):
        raise DataError(f"{where}: expected a dict whose b'data' is uint8 rows of {3 * SIDE * SIDE} values")
    labels = np.asarray(batch.get(b"labels", []), dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(f"{where}: b'labels' has {len(labels)} entries for {len(data)} images")
    return np.ascontiguousarray(data.reshape(-1, 3, SIDE, SIDE).transpose(0, 2, 3, 1)), labels
