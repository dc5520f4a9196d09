"""Wall-clock timing: medians of repetitions after warm-up, the device synchronised around each."""
from __future__ import annotations

import statistics
import time
from typing import Callable

import torch


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def median_time(fn: Callable[[], object], device="cpu", warmup: int = 1, reps: int = 3,
                min_rep_s: float = 0.0) -> dict:
    """Seconds per call of ``fn``: the median over ``reps`` repetitions after ``warmup`` calls.  A
    repetition calls ``fn`` as often as it takes to last ``min_rep_s`` (fixed from the last warm-up
    call), so that millisecond workloads are not timed one call at a time.  Returns {"seconds",
    "min", "max", "reps", "calls_per_rep"}."""
    last = 0.0
    for _ in range(warmup):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        last = time.perf_counter() - t0
    calls = max(1, int(min_rep_s / last)) if last > 0 and min_rep_s > 0 else 1
    per_call = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync(device)
        per_call.append((time.perf_counter() - t0) / calls)
    return summary(per_call, calls)


def summary(per_call: list[float], calls: int = 1) -> dict:
    return {"seconds": statistics.median(per_call), "min": min(per_call), "max": max(per_call),
            "reps": len(per_call), "calls_per_rep": calls}
