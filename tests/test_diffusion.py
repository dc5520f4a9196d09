"""Noise schedules (the released code's values, tabulated below) and the diffusion of eq. 15 against closed forms."""
import numpy as np
import pytest
import torch

from drl.diffusion import (Schedule, diffused_pair, linear_sigma2_schedule, make_schedule, posterior_mean,
                           q_sample, released_schedule)
from drl.energy import langevin_step_sizes
from drl.objectives import loss_weights
from drl.energy import ConditionalEBM
from oracles import QuadraticNet

# The released code's T6 schedule as it prints it (sigma, a, sigma_cum per step 0..6; Langevin step
# sizes squared and loss weights per level 0..5), to the digits it prints
REF_SIGMA = [0.01, 0.3237, 0.5165, 0.6322, 0.7132, 0.7734, 0.9997]
REF_A = [0.99995, 0.9462, 0.8563, 0.7748, 0.7009, 0.6340, 0.0228]
REF_SIGMA_CUM = [0.01, 0.3238, 0.5862, 0.7785, 0.8980, 0.9603, 0.99998]
REF_S2 = [2.1e-5, 1.7e-3, 4.7e-3, 7.9e-3, 1.07e-2, 1.92e-2]       # released step sizes squared
REF_WEIGHTS = [1, .627, .512, .454, .419, .324]                    # released loss weights


def test_released_t6_schedule_matches_reference_table():
    s = released_schedule(6)
    assert s.T == 6
    np.testing.assert_allclose(s.sigma, REF_SIGMA, atol=1e-4)
    np.testing.assert_allclose(s.a, REF_A, atol=1e-4)
    np.testing.assert_allclose(s.sigma_cum, REF_SIGMA_CUM, atol=1e-4)


def test_released_step_sizes_and_loss_weights_match_reference():
    s = released_schedule(6)
    s2 = langevin_step_sizes(s, "released", np.sqrt(2e-4)) ** 2
    np.testing.assert_allclose(s2, REF_S2, rtol=0.03)  # the table gives 2-3 significant digits
    ebm = ConditionalEBM(QuadraticNet(6, 2), s, "released", np.sqrt(2e-4), "net_over_s2")
    t = torch.arange(6)
    w = loss_weights(ebm, t, torch.zeros(6, 2), "released") / torch.tensor(s2, dtype=torch.float32)
    np.testing.assert_allclose(w.numpy(), REF_WEIGHTS, atol=1e-3)
    np.testing.assert_allclose(loss_weights(ebm, t, torch.zeros(6, 2), "uniform").numpy(), 1.0)


def test_released_schedule_rejects_T_outside_its_formula():
    for T in (1, 502, 1000):
        with pytest.raises(ValueError, match="2 <= T <= 501"):
            released_schedule(T)


def test_linear_sigma2_is_ddpm_linear_beta_for_t1k():
    s = make_schedule({"schedule": "ddpm_linear_beta", "T": 1000, "top_level": "conditional"})
    np.testing.assert_allclose(s.sigma[1:] ** 2, np.linspace(1e-4, 0.02, 1000), rtol=1e-12)
    assert s.sigma[0] == 0 and s.T == 1000
    # sigma^2 increases linearly for any T
    s6 = linear_sigma2_schedule(6, 0.01, 0.3)
    assert np.allclose(np.diff(s6.sigma[1:] ** 2), (0.3 - 0.01) / 5)


def test_paper_step_size_is_b_sigma():
    s = linear_sigma2_schedule(4, 0.01, 0.2)
    np.testing.assert_allclose(langevin_step_sizes(s, "paper", 0.3), 0.3 * s.sigma[1:])
    with pytest.raises(ValueError, match="lightly noised"):
        langevin_step_sizes(s, "released", 0.3)


def test_marginal_top_level_has_scale_one_and_no_tether():
    s = released_schedule(6, top_level="marginal")
    assert s.y_scale[-1] == 1.0 and s.tether_inv_var[-1] == 0.0
    np.testing.assert_allclose(s.y_scale[:-1], s.a[1:-1])
    np.testing.assert_allclose(s.tether_inv_var[:-1], 1 / s.sigma[1:-1] ** 2)
    with pytest.raises(ValueError):
        Schedule(sigma=np.array([0.0, 1.5]))


