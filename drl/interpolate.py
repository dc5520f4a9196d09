"""Interpolation between two generated samples (Section 4.1 "Interpolation", Fig. 5, App. C.1).

For samples x_0^(0), x_0^(1) the paper sphere-interpolates the initial white noise x_T^(0), x_T^(1)
and the Langevin noise eps_{t,tau}^(0), eps_{t,tau}^(1) of every sampling step at every time step,
then runs Algorithm 2 with the interpolated noise.
"""
from __future__ import annotations

from typing import Sequence

import torch

from drl.energy import ConditionalEBM
from drl.noise import RandnLike, Replay, from_generator
from drl.sample import progressive_sample


# Spherical linear interpolation (Section 4.1) of each example's flattened vector:
#   slerp(a, b; alpha) = sin((1 - alpha) theta) / sin(theta) a + sin(alpha theta) / sin(theta) b,
# theta the angle between a and b.  Where sin(theta) < eps (a, b (anti)parallel: the great circle is
# ill-defined) it falls back to linear interpolation.  Exact at alpha = 0 and 1.
def slerp(a: torch.Tensor, b: torch.Tensor, alpha, eps: float = 1e-7) -> torch.Tensor:
    """a, b: [n, ...]; alpha: a float or one per example [n].  Computed in float64, returned in a's dtype."""
    a64, b64 = a.flatten(1).double(), b.flatten(1).double()
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=a.device).expand(len(a)).unsqueeze(1)
    theta = _angle(a64, b64).unsqueeze(1)
    sin = torch.sin(theta)
    flat = sin < eps
    sin = torch.where(flat, 1.0, sin)
    wa = torch.where(flat, 1 - alpha, torch.sin((1 - alpha) * theta) / sin)
    wb = torch.where(flat, alpha, torch.sin(alpha * theta) / sin)
    return (wa * a64 + wb * b64).to(a.dtype).reshape(a.shape)


def _angle(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Angle between the rows of a and b as 2 atan2(|u - v|, |u + v|) for the unit rows u, v
    (accurate near 0 and pi, where arccos of the cosine is not)."""
    u, v = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    return 2 * torch.atan2((u - v).norm(dim=1), (u + v).norm(dim=1))


# Every draw progressive_sample(ebm, n, shape, K, randn_like=randn_like) makes, in its order, without
# sampling: x_T, then for t = T-1, ..., 0 the eps of each sampling step (K Langevin eps_{t,tau}, or the
# normal approximation's one eps when K = 0); so that
#   sample_with_noise(ebm, draw_noise(ebm, n, shape, K, randn_like), K)
#   == progressive_sample(ebm, n, shape, K, randn_like=randn_like)[-1]  for the same draws.
def draw_noise(ebm: ConditionalEBM, n: int, shape: tuple, K: int, randn_like: RandnLike = torch.randn_like,
               device="cpu") -> list[torch.Tensor]:
    like = torch.empty((n, *shape), device=device)
    return [randn_like(like) for _ in range(1 + ebm.T * max(K, 1))]


# Algorithm 2 (as progressive_sample) with every draw replayed from ``noise``; returns x_0.
def sample_with_noise(ebm: ConditionalEBM, noise: Sequence[torch.Tensor], K: int, noise_scale: float = 1.0) -> torch.Tensor:
    replay = Replay(noise)
    x0 = progressive_sample(ebm, len(noise[0]), tuple(noise[0].shape[1:]), K, noise_scale, replay,
                            noise[0].device, keep_levels=False)[-1]
    if not replay.done():
        raise ValueError(f"the supplied noise holds {len(noise)} draws; sampling with K = {K} used {replay.used}")
    return x0


# Section 4.1 / Fig. 5: slerp every noise tensor of two single-sample endpoints at each alpha.
def slerp_noise(noise0: Sequence[torch.Tensor], noise1: Sequence[torch.Tensor], alphas: torch.Tensor) -> list[torch.Tensor]:
    """Endpoints of batch size 1 -> draws of batch size len(alphas)."""
    if len(noise0[0]) != 1 or len(noise1[0]) != 1:
        raise ValueError("interpolation endpoints must each hold one sample")
    n = len(alphas)
    return [slerp(a.expand(n, *a.shape[1:]), b.expand(n, *b.shape[1:]), alphas) for a, b in zip(noise0, noise1, strict=True)]


# Section 4.1 / Fig. 5: the samples from the slerped noise, [len(alphas), *shape]; alpha = 0 and 1
# give the endpoints' own samples (bitwise, or to float rounding where the net's batched evaluation
# differs from a batch of one, as CPU convolutions do).
def interpolate(ebm: ConditionalEBM, noise0: Sequence[torch.Tensor], noise1: Sequence[torch.Tensor],
                alphas: Sequence[float] | torch.Tensor, K: int, noise_scale: float = 1.0) -> torch.Tensor:
    alphas = torch.as_tensor(alphas, dtype=torch.float64, device=noise0[0].device)
    return sample_with_noise(ebm, slerp_noise(noise0, noise1, alphas), K, noise_scale)


# Fig. 5 rows: n_points evenly spaced alphas in [0, 1] between the samples that
# progressive_sample(ebm, 1, shape, K, noise_scale, from_generator(Generator(device).manual_seed(seed)), device)
# gives for the two seeds.
def interpolate_seeds(ebm: ConditionalEBM, shape: tuple, K: int, seeds: tuple[int, int], n_points: int,
                      noise_scale: float = 1.0, device="cpu") -> torch.Tensor:
    noise0, noise1 = (draw_noise(ebm, 1, shape, K, from_generator(torch.Generator(device=device).manual_seed(s)), device)
                      for s in seeds)
    alphas = torch.linspace(0.0, 1.0, n_points, dtype=torch.float64)
    return interpolate(ebm, noise0, noise1, alphas, K, noise_scale)
