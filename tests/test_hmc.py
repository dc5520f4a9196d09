"""HMC with step-size adaptation and the long-run chains of Section 4.2 against closed-form
recovery conditionals of Gaussian and Gaussian-mixture data (tests/oracles.py)."""
import numpy as np
import pytest
import torch
from scipy import stats

from drl.diffusion import linear_sigma2_schedule, make_schedule
from drl.energy import ConditionalEBM
from drl.evaluate.partition import LOG_2PI, estimate_log_z
from drl.hmc import adapt_step_sizes, hmc, long_run_levels, long_run_sample
from drl.mcmc import langevin
from drl.perf import execution
from drl.noise import from_generator
from oracles import (GaussianMixtureData, OffsetNet, OracleNet, gaussian_hmc_acceptance,
                     sample_recovery_posterior, sample_x_level)

GAUSS = GaussianMixtureData([[0.5, -0.3, 0.2]], [0.6])


def _oracle_ebm(data, sched, b=0.1):
    return ConditionalEBM(OracleNet(data, sched), sched, "paper", b, "plain")


def _f32(a):
    return torch.tensor(np.asarray(a), dtype=torch.float32)


def _ula_variance(prec, delta):
    """Stationary variance of unadjusted Langevin (eq. 17) on a Gaussian of precision ``prec``."""
    return 1.0 / (prec * (1.0 - delta**2 * prec / 4.0))


@pytest.mark.parametrize("start", ["exact", "point"])
def test_hmc_samples_gaussian_recovery_conditional_exactly(start):
    """Gaussian data: p(y_t | x_{t+1}) is Gaussian in closed form.  Started from exact draws, HMC
    with the Metropolis test keeps it (mean and variance within sampling error), and started from
    one point 5 posterior sds off it converges to it; at the same step size (h = eps / sd ~ 1) the
    unadjusted Langevin of eq. 17 sits at its known inflated variance 1 / (prec (1 - eps^2 prec / 4))."""
    sched = linear_sigma2_schedule(3, 0.05, 0.3)
    ebm = _oracle_ebm(GAUSS, sched, b=0.9)
    g, rng, n = torch.Generator().manual_seed(0), np.random.default_rng(0), 20_000
    x_next = np.array([0.4, 0.1, -0.9])
    for t in range(sched.T):
        _, means, var = GAUSS.recovery_posterior(sched, t, x_next)
        eps = float(ebm.levels["delta"][t])
        y0 = (sample_recovery_posterior(GAUSS, sched, t, x_next, n, rng) if start == "exact"
              else np.broadcast_to(means[0] + 5 * np.sqrt(var[0]), (n, 3)))
        tt, xn = torch.full((n,), t), _f32(x_next).expand(n, 3)
        y, probs = hmc(ebm, _f32(y0), xn, tt, eps, n_steps=40, generator=g)
        y = y.double().numpy()
        assert 0.5 < probs[-1].mean() < 0.95
        np.testing.assert_allclose(y.mean(0), means[0], atol=4.5 * np.sqrt(var[0] / n))
        np.testing.assert_allclose(y.var(0), var[0], rtol=0.045)
        if start == "exact":
            ula = langevin(ebm, xn, tt, K=40, randn_like=from_generator(g), y=_f32(y0)).double().numpy()
            assert ula.var(0).mean() / _ula_variance(1 / var[0], eps) == pytest.approx(1, abs=0.03)
            assert ula.var(0).mean() / var[0] > 1.2


def test_leapfrog_at_sqrt2_sd_reflects_about_the_conditional_mean():
    """Closed form of the L = 2 leapfrog map on a Gaussian of sd s: at eps = sqrt(2) s it sends
    y - m to -(y - m) and p to -p exactly, so the energy is conserved (acceptance 1) and HMC just
    reflects each chain about the conditional mean m (a check of every leapfrog coefficient).  The
    chains then never relax; jitter (random eps per chain and step) breaks the periodicity and an
    overdispersed start relaxes to the conditional's variance."""
    sched = linear_sigma2_schedule(3, 0.05, 0.3)
    ebm = _oracle_ebm(GAUSS, sched)
    x_next, n, t = np.array([0.4, 0.1, -0.9]), 20_000, 1
    _, means, var = GAUSS.recovery_posterior(sched, t, x_next)
    sd = np.sqrt(var[0])
    y0 = means[0] + 2 * sd * np.random.default_rng(6).standard_normal((n, 3))  # 4x the variance
    args = (_f32(y0), _f32(x_next).expand(n, 3), torch.full((n,), t), float(np.sqrt(2) * sd))
    g = torch.Generator().manual_seed(6)
    y, probs = hmc(ebm, *args, n_steps=1, generator=g)
    assert probs.min() > 0.9999
    np.testing.assert_allclose(y.double().numpy(), 2 * means[0] - y0, atol=2e-5 * np.abs(y0).max())
    y, _ = hmc(ebm, *args, n_steps=30, generator=g)
    assert y.double().numpy().var(0).mean() / var[0] > 3.8  # no mixing
    y, _ = hmc(ebm, *args, n_steps=30, generator=g, jitter=0.3)
    np.testing.assert_allclose(y.double().numpy().var(0), var[0], rtol=0.045)


