"""This machine: its description, and its ceiling: the best rate of a square matmul and of a 3x3 convolution
of the paper network's first level (128 -> 128 channels, 32 x 32), contiguous and channels-last, each at its
best repetition (FLOPs 2 n^3 and 2 B C_out C_in 9 H W, as FlopCounterMode counts).  Also ``median_time``."""
from __future__ import annotations

import os
import statistics
import time

import torch
import torch.nn.functional as F

from drl import provenance

SHAPES = {"quick": (256, (2, 32, 16)), "cpu": (1024, (8, 128, 32)), "cuda": (8192, (256, 128, 32))}
MIN_REP_S = {"quick": 0.05, "cpu": 0.2, "cuda": 0.2}


def median_time(fn, device="cpu", warmup: int = 1, reps: int = 3, min_rep_s: float = 0.0) -> dict:
    """Seconds per call of ``fn``: median and minimum over ``reps`` repetitions after ``warmup`` calls; a
    repetition repeats ``fn`` to last ``min_rep_s`` (so millisecond kernels are not timed one at a time)."""
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else lambda: None
    calls, per_call = 1, []
    for i in range(warmup + reps):
        sync()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        dt = (time.perf_counter() - t0) / calls
        if i == warmup - 1 and min_rep_s > 0:
            calls = max(1, int(min_rep_s / max(dt, 1e-9)))
        elif i >= warmup:
            per_call.append(dt)
    return {"seconds": statistics.median(per_call), "min": min(per_call), "reps": reps}


def rates(scale: str, device="cpu", dtype=torch.float32, reps: int | None = None) -> dict:
    """FLOP/s of the matmul and of the convolution in both layouts, and the best of them ("best")."""
    n, (b, c, s) = SHAPES[scale]
    a = torch.randn(n, n, device=device, dtype=dtype)
    x, w = torch.randn(b, c, s, s, device=device, dtype=dtype), torch.randn(c, c, 3, 3, device=device, dtype=dtype)
    xl, wl = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    conv = 2 * b * c * c * 9 * s * s
    jobs = {"matmul": (lambda: a @ a, 2 * n**3), "conv_contiguous": (lambda: F.conv2d(x, w, padding=1), conv),
            "conv_channels_last": (lambda: F.conv2d(xl, wl, padding=1), conv)}
    reps = reps or (3 if scale == "quick" else 5)
    out = {k: flops / median_time(fn, device, 2, reps, MIN_REP_S[scale])["min"] for k, (fn, flops) in jobs.items()}
    return {**out, "best": max(out.values())}


def machine(device: str) -> dict:
    """drl.provenance's description of the machine, with cores and a one-line ``text``."""
    m = {**provenance.machine(device), "cores": os.cpu_count()}
    m["text"] = (f"{m['cpu']}, {m['cores']} cores (kernels: {m['torch_cpu_capability']})"
                 + (" (VM)" if "hypervisor" in provenance.cpu_flags() else "") + (f"; {m['gpu']}" if "gpu" in m else "")
                 + f"; torch {m['torch']}, {m['threads']} threads")
    return m