@pytest.mark.parametrize("sched", [released_schedule(6), linear_sigma2_schedule(5, 0.02, 0.4)])
def test_diffused_marginals_and_pairs_match_closed_form(sched):
    """Gaussian data N(m, s^2): x_k ~ N(alpha_k m, v_k = alpha_k^2 s^2 + sigma_cum_k^2); with
    y_t = c x_t and x_{t+1} = a x_t + sigma eps the pair has
    Cov = [[c^2 v, c a v], [c a v, a^2 v + sigma^2]]."""
    g = torch.Generator().manual_seed(0)
    n, m, s = 200_000, 0.7, 0.5
    x0 = m + s * torch.randn(n, 1, generator=g, dtype=torch.float64)
    for k in range(sched.T + 1):
        xk = q_sample(sched, x0, torch.full((n,), k), g)
        al, sc = sched.alpha_cum[k], sched.sigma_cum[k]
        assert abs(xk.mean().item() - al * m) < 0.01
        assert abs(xk.var().item() / (al**2 * s**2 + sc**2) - 1) < 0.015
    for t in range(sched.T):
        y, xn = diffused_pair(sched, x0, torch.full((n,), t), g)
        v = sched.alpha_cum[t] ** 2 * s**2 + sched.sigma_cum[t] ** 2
        c, a = sched.y_scale[t], sched.a[t + 1]
        cov = np.cov(torch.cat([y, xn], 1).T.numpy())
        np.testing.assert_allclose(cov, [[c * c * v, c * a * v], [c * a * v, a * a * v + sched.sigma[t + 1] ** 2]],
                                   rtol=0.02, atol=2e-3)


@pytest.mark.parametrize("sched", [released_schedule(6, top_level="conditional"), linear_sigma2_schedule(5, 0.01, 0.2)],
                         ids=["released_sigma0", "clean_level0"])
def test_posterior_mean_is_the_regression_of_the_positive_on_its_pair_and_data(sched):
    """(y_t, x_{t+1}, x_0) are jointly Gaussian for Gaussian x_0, so E[y_t | x_{t+1}, x_0] is the least
    squares regression of y_t on (x_0, x_{t+1}); its residual is uncorrelated with both."""
    g = torch.Generator().manual_seed(2)
    n = 200_000
    x0 = 0.3 + 0.6 * torch.randn(n, 1, generator=g, dtype=torch.float64)
    for t in range(sched.T):
        tt = torch.full((n,), t)
        y, xn = diffused_pair(sched, x0, tt, g)
        m = posterior_mean(sched, x0, xn, tt)
        design = torch.cat([x0, xn], 1)
        coef = torch.linalg.lstsq(design, y).solution.flatten()
        exact = [posterior_mean(sched, torch.ones(1, 1, dtype=torch.float64), torch.zeros(1, 1, dtype=torch.float64),
                                tt[:1]).item(),
                 posterior_mean(sched, torch.zeros(1, 1, dtype=torch.float64), torch.ones(1, 1, dtype=torch.float64),
                                tt[:1]).item()]
        np.testing.assert_allclose(coef.numpy(), exact, atol=4e-3)
        resid = y - m
        for z in (x0, xn):   # covariance with the residual, in units of sd(y) sd(z) (the residual may be 0)
            assert abs(((resid - resid.mean()) * (z - z.mean())).mean()) < 0.01 * y.std() * z.std()
    # a clean level 0 (sigma_0 = 0) is known exactly from x_0
    if sched.sigma[0] == 0:
        y, xn = diffused_pair(sched, x0[:5], torch.zeros(5, dtype=torch.long), g)
        torch.testing.assert_close(posterior_mean(sched, x0[:5], xn, torch.zeros(5, dtype=torch.long)), y)


def test_pairs_use_per_example_levels():
    """A batch mixing levels must give each example its own level's statistics."""
    sched = released_schedule(6, top_level="conditional")
    g = torch.Generator().manual_seed(1)
    n = 60_000
    x0 = torch.zeros(n, 1, dtype=torch.float64)
    t = torch.arange(n) % 6
    y, xn = diffused_pair(sched, x0, t, g)
    for lvl in range(6):
        var = (xn[t == lvl] - y[t == lvl]).var().item()
        assert abs(var / sched.sigma[lvl + 1] ** 2 - 1) < 0.05
