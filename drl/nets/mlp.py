"""MLP energy for 2-D data (and small images, flattened): residual blocks with the time embedding
added after the first layer of each block (the 2-D analogue of the paper's ResBlock, Table 4e)."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from drl.nets.embedding import sinusoidal_embedding


def _linear(n_in: int, n_out: int, sn: bool) -> nn.Module:
    layer = nn.Linear(n_in, n_out)
    return spectral_norm(layer) if sn else layer


class MLPBlock(nn.Module):
    def __init__(self, width: int, temb_dim: int, sn: bool, act: nn.Module):
        super().__init__()
        self.act = act
        self.fc1 = _linear(width, width, sn)
        self.temb = _linear(temb_dim, width, sn)
        self.fc2 = _linear(width, width, sn)

    def forward(self, h, temb_proj):
        z = self.fc1(self.act(h)) + temb_proj
        return h + self.fc2(self.act(z))


class MLPEnergy(nn.Module):
    """net(y, t): input layer, ``depth`` residual blocks, activation, linear head.  ``in_shape``: one
    example's shape when it is not a vector (e.g. [1, 8, 8] digits); y is flattened to ``dim``.
    ``zero_head``: the head starts at zero, so net = 0 at initialisation (as the WRN's released-code
    head), leaving f at its base energy (``energy.base``)."""

    def __init__(self, dim: int = 2, width: int = 256, depth: int = 3, temb_dim: int = 64,
                 activation: str = "silu", spectral_norm: bool = False, in_shape: list[int] | None = None,
                 zero_head: bool = False):
        super().__init__()
        if in_shape is not None and math.prod(in_shape) != dim:
            raise ValueError(f"energy.net.in_shape {in_shape} has {math.prod(in_shape)} values; dim is {dim}")
        acts = {"silu": nn.SiLU(), "lrelu": nn.LeakyReLU(0.2), "softplus": nn.Softplus()}
        if activation not in acts:
            raise ValueError(f"unknown energy.net.activation {activation!r}; use one of {sorted(acts)}")
        act = acts[activation]
        self.temb_dim = temb_dim
        self.temb = nn.Sequential(nn.Linear(temb_dim, width), act, nn.Linear(width, width))
        self.inp = _linear(dim, width, spectral_norm)
        self.blocks = nn.ModuleList(MLPBlock(width, width, spectral_norm, act) for _ in range(depth))
        self.act = act
        self.head = nn.Linear(width, 1)
        if zero_head:
            nn.init.zeros_(self.head.weight)
            nn.init.zeros_(self.head.bias)

    def time_context(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Everything that depends on t alone (each block's projected time embedding), so an MCMC
        chain at fixed t computes it once instead of at every step."""
        temb = self.act(self.temb(sinusoidal_embedding(t, self.temb_dim)))
        return [block.temb(temb) for block in self.blocks]

    def forward(self, y: torch.Tensor, t: torch.Tensor, ctx: list[torch.Tensor] | None = None) -> torch.Tensor:
        ctx = self.time_context(t) if ctx is None else ctx
        h = self.inp(y.flatten(1))
        for block, temb_proj in zip(self.blocks, ctx):
            h = block(h, temb_proj)
        return self.head(self.act(h)).squeeze(-1)
