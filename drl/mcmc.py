"""MCMC for the conditional EBMs: Langevin dynamics (eq. 17) and the normal approximation (eq. 12)."""
from __future__ import annotations

import torch

from drl import perf
from drl.energy import ConditionalEBM


def _check_noise(noise: list[torch.Tensor] | None, steps: int) -> None:
    if noise is not None and len(noise) != steps:
        raise ValueError(f"supplied noise has {len(noise)} tensors for {steps} sampling steps")


# Eq. 17, K steps, started at y = x_{t+1} unless ``y`` is given:
#   y <- y + delta_t^2 / 2 (grad_y f(y, t) + (x_{t+1} - y) / sigma_{t+1}^2) + noise_scale delta_t eps
# (the tether term vanishes at a marginal top level).  No Metropolis correction.
# ``noise``: the K eps_tau to use instead of drawing them (interpolation, Section 4.1).
def langevin(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor, K: int,
             noise_scale: float = 1.0, generator=None, y: torch.Tensor | None = None,
             noise: list[torch.Tensor] | None = None) -> torch.Tensor:
    _check_noise(noise, K)
    y = (x_next if y is None else y).detach().clone()
    x_next = x_next.detach()
    half_d2 = 0.5 * ebm.per_level("delta", t, y) ** 2
    d_noise = noise_scale * ebm.per_level("delta", t, y)
    inv_var = ebm.per_level("tether_inv_var", t, y)
    eps = torch.empty(y.shape, dtype=y.dtype, device=y.device)

    def draw(k: int) -> None:   # into eps: the values torch.randn(y.shape, generator=generator) returns
        if noise is None:
            torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device, out=eps)
        else:
            eps.copy_(noise[k])

    released = perf.released_call_structure(ebm)   # sn_power_iteration: released, training mode
    with perf.chain_score(ebm) as score:
        # the t-only part of the network once per chain; under ``released`` in every call, as there
        ctx = None if released else ebm.time_context(t)

        def step() -> None:
            # the update above in place, each operation as written there (the result is the same bitwise)
            drift = x_next - y
            drift.mul_(inv_var).add_(score(y, t, ctx)[1]).mul_(half_d2)
            y.add_(drift).add_(eps.mul_(d_noise))

        perf.run_steps(step, draw, K, perf.CudaGraph() if ebm.perf.cuda_graphs else None)
        if released:   # the released sampler's (K + 1)-th evaluation, at y_K: unused but for its power iterations
            with torch.no_grad():
                ebm(y, t)
    return y


# Eq. 12: y = x_{t+1} + sigma_{t+1}^2 grad f(x_{t+1}, t) + noise_scale sigma_{t+1} eps,
# a sample of the normal approximation (eq. 11) of p(y_t | x_{t+1}).
# ``eps``: the noise to use instead of drawing it (interpolation, Section 4.1).
def normal_approximation(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor,
                         noise_scale: float = 1.0, generator=None,
                         eps: torch.Tensor | None = None) -> torch.Tensor:
    if (ebm.per_level("tether_inv_var", t, x_next) == 0).any():
        raise ValueError("the normal approximation (K = 0) needs a conditional level; "
                         "a marginal top level has no tether (set diffusion.top_level: conditional)")
    sigma = ebm.per_level("sigma_next", t, x_next)
    _, grad = ebm.score(x_next, t)
    if eps is None:
        eps = torch.randn(x_next.shape, generator=generator, dtype=x_next.dtype, device=x_next.device)
    return (x_next + sigma**2 * grad + noise_scale * sigma * eps).detach()


def recovery_sample(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor, K: int,
                    noise_scale: float = 1.0, generator=None,
                    noise: list[torch.Tensor] | None = None) -> torch.Tensor:
    """A sample of p(y_t | x_{t+1}): K Langevin steps, or the normal approximation when K = 0.
    ``noise``: the eps to use instead of drawing them, one per step (one for K = 0)."""
    if K == 0:
        _check_noise(noise, 1)
        eps = None if noise is None else noise[0]
        return normal_approximation(ebm, x_next, t, noise_scale, generator, eps)
    return langevin(ebm, x_next, t, K, noise_scale, generator, noise=noise)
