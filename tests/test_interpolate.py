"""drl/interpolate.py: interpolation between two generated samples (Section 4.1, Fig. 5), and the
replayed noise (drl/noise.py) it relies on."""
import math

import pytest
import torch

from drl.diffusion import linear_sigma2_schedule
from drl.energy import ConditionalEBM
from drl.interpolate import draw_noise, interpolate, interpolate_seeds, sample_with_noise, slerp
from drl.mcmc import langevin, normal_approximation
from drl.sample import progressive_sample
from drl.noise import Replay, from_generator
from rounding import reordered
from oracles import GaussianMixtureData, OracleNet, tiny_mlp_ebm, tiny_wrn_ebm


def _angle(a, b):
    return math.acos(float((a * b).sum() / (a.norm() * b.norm())))


def _oracle_ebm(data, T=3, top_level="conditional"):
    sched = linear_sigma2_schedule(T, 0.05, 0.3, top_level=top_level)
    return ConditionalEBM(OracleNet(data, sched), sched, "paper", 0.3, "plain").eval()


MIXTURE = GaussianMixtureData([[1.0, 0.0], [-1.0, 0.5], [0.0, -1.0]], [0.2, 0.3, 0.25])


# ------------------------------------------------------------------------------------------ slerp
def test_slerp_endpoints_are_exact():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    mixed = slerp(a, b, torch.tensor([0.0, 1.0, 1.0, 0.0]))
    assert torch.equal(mixed[[0, 3]], a[[0, 3]]) and torch.equal(mixed[[1, 2]], b[[1, 2]])


def test_slerp_preserves_equal_norms_and_moves_at_constant_angular_speed():
    g = torch.Generator().manual_seed(1)
    a, b = (torch.randn(1, 50, generator=g, dtype=torch.float64) for _ in range(2))
    b = b * a.norm() / b.norm()
    theta = _angle(a, b)
    for alpha in torch.linspace(0, 1, 9).tolist():
        s = slerp(a, b, alpha)
        assert s.norm().item() == pytest.approx(a.norm().item(), rel=1e-12)
        assert _angle(a, s) == pytest.approx(alpha * theta, abs=1e-7)
        assert _angle(s, b) == pytest.approx((1 - alpha) * theta, abs=1e-7)


def test_slerp_near_parallel_falls_back_to_linear():
    a = torch.tensor([[1.0, 2.0, -0.5]], dtype=torch.float64)
    for b in (2 * a, 2 * a + 1e-12, -a):
        for alpha in (0.0, 0.3, 1.0):
            s = slerp(a, b, alpha)
            assert torch.isfinite(s).all()
            torch.testing.assert_close(s, (1 - alpha) * a + alpha * b, rtol=1e-9, atol=1e-9)
    b = a + 1e-6 * torch.tensor([[0.0, 1.0, 4.0]], dtype=torch.float64)  # tiny angle, above the cutoff
    torch.testing.assert_close(slerp(a, b, 0.4), 0.6 * a + 0.4 * b, rtol=1e-9, atol=1e-9)


def test_slerped_gaussian_noise_is_still_standard_normal():
    """Independent N(0, I) endpoints in high D are near-orthogonal with norm ~ sqrt(D), so the slerp
    keeps norm sqrt(D) and standard-normal coordinates; linear interpolation would shrink it."""
    D = 200_000
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(1, D, generator=g), torch.randn(1, D, generator=g)
    for alpha in (0.25, 0.5, 0.75):
        s = slerp(a, b, alpha).double()
        assert s.norm().item() / math.sqrt(D) == pytest.approx(1.0, abs=0.01)
        assert abs(s.mean().item()) < 0.01
        assert (s**4).mean().item() / (s**2).mean().item() ** 2 == pytest.approx(3.0, abs=0.05)
    assert (0.5 * a + 0.5 * b).norm().item() / math.sqrt(D) == pytest.approx(math.sqrt(0.5), abs=0.01)


# ------------------------------------------------------------------------ replayed noise (drl/noise.py)
@pytest.mark.parametrize("K", [0, 5])
def test_replayed_draws_give_the_drawn_samples(K):
    """draw_noise records exactly the draws progressive_sample makes from the same generator: the
    replayed sample is bitwise the same, the generators are left in the same state."""
    ebm = _oracle_ebm(MIXTURE)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    expected = progressive_sample(ebm, 7, (2,), K, 0.8, from_generator(g1))[-1]
    got = sample_with_noise(ebm, draw_noise(ebm, 7, (2,), K, from_generator(g2)), K, 0.8)
    assert torch.equal(got, expected)
    assert torch.equal(g1.get_state(), g2.get_state())


