"""The sequence of conditional EBMs f_theta(y, t) (paper eq. 16) around a backbone.

Two parameterisations (the paper's and the released code's, github.com/ruiqigao/recovery_likelihood):

* ``plain`` (paper): f(y, t) = net(y, t).
* ``net_over_s2`` (released code): f(y, t) = net(y, t) / s_t^2, where s_t is the
  Langevin step size of level t, so one Langevin step moves y by 0.5 grad net.

Optional base energy (``energy.base``; not in the paper):

* ``none`` (default): f as above.
* ``gaussian``: f(y, t) - |y|^2 / (2 s_t^2), the log-density of y_t = s_t x_t (s_t = y_scale[t])
  when x_t ~ N(0, I), added at every level.  For unit Gaussian data it is the exact energy of every
  level, so an untrained net already keeps the variance of the T1k sampler's 1000
  normal-approximation steps (each divides by a_{t+1} < 1); without it, a small, briefly trained
  net lets x_t grow severalfold over the chain.  The net learns the difference from the Gaussian.

Langevin step sizes per level (eq. 17 uses delta_t = b sigma_{t+1}):

* ``paper``:    delta_t = b sigma[t+1]
* ``released``: delta_t^2 = c_t b^2 sigma[t+1]^2 with c_t = sigma_cum[t] / sigma_cum[0]

The score grad_y f is computed by autograd in exactly one place: ``ConditionalEBM.score``.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from drl.diffusion import Schedule
from drl.power_iteration import check_mode


# Step size delta_t of eq. 17 for every EBM level t = 0..T-1.
def langevin_step_sizes(sched: Schedule, rule: str, b: float) -> np.ndarray:
    if b <= 0:
        raise ValueError(f"sampler.b must be positive, got {b}")
    if rule == "paper":
        return b * sched.sigma[1:]
    if rule == "released":
        if sched.sigma_cum[0] <= 0:
            raise ValueError("sampler.step_size 'released' needs a lightly noised level 0 "
                             "(diffusion.sigma0 > 0 or the released schedule): c_t divides by sigma_cum[0]")
        c = sched.sigma_cum[:-1] / sched.sigma_cum[0]
        return np.sqrt(c) * b * sched.sigma[1:]
    raise ValueError(f"unknown sampler.step_size {rule!r}; use 'paper' or 'released'")


def model_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer; CPU for one without tensors (the
    analytic oracle EBMs of the tests)."""
    for tensor in (*module.parameters(), *module.buffers()):
        return tensor.device
    return torch.device("cpu")


class ConditionalEBM(nn.Module):
    """f_theta(y, t) for t = 0..T-1 plus the per-level constants the samplers need."""

    def __init__(self, net: nn.Module, sched: Schedule, step_rule: str = "paper", b: float = 0.1,
                 parameterisation: str = "plain", base: str = "none", sn_power_iteration: str = "per_call"):
        super().__init__()
        if parameterisation not in ("plain", "net_over_s2"):
            raise ValueError(f"unknown energy.parameterisation {parameterisation!r}; use 'plain' or 'net_over_s2'")
        if base not in ("none", "gaussian"):
            raise ValueError(f"unknown energy.base {base!r}; use 'none' or 'gaussian'")
        self.base = base
        self.sn_power_iteration = check_mode(sn_power_iteration)   # drl/power_iteration.py
        self.net = net
        self.sched = sched
        self.parameterisation = parameterisation
        delta = langevin_step_sizes(sched, step_rule, b)
        # Per-level constants, each indexed by the EBM level t = 0..T-1.
        self.levels = {
            "delta": delta,
            "f_scale": delta**2 if parameterisation == "net_over_s2" else np.ones_like(delta),
            "y_scale": sched.y_scale,
            "tether_inv_var": sched.tether_inv_var,
            "sigma_next": sched.sigma[1:],
        }
        # The same constants as float64 buffers (not saved: they follow from the config), which move
        # with the model: a call then gathers on the device, with no host-to-device copy.
        for k, v in self.levels.items():
            self.register_buffer(f"level_{k}", torch.as_tensor(v, dtype=torch.float64), persistent=False)

    @property
    def T(self) -> int:
        return self.sched.T

    def per_level(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """A per-level constant (a key of ``self.levels``) gathered at t, broadcastable to ``like``."""
        return getattr(self, f"level_{name}")[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def forward(self, y: torch.Tensor, t: torch.Tensor, ctx=None) -> torch.Tensor:
        """f_theta(y, t), one value per example (``ctx``: the net's cached ``time_context(t)``), in y's
        dtype (under bf16 autocast, drl/perf.py, only the backbone computes in bf16)."""
        net = self.net(y, t) if ctx is None else self.net(y, t, ctx)
        f = net.to(y.dtype) / self.per_level("f_scale", t, y).view(-1)
        if self.base == "gaussian":
            f = f - 0.5 * (y / self.per_level("y_scale", t, y)).flatten(1).pow(2).sum(1)
        return f

    @torch.no_grad()
    def time_context(self, t: torch.Tensor):
        """The backbone's t-only computations, for samplers that hold t fixed (None if it has none)."""
        return self.net.time_context(t) if hasattr(self.net, "time_context") else None

    # The one place the score is computed: grad_y f_theta(y, t) by autograd.
    def score(self, y: torch.Tensor, t: torch.Tensor, create_graph: bool = False, ctx=None):
        with torch.enable_grad():
            y = y if y.requires_grad else y.detach().requires_grad_(True)
            f = self(y, t, ctx)
            (grad,) = torch.autograd.grad(f.sum(), y, create_graph=create_graph)
        return f, grad


# Eq. 16, the conditional the samplers draw y_t from given x_{t+1}:
#   log p(y | x_{t+1}) = f(y, t) - |x_{t+1} - y|^2 / (2 sigma_{t+1}^2) + const,
# the tether absent at a marginal top level (tether_inv_var 0).  ``score(y, t, ctx)`` gives f and
# grad_y f (a chain's, drl.perf.chain_score).  Langevin (eq. 17) follows the gradient, HMC also
# needs the value; the value is summed in float64, the gradient stays in y's dtype.
def recovery_log_density(ebm: ConditionalEBM, x_next: torch.Tensor, t: torch.Tensor, score, ctx=None):
    """y -> (log p(y | x_{t+1}) up to a constant, float64 [n]; its gradient in y)."""
    inv_var = ebm.per_level("tether_inv_var", t, x_next)

    def log_density(y: torch.Tensor):
        f, grad = score(y, t, ctx)
        diff = x_next - y
        tether = 0.5 * (inv_var.double() * diff.double() ** 2).flatten(1).sum(1)
        return f.detach().double() - tether, diff * inv_var + grad

    return log_density