def _mixture_bin_probabilities(w, means, var, edges):
    cdf = (w * stats.norm.cdf(edges[:, None], means[:, 0], np.sqrt(var))).sum(1)
    return np.diff(cdf)


def test_metropolis_keeps_bimodal_conditional_at_low_acceptance():
    """Detailed balance on a bimodal 1-D recovery conditional (mixture data, large sigma): with a
    step so large that most proposals are rejected (acceptance ~0.4), 40 HMC steps from exact draws
    must leave the exact posterior mixture in place: a chi-square test of 40 000 independent chains
    against its closed-form bin probabilities, and its mean."""
    data = GaussianMixtureData([[-0.8], [0.8]], [0.35, 0.35], [0.3, 0.7])
    sched = linear_sigma2_schedule(2, 0.5, 0.6)
    ebm = _oracle_ebm(data, sched)
    x_next, n = np.array([0.1]), 40_000
    w, means, var = data.recovery_posterior(sched, 0, x_next)
    assert 0.2 < w.min()  # genuinely bimodal
    y0 = sample_recovery_posterior(data, sched, 0, x_next, n, np.random.default_rng(1))
    y, probs = hmc(ebm, _f32(y0), _f32(x_next).expand(n, 1), torch.zeros(n, dtype=torch.long), 0.45,
                   n_steps=40, generator=torch.Generator().manual_seed(1))
    y = y.double().numpy()[:, 0]
    assert 0.25 < probs.mean() < 0.55
    edges = np.concatenate([[-np.inf], np.linspace(-1.5, 1.8, 34), [np.inf]])
    expected = n * _mixture_bin_probabilities(w, means, var, edges)
    counts = np.histogram(y, edges)[0]
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < stats.chi2.ppf(0.9999, len(expected) - 1)
    assert abs(y.mean() - (w * means[:, 0]).sum()) < 4 * y.std() / np.sqrt(n)


def _acceptance_band_in_h(dim, target=(0.6, 0.9)):
    """h = eps / sd where stationary Gaussian HMC accepts target[1] and target[0] (bisection on the
    decreasing branch h < 1.1 of ``gaussian_hmc_acceptance``)."""
    def solve(a):
        lo, hi = 0.05, 1.1
        for _ in range(10):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if gaussian_hmc_acceptance(mid, dim, n=20_000) > a else (lo, mid)
        return 0.5 * (lo + hi)
    return solve(target[1]), solve(target[0])


def test_adaptation_lands_in_band_and_matches_gaussian_closed_form():
    """T = 10 levels of the DDPM schedule, Gaussian data in D = 64: the conditional of level t is
    isotropic Gaussian of sd s_t, where HMC's acceptance depends on h = eps / s_t and D alone, so
    the adapted eps_t / s_t must fall where the closed-form acceptance is in [0.6, 0.9]; started at
    a tenth of sigma_T, the top level needs several rounds."""
    dim = 64
    data = GaussianMixtureData([np.linspace(-0.5, 0.5, dim)], [0.8])
    sched = make_schedule({"schedule": "ddpm_linear_beta", "T": 10})
    ebm = _oracle_ebm(data, sched)
    out = adapt_step_sizes(ebm, 500, (dim,), n_steps=100, init_step_size=0.1 * sched.sigma[-1],
                           generator=torch.Generator().manual_seed(2), progress=False)
    acc, eps = out["acceptance"].numpy(), out["step_size"].numpy()
    assert ((0.6 <= acc) & (acc <= 0.9)).all(), acc
    assert out["rounds"][-1] >= 4
    sd = np.array([np.sqrt(data.recovery_posterior(sched, t, np.zeros(dim))[2][0]) for t in range(sched.T)])
    h_lo, h_hi = _acceptance_band_in_h(dim)
    assert ((0.97 * h_lo <= eps / sd) & (eps / sd <= 1.03 * h_hi)).all(), (eps / sd, h_lo, h_hi)
    assert (np.diff(eps) > 0).sum() >= 7  # grows with sigma_t, as in Fig. 6 (left)


