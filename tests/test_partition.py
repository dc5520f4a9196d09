"""drl/evaluate/partition.py: log Z_0 by importance sampling along the levels (Appendix A.4,
eqs. 33-36), the normalised test density and bits per dimension, against closed forms (analytic
Gaussian / mixture EBMs) and 2-D quadrature (``LevelDensity``)."""
from __future__ import annotations

import functools
import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from drl.diffusion import linear_sigma2_schedule, released_schedule
from drl.energy import ConditionalEBM
from drl.evaluate.ais import (ais_levels, allocate_bridges, bridged_ais_log_weights, combine_ais_log_weights,
                              estimate_log_z_ais)
from drl.evaluate.likelihood import bits_per_dim, test_log_likelihood
from drl.evaluate.partition import combine_log_weights, estimate_log_z, level_log_weights, level_scales, log_jacobians
from drl.evaluate.quadrature import LevelDensity
from drl.nets.mlp import MLPEnergy
from drl.noise import from_generator
from drl.perf import execution
from drl.sample import progressive_levels, progressive_sample
from oracles import (GaussianMixtureData, OffsetNet, OracleNet, exact_progressive_sample, sample_x_level,
                     x_level_log_density)
from test_tables import numbers_only

OFFSETS = np.array([3.0, -1.5, 7.2, 0.4, -2.2, 5.1])  # known per-level shifts of log Z_t


def _torch_levels(xs):
    return [torch.as_tensor(x, dtype=torch.float32) for x in xs]


def _oracle_ebm(data, sched, b=0.1):
    """Exact EBM of ``data``: log Z_t = (D/2) log 2 pi + OFFSETS[t] in y-space for every t."""
    return ConditionalEBM(OffsetNet(OracleNet(data, sched), OFFSETS[:sched.T]), sched, "paper", b, "plain")


def _oracle_log_z(dim, t):
    return 0.5 * dim * math.log(2 * math.pi) + OFFSETS[t]


def _oracle_log_ratios(dim, T):
    """log Z_t / Z_{t+1} for t = 0..T-1, with Z_T the N(0, I) normaliser."""
    lz = [_oracle_log_z(dim, t) for t in range(T)] + [0.5 * dim * math.log(2 * math.pi)]
    return -np.diff(lz)


