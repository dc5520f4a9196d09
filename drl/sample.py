"""Progressive sampling (Algorithm 2)."""
from __future__ import annotations

import torch

from drl.energy import ConditionalEBM
from drl.mcmc import recovery_sample


# Algorithm 2: x_T ~ N(0, I); for t = T-1..0: y_t <- K steps of eq. 17 from x_{t+1}
# (normal approximation, eq. 12, when K = 0); x_t = y_t / y_scale[t].
def progressive_sample(ebm: ConditionalEBM, n: int, shape: tuple, K: int, noise_scale: float = 1.0,
                       generator=None, device="cpu", keep_levels: bool = True) -> list[torch.Tensor]:
    """Return [x_T, x_{T-1}, ..., x_0], each of shape [n, *shape]; only [x_0] when ``keep_levels``
    is False (T1k image batches would otherwise hold a thousand levels)."""
    x = torch.randn((n, *shape), generator=generator, device=device)
    xs = [x]
    for t in reversed(range(ebm.T)):
        tt = torch.full((n,), t, dtype=torch.long, device=device)
        y = recovery_sample(ebm, x, tt, K, noise_scale, generator)
        x = y / float(ebm.levels["y_scale"][t])
        xs = xs + [x] if keep_levels else [x]
    return xs
