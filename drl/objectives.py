"""Training objectives.  Each returns per-example losses; the training loop reduces them.

* Recovery likelihood (Algorithm 1): negatives y^- from MCMC on p(y_t | x_{t+1}) started at
  x_{t+1} with the live weights; the gradient is d/dtheta [f(y^-, t) - f(y^+, t)].
* Denoising score matching on the normal approximation (eq. 14; Table 2 "DSM" row).
* Marginal likelihood with short-run MCMC (Table 2 first row, T = 1, K = 180) is the recovery
  likelihood with T = 1, sigma_1 = 1 and a marginal top level: x_1 is pure noise, there is no
  tether, so the chains are noise-initialised short-run chains on f(x, 0) [Nijkamp et al.].
"""
from __future__ import annotations

import torch

from drl.energy import ConditionalEBM
from drl.mcmc import recovery_sample
from drl.noise import RandnLike
from drl.power_iteration import released_call_structure


def loss_weights(ebm: ConditionalEBM, t: torch.Tensor, like: torch.Tensor, rule: str) -> torch.Tensor:
    """Per-example weight on f(y^+) - f(y^-).

    ``uniform`` (paper Alg. 1): 1.  ``released``: the released code's loss
    -(net(y^+) - net(y^-)) sigma_1 / sigma_{t+1} on the raw network output, i.e.
    f_scale[t] * sigma_1 / sigma_{t+1} on f.
    """
    if rule == "uniform":
        return torch.ones(len(t), dtype=like.dtype, device=like.device)
    if rule == "released":
        sigma_next = ebm.per_level("sigma_next", t, like).view(-1)
        return ebm.per_level("f_scale", t, like).view(-1) * float(ebm.levels["sigma_next"][0]) / sigma_next
    raise ValueError(f"unknown objective.loss_weights {rule!r}; use 'uniform' or 'released'")


# Algorithm 1: per-example loss w_t (f(y^-, t) - f(y^+, t)) with y^- from K steps of eq. 17
# (or eq. 12 when K = 0).
def recovery_likelihood_loss(ebm: ConditionalEBM, y_pos: torch.Tensor, x_next: torch.Tensor,
                             t: torch.Tensor, K: int, weights: str = "uniform",
                             noise_scale: float = 1.0, randn_like: RandnLike = torch.randn_like):
    y_neg = recovery_sample(ebm, x_next, t, K, noise_scale, randn_like)
    return loss_given_negatives(ebm, y_pos, y_neg, t, weights)


def loss_given_negatives(ebm: ConditionalEBM, y_pos: torch.Tensor, y_neg: torch.Tensor,
                         t: torch.Tensor, weights: str = "uniform"):
    """The per-example loss w_t (f(y^-, t) - f(y^+, t)) on given negatives.  f(y^+) and f(y^-) in
    one batched call, or under ``energy.sn_power_iteration: released`` (training mode) in two,
    pos first, as the released code (each call runs its own power iterations)."""
    if released_call_structure(ebm):
        f_pos, f_neg = ebm(y_pos, t), ebm(y_neg, t)
    else:
        f = ebm(torch.cat([y_pos, y_neg]), torch.cat([t, t]))
        f_pos, f_neg = f.chunk(2)
    loss = loss_weights(ebm, t, y_pos, weights) * (f_neg - f_pos)
    return loss, {"f_pos": f_pos.detach(), "f_neg": f_neg.detach()}


# Eq. 14: (1 / (2 sigma^2)) || y_t - (x_{t+1} + sigma^2 grad f(x_{t+1}, t)) ||^2, sigma = sigma_{t+1},
# times sigma_cum_{t+1}^2 / sigma_{t+1}^2 under ``weights="simple"`` (DDPM's L_simple: with y_t^+ at its
# posterior mean this is 1/2 || eps + sigma_cum_{t+1} grad f ||^2, the noise-prediction error, equal per level).
def dsm_loss(ebm: ConditionalEBM, y_pos: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor,
             weights: str = "uniform"):
    sigma2 = ebm.per_level("sigma_next", t, x_next) ** 2
    x_next = x_next.detach().requires_grad_(True)
    f, grad = ebm.score(x_next, t, create_graph=True)
    resid = y_pos - (x_next + sigma2 * grad)
    loss = (resid.flatten(1) ** 2).sum(1) / (2 * sigma2.view(-1))
    if weights == "simple":
        snr = torch.as_tensor(ebm.sched.sigma_cum[1:] ** 2 / ebm.sched.sigma[1:] ** 2, device=t.device)[t]
        loss = loss * snr.to(loss.dtype)
    elif weights != "uniform":
        raise ValueError(f"objective.loss_weights {weights!r} is not defined for dsm; use 'uniform' or 'simple'")
    return loss, {"f_pos": f.detach(), "f_neg": f.detach()}
