"""The normalised test log-density of the level-0 marginal EBM and bits per dimension (Section 4.2,
Table 3), given log Z_0 (drl/evaluate/partition.py, drl/evaluate/ais.py).

Test density and bits per dimension
-----------------------------------
Change of variables y_0 = s_0 x_0 over all D dimensions (Section 3.1, g(x) = a p(a x)):

    log g_0(x_0) = f(s_0 x_0, 0) - log Z_0 + D log s_0.

For 8-bit images scaled as x = p / 127.5 - 1 the pixel values are spaced by Delta = 2 / 255 (one
bin per value, centred on it).  The model's probability of the discrete image is
P = integral_{bin} g_0 ~= g_0(x) Delta^D, so

    bpd = -log2 P / D = ( -log g_0(x) / D - log Delta ) / log 2
        = ( -log g_0(x) / D + log 127.5 ) / log 2.

``dequantise="none"`` (default; the released code added no dequantisation noise) evaluates g_0 at
the pixel values themselves: the midpoint rule for the bin integral, neither a bound.
``dequantise="uniform"`` evaluates at x + u, u ~ U(-Delta/2, Delta/2)^D, whose expectation of
log g_0 + D log Delta is a lower bound on log P (Jensen; Theis et al. 2016), so that bpd is an
upper bound for the discrete model.  Level 0 models x_0, which under the released schedule is
lightly noised data (0.99995 x + 0.01 eps); the test images are evaluated as they are.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from drl.energy import ConditionalEBM, model_device
from drl.evaluate.partition import fp32

PIXEL_BIN = 2.0 / 255.0  # spacing of 8-bit values scaled by x / 127.5 - 1


@torch.no_grad()
def test_log_likelihood(ebm: ConditionalEBM, x, log_z0: float, batch_size: int = 1000,
                        dequantise: str = "none", bin_width: float = PIXEL_BIN, generator=None,
                        progress: bool = False) -> np.ndarray:
    """log g_0(x) = f(s_0 x, 0) - log Z_0 + D log s_0 per example (float64 [n]); ``x`` [n, *shape]
    in the model's x-space.  ``dequantise="uniform"`` adds U(-bin_width/2, bin_width/2) noise."""
    if dequantise not in ("none", "uniform"):
        raise ValueError(f"dequantise must be 'none' or 'uniform', got {dequantise!r}")
    dev = model_device(ebm)
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
    dim = int(np.prod(x.shape[1:]))
    s0 = float(ebm.levels["y_scale"][0])
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc="test log p", disable=not progress, mininterval=2.0):
        xb = x[i:i + batch_size]
        if dequantise == "uniform":
            xb = xb + (torch.rand(xb.shape, generator=generator) - 0.5) * bin_width
        xb = xb.to(dev)
        with fp32(ebm):
            f = ebm(s0 * xb, torch.zeros(len(xb), dtype=torch.long, device=dev)).double().cpu().numpy()
        out.append(f)
    return np.concatenate(out) - log_z0 + dim * math.log(s0)


test_log_likelihood.__test__ = False  # not a pytest test when imported into a test module


def bits_per_dim(log_p, dim: int, bin_width: float = PIXEL_BIN):
    """(-log p / D - log bin_width) / log 2: bits per dimension of a density log p (nats) over D
    dimensions of data quantised with spacing ``bin_width`` (2/255 for x = p / 127.5 - 1, giving
    (-log p / D + log 127.5) / log 2).  Elementwise; average the result over a test set."""
    return (-np.asarray(log_p, np.float64) / dim - math.log(bin_width)) / math.log(2.0)


def mean_log_likelihood_se(log_p, log_z_se: float) -> float | None:
    """Standard error of mean(log_p), log_p = log g(x_i) - log Z per test example: the test set's own
    spread, std / sqrt(n), and log Z's estimation error, which shifts every example alike, added in
    quadrature (None for a single example).  Bits/dim are affine in log p: their se is this / (D log 2)."""
    log_p = np.asarray(log_p, np.float64)
    return math.hypot(float(np.std(log_p, ddof=1)) / math.sqrt(len(log_p)), log_z_se) if len(log_p) > 1 else None
