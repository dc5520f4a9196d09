"""Progressive sampling (Algorithm 2).

Seeding: one ``torch.Generator`` for a whole batch (per-batch: each sample depends on the batch
size and the device), or one CPU generator per sample (per-sample, ``sample_generators``: sample i
of a run seeded with s depends on (s, i) alone, whatever the batch size or number of devices).
Per-sample seeding costs n (1 + T max(K, 1)) small CPU randn calls and a host-to-device copy per
draw instead of one randn per draw on the device: negligible for T6 (500 digits samples, K = 30:
0.5 s of draws in ~20 s of sampling on one CPU thread), but for T1k at paper scale (50,000 CIFAR-10
samples x 1,000 levels) about half an hour of single-threaded CPU draws, which per-batch avoids.
"""
from __future__ import annotations

from collections import deque
from collections.abc import Collection, Iterator, Sequence

import numpy as np
import torch

from drl.energy import ConditionalEBM
from drl.mcmc import recovery_sample


# Algorithm 2: x_T ~ N(0, I); for t = T-1..0: y_t <- K steps of eq. 17 from x_{t+1}
# (normal approximation, eq. 12, when K = 0); x_t = y_t / y_scale[t].
def progressive_levels(ebm: ConditionalEBM, x_T: torch.Tensor, K: int, noise_scale: float = 1.0, generator=None,
                       noise: Collection | None = None) -> Iterator[torch.Tensor]:
    """Yield x_T, x_{T-1}, ..., x_0 one level at a time (lazily: a consumer that stops early saves the
    rest).  ``noise``: the Langevin noise of each level from the top, iterated in order (a list for
    interpolation, drawn lazily for per-sample seeding); by default each level draws from ``generator``."""
    if noise is not None and len(noise) != ebm.T:
        raise ValueError(f"noise holds {len(noise)} levels; the model has T = {ebm.T}")
    eps = None if noise is None else iter(noise)
    x = x_T
    yield x
    for t in reversed(range(ebm.T)):
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        y = recovery_sample(ebm, x, tt, K, noise_scale, generator, noise=None if eps is None else next(eps))
        x = y / float(ebm.levels["y_scale"][t])
        yield x


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """The CPU generators of samples ``indices`` of a run seeded with ``seed`` (per-sample seeding),
    each seeded from SeedSequence([seed, i]) so that nearby (seed, i) give unrelated streams."""
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))
            for i in indices]


class _PerSampleNoise:
    """Algorithm 2's Langevin noise for a batch of per-sample generators, drawn level by level as
    iterated (T1k holds 1000 levels): each generator draws, for one sample, what
    drl.interpolate.draw_noise draws after x_T, so a sample is the same in any batch."""

    def __init__(self, generators: list[torch.Generator], shape: tuple, K: int, T: int, device):
        self.generators, self.shape, self.K, self.T, self.device = generators, shape, K, T, device

    def __len__(self) -> int:
        return self.T

    def __iter__(self) -> Iterator[list[torch.Tensor]]:
        for _ in range(self.T):
            yield [self.draw() for _ in range(max(self.K, 1))]

    def draw(self) -> torch.Tensor:
        return torch.cat([torch.randn((1, *self.shape), generator=g) for g in self.generators]).to(self.device)


def progressive_sample(ebm: ConditionalEBM, n: int, shape: tuple, K: int, noise_scale: float = 1.0,
                       generator: torch.Generator | list[torch.Generator] | None = None, device="cpu",
                       keep_levels: bool = True) -> list[torch.Tensor]:
    """Return [x_T, x_{T-1}, ..., x_0], each of shape [n, *shape]; only [x_0] when ``keep_levels``
    is False (T1k image batches would otherwise hold a thousand levels).  ``generator``: one for
    the batch (per-batch seeding), or n CPU generators, one per sample (per-sample seeding)."""
    if isinstance(generator, list):
        if len(generator) != n:
            raise ValueError(f"{len(generator)} per-sample generators for {n} samples")
        noise = _PerSampleNoise(generator, shape, K, ebm.T, device)
        levels = progressive_levels(ebm, noise.draw(), K, noise_scale, noise=noise)
    else:
        levels = progressive_levels(ebm, torch.randn((n, *shape), generator=generator, device=device), K, noise_scale,
                                    generator)
    return list(levels) if keep_levels else [deque(levels, maxlen=1)[0]]