def test_adaptation_lands_in_band_on_mixture_levels():
    """Bimodal 2-D data, T = 10 linear-sigma^2 levels up to sigma^2 = 0.3 (far from Gaussian
    conditionals at the top): every level's final mean acceptance is in the band."""
    data = GaussianMixtureData([[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.4], [0.4, 0.6])
    sched = linear_sigma2_schedule(10, 0.01, 0.3)
    out = adapt_step_sizes(_oracle_ebm(data, sched), 500, (2,), n_steps=100,
                           generator=torch.Generator().manual_seed(3), progress=False)
    acc = out["acceptance"].numpy()
    assert ((0.6 <= acc) & (acc <= 0.9)).all(), acc


@pytest.mark.parametrize("steps_per_level", [1, 10])
def test_long_run_chains_reproduce_gaussian_data(steps_per_level):
    """Long-run chains on the oracle EBM of Gaussian data (T = 10, DDPM schedule, adapted step
    sizes), started from the exact diffused marginal x_T: x_0 has the data's mean and variance, with
    1 step per level (normal approximation only) and with 10 (1 + 9 HMC steps, acceptance in band)."""
    sched = make_schedule({"schedule": "ddpm_linear_beta", "T": 10})
    ebm = _oracle_ebm(GAUSS, sched)
    g, n = torch.Generator().manual_seed(4), 20_000
    eps = adapt_step_sizes(ebm, 300, (3,), n_steps=50, generator=g, progress=False)["step_size"]
    x_T = _f32(sample_x_level(GAUSS, sched, sched.T, n, np.random.default_rng(4)))
    x0, diag = long_run_sample(ebm, n, (3,), steps_per_level, eps, generator=g, x_T=x_T, progress=False)
    x0 = x0.double().numpy()
    m, s2 = GAUSS.means[0], GAUSS.stds[0] ** 2
    np.testing.assert_allclose(x0.mean(0), m, atol=4.5 * np.sqrt(s2 / n))
    np.testing.assert_allclose(x0.var(0), s2, rtol=0.045)
    acc = diag["acceptance"].numpy()
    if steps_per_level == 1:
        assert np.isnan(acc).all()
    else:
        assert ((0.55 < acc) & (acc < 0.95)).all(), acc


def test_long_run_hmc_removes_normal_approximation_bias():
    """With few, large noise levels (T = 4, sigma^2 up to 0.4) the normal approximation alone is
    visibly off the data's variance; 30 steps per level (1 + 29 HMC steps, adapted, no jitter; in
    D = 64 the band is far from the L = 2 resonance) recover the closed form on the same starts --
    Section 4.2's point that longer chains sample the model itself."""
    dim = 64
    data = GaussianMixtureData([np.linspace(-0.5, 0.5, dim)], [0.6])
    sched = linear_sigma2_schedule(4, 0.1, 0.4)
    ebm = _oracle_ebm(data, sched)
    g, n = torch.Generator().manual_seed(5), 10_000
    eps = adapt_step_sizes(ebm, 300, (dim,), n_steps=50, generator=g, progress=False)["step_size"]
    x_T = _f32(sample_x_level(data, sched, sched.T, n, np.random.default_rng(5)))
    s2 = data.stds[0] ** 2
    ratio = {k: long_run_sample(ebm, n, (dim,), k, eps, generator=g, x_T=x_T, progress=False)[0]
             .double().var(0).numpy() / s2 for k in (1, 30)}
    assert abs(ratio[1].mean() - 1) > 0.15
    assert abs(ratio[30].mean() - 1) < 0.01  # mean of 64 ratios, each of sd sqrt(2 / n) = 0.014
    assert np.abs(ratio[30] - 1).max() < 0.07


def test_long_run_levels_give_the_oracle_partition_function():
    """Fig. 6 (right): the long-run levels plugged into the importance-sampling estimate of
    App. A.4 (``estimate_log_z``) recover the known log Z_0 of an oracle EBM whose levels carry
    offsets (bimodal 2-D data, T = 10 levels up to sigma^2 = 0.9, so x_T is nearly N(0, I)).  With
    30 steps per level (jitter 0.2, 2-D) the estimate is within its standard error; with 1 (normal
    approximation only, poor at these noise levels) it is far off."""
    data = GaussianMixtureData([[-1.0, 0.5], [1.0, -0.5]], [0.3, 0.4], [0.4, 0.6])
    sched = linear_sigma2_schedule(10, 0.05, 0.9)
    offsets = np.linspace(0.0, 3.0, sched.T)
    ebm = ConditionalEBM(OffsetNet(OracleNet(data, sched), offsets), sched, "paper", 0.1, "plain")
    g = torch.Generator().manual_seed(7)
    eps = adapt_step_sizes(ebm, 300, (2,), n_steps=50, jitter=0.2, generator=g, progress=False)["step_size"]

    def estimate(k):
        def sampler(n, gen):
            return (x for x, _ in long_run_levels(ebm, n, (2,), k, eps, jitter=0.2, generator=gen, progress=False))
        return estimate_log_z(ebm, 4000, (2,), K=0, generator=g, sampler=sampler, progress=False)

    exact = LOG_2PI + offsets[0]  # (D / 2) log 2 pi + offset_0 in y-space, D = 2
    long_run = estimate(30)
    assert long_run["se"] < 0.05
    assert abs(long_run["log_z0"] - exact) < 4 * long_run["se"] + 0.01
    assert abs(estimate(1)["log_z0"] - exact) > 1.0


def test_long_run_validates_arguments():
    sched = linear_sigma2_schedule(3, 0.05, 0.3)
    ebm = _oracle_ebm(GAUSS, sched)
    with pytest.raises(ValueError, match="per level"):
        long_run_sample(ebm, 4, (3,), 2, torch.ones(2), progress=False)
    with pytest.raises(ValueError, match="steps_per_level"):
        long_run_sample(ebm, 4, (3,), 0, torch.ones(3), progress=False)
    with execution(precision="bf16"), pytest.raises(ValueError, match="fp32"):
        long_run_sample(ebm, 4, (3,), 2, torch.ones(3), progress=False)
