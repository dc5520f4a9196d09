"""Exact evaluation of 2-D EBMs by quadrature: normalise exp f(y, t) on a grid."""
from __future__ import annotations


import numpy as np
import torch

from drl.energy import ConditionalEBM, model_device


def grid(extent: float, n: int):
    """Cell centres of an n x n grid over [-extent, extent]^2, and the cell area."""
    h = 2 * extent / n
    c = -extent + h * (np.arange(n) + 0.5)
    xx, yy = np.meshgrid(c, c, indexing="xy")
    return np.stack([xx.ravel(), yy.ravel()], 1), h * h


@torch.no_grad()
def energy_values(ebm: ConditionalEBM, y: np.ndarray, t: int, chunk: int = 65536) -> np.ndarray:
    device = model_device(ebm)
    out = []
    for i in range(0, len(y), chunk):
        yy = torch.as_tensor(y[i:i + chunk], dtype=torch.float32, device=device)
        out.append(ebm(yy, torch.full((len(yy),), t, dtype=torch.long, device=device)).double().cpu().numpy())
    return np.concatenate(out)


# Normalised log density of x_t under EBM level t: p(y_t) = exp f(y_t, t) / Z_t (eq. 32), with
# log Z_t by quadrature in y, and the change of variables x_t = y_t / s (Section 3.1):
# log g(x) = log p(s x) + D log s.
class LevelDensity:
    def __init__(self, ebm: ConditionalEBM, t: int, extent: float, n: int):
        self.ebm, self.t = ebm, t
        self.scale = float(ebm.levels["y_scale"][t])
        self.x_grid, self.cell = grid(extent, n)
        f = energy_values(ebm, self.scale * self.x_grid, t)
        # integrate over x: the x-grid cell maps to a y-cell of area scale^2 * cell
        self.log_z = float(np.logaddexp.reduce(f) + np.log(self.cell * self.scale**2))
        self.log_g_grid = f - self.log_z + 2 * np.log(self.scale)

    def log_prob(self, x: np.ndarray) -> np.ndarray:
        return energy_values(self.ebm, self.scale * np.asarray(x, float), self.t) - self.log_z + 2 * np.log(self.scale)


# KL(p_data || p_model) = integral p_data (log p_data - log p_model), by midpoint quadrature.
def kl_data_model(log_p_data_grid: np.ndarray, log_p_model_grid: np.ndarray, cell: float) -> float:
    m = np.isfinite(log_p_data_grid)
    log_mass = np.logaddexp.reduce(log_p_data_grid[m]) + np.log(cell)  # ~0 when the grid covers p_data
    log_p = log_p_data_grid[m] - log_mass
    return float(np.sum(np.exp(log_p) * (log_p - log_p_model_grid[m])) * cell)
