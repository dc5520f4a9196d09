"""Short training runs on Gaussian / Gaussian-mixture data recover the closed-form energies."""
import numpy as np
import pytest
import torch

from drl.diffusion import diffused_pair, linear_sigma2_schedule, posterior_mean
from drl.energy import ConditionalEBM
from drl.noise import from_generator
from drl.objectives import dsm_loss, recovery_likelihood_loss
from oracles import GaussianMixtureData, QuadraticNet


def _fit(ebm, data, objective, iters, K=0, lr=0.05, batch=1024, seed=0, positive="sample"):
    g = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.Adam(ebm.parameters(), lr=lr)
    sched = ebm.sched
    for it in range(iters):
        for grp in opt.param_groups:  # decay so the stochastic estimate settles
            grp["lr"] = lr * (0.02 ** (it / iters))
        x0 = torch.tensor(data.sample(batch, rng), dtype=torch.float32)
        t = torch.randint(sched.T, (batch,), generator=g)
        y, xn = diffused_pair(sched, x0, t, g)
        if positive == "posterior_mean":
            y = posterior_mean(sched, x0, xn, t)
        if objective == "dsm":
            loss, _ = dsm_loss(ebm, y, xn, t)
        else:
            loss, _ = recovery_likelihood_loss(ebm, y, xn, t, K, "uniform", 1.0, from_generator(g))
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    return ebm


def test_recovery_likelihood_recovers_closed_form_energy():
    """Gaussian data: log p(y_t) = -|y - mu_t|^2 / (2 tau_t^2) + const.  A per-level quadratic
    energy trained by recovery likelihood (Alg. 1; Langevin with enough steps to mix) recovers
    mu_t and tau_t^2 (the Langevin discretisation bias is O(b^2 sigma^2 / tau^2), under 1%)."""
    data = GaussianMixtureData([[0.6, -0.4]], [0.5])
    sched = linear_sigma2_schedule(3, 0.05, 0.2)
    ebm = ConditionalEBM(QuadraticNet(sched.T, 2), sched, "paper", 0.4, "plain")
    _fit(ebm, data, "recovery_likelihood", iters=500, K=60)
    for t in range(sched.T):
        mu, tau, _ = data.level(sched, t)
        np.testing.assert_allclose(ebm.net.mu[t].detach().numpy(), mu[0], atol=0.03)
        assert ebm.net.log_v[t].exp().item() / tau[0] ** 2 == pytest.approx(1, abs=0.06)


@pytest.mark.parametrize("positive", ["sample", "posterior_mean"])
def test_dsm_learns_the_score_of_the_noisier_marginal(positive):
    """DSM (eq. 14) makes grad f(x~) the score of p(x_{t+1}) (Tweedie), not of p(y_t): for Gaussian
    data the learned variance is tau_t^2 + sigma_{t+1}^2 exactly (the O(sigma^2) gap of Sec. 3.4 and
    Appendix A.3).  ``objective.positive: posterior_mean`` (y_t^+ replaced by E[y_t | x_{t+1}, x_0])
    changes eq. 14 by a constant, so it reaches the same fixed point."""
    data = GaussianMixtureData([[0.6, -0.4]], [0.5])
    sched = linear_sigma2_schedule(3, 0.05, 0.2)
    ebm = ConditionalEBM(QuadraticNet(sched.T, 2), sched, "paper", 0.4, "plain")
    _fit(ebm, data, "dsm", iters=500, positive=positive)
    for t in range(sched.T):
        mu, tau, _ = data.level(sched, t)
        np.testing.assert_allclose(ebm.net.mu[t].detach().numpy(), mu[0], atol=0.03)
        target = tau[0] ** 2 + sched.sigma[t + 1] ** 2
        assert ebm.net.log_v[t].exp().item() / target == pytest.approx(1, abs=0.03)


