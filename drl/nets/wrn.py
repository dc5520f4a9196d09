"""Wide-ResNet energy net(y, t) for images (B, C, H, W): paper Table 4 / Appendix B and
``net_res_temb2`` of the released code (its network.py, github.com/ruiqigao/recovery_likelihood).

Released-code details the paper leaves out: the time-embedding MLP is 4 ch wide; every consumer of
the embedding applies lReLU first; the 3x3 conv shortcut exists only where the channel count
changes (first block of a level); 2x2 average pooling follows the last block of every level but the
last; the head is time-dependent (``head="temb"``).  With ch 128, ch_mult (1, 2, 2, 2) this gives
9.06M / 21.9M / 34.8M parameters for N = 2 / 5 / 8, the paper's 9.1M / 21.9M / 34.8M.
"""
from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from drl.nets.embedding import sinusoidal_embedding

# Table 4 (a)-(c): channel multipliers of the levels for each resolution.
DEFAULT_CH_MULT = {32: (1, 2, 2, 2), 64: (1, 2, 2, 2, 4), 128: (1, 2, 2, 2, 4, 4)}
HEADS = ("temb", "dense")


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _unit_or_keep(x: torch.Tensor, old: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """x / |x|, or ``old`` where x vanishes: a zero-initialised weight must not collapse u, v to 0
    (they would then stay 0 and the layer would never be normalised)."""
    norm = x.norm()
    return torch.where(norm > eps, x / norm.clamp_min(eps), old)


def _without_autocast(device: torch.device):
    kind = device.type
    return torch.autocast(kind, enabled=False) if torch.amp.is_autocast_available(kind) else nullcontext()


# Released code nn.SN: sigma = u^T W v with W the weight as an (out, rest) matrix; u, v updated
# without gradient by power iteration.  ``bound_only`` is their ``lower_bound`` for zero-initialised
# layers (sigma = 0 at init): W / max(1, sigma), i.e. only divided once sigma exceeds 1.
class SpectralNorm(nn.Module):
    """Parametrisation W -> W / sigma(W) (``bound_only``: W / max(1, sigma(W))).

    In training mode every evaluation of the weight first runs ``n_power_iterations`` power
    iterations, as the released code does on every call -- so also at each Langevin step of the
    training sampler.  How many evaluations one training iteration makes is set by
    ``energy.sn_power_iteration`` (drl/power_iteration.py): ``per_call`` (default), one power iteration per
    weight evaluation with drl's own call structure (time embedding once per chain, K score
    evaluations, pos and neg batched); ``released``, the released code's call structure exactly
    (K + 3 per layer); ``per_iteration``, one (``drl.power_iteration.fixed_weights``).  In eval mode u, v are
    frozen (PyTorch's convention; the EMA copy reads the trained buffers).  Unlike the released code
    (random u, no warm-up) u, v get 15 warm-up iterations at construction, as in
    ``torch.nn.utils.parametrizations.spectral_norm``.
    """

    def __init__(self, weight: torch.Tensor, n_power_iterations: int = 1, bound_only: bool = False,
                 warmup: int = 15):
        super().__init__()
        if n_power_iterations < 1:
            raise ValueError(f"sn_power_iterations must be >= 1, got {n_power_iterations}")
        self.n_power_iterations = n_power_iterations
        self.bound_only = bound_only
        mat = weight.detach().flatten(1)
        self.register_buffer("_u", F.normalize(mat.new_empty(mat.shape[0]).normal_(), dim=0))
        self.register_buffer("_v", F.normalize(mat.new_empty(mat.shape[1]).normal_(), dim=0))
        self._power_iterations(mat, warmup)

    @torch.no_grad()
    def _power_iterations(self, mat: torch.Tensor, n: int) -> None:
        for _ in range(0 if mat.is_meta else n):   # meta tensors (shape-only builds) hold no values
            self._v.copy_(_unit_or_keep(mat.t() @ self._u, self._v))
            self._u.copy_(_unit_or_keep(mat @ self._v, self._u))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        with _without_autocast(weight.device):   # sigma in the weight's own precision
            mat = weight.flatten(1)
            if self.training:
                self._power_iterations(mat.detach(), self.n_power_iterations)
            # clones: the buffers change in place at the next call, the graph must keep these values
            sigma = self._u.clone() @ mat @ self._v.clone()
            return weight / (sigma.clamp_min(1.0) if self.bound_only else sigma)


def _init(layer: nn.Module, zero: bool, sn: bool, n_power_iterations: int) -> nn.Module:
    """Released-code init (Glorot uniform, zero bias; ``zero``: zero weights), then spectral norm."""
    if zero:
        nn.init.zeros_(layer.weight)
    else:
        nn.init.xavier_uniform_(layer.weight)
    nn.init.zeros_(layer.bias)
    if sn:
        parametrize.register_parametrization(
            layer, "weight", SpectralNorm(layer.weight, n_power_iterations, bound_only=zero))
    return layer


def _conv(c_in: int, c_out: int, sn: bool, n_iter: int, zero: bool = False) -> nn.Module:
    return _init(nn.Conv2d(c_in, c_out, 3, padding=1), zero, sn, n_iter)


def _dense(n_in: int, n_out: int, sn: bool, n_iter: int) -> nn.Module:
    return _init(nn.Linear(n_in, n_out), False, sn, n_iter)


# Table 4 (e) / released resnet_block: lReLU, conv3x3, + Dense(lReLU(temb)), lReLU, conv3x3
# (zero-initialised, output times a learnable per-channel g), + input (3x3 conv shortcut when the
# channel count changes).
class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, temb_width: int, sn: bool, n_iter: int):
        super().__init__()
        self.conv1 = _conv(c_in, c_out, sn, n_iter)
        self.temb = _dense(temb_width, c_out, sn, n_iter)
        self.conv2 = _conv(c_out, c_out, sn, n_iter, zero=True)
        self.g = nn.Parameter(torch.ones(c_out))
        self.shortcut = _conv(c_in, c_out, sn, n_iter) if c_in != c_out else nn.Identity()

    def time_projection(self, temb_act: torch.Tensor) -> torch.Tensor:
        """Dense(lReLU(temb)) as (B, C, 1, 1), given lReLU(temb)."""
        return self.temb(temb_act)[:, :, None, None]

    def forward(self, h: torch.Tensor, temb_proj: torch.Tensor) -> torch.Tensor:
        z = self.conv1(_act(h)) + temb_proj
        z = self.conv2(_act(z)) * self.g[:, None, None]
        return self.shortcut(h) + z


