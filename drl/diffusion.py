"""Noise schedules and the diffusion of the data (paper Section 3.5, eq. 15).

Levels are indexed k = 0..T.  ``sigma[k]`` is the noise added when going from
level k-1 to level k and ``a[k] = sqrt(1 - sigma[k]^2)`` the matching shrink, so

    x_{k} = a[k] x_{k-1} + sigma[k] eps          (eq. 15; k >= 1)

Level 0 is either the clean data (``sigma[0] = 0``, the paper) or data lightly
noised by ``sigma[0]`` (the released code: 0.99995 x + 0.01 eps).  Cumulated:
``alpha_cum[k] = prod_{j<=k} a[j]`` and ``sigma_cum[k] = sqrt(1 - alpha_cum[k]^2)``
so that ``x_k = alpha_cum[k] x_data + sigma_cum[k] eps``.

There are T EBM levels t = 0..T-1; level t models ``y_t = a[t+1] x_t`` given
``x_{t+1}`` with tether variance ``sigma[t+1]^2`` (eq. 16).  With
``top_level="marginal"`` (released code) level T-1 is instead a marginal EBM of
``y = x_{T-1}`` with no tether, whose chain starts at ``x_T``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

DDPM_BETA_START = 1e-4
DDPM_BETA_END = 0.02
DDPM_STEPS = 1000


@dataclass(frozen=True)
class Schedule:
    """Per-level constants of the diffusion, float64 numpy arrays of length T+1."""

    sigma: np.ndarray
    top_level: str = "conditional"  # or "marginal"

    def __post_init__(self):
        s = np.asarray(self.sigma, dtype=np.float64)
        if s.ndim != 1 or len(s) < 2:
            raise ValueError("a schedule needs sigma[0..T] with T >= 1")
        if np.any(s[1:] <= 0) or np.any(s > 1) or s[0] < 0:
            raise ValueError(f"schedule sigmas must lie in (0, 1] (level 0 in [0, 1)); got {s}")
        if self.top_level not in ("conditional", "marginal"):
            raise ValueError(f"top_level must be 'conditional' or 'marginal', got {self.top_level!r}")
        object.__setattr__(self, "sigma", s)

    @property
    def T(self) -> int:
        return len(self.sigma) - 1

    @property
    def a(self) -> np.ndarray:
        return np.sqrt(1.0 - self.sigma**2)

    @property
    def alpha_cum(self) -> np.ndarray:
        return np.cumprod(self.a)

    @property
    def sigma_cum(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alpha_cum**2)

    # -- per EBM level t = 0..T-1 -------------------------------------------------
    @property
    def y_scale(self) -> np.ndarray:
        """y_t = y_scale[t] * x_t: a[t+1], or 1 at a marginal top level."""
        s = self.a[1:].copy()
        if self.top_level == "marginal":
            s[-1] = 1.0
        return s

    @property
    def tether_inv_var(self) -> np.ndarray:
        """1 / sigma[t+1]^2 of the quadratic tether in eq. 16 (0 at a marginal top level)."""
        v = 1.0 / self.sigma[1:] ** 2
        if self.top_level == "marginal":
            v[-1] = 0.0
        return v


# Released code's T-level schedule (its diffusion.py / model.py, T = 6 by default): DDPM's
# linear betas cut at breakpoints idx = arange(T) * (1000 // (2 (T - 1))) and 999.
def released_schedule(T: int = 6, top_level: str = "marginal") -> Schedule:
    if T < 2 or DDPM_STEPS // (2 * (T - 1)) < 1:
        raise ValueError(f"the released-code schedule is defined for 2 <= T <= 501, got T={T}")
    beta = np.linspace(DDPM_BETA_START, DDPM_BETA_END, DDPM_STEPS, dtype=np.float64)
    idx = list(np.arange(T) * (DDPM_STEPS // (2 * (T - 1)))) + [DDPM_STEPS - 1]
    log_a = 0.5 * np.log1p(-beta)
    a = [np.exp(log_a[0])]
    a += [np.exp(log_a[lo + 1 : hi + 1].sum()) for lo, hi in zip(idx[:-1], idx[1:])]
    return Schedule(sigma=np.sqrt(1.0 - np.asarray(a) ** 2), top_level=top_level)


# The paper's "sigma_t^2 increasing linearly" (Section 4) for t = 1..T; with
# T = 1000, sigma2 from 1e-4 to 0.02 it is DDPM's linear beta schedule (T1k).
def linear_sigma2_schedule(T: int, sigma2_min: float = DDPM_BETA_START,
                           sigma2_max: float = DDPM_BETA_END, sigma0: float = 0.0,
                           top_level: str = "conditional") -> Schedule:
    s2 = np.linspace(sigma2_min, sigma2_max, T, dtype=np.float64)
    return Schedule(sigma=np.concatenate([[sigma0], np.sqrt(s2)]), top_level=top_level)


def make_schedule(cfg: dict) -> Schedule:
    """Build a schedule from a run's ``diffusion`` section."""
    name = cfg["schedule"]
    top = cfg.get("top_level", "conditional")
    if name == "released":
        return released_schedule(cfg["T"], top_level=top)
    if name == "linear_sigma2":
        return linear_sigma2_schedule(cfg["T"], cfg.get("sigma2_min", DDPM_BETA_START),
                                      cfg.get("sigma2_max", DDPM_BETA_END),
                                      cfg.get("sigma0", 0.0), top_level=top)
    if name == "ddpm_linear_beta":
        return linear_sigma2_schedule(cfg.get("T", DDPM_STEPS), DDPM_BETA_START, DDPM_BETA_END,
                                      cfg.get("sigma0", 0.0), top_level=top)
    raise ValueError(f"unknown diffusion.schedule {name!r}; use released, linear_sigma2 or ddpm_linear_beta")


