"""drl/evaluate/quadrature.py: grid, KL(p_data || p_model) and the normalised level densities."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from drl.data.toy2d import TOYS
from drl.diffusion import linear_sigma2_schedule
from drl.energy import ConditionalEBM
from drl.evaluate.quadrature import LevelDensity, energy_values, grid, kl_data_model


def log_gauss(x: np.ndarray, mean, var: float) -> np.ndarray:
    """log N(x; mean, var I) in 2-D."""
    d2 = ((np.asarray(x, float) - np.asarray(mean, float)) ** 2).sum(-1)
    return -d2 / (2 * var) - np.log(2 * np.pi * var)


def kl_gauss(m1, s1, m2, s2, d=2) -> float:
    """KL(N(m1, s1^2 I) || N(m2, s2^2 I)) in d dimensions."""
    dm2 = float(((np.asarray(m1) - np.asarray(m2)) ** 2).sum())
    return d * np.log(s2 / s1) + (d * s1**2 + dm2) / (2 * s2**2) - d / 2


# ---------------------------------------------------------------- grid
def test_grid_cell_centres_and_area():
    pts, cell = grid(2.0, 4)
    assert pts.shape == (16, 2)
    assert cell == pytest.approx(1.0)
    np.testing.assert_allclose(np.unique(pts[:, 0]), [-1.5, -0.5, 0.5, 1.5])
    np.testing.assert_allclose(np.unique(pts[:, 1]), [-1.5, -0.5, 0.5, 1.5])
    # "xy" indexing: x runs fastest
    np.testing.assert_allclose(pts[:4], [[-1.5, -1.5], [-0.5, -1.5], [0.5, -1.5], [1.5, -1.5]])
    pts, cell = grid(3.0, 300)
    assert cell * len(pts) == pytest.approx(36.0)


# ---------------------------------------------------------------- KL
def test_kl_zero_when_model_equals_data():
    pts, cell = grid(6.0, 300)
    lp = log_gauss(pts, [0.3, -0.2], 0.7**2)
    assert kl_data_model(lp, lp, cell) == pytest.approx(0.0, abs=1e-10)
    # with -inf regions in the data density (checkerboard): still zero, not nan
    pts4, cell4 = grid(4.0, 200)
    lc = TOYS["checkerboard"].log_density(pts4)
    assert np.isinf(lc).any()
    assert kl_data_model(lc, lc, cell4) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("m1,s1,m2,s2", [
    ([0.3, -0.2], 0.7, [-0.1, 0.4], 1.1),
    ([0.0, 0.0], 1.0, [0.0, 0.0], 0.5),
    ([1.0, 0.5], 0.6, [0.0, 0.0], 1.0),
])
def test_kl_matches_closed_form_gaussians(m1, s1, m2, s2):
    pts, cell = grid(7.0, 600)
    kl = kl_data_model(log_gauss(pts, m1, s1**2), log_gauss(pts, m2, s2**2), cell)
    expected = kl_gauss(m1, s1, m2, s2)
    assert expected > 0.05
    assert kl == pytest.approx(expected, abs=1e-3)


def test_kl_is_not_symmetric_and_uses_data_as_weight():
    pts, cell = grid(7.0, 400)
    a, b = log_gauss(pts, [0, 0], 0.5**2), log_gauss(pts, [0, 0], 1.0**2)
    assert kl_data_model(a, b, cell) == pytest.approx(kl_gauss([0, 0], 0.5, [0, 0], 1.0), abs=1e-3)
    assert kl_data_model(b, a, cell) == pytest.approx(kl_gauss([0, 0], 1.0, [0, 0], 0.5), abs=1e-3)


# ---------------------------------------------------------------- LevelDensity
MU = np.array([0.3, -0.5])
VAR = 0.4


class QuadraticNet(nn.Module):
    """net(y, t) = -|y - mu|^2 / (2 v), whatever t: exp f is an unnormalised N(mu, v I) in y."""

    def __init__(self, mu=MU, var=VAR):
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))
        self.var = var

    def forward(self, y, t):
        return -((y - self.mu) ** 2).sum(-1) / (2 * self.var)


def make_ebm(top_level="conditional", **kw):
    sched = linear_sigma2_schedule(T=2, sigma2_min=0.1, sigma2_max=0.2, top_level=top_level)
    return ConditionalEBM(QuadraticNet(), sched, **kw), sched


def test_energy_values_chunks_and_matches_net():
    ebm, _ = make_ebm()
    y = np.random.default_rng(0).normal(size=(1000, 2))
    full = energy_values(ebm, y, 0)
    chunked = energy_values(ebm, y, 0, chunk=7)
    assert full.dtype == np.float64 and full.shape == (1000,)
    np.testing.assert_allclose(chunked, full)
    np.testing.assert_allclose(full, -((y - MU) ** 2).sum(1) / (2 * VAR), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t,sigma2", [(0, 0.1), (1, 0.2)])
def test_level_density_normaliser_and_change_of_variables(t, sigma2):
    ebm, sched = make_ebm()
    a = np.sqrt(1.0 - sigma2)                      # y_scale = a[t+1] = sqrt(1 - sigma[t+1]^2)
    assert sched.y_scale[t] == pytest.approx(a)
    ld = LevelDensity(ebm, t=t, extent=4.0, n=400)
    assert ld.scale == pytest.approx(a)
    # log Z = log integral exp f(y) dy over y-space = log(2 pi v)
    assert ld.log_z == pytest.approx(np.log(2 * np.pi * VAR), abs=1e-4)
    # x = y / a  ~  N(mu / a, v / a^2)
    x = np.random.default_rng(1).normal(scale=0.8, size=(500, 2)) + MU / a
    expected = log_gauss(x, MU / a, VAR / a**2)
    np.testing.assert_allclose(ld.log_prob(x), expected, atol=1e-4)
    # ... and the same on the grid, which integrates to one over x
    np.testing.assert_allclose(ld.log_g_grid, log_gauss(ld.x_grid, MU / a, VAR / a**2), atol=1e-4)
    assert np.exp(ld.log_g_grid).sum() * ld.cell == pytest.approx(1.0, abs=1e-5)
    # the x-density is not the y-density: the change of variables matters (a != 1)
    assert not np.allclose(ld.log_prob(x), log_gauss(x, MU, VAR), atol=1e-2)


def test_level_density_marginal_top_level_has_unit_scale():
    ebm, _ = make_ebm(top_level="marginal")
    ld = LevelDensity(ebm, t=1, extent=4.0, n=400)
    assert ld.scale == 1.0
    assert ld.log_z == pytest.approx(np.log(2 * np.pi * VAR), abs=1e-4)
    x = np.array([[0.0, 0.0], [0.3, -0.5], [1.0, 1.0]])
    np.testing.assert_allclose(ld.log_prob(x), log_gauss(x, MU, VAR), atol=1e-4)


def test_level_density_applies_f_scale():
    """net_over_s2 divides the net by delta^2: a Gaussian with variance v * delta^2 in y."""
    ebm, sched = make_ebm(parameterisation="net_over_s2", b=0.5)
    delta = 0.5 * np.sqrt(0.1)                     # paper rule: delta_0 = b sigma[1]
    assert ebm.levels["delta"][0] == pytest.approx(delta)
    v = VAR * delta**2
    a = sched.y_scale[0]
    ld = LevelDensity(ebm, t=0, extent=2.0, n=400)
    assert ld.log_z == pytest.approx(np.log(2 * np.pi * v), abs=1e-3)
    x = MU / a + np.array([[0.0, 0.0], [0.05, -0.02]])
    np.testing.assert_allclose(ld.log_prob(x), log_gauss(x, MU / a, v / a**2), atol=1e-3)
