"""Analytic oracles: Gaussian and Gaussian-mixture data, whose diffused marginals, recovery
conditionals p(y_t | x_{t+1}) and partition functions are known in closed form."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from drl.diffusion import Schedule


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
