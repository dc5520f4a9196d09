"""Where a CPU training iteration's time goes (``python -m bench.run --kernels``): torch.profiler over the
last of a few iterations of ``drl.train.train``; the outermost FLOP-bearing kernels' time (children
included) over the iteration's (one optimizer step's end to the next) is ``share``; the kernels' own
rate over the ceiling, ``kernel_mfu``, the MFU with nothing between them (MFU = kernel_mfu x share)."""
from __future__ import annotations

import tempfile
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from bench.ceiling import rates
from bench.workloads import WORKLOADS, apply, count_train_flops, run_config, scaled, synthetic_data, variants
from drl.train import train

KERNELS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution",
           "aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution"}


def _ancestors(e):
    while (e := e.cpu_parent) is not None:
        yield e


def breakdown(events, top: int = 6) -> dict:
    """The last iteration (between the last two optimizer steps' ends): its seconds, the outermost
    kernels' seconds and count, and the largest other operators by self time."""
    steps = sorted((e.time_range.end for e in events if e.name.startswith("Optimizer.step#")))
    if len(steps) < 2:
        raise ValueError("bench.kernels: the profile holds fewer than two optimizer steps; run >= 2 iterations")
    inside = [e for e in events if steps[-2] <= e.time_range.start < steps[-1]]
    kernels = [e for e in inside if e.name in KERNELS and not any(p.name in KERNELS for p in _ancestors(e))]
    ids, others = {id(e) for e in kernels}, Counter()
    for e in inside:   # operators, compiled graphs' own kernels, dynamo's guards, the optimizer
        if id(e) not in ids and not any(id(p) in ids for p in _ancestors(e)):
            others[e.name] += e.self_cpu_time_total
    return {"iteration_seconds": (steps[-1] - steps[-2]) / 1e6, "kernel_calls": len(kernels),
            "kernel_seconds": sum(e.cpu_time_total for e in kernels) / 1e6,
            "others": [{"op": k, "seconds": v / 1e6} for k, v in others.most_common(top)]}


def run(params: dict, names: list[str], variant: str, scale: str) -> dict:
    """Profile each workload's training iteration (``variant``; absent for a workload: as given)."""
    ceiling, out = rates(scale)["best"], {}
    for name in names:
        cfg, (B, K), warmup = run_config(params, name), WORKLOADS[name][scale]["train"], WORKLOADS[name][scale]["warmup"]
        cfg = scaled(apply(cfg, variants("cpu", cfg).get(variant)), B, K or cfg["sampler"]["K"], warmup + 4)
        data = synthetic_data(cfg, max(256, 4 * B))
        torch._dynamo.reset()
        with tempfile.TemporaryDirectory() as d, profile(activities=[ProfilerActivity.CPU]) as prof:
            train(cfg, data, d, progress=False)
        out[name] = {**breakdown(prof.events()), "B": B, "K": cfg["sampler"]["K"], "flops": count_train_flops(cfg, data, "cpu")}
    ceiling = max(ceiling, rates(scale)["best"])
    print(f"ceiling {ceiling / 1e9:.0f} GFLOP/s")
    for name, r in out.items():
        r.update(share=r["kernel_seconds"] / r["iteration_seconds"], mfu=r["flops"] / r["iteration_seconds"] / ceiling,
                 kernel_mfu=r["flops"] / r["kernel_seconds"] / ceiling)
        rest = ", ".join(f"{o['op'].removeprefix('aten::')[:40]} {o['seconds'] * 1e3:.1f} ms" for o in r["others"][:4])
        print(f"{name:<16} B={r['B']:<4} K={r['K']:<3} iteration {r['iteration_seconds'] * 1e3:9.1f} ms  kernels "
              f"{r['kernel_seconds'] * 1e3:9.1f} ms (share {r['share']:.2f}, kernel MFU {r['kernel_mfu']:.2f})  "
              f"MFU {r['mfu']:.2f} under the profiler; largest other: {rest}", flush=True)
    return out
