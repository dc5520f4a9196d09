"""Progressive sampling (Algorithm 2)."""
from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import torch

from drl.energy import ConditionalEBM
from drl.mcmc import recovery_sample


# Algorithm 2: x_T ~ N(0, I); for t = T-1..0: y_t <- K steps of eq. 17 from x_{t+1}
# (normal approximation, eq. 12, when K = 0); x_t = y_t / y_scale[t].
def progressive_levels(ebm: ConditionalEBM, x_T: torch.Tensor, K: int, noise_scale: float = 1.0, generator=None,
                       noise: list | None = None) -> Iterator[torch.Tensor]:
    """Yield x_T, x_{T-1}, ..., x_0 one level at a time (lazily: a consumer that stops early saves the
    rest).  ``noise[i]``: the pre-drawn Langevin noise of the i-th level from the top (interpolation);
    by default each level draws from ``generator``."""
    if noise is not None and len(noise) != ebm.T:
        raise ValueError(f"noise holds {len(noise)} levels; the model has T = {ebm.T}")
    x = x_T
    yield x
    for i, t in enumerate(reversed(range(ebm.T))):
        tt = torch.full((len(x),), t, dtype=torch.long, device=x.device)
        y = recovery_sample(ebm, x, tt, K, noise_scale, generator, noise=None if noise is None else noise[i])
        x = y / float(ebm.levels["y_scale"][t])
        yield x


def progressive_sample(ebm: ConditionalEBM, n: int, shape: tuple, K: int, noise_scale: float = 1.0,
                       generator=None, device="cpu", keep_levels: bool = True) -> list[torch.Tensor]:
    """Return [x_T, x_{T-1}, ..., x_0], each of shape [n, *shape]; only [x_0] when ``keep_levels``
    is False (T1k image batches would otherwise hold a thousand levels)."""
    levels = progressive_levels(ebm, torch.randn((n, *shape), generator=generator, device=device), K, noise_scale,
                                generator)
    return list(levels) if keep_levels else [deque(levels, maxlen=1)[0]]
