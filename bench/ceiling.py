"""The machine's own ceiling: dense matmul and 3x3 convolution throughput, measured in this process.

The ceiling is the best rate of a square fp32 (or bf16) matmul and of a 3x3, stride-1, padded
convolution of the paper network's first level (128 -> 128 channels at 32 x 32), in contiguous
(NCHW) and channels-last memory layout, each at its best repetition (a ceiling is what the machine
can do; the workloads are medians); MFU is a workload's counted FLOP rate over it.  ``probe`` is a
one-second version run before each workload, so a shared machine's changing load shows up
(``mfu_local``), and the process-wide ceiling is the best rate seen by any of them.  FLOPs are
2 n^3 for the matmul and 2 B C_out C_in 9 H W for the convolution (FlopCounterMode's convention).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from bench.timing import median_time

# Shapes per scale: matmul side n; conv batch, channels, side.  A repetition lasts at least
# MIN_REP_S[scale] seconds (several calls of a fast kernel).
SHAPES = {
    "quick": {"matmul": 256, "conv": (2, 32, 16)},
    "cpu": {"matmul": 1024, "conv": (8, 128, 32)},
    "cuda": {"matmul": 8192, "conv": (256, 128, 32)},
}
MIN_REP_S = {"quick": 0.05, "cpu": 0.2, "cuda": 0.2}


def matmul_rate(n: int, device="cpu", dtype=torch.float32, warmup: int = 2, reps: int = 5,
                min_rep_s: float = 0.2) -> dict:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    t = median_time(lambda: torch.mm(a, b), device, warmup, reps, min_rep_s)
    flops = 2 * n**3
    return {"shape": [n, n, n], "flops": flops, **t, "flops_per_s": flops / t["min"],
            "median_flops_per_s": flops / t["seconds"]}


def conv_rate(batch: int, ch: int, side: int, channels_last: bool, device="cpu", dtype=torch.float32,
              warmup: int = 2, reps: int = 5, min_rep_s: float = 0.2) -> dict:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(batch, ch, side, side, device=device, dtype=dtype).to(memory_format=fmt)
    w = torch.randn(ch, ch, 3, 3, device=device, dtype=dtype).to(memory_format=fmt)
    with torch.no_grad():
        t = median_time(lambda: F.conv2d(x, w, padding=1), device, warmup, reps, min_rep_s)
    flops = 2 * batch * ch * ch * 9 * side * side
    return {"shape": [batch, ch, side, side], "channels_last": channels_last, "flops": flops, **t,
            "flops_per_s": flops / t["min"], "median_flops_per_s": flops / t["seconds"]}


def measure(scale: str, device="cpu", dtype=torch.float32, reps: int | None = None) -> dict:
    """{"matmul", "conv_contiguous", "conv_channels_last", "best_flops_per_s", "best"}."""
    s = SHAPES[scale]
    reps, m = reps or (3 if scale == "quick" else 5), MIN_REP_S[scale]
    out = {"dtype": str(dtype).replace("torch.", ""),
           "matmul": matmul_rate(s["matmul"], device, dtype, reps=reps, min_rep_s=m),
           "conv_contiguous": conv_rate(*s["conv"], False, device, dtype, reps=reps, min_rep_s=m),
           "conv_channels_last": conv_rate(*s["conv"], True, device, dtype, reps=reps, min_rep_s=m)}
    best = max(("matmul", "conv_contiguous", "conv_channels_last"), key=lambda k: out[k]["flops_per_s"])
    out.update(best=best, best_flops_per_s=out[best]["flops_per_s"])
    return out


def probe(scale: str, device="cpu", dtype=torch.float32) -> float:
    """A short re-measurement (best of matmul and channels-last conv, 2 reps each): FLOP/s."""
    s, m = SHAPES[scale], MIN_REP_S[scale]
    return max(matmul_rate(s["matmul"], device, dtype, warmup=1, reps=2, min_rep_s=m)["flops_per_s"],
               conv_rate(*s["conv"], True, device, dtype, warmup=1, reps=2, min_rep_s=m)["flops_per_s"])
