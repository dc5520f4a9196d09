"""Langevin (eq. 17) and the normal approximation (eq. 12) against closed-form recovery
conditionals of Gaussian and Gaussian-mixture data."""
import numpy as np
import pytest
import torch

from drl.diffusion import linear_sigma2_schedule, released_schedule
from drl.energy import ConditionalEBM
from drl.mcmc import langevin, normal_approximation
from drl.noise import from_generator
from oracles import GaussianMixtureData, OracleNet

N_CHAINS = 20_000


def _ula_variance(prec, delta):
    """Stationary variance of unadjusted Langevin on a Gaussian with precision ``prec``:
    y' - m = (1 - delta^2 prec / 2)(y - m) + delta eps  =>  1 / (prec (1 - delta^2 prec / 4))."""
    return 1.0 / (prec * (1.0 - delta**2 * prec / 4.0))


@pytest.mark.parametrize("top_level", ["conditional", "marginal"])
def test_langevin_reaches_gaussian_recovery_conditional(top_level):
    """Gaussian data: p(y_t | x_{t+1}) is Gaussian with precision 1/tau^2 + 1/sigma^2.  Many
    Langevin steps from x_{t+1} must reach its mean exactly and the ULA variance of eq. 17's
    discretisation (tight: a wrong tether or step coefficient moves both)."""
    data = GaussianMixtureData([[0.5, -0.3, 0.2]], [0.6])
    sched = linear_sigma2_schedule(3, 0.05, 0.3, top_level=top_level)
    b = 0.3
    ebm = ConditionalEBM(OracleNet(data, sched), sched, "paper", b, "plain")
    g = torch.Generator().manual_seed(0)
    x_next = np.array([0.4, 0.1, -0.9])
    for t in range(sched.T):
        tt = torch.full((N_CHAINS,), t)
        xn = torch.tensor(x_next, dtype=torch.float32).expand(N_CHAINS, 3)
        y = langevin(ebm, xn, tt, K=300, randn_like=from_generator(g)).double().numpy()
        w, means, var = data.recovery_posterior(sched, t, x_next)
        delta = ebm.levels["delta"][t]
        np.testing.assert_allclose(y.mean(0), means[0], atol=4 * np.sqrt(var[0] / N_CHAINS) + 1e-3)
        np.testing.assert_allclose(y.var(0), _ula_variance(1 / var[0], delta), rtol=0.04)


def test_langevin_per_example_levels_in_one_batch():
    """Chains at different levels in one batch each reach their own conditional."""
    data = GaussianMixtureData([[0.0, 0.0]], [1.0])
    sched = linear_sigma2_schedule(6, 0.05, 0.5)
    ebm = ConditionalEBM(OracleNet(data, sched), sched, "paper", 0.2, "plain")
    g = torch.Generator().manual_seed(1)
    t = torch.arange(6 * 5000) % 6
    xn = torch.full((len(t), 2), 0.5)
    y = langevin(ebm, xn, t, K=400, randn_like=from_generator(g)).double().numpy()
    for lvl in range(6):
        _, means, var = data.recovery_posterior(sched, lvl, np.array([0.5, 0.5]))
        yy = y[t.numpy() == lvl]
        assert np.allclose(yy.mean(0), means[0], atol=5 * np.sqrt(var[0] / len(yy)))
        assert abs(yy.var(0).mean() / _ula_variance(1 / var[0], ebm.levels["delta"][lvl]) - 1) < 0.06


def test_langevin_released_parameterisation_is_the_same_sampler():
    """net/s^2 with step s (released) and plain f with the same step give the same chain."""
    data = GaussianMixtureData([[0.2, 0.1]], [0.7])
    sched = released_schedule(6)
    b = np.sqrt(2e-4)  # the released code's b^2 = 2e-4
    plain = ConditionalEBM(OracleNet(data, sched), sched, "released", b, "plain")
    s2 = torch.tensor(plain.levels["delta"] ** 2, dtype=torch.float32)

    class Scaled(torch.nn.Module):  # net = f * s_t^2, so net / s_t^2 = f
        def __init__(self):
            super().__init__()
            self.inner = OracleNet(data, sched)

        def forward(self, y, t):
            return self.inner(y, t) * s2[t]

    released = ConditionalEBM(Scaled(), sched, "released", b, "net_over_s2")
    t = torch.arange(600) % 6
    xn = torch.randn(600, 2, generator=torch.Generator().manual_seed(2))
    y1 = langevin(plain, xn, t, 30, randn_like=from_generator(torch.Generator().manual_seed(3)))
    y2 = langevin(released, xn, t, 30, randn_like=from_generator(torch.Generator().manual_seed(3)))
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)


