"""MCMC for the conditional EBMs: Langevin dynamics (eq. 17) and the normal approximation (eq. 12).
Every Gaussian draw comes from ``randn_like`` (drl/noise.py)."""
from __future__ import annotations

import torch

from drl.energy import ConditionalEBM, recovery_log_density
from drl.noise import RandnLike
from drl.perf import chain_score
from drl.power_iteration import released_call_structure


# Eq. 17, K steps on eq. 16's log-density, started at y = x_{t+1} unless ``y`` is given:
#   y <- y + delta_t^2 / 2 grad_y log p(y | x_{t+1}) + noise_scale delta_t eps
# (the tether term vanishes at a marginal top level).  No Metropolis correction.
def langevin(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor, K: int, noise_scale: float = 1.0,
             randn_like: RandnLike = torch.randn_like, y: torch.Tensor | None = None) -> torch.Tensor:
    y = (x_next if y is None else y).detach()
    x_next = x_next.detach()
    half_d2 = 0.5 * ebm.per_level("delta", t, y) ** 2
    d_noise = noise_scale * ebm.per_level("delta", t, y)
    released = released_call_structure(ebm)
    with chain_score(ebm) as score:
        # the t-only part of the network once per chain; under ``released`` in every call, as there
        log_density = recovery_log_density(ebm, x_next, t, score, None if released else ebm.time_context(t))
        for _ in range(K):
            y = y + half_d2 * log_density(y)[1] + d_noise * randn_like(y)
        if released:   # the released sampler's (K + 1)-th evaluation, at y_K: unused but for its power iterations
            with torch.no_grad():
                ebm(y, t)
    return y


# Eq. 12: y = x_{t+1} + sigma_{t+1}^2 grad f(x_{t+1}, t) + noise_scale sigma_{t+1} eps,
# a sample of the normal approximation (eq. 11) of p(y_t | x_{t+1}).
def normal_approximation(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor, noise_scale: float = 1.0,
                         randn_like: RandnLike = torch.randn_like) -> torch.Tensor:
    if (ebm.per_level("tether_inv_var", t, x_next) == 0).any():
        raise ValueError("the normal approximation (K = 0) needs a conditional level; "
                         "a marginal top level has no tether (set diffusion.top_level: conditional)")
    sigma = ebm.per_level("sigma_next", t, x_next)
    _, grad = ebm.score(x_next, t)
    return (x_next + sigma**2 * grad + noise_scale * sigma * randn_like(x_next)).detach()


def recovery_sample(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor, K: int, noise_scale: float = 1.0,
                    randn_like: RandnLike = torch.randn_like) -> torch.Tensor:
    """A sample of p(y_t | x_{t+1}): K Langevin steps, or the normal approximation when K = 0."""
    if K == 0:
        return normal_approximation(ebm, x_next, t, noise_scale, randn_like)
    return langevin(ebm, x_next, t, K, noise_scale, randn_like)
