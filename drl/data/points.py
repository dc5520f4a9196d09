"""A user's own 2-D points: a .npy array of shape [N, 2] or a .csv with two numeric columns
(an optional header line is skipped)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class DataError(ValueError):
    """Raw data is missing or malformed; the message names the file and the fix."""


def load_points(path: str | Path) -> np.ndarray:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found; expected a .npy array [N, 2] or a .csv with two columns")
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        elif path.suffix == ".csv":
            x = np.genfromtxt(path, delimiter=",", skip_header=_has_header(path))
        else:
            raise DataError(f"{path}: unsupported extension {path.suffix!r}; use .npy or .csv")
        if np.iscomplexobj(x):
            raise TypeError(f"complex values ({x.dtype})")
        x = np.asarray(x, dtype=np.float64)
    # EOFError: an empty .npy; TypeError: values that are not real numbers
    except (ValueError, OSError, EOFError, TypeError) as exc:
        raise DataError(f"{path}: cannot be read as points ({exc})") from exc
    if x.ndim != 2 or x.shape[1] != 2:
        raise DataError(f"{path}: expected shape [N, 2], got {list(x.shape)}")
    if not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).any(1).sum())
        raise DataError(f"{path}: {bad} row(s) contain NaN/inf or non-numbers; remove them")
    if len(x) < 2:
        raise DataError(f"{path}: need at least 2 points to split into train and test, got {len(x)}")
    return x


def _has_header(path: Path) -> int:
    with open(path) as fh:
        first = fh.readline().split(",")
    try:
        [float(v) for v in first]
        return 0
    except ValueError:
        return 1


def split(x: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(len(x))
    n_test = min(max(1, int(round(test_fraction * len(x)))), len(x) - 1)  # both splits non-empty
    return x[perm[n_test:]], x[perm[:n_test]]
