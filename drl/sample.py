"""Progressive sampling (Algorithm 2).  Its Gaussian draws come from one ``randn_like`` (drl/noise.py):
per-batch seeding (``noise.from_generator``), per-sample seeding (``noise.per_sample``) or replayed
noise (interpolation)."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch

from drl.energy import ConditionalEBM
from drl.mcmc import recovery_sample
from drl.noise import RandnLike


# Algorithm 2: x_T ~ N(0, I); for t = T-1..0: y_t <- K steps of eq. 17 from x_{t+1}
# (normal approximation, eq. 12, when K = 0); x_t = y_t / y_scale[t].
def progressive_levels(ebm: ConditionalEBM, x_T: torch.Tensor, K: int, noise_scale: float = 1.0,
                       randn_like: RandnLike = torch.randn_like) -> Iterator[torch.Tensor]:
    """Yield x_T, x_{T-1}, ..., x_0 one level at a time (lazily: a consumer that stops early saves the rest)."""
    x = x_T
    yield x
    for t in reversed(range(ebm.T)):
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        y = recovery_sample(ebm, x, tt, K, noise_scale, randn_like)
        x = y / float(ebm.levels["y_scale"][t])
        yield x


def progressive_sample(ebm: ConditionalEBM, n: int, shape: tuple, K: int, noise_scale: float = 1.0,
                       randn_like: RandnLike = torch.randn_like, device="cpu",
                       keep_levels: bool = True) -> list[torch.Tensor]:
    """Return [x_T, x_{T-1}, ..., x_0], each of shape [n, *shape], x_T drawn by ``randn_like`` first;
    only [x_0] when ``keep_levels`` is False (T1k image batches would otherwise hold a thousand levels)."""
    levels = progressive_levels(ebm, randn_like(torch.empty((n, *shape), device=device)), K, noise_scale, randn_like)
    return list(levels) if keep_levels else [deque(levels, maxlen=1)[0]]
