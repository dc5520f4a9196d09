"""A certified lower bound on log Z_0 of the level-0 marginal EBM, from wide Gaussian proposals.

Why
---
The estimates of log Z_0 (App. A.4 along the progressive samples, drl/evaluate/partition.py; AIS,
drl/evaluate/ais.py) only see where their chains go.  Chains started at N(0, I) and tethered to
the data's scale never visit mass the level-0 energy may hold far from the data, so a model with
f(y, 0) large at |y| >> |data| gets a log Z_0 far too small and a test bits/dim far too good.

The bound (importance sampling with Markov's inequality)
--------------------------------------------------------
With a proposal q of full support, the mixture of J isotropic Gaussians of radii r_1..r_J,

    q(y) = (1/J) sum_j N(y; 0, r_j^2 I),

and y_1..y_n ~ q, the estimate  Z^ = (1/n) sum_i exp( f(y_i, 0) - log q(y_i) )  is unbiased for
Z_0 = integral exp f(y, 0) dy and positive, so by Markov's inequality P(Z^ >= Z_0 / delta) <= delta:

    log Z_0 >= log Z^ + log delta        with probability at least 1 - delta.          (bound)

It holds for any f and any q, however poor the proposal (a poor one only makes it loose), so it
can refute an estimate: if an estimate of log Z_0 lies below the bound, that estimate is wrong
with probability at least 1 - delta.  Each test log-density f(s_0 x, 0) - log Z_0 + D log s_0
(drl/evaluate/likelihood.py) then has an upper bound, and bits/dim a lower bound, all at once.
"""
from __future__ import annotations

import math

import torch

from drl.energy import ConditionalEBM, model_device
from drl.evaluate.partition import fp32

# Radii of the proposal's components, in y units: from inside the data's scale to far outside it.
RADII = tuple(10.0 ** (k / 2) for k in range(-2, 9))   # 0.1 ... 10^4


def log_q(y: torch.Tensor, radii) -> torch.Tensor:
    """log of the equal mixture of N(0, r^2 I) over ``radii`` at y [n, ...] (float64 [n])."""
    d = y[0].numel()
    sq = y.double().flatten(1).pow(2).sum(1)
    r = torch.as_tensor(radii, dtype=torch.float64, device=y.device)
    comp = -0.5 * sq[:, None] / r ** 2 - d * torch.log(r) - 0.5 * d * math.log(2 * math.pi)
    return torch.logsumexp(comp, 1) - math.log(len(radii))


@torch.no_grad()
def log_z_lower_bound(ebm: ConditionalEBM, shape: tuple, n_per_radius: int = 1000, radii=RADII,
                      delta: float = 0.01, generator=None, batch_size: int = 1000) -> dict:
    """{"log_z_lower_bound": log Z^ + log delta, "log_z_hat", "delta", "radii", "n", and per radius
    the largest f(y, 0) of its draws ("max_f")}: the bound holds with probability >= 1 - delta."""
    if not 0.0 < delta < 1.0:
        raise ValueError(f"delta must lie in (0, 1), got {delta}")
    dev = model_device(ebm)
    log_w, max_f = [], []
    for r in radii:   # n_per_radius draws per component: a stratified draw of the equal mixture q
        best = -math.inf
        for i in range(0, n_per_radius, batch_size):
            m = min(batch_size, n_per_radius - i)
            y = r * torch.randn((m, *shape), generator=generator, device=dev)
            with fp32(ebm):
                f = ebm(y, torch.zeros(m, dtype=torch.long, device=dev)).double()
            log_w.append((f - log_q(y, radii)).cpu())
            best = max(best, float(f.max()))
        max_f.append(best)
    log_w = torch.cat(log_w)
    log_z_hat = float(torch.logsumexp(log_w, 0) - math.log(len(log_w)))
    return {"log_z_lower_bound": log_z_hat + math.log(delta), "log_z_hat": log_z_hat, "delta": delta,
            "radii": [float(r) for r in radii], "n": int(len(log_w)), "max_f": max_f}