def _per_example(values: np.ndarray, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Gather per-level constants at per-example levels t, shaped to broadcast over ``like``."""
    v = torch.as_tensor(values, dtype=like.dtype, device=like.device)[t]
    return v.view(-1, *([1] * (like.dim() - 1)))


# Marginal of the diffusion: x_k = alpha_cum[k] x_0 + sigma_cum[k] eps.
def q_sample(sched: Schedule, x0: torch.Tensor, k: torch.Tensor, generator=None) -> torch.Tensor:
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return _per_example(sched.alpha_cum, k, x0) * x0 + _per_example(sched.sigma_cum, k, x0) * eps


# Training pairs for EBM level t (eq. 15-16): x_t ~ q(x_t | x_0),
# x_{t+1} = a[t+1] x_t + sigma[t+1] eps and the positive y_t = y_scale[t] x_t.
def diffused_pair(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, generator=None):
    x_t = q_sample(sched, x0, t, generator)
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    x_next = _per_example(sched.a, t + 1, x0) * x_t + _per_example(sched.sigma, t + 1, x0) * eps
    y_pos = _per_example(sched.y_scale, t, x0) * x_t
    return y_pos, x_next


# The mean of y_t = y_scale[t] x_t given x_{t+1} and x_0: x_t | x_0 ~ N(alpha_cum[t] x_0, sigma_cum[t]^2)
# and x_{t+1} | x_t ~ N(a[t+1] x_t, sigma[t+1]^2) are conjugate (DDPM, Ho et al. 2020, eq. 7):
#   E[x_t | x_{t+1}, x_0] = (sigma[t+1]^2 alpha_cum[t] x_0 + sigma_cum[t]^2 a[t+1] x_{t+1})
#                           / (sigma[t+1]^2 + a[t+1]^2 sigma_cum[t]^2).
def posterior_mean(sched: Schedule, x0: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s2, a = sched.sigma[1:] ** 2, sched.a[1:]
    c0 = s2 * sched.alpha_cum[:-1] / (s2 + a**2 * sched.sigma_cum[:-1] ** 2)
    c1 = sched.sigma_cum[:-1] ** 2 * a / (s2 + a**2 * sched.sigma_cum[:-1] ** 2)
    return _per_example(sched.y_scale, t, x0) * (_per_example(c0, t, x0) * x0 + _per_example(c1, t, x0) * x_next)