# ---------------------------------------------------------------- bookkeeping
def test_progressive_levels_is_algorithm_2():
    """The estimator's level-by-level sampler draws exactly what progressive_sample draws."""
    data = GaussianMixtureData([[0.5, -0.3], [-0.4, 0.2]], [0.3, 0.5])
    for top in ("marginal", "conditional"):
        sched = linear_sigma2_schedule(4, 0.05, 0.3, top_level=top)
        ebm = _oracle_ebm(data, sched, b=0.3)
        xs = progressive_sample(ebm, 50, (2,), K=5, randn_like=from_generator(torch.Generator().manual_seed(0)))
        g = torch.Generator().manual_seed(0)
        levels = progressive_levels(ebm, torch.randn((50, 2), generator=g), K=5, randn_like=from_generator(g))
        lv = [next(levels) for _ in range(sched.T)]  # x_T .. x_1, lazily: x_0 is never computed
        for a, b in zip(lv, xs[:sched.T]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_scales_and_jacobians():
    sched = released_schedule(6, top_level="conditional")
    ebm = _oracle_ebm(GaussianMixtureData([[0.0] * 3], [1.0]), sched)
    s = level_scales(ebm)
    np.testing.assert_allclose(s, list(sched.a[1:]) + [1.0])
    jac = log_jacobians(ebm, 3072, "x")
    np.testing.assert_allclose(jac, 3072 * np.log(s[:-1] / s[1:]))
    assert jac.sum() == pytest.approx(3072 * np.log(sched.a[1]))   # telescopes to D log s_0
    np.testing.assert_array_equal(log_jacobians(ebm, 3072, "y"), 0.0)
    with pytest.raises(ValueError, match="space"):
        log_jacobians(ebm, 3, "z")


def test_combine_matches_naive_float64():
    """Eqs. 34-36 and the curve against a direct computation; log weights of size ~1e3 must not
    overflow (logsumexp in float64)."""
    rng = np.random.default_rng(0)
    M, T = 3000, 4
    lw = 1000.0 + rng.normal(0.0, [0.1, 1.0, 2.0, 0.5], size=(M, T))
    jac = np.array([-3.0, 1.0, 0.5, 2.0])
    out = combine_log_weights(lw, jac, log_z_top=10.0, curve_points=20)
    naive = lambda m: 10.0 + sum(logsumexp(lw[:m, t]) - np.log(m) + jac[t] for t in range(T))
    assert out["log_z0"] == pytest.approx(naive(M), abs=1e-9)
    ms = [m for m, _ in out["curve"]]
    assert ms[0] == 1 and ms[-1] == M and ms == sorted(set(ms)) and len(ms) >= 15
    for m, v in out["curve"]:
        assert v == pytest.approx(naive(m), abs=1e-9)
    assert out["curve"][-1][1] == out["log_z0"]
    for t, p in enumerate(out["per_level"]):
        w = np.exp(lw[:, t] - lw[:, t].max())
        assert p["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-9)
        assert p["log_ratio"] == pytest.approx(logsumexp(lw[:, t]) - np.log(M) + jac[t], abs=1e-9)
        assert p["log_w_std"] == pytest.approx(lw[:, t].std(), rel=1e-9)
    # wider log weights -> fewer effective samples
    ess = [p["ess_fraction"] for p in out["per_level"]]
    assert ess[0] > ess[3] > ess[1] > ess[2]


# ---------------------------------------------------------------- (a) Gaussian, D = 3072
D_IMG = 3072


def _gaussian_3072(tau, top="marginal"):
    mu = 0.01 * np.random.default_rng(0).standard_normal(D_IMG)  # (samplers use other seeds)
    data = GaussianMixtureData([mu], [tau])
    sched = released_schedule(6, top_level=top)
    return data, sched, _oracle_ebm(data, sched)


@pytest.mark.parametrize("top", ["marginal", "conditional"])
def test_gaussian_3072_log_z_and_bpd_match_closed_form(top):
    """Analytic Gaussian EBM in D = 3072 (CIFAR size), released T6 schedule, samples from the exact
    recovery conditionals (perfect MCMC): log Z_0 within 0.05 nats of (D/2) log 2 pi + offset_0, every
    level's log ratio within 4 standard errors, and the test log-density / BPD through the estimate
    equal to the closed-form density of x_0 up to that same 0.05 nats (2.4e-5 bits/dim)."""
    data, sched, ebm = _gaussian_3072(0.99, top)
    rng = np.random.default_rng(1)
    r = estimate_log_z(ebm, 8000, (D_IMG,), K=0, batch_size=2000, progress=False,
                       sampler=lambda n, g: _torch_levels(exact_progressive_sample(data, sched, n, rng)))
    truth = _oracle_log_z(D_IMG, 0)
    assert r["dim"] == D_IMG and r["n_samples"] == 8000 and r["space"] == "x"
    assert r["log_z_top"] == pytest.approx(0.5 * D_IMG * math.log(2 * math.pi))
    assert r["se"] < 0.0125                      # the 0.05 tolerance is >= 4 standard errors
    assert abs(r["log_z0"] - truth) < 0.05
    ratios = np.array([p["log_ratio"] for p in r["per_level"]])
    ses = np.array([p["se"] for p in r["per_level"]])
    assert np.all(np.abs(ratios - _oracle_log_ratios(D_IMG, 6)) < 4 * ses + 1e-3)
    # D log a bookkeeping: the Jacobians are hundreds of nats here and sum to D log s_0
    jac = np.array([p["log_jacobian"] for p in r["per_level"]])
    assert jac.sum() == pytest.approx(D_IMG * np.log(sched.y_scale[0]))
    assert abs(jac.sum()) > 150

    x = sample_x_level(data, sched, 0, 400, np.random.default_rng(2))
    log_p = test_log_likelihood(ebm, x, r["log_z0"], batch_size=150)
    closed = x_level_log_density(data, sched, 0, x)
    assert log_p.dtype == np.float64 and log_p.shape == (400,)
    assert np.abs(log_p - closed).max() < 0.05 + 0.02      # + float32 evaluation of f
    bpd, bpd_closed = bits_per_dim(log_p, D_IMG).mean(), bits_per_dim(closed, D_IMG).mean()
    assert abs(bpd - bpd_closed) < 3.5e-5
    # sanity: the closed-form expectation (D/2) log(2 pi e v) per image, v the x_0 variance
    v = sched.alpha_cum[0] ** 2 * 0.99**2 + sched.sigma_cum[0] ** 2
    expected = (0.5 * math.log(2 * math.pi * math.e * v) + math.log(127.5)) / math.log(2)
    assert bpd_closed == pytest.approx(expected, abs=0.01)


def test_gaussian_3072_log_weight_spread_matches_closed_form():
    """With data variance 0.81 the levels overlap poorly in D = 3072: the reported per-level std of
    the log weights equals the closed form sqrt(D (1 - r)^2 / 2 + |dm|^2 r / v_t) (x-space marginals
    N(m_t, v_t I), r = v_{t+1} / v_t), and the effective sample size drops accordingly."""
    tau = 0.9
    data, sched, ebm = _gaussian_3072(tau)
    rng = np.random.default_rng(3)
    T = sched.T

    def exact_levels(n, g):  # independent exact draws of x_T, ..., x_1 (x_T ~ N(0, I))
        return _torch_levels([rng.standard_normal((n, D_IMG))]
                             + [sample_x_level(data, sched, k, n, rng) for k in range(T - 1, 0, -1)])

    r = estimate_log_z(ebm, 3000, (D_IMG,), K=0, batch_size=1500, progress=False, sampler=exact_levels)
    m = [sched.alpha_cum[k] * data.means[0] for k in range(T)] + [np.zeros(D_IMG)]
    v = [sched.alpha_cum[k] ** 2 * tau**2 + sched.sigma_cum[k] ** 2 for k in range(T)] + [1.0]
    for t, p in enumerate(r["per_level"]):
        rr = v[t + 1] / v[t]
        std = math.sqrt(D_IMG * (1 - rr) ** 2 / 2 + ((m[t + 1] - m[t]) ** 2).sum() * rr / v[t])
        assert p["log_w_std"] == pytest.approx(std, rel=0.06)
    assert min(p["ess_fraction"] for p in r["per_level"]) < 0.05
    assert r["se"] > 0.05                        # the error estimate says so too


def test_gaussian_3072_paper_y_space_degenerates():
    """The literal eq. 33 (same y in f(., t) and f(., t+1)) compares y_t = a[t+1] x_t with
    y_{t+1} = a[t+2] x_{t+1}; in D = 3072 those barely overlap and the weights collapse onto one
    sample, which the diagnostics show (this is why ``space="x"`` is the default)."""
    data, sched, ebm = _gaussian_3072(0.99)
    rng = np.random.default_rng(4)
    r = estimate_log_z(ebm, 500, (D_IMG,), K=0, space="y", progress=False,
                       sampler=lambda n, g: _torch_levels(exact_progressive_sample(data, sched, n, rng)))
    assert min(p["ess_fraction"] for p in r["per_level"]) < 0.01
    assert abs(r["log_z0"] - _oracle_log_z(D_IMG, 0)) > 10


# ---------------------------------------------------------------- (b) 2-D, quadrature
class RandomXNet(torch.nn.Module):
    """A non-Gaussian 2-D energy: an untrained MLP plus a confining quadratic, written in x-space,
    net(y, t) = A mlp(x, t) - |x - m_t|^2 / (2 V_t) with x = y / y_scale[t], and m_t, V_t the mean and
    variance of diffused data of variance 0.25.  Its normalisers are known only by quadrature."""

    def __init__(self, sched, amplitude=3.0, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.mlp = MLPEnergy(dim=2, width=32, depth=2, temb_dim=16)
        self.amplitude = amplitude
        al, sc = sched.alpha_cum[:-1], sched.sigma_cum[:-1]
        self.register_buffer("s", torch.tensor(sched.y_scale, dtype=torch.float32))
        self.register_buffer("V", torch.tensor(al**2 * 0.25 + sc**2, dtype=torch.float32))
        self.register_buffer("m", torch.tensor(al[:, None] * np.array([0.3, -0.2]), dtype=torch.float32))

    def forward(self, y, t):
        x = y / self.s[t][:, None]
        return self.amplitude * self.mlp(x, t) - ((x - self.m[t]) ** 2).sum(1) / (2 * self.V[t])


EXTENT, GRID = 5.0, 400


@functools.lru_cache(maxsize=None)
def _random_2d(schedule, top):
    sched = (linear_sigma2_schedule(6, 0.02, 0.3, top_level=top) if schedule == "toy"
             else released_schedule(6, top_level=top))
    ebm = ConditionalEBM(RandomXNet(sched), sched, "paper", 0.1, "plain").eval().requires_grad_(False)
    return ebm, [LevelDensity(ebm, t, EXTENT, GRID) for t in range(sched.T)]


def grid_sampler(levels):
    """Exact (to the grid) independent draws of every level's own x-space marginal g_t, t >= 1, by
    sampling quadrature cells and a uniform position inside; x_T ~ N(0, I)."""
    h = 2 * EXTENT / GRID

    def sampler(n, gen):
        out = [torch.randn(n, 2, generator=gen)]
        for ld in reversed(levels[1:]):
            p = torch.as_tensor(np.exp(ld.log_g_grid - ld.log_g_grid.max()))
            idx = torch.multinomial(p, n, replacement=True, generator=gen)
            jitter = (torch.rand(n, 2, generator=gen, dtype=torch.float64) - 0.5) * h
            out.append((torch.as_tensor(ld.x_grid)[idx] + jitter).float())
        return out
    return sampler


@pytest.mark.parametrize("schedule,top,space", [("toy", "marginal", "x"), ("toy", "marginal", "y"),
                                                ("released", "conditional", "x"),
                                                ("released", "marginal", "y")])
def test_2d_random_energy_matches_quadrature(schedule, top, space):
    """A non-Gaussian 2-D EBM with samples from each level's own marginal: log Z_0 within 0.02 nats of
    quadrature, every level's log Z_t / Z_{t+1} within 0.01, and the test density through the estimate
    equal to LevelDensity's."""
    ebm, levels = _random_2d(schedule, top)
    q = np.array([ld.log_z for ld in levels] + [math.log(2 * math.pi)])
    assert np.ptp(-np.diff(q)) > 0.3                                    # the levels differ
    r = estimate_log_z(ebm, 50_000, (2,), K=0, generator=torch.Generator().manual_seed(0),
                       batch_size=25_000, space=space, progress=False, sampler=grid_sampler(levels))
    assert r["se"] < 0.006
    assert abs(r["log_z0"] - q[0]) < 0.02
    np.testing.assert_allclose([p["log_ratio"] for p in r["per_level"]], -np.diff(q), atol=0.01)
    x = np.random.default_rng(5).normal(0.0, 0.5, (300, 2))
    np.testing.assert_allclose(test_log_likelihood(ebm, x, q[0]), levels[0].log_prob(x), atol=1e-5)
    np.testing.assert_allclose(test_log_likelihood(ebm, x, r["log_z0"]) - levels[0].log_prob(x),
                               q[0] - r["log_z0"], atol=1e-5)


def test_2d_paper_y_space_fails_with_a_tiny_top_scale():
    """Released schedule, conditional top: y_{T-1} = 0.0228 x_{T-1}, so N(0, I) as a proposal for y_{T-1}
    (literal eq. 33) misses it even in 2-D; the x-space form (above) does not."""
    ebm, levels = _random_2d("released", "conditional")
    r = estimate_log_z(ebm, 20_000, (2,), K=0, generator=torch.Generator().manual_seed(0), space="y",
                       progress=False, sampler=grid_sampler(levels))
    assert r["per_level"][-1]["ess_fraction"] < 0.01
    assert abs(r["log_z0"] - levels[0].log_z) > 0.5


MIX = GaussianMixtureData([[-1, -1], [1, 1], [1, -1], [-1, 1]], [0.3, 0.3, 0.4, 0.25], [0.2, 0.3, 0.3, 0.2])


def test_2d_mixture_exact_progressive_chain():
    """Samples taken along one progressive chain (levels correlated, as in the paper), with exact
    recovery conditionals: log Z_0 of the mixture oracle within 0.02 nats of the closed form and of
    quadrature; test log-density equal to the closed-form density of x_0."""
    sched = linear_sigma2_schedule(6, 0.02, 0.3, top_level="marginal")
    ebm = _oracle_ebm(MIX, sched)
    rng = np.random.default_rng(6)
    r = estimate_log_z(ebm, 40_000, (2,), K=0, batch_size=20_000, progress=False,
                       sampler=lambda n, g: _torch_levels(exact_progressive_sample(MIX, sched, n, rng)))
    truth = _oracle_log_z(2, 0)
    assert LevelDensity(ebm, 0, EXTENT, GRID).log_z == pytest.approx(truth, abs=1e-6)
    assert r["se"] < 0.006
    assert abs(r["log_z0"] - truth) < 0.02
    x = sample_x_level(MIX, sched, 0, 300, rng)
    np.testing.assert_allclose(test_log_likelihood(ebm, x, truth), x_level_log_density(MIX, sched, 0, x),
                               atol=1e-4)


def test_2d_mixture_with_langevin_progressive_samples():
    """The default path (Algorithm 2 with K = 30 Langevin steps, the toy run's sampler): within 0.15
    nats.  The residual is the sampler's, not the estimator's: unadjusted Langevin started at x_{t+1}
    does not reach the level's marginal in 30 steps (measured -0.07 nats here; with exact samples the
    same estimator is within 0.005, above).  The curve starts from one sample and ends at log_z0."""
    sched = linear_sigma2_schedule(6, 0.02, 0.3, top_level="marginal")
    ebm = _oracle_ebm(MIX, sched, b=0.35)
    r = estimate_log_z(ebm, 10_000, (2,), K=30, generator=torch.Generator().manual_seed(0),
                       batch_size=5000, progress=False)
    assert r["K"] == 30
    assert abs(r["log_z0"] - _oracle_log_z(2, 0)) < 0.15
    assert r["curve"][0][0] == 1 and r["curve"][-1] == [10_000, r["log_z0"]]


# ---------------------------------------------------------------- annealed importance sampling (Neal 2001)
def test_combine_ais_matches_naive_float64():
    """AIS combines a chain's weights by product: log Z_0 = log Z_T + log mean_i exp(sum_t log w_ti)
    + sum_t jac_t; the per-level ratios (of cumulative weights) telescope to it; the curve uses the
    first m chains.  Unlike eq. 36, permuting one level's column across chains changes the estimate."""
    rng = np.random.default_rng(0)
    M, T = 3000, 4
    lw = 1000.0 + rng.normal(0.0, [0.1, 1.0, 2.0, 0.5], size=(M, T))
    jac = np.array([-3.0, 1.0, 0.5, 2.0])
    out = combine_ais_log_weights(lw, jac, log_z_top=10.0, curve_points=20)
    naive = lambda m: 10.0 + logsumexp(lw[:m].sum(1)) - np.log(m) + jac.sum()
    assert out["log_z0"] == pytest.approx(naive(M), abs=1e-9)
    assert sum(p["log_ratio"] for p in out["per_level"]) + 10.0 == pytest.approx(out["log_z0"], abs=1e-9)
    top = out["per_level"][T - 1]   # the top level's ratio is plain importance sampling
    assert top["log_ratio"] == pytest.approx(logsumexp(lw[:, T - 1]) - np.log(M) + jac[T - 1], abs=1e-9)
    for m, v in out["curve"]:
        assert v == pytest.approx(naive(m), abs=1e-9)
    assert out["curve"][-1] == [M, out["log_z0"]]
    w = np.exp(lw.sum(1) - lw.sum(1).max())
    assert out["per_level"][0]["ess"] == pytest.approx(w.sum() ** 2 / (w**2).sum(), rel=1e-9)
    assert out["se"] == pytest.approx((w / w.mean()).std() / math.sqrt(M), rel=1e-9)
    shuffled = lw.copy()
    shuffled[:, 2] = rng.permutation(shuffled[:, 2])
    assert combine_ais_log_weights(shuffled, jac, 10.0)["log_z0"] != pytest.approx(out["log_z0"], abs=1e-3)
    assert combine_log_weights(shuffled, jac, 10.0)["log_z0"] == pytest.approx(
        combine_log_weights(lw, jac, 10.0)["log_z0"], abs=1e-9)


def _drifting_oracle_ebm(drift):
    """The mixture oracle with level t's mixture translated by drift * t (1, -1/2): every level still
    has log Z_t = log 2 pi + OFFSETS[t], but the levels are no longer the diffusion of one data set
    (mutually inconsistent, as a trained model's may be)."""
    sched = linear_sigma2_schedule(6, 0.02, 0.3, top_level="marginal")
    net = OracleNet(MIX, sched)
    net.mu += torch.tensor([[drift * t, -0.5 * drift * t] for t in range(6)], dtype=torch.float32)[:, None, :]
    return ConditionalEBM(OffsetNet(net, OFFSETS), sched, "paper", 0.35, "plain").eval().requires_grad_(False)


def test_ais_weights_are_taken_before_each_levels_transitions():
    """``level_log_weights`` on the lazy AIS generator gives the same weights as on its materialised
    levels, column t being f(s_t x_{t+1}, t) - f(s_{t+1} x_{t+1}, t+1) on the yielded x_{t+1}; the
    level-0 transitions are never run (their acceptance stays nan)."""
    ebm = _drifting_oracle_ebm(0.1)
    steps = [0.3] * 6
    levels = [x for x, _ in ais_levels(ebm, 300, (2,), 2, steps, generator=torch.Generator().manual_seed(0))]
    lazy = (x for x, _ in ais_levels(ebm, 300, (2,), 2, steps, generator=torch.Generator().manual_seed(0)))
    lw = level_log_weights(ebm, lazy)
    np.testing.assert_array_equal(lw, level_log_weights(ebm, levels))
    s = level_scales(ebm)
    t = 2
    u = float(s[t + 1]) * levels[ebm.T - 1 - t]
    tt = lambda k: torch.full((300,), k)
    np.testing.assert_allclose(lw[:, t], (ebm(float(s[t]) * levels[ebm.T - 1 - t], tt(t)) - ebm(u, tt(t + 1))).double(),
                               rtol=1e-6, atol=1e-5)
    r = estimate_log_z_ais(ebm, 200, (2,), 1, step_size=0.3, generator=torch.Generator().manual_seed(0),
                           progress=False)
    assert math.isnan(r["acceptance"][0]) and all(0 < a <= 1 for a in r["acceptance"][1:])
    assert r["transitions"] == "ais_hmc" and r["step_size"] == [0.3] * 6
    with pytest.raises(ValueError, match="step_size"):
        estimate_log_z_ais(ebm, 10, (2,), 1, step_size=[0.1, 0.2], progress=False)


def test_ais_is_unbiased_where_the_progressive_estimator_is_not():
    """Mutually inconsistent levels (``_drifting_oracle_ebm``, closed-form log Z_0): the paper's
    estimator along the progressive samples (K = 30 Langevin) is off by > 0.08 nats and > 5 of its
    standard errors (measured -0.14, 10 SE), since eq. 33 needs samples of each level's own marginal;
    AIS-HMC (pilot-adapted step sizes, 3 transitions per level) is within 4 standard errors
    (measured -1.7 SE; over 12 seeds the errors / SE had mean -0.3 and sd 1.1) and the SE is below
    0.015 nats.  So is AIS with a step so small (0.01) that the chains barely move: AIS needs
    invariance, not mixing."""
    ebm = _drifting_oracle_ebm(0.1)
    truth = _oracle_log_z(2, 0)
    assert LevelDensity(ebm, 0, EXTENT, GRID).log_z == pytest.approx(truth, abs=1e-6)
    prog = estimate_log_z(ebm, 10_000, (2,), K=30, generator=torch.Generator().manual_seed(0),
                          batch_size=5000, progress=False)
    assert abs(prog["log_z0"] - truth) > max(0.08, 5 * prog["se"])
    for step_size in (None, 0.01):
        r = estimate_log_z_ais(ebm, 20_000, (2,), 3, step_size=step_size,
                               generator=torch.Generator().manual_seed(0), batch_size=10_000, progress=False)
        assert r["se"] < 0.015
        assert abs(r["log_z0"] - truth) < 4 * r["se"], (step_size, r["log_z0"] - truth, r["se"])
        if step_size is None:
            assert all(0.55 < a < 0.95 for a in r["acceptance"][1:])


def test_bridges_rescue_ais_where_heavy_tailed_weights_mislead_it():
    """Far-apart levels (``_drifting_oracle_ebm(1.0)``, closed-form log Z_0): plain AIS-HMC over 10,000
    chains is several nats low, by more than its own standard error can see: its log weights are so
    heavy-tailed that the sample misses the chains that carry the mass, and the SE, computed from the
    same sample, cannot tell.  30 geometric bridges, placed by the pilot's log-weight sd, bring it within
    4 SE.  Over 9 seeds (this one and 8 others, AMD EPYC AVX2): plain -4.0 to -10.1 nats, 4.3 to 18 SE;
    bridged within 0.29 nats and 3.0 SE, SE at most 0.34, ESS at level 0 2.3 to 60 times plain's.  The
    bounds below leave that spread room, since another CPU's rounding takes other chain paths."""
    ebm = _drifting_oracle_ebm(1.0)
    truth = _oracle_log_z(2, 0)
    run = lambda bridges: estimate_log_z_ais(ebm, 10_000, (2,), 3, generator=torch.Generator().manual_seed(0),
                                             batch_size=5000, progress=False, bridges=bridges)
    plain, bridged = run(0), run(30)
    assert plain["bridges"] == [1] * 6 and sum(bridged["bridges"]) == pytest.approx(6 + 30, abs=3)
    assert truth - plain["log_z0"] > max(2.0, 3 * plain["se"])
    assert abs(bridged["log_z0"] - truth) < min(0.5, 4 * bridged["se"]) and bridged["se"] < 0.5
    assert bridged["per_level"][0]["ess"] > plain["per_level"][0]["ess"]
    assert all(0.55 < a < 0.95 for a in bridged["acceptance"])   # level 0 runs transitions between its bridges
    with pytest.raises(ValueError, match="leave step_size unset"):
        estimate_log_z_ais(ebm, 10, (2,), 1, step_size=0.3, bridges=5, progress=False)
    with pytest.raises(ValueError, match="J_t >= 1 for each of the T = 6 levels"):
        bridged_ais_log_weights(ebm, 10, (2,), 1, [0.3] * 6, [1, 2, 0, 1, 1, 1])


def test_bridges_are_shared_out_by_the_log_weight_sd():
    assert allocate_bridges([0.0, 1.0, 3.0, 0.0], 8) == [1, 3, 7, 1]
    assert allocate_bridges([0.5, 0.5], 0) == [1, 1] and allocate_bridges([0.0, 0.0], 4) == [1, 1]


def test_one_bridge_per_level_is_plain_ais():
    """J_t = 1 everywhere: ``bridged_ais_log_weights`` is ``ais_levels`` with eq. 34' weights, the same
    states and random draws, the weights equal to float32 rounding of f (written another way)."""
    ebm = _drifting_oracle_ebm(0.1)
    steps = [0.3] * 6
    levels = [x for x, _ in ais_levels(ebm, 300, (2,), 2, steps, generator=torch.Generator().manual_seed(0))]
    lw, acc = bridged_ais_log_weights(ebm, 300, (2,), 2, steps, [1] * 6, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(lw, level_log_weights(ebm, levels), rtol=1e-6, atol=1e-5)
    assert math.isnan(acc[0]) and all(0 < a <= 1 for a in acc[1:])


@pytest.mark.parametrize("schedule,top", [("toy", "marginal"), ("released", "conditional")])
def test_2d_random_energy_ais_matches_quadrature(schedule, top):
    """The non-Gaussian 2-D MLP energy: AIS-HMC's log Z_0 within 4 standard errors of quadrature
    (SE < 0.01), and every level's log Z_t / Z_{t+1} (ratios of cumulative weights) within 4 of its
    standard errors + 1e-3."""
    ebm, levels = _random_2d(schedule, top)
    q = np.array([ld.log_z for ld in levels] + [math.log(2 * math.pi)])
    r = estimate_log_z_ais(ebm, 20_000, (2,), 3, generator=torch.Generator().manual_seed(0), batch_size=20_000,
                           progress=False)
    assert r["se"] < 0.01
    assert abs(r["log_z0"] - q[0]) < 4 * r["se"]
    ratios = np.array([p["log_ratio"] for p in r["per_level"]])
    ses = np.array([p["se"] for p in r["per_level"]])
    assert np.all(np.abs(ratios + np.diff(q)) < 4 * ses + 1e-3)


def test_partition_metrics_ais_hmc_setting(monkeypatch):
    """The evaluate stage's ``partition`` section: ``transitions: ais_hmc`` runs AIS and records the
    method, step sizes and acceptances (None at level 0) in JSON-ready form; the default is the
    paper's progressive estimator."""
    import json

    import drl.stages.evaluate as stage

    ebm, levels = _random_2d("toy", "marginal")
    monkeypatch.setattr(stage, "prepared", lambda dataset, split: np.zeros((20, 2), np.float32))
    cfg = {"dataset": "toy", "evaluate": {"partition": {"transitions": "ais_hmc", "n_samples": 2000, "hmc_steps": 2,
                                                        "batch_size": 1000, "seed": 0}}}
    m = stage._partition_metrics(cfg, ebm, "cpu", d := {})
    json.dumps(d, allow_nan=False)
    assert numbers_only(m) and abs(m["log_z_ais"] - levels[0].log_z) < 5 * m["log_z_ais_se"]
    assert levels[0].log_z - 6.0 < m["log_z_lower_bound"] < levels[0].log_z   # drl/evaluate/log_z_bound.py
    assert d["log_z_lower_bound"]["delta"] == 0.01 and "test_bpd_lower_bound" not in m   # not an image
    assert d["log_z_ais_method"] == "ais_hmc"
    assert len(d["log_z_ais_hmc_step_size"]) == 6 and d["log_z_ais_hmc_acceptance"][0] is None
    assert "log_z_ais_bridges" not in d
    cfg["evaluate"]["partition"]["bridges"] = 12   # recorded per level; level 0 runs transitions if bridged
    m = stage._partition_metrics(cfg, ebm, "cpu", d := {})
    json.dumps(d, allow_nan=False)
    assert abs(m["log_z_ais"] - levels[0].log_z) < 5 * m["log_z_ais_se"]
    assert len(d["log_z_ais_bridges"]) == 6 and sum(d["log_z_ais_bridges"]) > 6
    assert (d["log_z_ais_hmc_acceptance"][0] is None) == (d["log_z_ais_bridges"][0] == 1)
    cfg["evaluate"]["partition"] = {"n_samples": 500, "K": 2, "seed": 0}
    m = stage._partition_metrics(cfg, ebm, "cpu", d := {})
    assert numbers_only(m) and d["log_z_ais_method"] == "progressive" and "log_z_ais_hmc_step_size" not in d


# ---------------------------------------------------------------- bits per dimension
def test_bits_per_dim_convention():
    """A density uniform over the 256 pixel bins of [-1, 1] (width 2/255, centred on p / 127.5 - 1) is
    exactly 8 bits per dimension; in general bpd = (-log p / D + log 127.5) / log 2."""
    D = 3072
    log_p_uniform = -D * math.log(256 * 2 / 255)
    assert bits_per_dim(log_p_uniform, D) == pytest.approx(8.0, abs=1e-12)
    lp = np.array([-5000.0, -9000.0])
    np.testing.assert_allclose(bits_per_dim(lp, D), (-lp / D + math.log(127.5)) / math.log(2))
    assert bits_per_dim(-2.0, 2, bin_width=1.0) == pytest.approx(1 / math.log(2))


def test_uniform_dequantisation_noise():
    """f quadratic, x at its mode: E[log g(x + u)] - log g(x) = -s_0^2 D Delta^2 / (24 v) for
    u ~ U(-Delta/2, Delta/2)^D; without dequantisation the density is evaluated at x itself."""
    v, D = 0.01, 3072

    class Quad(torch.nn.Module):
        def forward(self, y, t):
            return -(y**2).sum(1) / (2 * v)

    sched = linear_sigma2_schedule(2, 0.1, 0.2)
    ebm = ConditionalEBM(Quad(), sched, "paper", 0.1, "plain")
    s0 = sched.y_scale[0]
    x = torch.zeros(2000, D)
    plain = test_log_likelihood(ebm, x, 0.0)
    np.testing.assert_allclose(plain, D * math.log(s0))
    deq = test_log_likelihood(ebm, x, 0.0, dequantise="uniform", generator=torch.Generator().manual_seed(0))
    shift = -(s0**2) * D * (2 / 255) ** 2 / (24 * v)
    assert (deq - plain).mean() == pytest.approx(shift, rel=0.01)
    a = 1 / 255  # half-width; Var(u^2) = 4 a^4 / 45 per dimension
    assert (deq - plain).std() == pytest.approx(s0**2 * math.sqrt(D * 4 * a**4 / 45) / (2 * v), rel=0.1)
    with pytest.raises(ValueError, match="dequantise"):
        test_log_likelihood(ebm, x[:2], 0.0, dequantise="gaussian")


def test_weights_and_test_density_are_evaluated_in_fp32():
    """Inside bf16 autocast (``drl.perf.execution``, train.precision) the log weights and test
    log-densities are still computed in fp32, and the autocast state is restored afterwards."""
    ebm, levels = _random_2d("toy", "marginal")
    x = np.random.default_rng(7).normal(0.0, 0.5, (50, 2))
    sampler = grid_sampler(levels)
    ref = estimate_log_z(ebm, 2000, (2,), K=0, generator=torch.Generator().manual_seed(0),
                         progress=False, sampler=sampler)["log_z0"]
    ref_lp = test_log_likelihood(ebm, x, 0.0)
    with execution(precision="bf16"):
        est = estimate_log_z(ebm, 2000, (2,), K=0, generator=torch.Generator().manual_seed(0),
                             progress=False, sampler=sampler)["log_z0"]
        lp = test_log_likelihood(ebm, x, 0.0)
        assert torch.is_autocast_enabled("cpu")
    assert est == ref
    np.testing.assert_array_equal(lp, ref_lp)


def test_committed_checkerboard_log_z_matches_quadrature():
    """The demo's trained checkerboard model (results/demo/metrics/toy_checkerboard_drl.json, written
    by `make demo`): log Z_0 by annealed importance sampling (the method is in its provenance file)
    within 0.02 nats of grid quadrature, and the estimate's standard error small enough for that
    comparison to mean something."""
    import json
    from pathlib import Path

    demo = Path(__file__).resolve().parents[1] / "results/demo"
    m = json.loads((demo / "metrics/toy_checkerboard_drl.json").read_text())
    assert json.loads((demo / "provenance/toy_checkerboard_drl.json").read_text())["log_z_ais_method"] == "ais_hmc"
    assert abs(m["log_z_ais"] - m["log_z_quadrature"]) < 0.02, (m["log_z_ais"], m["log_z_quadrature"])
    assert m["log_z_ais_se"] < 0.005