def test_langevin_and_normal_approximation_use_replayed_noise():
    ebm = _oracle_ebm(MIXTURE)
    x, t = torch.randn(6, 2, generator=torch.Generator().manual_seed(4)), torch.tensor([0, 1, 2, 0, 1, 2])
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    eps = [torch.randn(6, 2, generator=g2) for _ in range(5)]
    assert torch.equal(langevin(ebm, x, t, 4, 0.9, from_generator(g1)), langevin(ebm, x, t, 4, 0.9, Replay(eps[:4])))
    assert torch.equal(normal_approximation(ebm, x, t, 0.9, from_generator(g1)),
                       normal_approximation(ebm, x, t, 0.9, Replay(eps[4:])))
    assert torch.equal(g1.get_state(), g2.get_state())
    with pytest.raises(ValueError, match="holds 3 draws"):
        langevin(ebm, x, t, 4, randn_like=Replay(eps[:3]))
    with pytest.raises(ValueError, match="shape"):
        langevin(ebm, x, t, 1, randn_like=Replay([torch.zeros(6, 3)]))
    with pytest.raises(ValueError, match="used"):   # more draws than the sampler takes
        sample_with_noise(ebm, draw_noise(ebm, 1, (2,), 5), 4)


# ---------------------------------------------------------------------------------- interpolation
@pytest.mark.rounding
@pytest.mark.parametrize("make_ebm,shape,K", [
    (lambda: _oracle_ebm(MIXTURE), (2,), 5),
    (lambda: _oracle_ebm(MIXTURE), (2,), 0),
    (tiny_mlp_ebm, (2,), 5),
    (tiny_wrn_ebm, (3, 8, 8), 2),
])
def test_interpolation_ends_at_the_two_samples_and_is_deterministic(make_ebm, shape, K):
    ebm = make_ebm()
    out = interpolate_seeds(ebm, shape, K, (11, 12), n_points=5, noise_scale=0.9)
    assert out.shape == (5, *shape)
    for seed, end in ((11, out[0]), (12, out[-1])):
        sample = progressive_sample(ebm, 1, shape, K, 0.9, from_generator(torch.Generator().manual_seed(seed)))[-1][0]
        # the same draws; only the batch of 5 against 1 differs (other kernels): T levels of K steps of O(1)
        # values, well inside 64 reordered operations (tests/rounding.py)
        torch.testing.assert_close(end, sample, rtol=0, atol=reordered(1.0, 64))
    assert torch.equal(interpolate_seeds(ebm, shape, K, (11, 12), n_points=5, noise_scale=0.9), out)
    steps = (out[1:] - out[:-1]).flatten(1).norm(dim=1)
    assert torch.isfinite(out).all() and (steps > 0).all()


def test_interpolated_samples_keep_the_model_marginal():
    """Zero-mean isotropic Gaussian data in D = 20000: the sampler is linear in its noise, so each
    coordinate of x_0 is N(0, v) and |x_0|^2 / D concentrates at v.  Slerped noise keeps it there
    at every alpha; linearly interpolated noise (the contrast) shrinks it at alpha = 0.5."""
    D = 20_000
    ebm = _oracle_ebm(GaussianMixtureData([[0.0] * D], [0.7]))
    noise0, noise1 = (draw_noise(ebm, 1, (D,), 5, from_generator(torch.Generator().manual_seed(s))) for s in (20, 21))
    v = sample_with_noise(ebm, draw_noise(ebm, 1, (D,), 5, from_generator(torch.Generator().manual_seed(22))), 5).pow(2).mean()
    out = interpolate(ebm, noise0, noise1, [0.0, 0.25, 0.5, 0.75, 1.0], 5)
    torch.testing.assert_close(out.pow(2).mean(1), v.expand(5), rtol=0.05, atol=0)

    def lerp(a, b):
        return 0.5 * a + 0.5 * b

    linear = [lerp(a, b) for a, b in zip(noise0, noise1)]
    assert sample_with_noise(ebm, linear, 5).pow(2).mean() < 0.7 * v
