"""Analytic oracles: Gaussian and Gaussian-mixture data, whose diffused marginals, recovery
conditionals p(y_t | x_{t+1}) and partition functions are known in closed form."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from drl.diffusion import Schedule, linear_sigma2_schedule
from drl.energy import ConditionalEBM
from drl.nets.mlp import MLPEnergy
from drl.nets.wrn import WRNEnergy


class GaussianMixtureData:
    """Isotropic mixture sum_k w_k N(m_k, s_k^2 I) in D dims (one component = Gaussian data)."""

    def __init__(self, means, stds, weights=None):
        self.means = np.atleast_2d(np.asarray(means, float))
        self.stds = np.asarray(stds, float).reshape(-1)
        K = len(self.means)
        self.weights = np.full(K, 1.0 / K) if weights is None else np.asarray(weights, float)

    @property
    def dim(self):
        return self.means.shape[1]

    def sample(self, n, rng):
        k = rng.choice(len(self.weights), size=n, p=self.weights)
        return self.means[k] + self.stds[k, None] * rng.standard_normal((n, self.dim))

    # The marginal of y_t = y_scale[t] x_t, x_t = alpha_cum[t] x_0 + sigma_cum[t] eps:
    # sum_k w_k N(c alpha m_k, c^2 (alpha^2 s_k^2 + sigma_cum^2) I), c = y_scale[t].
    def level(self, sched: Schedule, t: int):
        c, al, sc = sched.y_scale[t], sched.alpha_cum[t], sched.sigma_cum[t]
        return self.means * c * al, np.sqrt(c**2 * (al**2 * self.stds**2 + sc**2)), self.weights

    def recovery_posterior(self, sched: Schedule, t: int, x_next: np.ndarray):
        """p(y_t | x_{t+1}) for one x_{t+1}: x_{t+1} = y_t + sigma_{t+1} eps (or no tether at a
        marginal top level).  Returns (weights, means [K, D], variances [K])."""
        mu, tau, w = self.level(sched, t)
        inv_var = sched.tether_inv_var[t]
        prec = 1.0 / tau**2 + inv_var
        means = (mu / tau[:, None] ** 2 + inv_var * x_next[None]) / prec[:, None]
        if inv_var == 0:
            return w, means, 1.0 / prec
        s2 = 1.0 / inv_var
        logw = np.log(w) - 0.5 * ((x_next[None] - mu) ** 2).sum(1) / (tau**2 + s2) \
            - 0.5 * self.dim * np.log(tau**2 + s2)
        post_w = np.exp(logw - logw.max())
        return post_w / post_w.sum(), means, 1.0 / prec

    def score(self, sched: Schedule, t: int, y: np.ndarray) -> np.ndarray:
        """grad_y log p(y_t) in closed form."""
        mu, tau, w = self.level(sched, t)
        d = y[:, None, :] - mu[None]
        logc = np.log(w) - 0.5 * (d**2).sum(-1) / tau**2 - self.dim * np.log(tau)
        r = np.exp(logc - logc.max(1, keepdims=True))
        r /= r.sum(1, keepdims=True)
        return -(r[..., None] * d / tau[None, :, None] ** 2).sum(1)


class OracleNet(nn.Module):
    """net(y, t) = log p(y_t) (up to a constant) of a GaussianMixtureData, per level."""

    def __init__(self, data: GaussianMixtureData, sched: Schedule):
        super().__init__()
        lv = [data.level(sched, t) for t in range(sched.T)]
        self.register_buffer("mu", torch.tensor(np.stack([m for m, _, _ in lv]), dtype=torch.float32))
        self.register_buffer("tau", torch.tensor(np.stack([s for _, s, _ in lv]), dtype=torch.float32))
        self.register_buffer("logw", torch.tensor(np.log(data.weights), dtype=torch.float32))

    def forward(self, y, t):
        d2 = ((y[:, None, :] - self.mu[t]) ** 2).sum(-1)
        tau = self.tau[t]
        return torch.logsumexp(self.logw - 0.5 * d2 / tau**2 - y.shape[1] * torch.log(tau), dim=1)


class QuadraticNet(nn.Module):
    """Learnable per-level isotropic quadratic: net(y, t) = -|y - mu_t|^2 / (2 exp(log_v_t))."""

    def __init__(self, T: int, dim: int):
        super().__init__()
        self.mu = nn.Parameter(torch.zeros(T, dim))
        self.log_v = nn.Parameter(torch.zeros(T))

    def forward(self, y, t):
        return -((y - self.mu[t]) ** 2).sum(1) / (2 * self.log_v[t].exp())


# ---------------------------------------------------------------- partition-function oracles
class OffsetNet(nn.Module):
    """net(y, t) + offsets[t].  Around an OracleNet (whose levels all have log Z_t = (D/2) log 2 pi
    in y-space) this gives known, level-dependent normalisers log Z_t = (D/2) log 2 pi + offsets[t]
    without changing any distribution."""

    def __init__(self, inner: nn.Module, offsets):
        super().__init__()
        self.inner = inner
        self.register_buffer("offsets", torch.as_tensor(np.asarray(offsets, float), dtype=torch.float32))

    def forward(self, y, t):
        return self.inner(y, t) + self.offsets[t]


def _x_level(data: GaussianMixtureData, sched: Schedule, k: int):
    """Mixture of x_k = alpha_cum[k] x_data + sigma_cum[k] eps, k = 0..T: (means [K, D], stds [K], w)."""
    al, sc = sched.alpha_cum[k], sched.sigma_cum[k]
    return data.means * al, np.sqrt(al**2 * data.stds**2 + sc**2), data.weights


def x_level_log_density(data: GaussianMixtureData, sched: Schedule, k: int, x: np.ndarray) -> np.ndarray:
    """Closed-form log density of the diffused data x_k at points x [n, D]."""
    m, s, w = _x_level(data, sched, k)
    d2 = ((x[:, None, :] - m[None]) ** 2).sum(-1)
    D = data.dim
    lc = np.log(w) - 0.5 * d2 / s**2 - D * np.log(s) - 0.5 * D * np.log(2 * np.pi)
    return np.logaddexp.reduce(lc, axis=1)


def sample_x_level(data: GaussianMixtureData, sched: Schedule, k: int, n: int, rng) -> np.ndarray:
    """Exact samples of the diffused data x_k, k = 0..T."""
    m, s, w = _x_level(data, sched, k)
    c = rng.choice(len(w), size=n, p=w)
    return m[c] + s[c, None] * rng.standard_normal((n, data.dim))


def exact_progressive_sample(data: GaussianMixtureData, sched: Schedule, n: int, rng) -> list[np.ndarray]:
    """Algorithm 2 with exact recovery conditionals (the limit of perfect MCMC): x_T ~ N(0, I), then
    y_t ~ p(y_t | x_{t+1}) in closed form (vectorised ``recovery_posterior``), x_t = y_t / y_scale[t].
    Returns [x_T, ..., x_0] (float64).  Exact in distribution when x_T ~ N(0, I) is the diffused
    marginal, or at a marginal top level (whose draw ignores x_T)."""
    x = rng.standard_normal((n, data.dim))
    xs = [x]
    for t in reversed(range(sched.T)):
        mu, tau, w = data.level(sched, t)
        inv_var = sched.tether_inv_var[t]
        prec = 1.0 / tau**2 + inv_var                                  # [K]
        if inv_var == 0:
            logw = np.broadcast_to(np.log(w), (n, len(w)))
            means = np.broadcast_to(mu[None], (n, *mu.shape))
        else:
            s2 = 1.0 / inv_var
            d2 = ((x[:, None, :] - mu[None]) ** 2).sum(-1)              # [n, K]
            logw = np.log(w) - 0.5 * d2 / (tau**2 + s2) - 0.5 * data.dim * np.log(tau**2 + s2)
            means = (mu[None] / tau[None, :, None] ** 2 + inv_var * x[:, None, :]) / prec[None, :, None]
        p = np.exp(logw - logw.max(1, keepdims=True))
        p /= p.sum(1, keepdims=True)
        c = (p.cumsum(1) < rng.random((n, 1))).sum(1).clip(max=len(w) - 1)
        y = means[np.arange(n), c] + np.sqrt(1.0 / prec[c])[:, None] * rng.standard_normal((n, data.dim))
        x = y / sched.y_scale[t]
        xs.append(x)
    return xs


# ---------------------------------------------------------------- HMC oracles (Section 4.2)
def sample_recovery_posterior(data: GaussianMixtureData, sched: Schedule, t: int, x_next: np.ndarray,
                              n: int, rng) -> np.ndarray:
    """n exact draws [n, D] of p(y_t | x_{t+1}) for one x_{t+1} (``recovery_posterior``)."""
    w, means, var = data.recovery_posterior(sched, t, x_next)
    k = rng.choice(len(w), size=n, p=w)
    return means[k] + np.sqrt(var[k])[:, None] * rng.standard_normal((n, data.dim))


def gaussian_hmc_acceptance(h: float, dim: int, n_leapfrog: int = 2, n: int = 400_000,
                            seed: int = 0) -> float:
    """Mean Metropolis acceptance probability of stationary HMC (unit mass) on an isotropic Gaussian
    N(m, s^2 I) in ``dim`` dimensions with leapfrog step h s.  In the coordinates q = (y - m) / s the
    leapfrog map is linear and depends on h alone, so E[min(1, exp(-dH))] is a function of
    (h, dim, L): evaluated here by Monte Carlo over (q, p) ~ N(0, I) (float64, error ~1e-3)."""
    r = np.random.default_rng(seed)
    q, p = r.standard_normal((2, n, dim))
    h0 = 0.5 * (q**2 + p**2).sum(1)
    p = p - 0.5 * h * q
    for i in range(n_leapfrog):
        q = q + h * p
        p = p - (h if i < n_leapfrog - 1 else 0.5 * h) * q
    return float(np.minimum(1.0, np.exp(h0 - 0.5 * (q**2 + p**2).sum(1))).mean())


# ---------------------------------------------------------------- tiny random networks
# For checks that hold for any f (batching, seeding, noise plumbing), not against a closed form.
def tiny_mlp_ebm() -> ConditionalEBM:
    torch.manual_seed(0)
    sched = linear_sigma2_schedule(3, 0.05, 0.3)
    return ConditionalEBM(MLPEnergy(dim=2, width=32, depth=2, temb_dim=8), sched, "paper", 0.3, "plain").eval()


def tiny_wrn_ebm() -> ConditionalEBM:
    torch.manual_seed(0)
    net = WRNEnergy(resolution=8, in_channels=3, ch=8, ch_mult=(1, 2), n_blocks=1, temb_dim=16)
    with torch.no_grad():  # give the zero-initialised convs non-trivial values
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return ConditionalEBM(net, linear_sigma2_schedule(3, 0.05, 0.3), "paper", 0.3, "net_over_s2").eval()
