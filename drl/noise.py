"""Where every Gaussian draw of the samplers comes from: one ``randn_like(x)`` callable, returning
standard normal noise of x's shape, dtype and device (as EDM's samplers take ``randn_like``).

* ``torch.randn_like``: the global generator.
* ``from_generator(g)``: one ``torch.Generator`` for a whole batch (per-batch seeding: a sample
  depends on the batch size and the device).
* ``per_sample(generators)``: one CPU generator per example (per-sample seeding: sample i of a run
  seeded with s depends on (s, i) alone, whatever the batch size or number of devices).  It costs
  one small CPU randn call per example and draw and a host-to-device copy: negligible for T6 (500
  digits, K = 30: 0.5 s in ~20 s of sampling on one thread), about half an hour of one CPU thread for
  T1k at paper scale (50,000 CIFAR-10 samples x 1,000 levels), which per-batch seeding avoids.
* ``Replay(draws)``: given draws, in order (interpolation, Section 4.1, replays slerped noise).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

RandnLike = Callable[[torch.Tensor], torch.Tensor]


def from_generator(generator: torch.Generator | None = None) -> RandnLike:
    return lambda like: torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


def sample_generators(seed: int, indices: Sequence[int]) -> list[torch.Generator]:
    """The CPU generators of samples ``indices`` of a run seeded with ``seed``, each seeded from
    SeedSequence([seed, i]) so that nearby (seed, i) give unrelated streams."""
    return [torch.Generator().manual_seed(int(np.random.SeedSequence([seed, i]).generate_state(1, np.uint64)[0]))
            for i in indices]


def per_sample(generators: Sequence[torch.Generator]) -> RandnLike:
    def randn_like(like: torch.Tensor) -> torch.Tensor:
        if len(like) != len(generators):
            raise ValueError(f"{len(generators)} per-sample generators for a batch of {len(like)}")
        return torch.cat([torch.randn((1, *like.shape[1:]), generator=g, dtype=like.dtype)
                          for g in generators]).to(like.device)
    return randn_like


class Replay:
    """``randn_like`` that returns ``draws`` one after the other (each checked against the shape asked
    for); ``done()`` says whether all were used."""

    def __init__(self, draws: Sequence[torch.Tensor]):
        self.draws, self.used = list(draws), 0

    def __call__(self, like: torch.Tensor) -> torch.Tensor:
        if self.used == len(self.draws):
            raise ValueError(f"the supplied noise holds {len(self.draws)} draws; the sampler asked for more")
        draw = self.draws[self.used]
        if draw.shape != like.shape:
            raise ValueError(f"supplied noise draw {self.used} has shape {tuple(draw.shape)}, "
                             f"the sampler asked for {tuple(like.shape)}")
        self.used += 1
        return draw.to(like.device, like.dtype)

    def done(self) -> bool:
        return self.used == len(self.draws)