def default_ch_mult(resolution: int) -> tuple[int, ...]:
    if resolution not in DEFAULT_CH_MULT:
        raise ValueError(f"no Table 4 channel multipliers for resolution {resolution} "
                         f"(known: {sorted(DEFAULT_CH_MULT)}); set energy.net.ch_mult")
    return DEFAULT_CH_MULT[resolution]


# Table 4 / released net_res_temb2: conv3x3 -> per level N ResBlocks of ch * mult channels, 2x2
# average pooling between levels -> ReLU, global sum -> head.  Time embedding (Table 4d): sinusoidal
# -> SN-Dense 4ch -> lReLU -> SN-Dense 4ch.  Heads: "temb" (released) sum_c h_c Dense(lReLU(temb))_c,
# a time-dependent linear map without spectral norm (its bias gives the time-independent term
# sum_c h_c b_c; there is no separate scalar offset); "dense" (paper's "Dense 1") a plain Linear(C, 1).
class WRNEnergy(nn.Module):
    """net(y, t) for y of shape (B, in_channels, resolution, resolution); one scalar per example."""

    def __init__(self, resolution: int, in_channels: int = 3, ch: int = 128,
                 ch_mult: tuple[int, ...] | list[int] | None = None, n_blocks: int = 2,
                 temb_dim: int = 128, head: str = "temb", spectral_norm: bool = True,
                 sn_power_iterations: int = 1):
        super().__init__()
        ch_mult = tuple(ch_mult) if ch_mult is not None else default_ch_mult(resolution)
        if resolution % 2 ** (len(ch_mult) - 1):
            raise ValueError(f"resolution {resolution} is not divisible by 2^{len(ch_mult) - 1} "
                             f"({len(ch_mult) - 1} downsamplings for ch_mult {ch_mult})")
        if n_blocks < 1:
            raise ValueError(f"energy.net.n_blocks must be >= 1, got {n_blocks}")
        if head not in HEADS:
            raise ValueError(f"unknown energy.net.head {head!r}; use one of {HEADS}")
        sn, n_iter, width = spectral_norm, sn_power_iterations, 4 * ch
        self.resolution, self.in_channels, self.ch_mult = resolution, in_channels, ch_mult
        self.temb_dim, self.head = temb_dim, head
        self.temb0 = _dense(temb_dim, width, sn, n_iter)
        self.temb1 = _dense(width, width, sn, n_iter)
        self.conv_in = _conv(in_channels, ch, sn, n_iter)
        blocks, down_after, c = [], [], ch
        for level, mult in enumerate(ch_mult):
            for i in range(n_blocks):
                blocks.append(ResBlock(c, ch * mult, width, sn, n_iter))
                down_after.append(i == n_blocks - 1 and level < len(ch_mult) - 1)
                c = ch * mult
        self.blocks = nn.ModuleList(blocks)
        self.down_after = tuple(down_after)
        out = nn.Linear(width, c) if head == "temb" else nn.Linear(c, 1)
        self.out = _init(out, zero=False, sn=False, n_power_iterations=1)

    def time_context(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Everything that depends on t alone: each block's Dense(lReLU(temb)) and, for the temb
        head, its weights Dense(lReLU(temb)), so an MCMC chain at fixed t computes them once."""
        emb = sinusoidal_embedding(t, self.temb_dim).to(self.conv_in.bias.dtype)
        temb_act = _act(self.temb1(_act(self.temb0(emb))))
        ctx = [block.time_projection(temb_act) for block in self.blocks]
        return ctx + [self.out(temb_act)] if self.head == "temb" else ctx

    def forward(self, y: torch.Tensor, t: torch.Tensor, ctx: list[torch.Tensor] | None = None) -> torch.Tensor:
        ctx = self.time_context(t) if ctx is None else ctx
        h = self.conv_in(y)
        for block, temb_proj, down in zip(self.blocks, ctx, self.down_after):
            h = block(h, temb_proj)
            if down:
                h = F.avg_pool2d(h, 2)
        h = F.relu(h).sum(dim=(2, 3))
        return (h * ctx[-1]).sum(dim=1) if self.head == "temb" else self.out(h).squeeze(-1)
