"""Sinusoidal time embedding (Transformer position embedding, as in DDPM [17])."""
from __future__ import annotations

import math

import torch


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Embed integer levels t (shape [B]) into [B, dim]: sin and cos at geometric frequencies."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / max(half - 1, 1))
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return torch.nn.functional.pad(emb, (0, dim % 2))