def test_langevin_reaches_gaussian_mixture_recovery_conditional():
    """Bimodal recovery conditional (mixture data, large sigma): Langevin matches the closed-form
    posterior mixture's mean and second moment."""
    data = GaussianMixtureData([[-0.8], [0.8]], [0.35, 0.35], [0.3, 0.7])
    sched = linear_sigma2_schedule(2, 0.5, 0.6)
    ebm = ConditionalEBM(OracleNet(data, sched), sched, "paper", 0.25, "plain")
    g = torch.Generator().manual_seed(4)
    x_next = np.array([0.1])
    n = 8000
    xn = torch.tensor(x_next, dtype=torch.float32).repeat(n, 1)
    y = langevin(ebm, xn, torch.zeros(n, dtype=torch.long), K=1200, randn_like=from_generator(g)).double().numpy()[:, 0]
    w, means, var = data.recovery_posterior(sched, 0, x_next)
    assert 0.2 < w.min()  # genuinely bimodal
    mean = (w * means[:, 0]).sum()
    second = (w * (means[:, 0] ** 2 + var)).sum()
    assert abs(y.mean() - mean) < 0.03
    assert abs((y**2).mean() / second - 1) < 0.04


def test_normal_approximation_exact_for_linear_energy():
    """Eq. 12 is exact when f is linear: p(y | x~) = N(x~ + sigma^2 c, sigma^2)."""
    c = torch.tensor([0.8, -1.5])

    class Linear(torch.nn.Module):
        def forward(self, y, t):
            return y @ c

    sched = linear_sigma2_schedule(2, 0.04, 0.09)
    ebm = ConditionalEBM(Linear(), sched, "paper", 0.5, "plain")
    g = torch.Generator().manual_seed(5)
    xn = torch.full((N_CHAINS, 2), 0.3)
    for t in range(2):
        y = normal_approximation(ebm, xn, torch.full((N_CHAINS,), t), randn_like=from_generator(g)).double()
        s2 = sched.sigma[t + 1] ** 2
        np.testing.assert_allclose(y.mean(0).numpy(), 0.3 + s2 * c.double().numpy(), atol=4 * np.sqrt(s2 / N_CHAINS))
        np.testing.assert_allclose(y.var(0).numpy(), s2, rtol=0.03)


def test_normal_approximation_first_order_for_quadratic_energy():
    """For quadratic f (Gaussian data) the exact conditional has precision 1/tau^2 + 1/sigma^2;
    eq. 11 drops the second-order term, so its mean and variance agree to O(sigma^2 / tau^2): at the
    T1k scale (sigma^2 = 1e-4) within 1e-3 relative, and the error shrinks linearly with sigma^2."""
    data = GaussianMixtureData([[0.0, 0.0]], [1.0])
    errs = []
    for s2 in (1e-4, 1e-3, 1e-2):
        sched = linear_sigma2_schedule(1, s2, s2)
        ebm = ConditionalEBM(OracleNet(data, sched), sched, "paper", 0.5, "plain")
        x_next = np.array([1.0, -2.0])
        xn = torch.tensor(x_next, dtype=torch.float32)[None]
        approx_mean = normal_approximation(ebm, xn, torch.zeros(1, dtype=torch.long), noise_scale=0.0)[0].double().numpy()
        _, means, var = data.recovery_posterior(sched, 0, x_next)
        errs.append((np.abs(approx_mean - means[0]).max() / np.abs(x_next - means[0]).max(), abs(s2 / var[0] - 1)))
    assert errs[0][0] < 1e-3 and errs[0][1] < 1e-3
    assert errs[1][1] / errs[0][1] == pytest.approx(10, rel=0.05)


def test_normal_approximation_refuses_marginal_top_level():
    data = GaussianMixtureData([[0.0]], [1.0])
    sched = linear_sigma2_schedule(2, 0.1, 0.2, top_level="marginal")
    ebm = ConditionalEBM(OracleNet(data, sched), sched, "paper", 0.5, "plain")
    with pytest.raises(ValueError, match="top_level"):
        normal_approximation(ebm, torch.zeros(2, 1), torch.tensor([0, 1]))
