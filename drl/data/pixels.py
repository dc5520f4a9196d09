"""Pixel conventions (released code): uint8 images in [0, 255] <-> model space x / 127.5 - 1 in
[-1, 1], channels first.  Prepared image datasets are stored as uint8 (N, H, W, C)."""
from __future__ import annotations

import numpy as np
import torch


def is_image_array(x: np.ndarray) -> bool:
    return x.dtype == np.uint8 and x.ndim == 4


def to_model_space(x: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, C) -> float32 (N, C, H, W) in [-1, 1]; 2-D points pass through as float32."""
    if not is_image_array(x):
        return x.astype(np.float32)
    return (x.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0).copy()


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in model space -> uint8 (N, H, W, C), rounded and clipped."""
    x = ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()