def test_dsm_on_the_posterior_mean_has_the_same_gradient_with_far_less_variance():
    """At 100 levels of DDPM-like steps (sigma^2 from 1e-4 to 0.02) one recovery pair's y_t carries
    noise of variance ~sigma_{t+1}^2 around its mean given (x_{t+1}, x_0), far more than the score's
    signal: the posterior-mean positives give the same expected DSM gradient at a fraction of the
    variance.  Gradients at a fixed, untrained quadratic energy, over 400 batches of 64."""
    data = GaussianMixtureData([[0.6, -0.4]], [0.5])
    sched = linear_sigma2_schedule(100, 1e-4, 0.02)
    ebm = ConditionalEBM(QuadraticNet(sched.T, 2), sched, "paper", 1.0, "plain")
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    grads = {"sample": [], "posterior_mean": []}
    for _ in range(400):
        x0 = torch.tensor(data.sample(64, rng), dtype=torch.float32)
        t = torch.randint(sched.T, (64,), generator=g)
        y, xn = diffused_pair(sched, x0, t, g)
        for positive, y_pos in (("sample", y), ("posterior_mean", posterior_mean(sched, x0, xn, t))):
            ebm.zero_grad()
            dsm_loss(ebm, y_pos, xn, t)[0].mean().backward()
            grads[positive].append(torch.cat([p.grad.flatten() for p in ebm.parameters()]).clone())
    gs, gp = torch.stack(grads["sample"]), torch.stack(grads["posterior_mean"])
    se = (gs - gp).std(0) / len(gs) ** 0.5        # the paired difference of the two means
    assert ((gs.mean(0) - gp.mean(0)).abs() <= 5 * se + 1e-6).all()
    assert gp.var(0).sum() < 0.1 * gs.var(0).sum()


def test_recovery_likelihood_with_normal_approximation_negatives():
    """K = 0 (Table 2 'T = 1000, K = 0'): negatives from eq. 12.  For Gaussian data the fixed point
    is in closed form: matching Var(y^-) = (1 - r)^2 (tau^2 + sigma^2) + sigma^2 to tau^2 with
    r = sigma^2 / tau_hat^2 gives tau_hat^2 = sigma^2 / (1 - sqrt((tau^2 - sigma^2) / (tau^2 + sigma^2)))."""
    data = GaussianMixtureData([[0.3, 0.2]], [0.6])
    sched = linear_sigma2_schedule(2, 0.02, 0.04)
    ebm = ConditionalEBM(QuadraticNet(sched.T, 2), sched, "paper", 0.5, "plain")
    _fit(ebm, data, "recovery_likelihood", iters=800, K=0, batch=4096)
    for t in range(sched.T):
        mu, tau, _ = data.level(sched, t)
        s2, tau2 = sched.sigma[t + 1] ** 2, tau[0] ** 2
        tau_hat2 = s2 / (1 - np.sqrt((tau2 - s2) / (tau2 + s2)))
        assert abs(tau_hat2 / tau2 - 1) > 0.01  # the approximation's fixed point is not the truth
        np.testing.assert_allclose(ebm.net.mu[t].detach().numpy(), mu[0], atol=0.04)
        assert ebm.net.log_v[t].exp().item() / tau_hat2 == pytest.approx(1, abs=0.05)


def test_mlp_learns_gaussian_mixture_score():
    """Mixture data, MLP energy, recovery likelihood: the learned score grad_y f(y, t) matches the
    closed-form score of the diffused mixture on samples of p(y_t) (relative L2 error)."""
    from drl.nets.mlp import MLPEnergy

    torch.manual_seed(0)
    data = GaussianMixtureData([[-1.0, 0.0], [1.0, 0.0]], [0.4, 0.4])
    sched = linear_sigma2_schedule(2, 0.05, 0.15)
    net = MLPEnergy(dim=2, width=64, depth=2, temb_dim=16, activation="silu")
    ebm = ConditionalEBM(net, sched, "paper", 0.45, "plain")  # ~4 relaxation times in K = 30 steps
    _fit(ebm, data, "recovery_likelihood", iters=600, K=30, lr=3e-3, batch=512)
    rng = np.random.default_rng(1)
    for t in range(sched.T):
        x0 = torch.tensor(data.sample(4000, rng), dtype=torch.float32)
        y, _ = diffused_pair(sched, x0, torch.full((4000,), t), torch.Generator().manual_seed(t))
        _, grad = ebm.score(y, torch.full((4000,), t))
        true = data.score(sched, t, y.double().numpy())
        rel = np.linalg.norm(grad.numpy() - true) / np.linalg.norm(true)
        assert rel < 0.25, f"level {t}: relative score error {rel:.3f}"
