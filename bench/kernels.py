"""Where a training iteration's time goes: the FLOP-bearing kernels (matrix products and convolutions,
with their gradients) against everything between them, from torch.profiler over the last of a few
iterations of ``drl.train.train`` (CPU).

    python -m bench.kernels                                    # the demo networks and cifar10_n2_b16, optimised
    python -m bench.kernels --workloads toy_mlp --variant as_given --out /tmp/k

Per workload: the iteration's wall time (from the end of one optimizer step to the end of the next),
the time inside the FLOP kernels (outermost ``aten::mm``/``addmm``/convolution calls, children
included), their share of the iteration, the kernels' own rate (counted FLOPs / kernel seconds) and
that rate over the machine's ceiling (``kernel_mfu``): the MFU the iteration would reach if nothing
but the kernels took time.  MFU = kernel_mfu x share, so the pair says what stands in the way: small,
slow kernels (kernel_mfu) or the work between them (share), whose largest items (by self time: operators,
compiled graphs' fused kernels, guards, the optimizer's Python) are listed.
The profiler adds a few microseconds per operation, so the share is a slight underestimate for
networks of many small operations.  Writes ``OUT/kernels.json`` (atomically).
"""
from __future__ import annotations

import argparse
import tempfile
from collections import Counter
from pathlib import Path

from torch.profiler import ProfilerActivity, profile

from bench import ceiling as ceil
from bench import record
from bench.variants import apply, variants
from bench.workloads import (WORKLOADS, _scaled, count_train_flops, fresh_compile_caches, run_config, scale_for,
                             synthetic_data)
from drl.config import load_params
from drl.io import write_json
from drl.train import train

ROOT = Path(__file__).resolve().parents[1]
# The operators that carry the counted FLOPs (bench/flops.py counts matrix products and convolutions).
KERNELS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution",
           "aten::convolution_backward", "aten::mkldnn_convolution", "aten::_convolution"}
DEFAULT = ("toy_mlp", "digits_wrn", "digits_mlp", "cifar10_n2_b16")


def _outermost_kernel(e) -> bool:
    if e.name not in KERNELS:
        return False
    p = e.cpu_parent
    while p is not None:
        if p.name in KERNELS:
            return False
        p = p.cpu_parent
    return True


def breakdown(events, top: int = 6) -> dict:
    """Seconds of the last iteration (between the last two optimizer steps' ends) and of the outermost
    FLOP kernels started in it, with the largest other operators by self time."""
    steps = sorted((e for e in events if e.name.startswith("Optimizer.step#")), key=lambda e: e.time_range.end)
    if len(steps) < 2:
        raise ValueError("bench.kernels: the profile holds fewer than two optimizer steps; run >= 2 iterations")
    lo, hi = steps[-2].time_range.end, steps[-1].time_range.end
    inside = [e for e in events if lo <= e.time_range.start < hi]
    kernels = [e for e in inside if _outermost_kernel(e)]
    kernel_ids = {id(e) for e in kernels}

    def under_kernel(e) -> bool:
        p = e
        while p is not None:
            if id(p) in kernel_ids:
                return True
            p = p.cpu_parent
        return False

    others = Counter()
    for e in inside:
        if not under_kernel(e):   # operators, compiled graphs' own kernels, dynamo's guards, the optimizer
            others[e.name] += e.self_cpu_time_total
    return {"iteration_seconds": (hi - lo) / 1e6, "kernel_seconds": sum(e.cpu_time_total for e in kernels) / 1e6,
            "kernel_calls": len(kernels),
            "others": [{"op": k, "seconds": v / 1e6} for k, v in others.most_common(top)]}


def measure(cfg: dict, B: int, K: int, device: str, warmup: int) -> dict:
    cfg = _scaled(cfg, B, K, warmup + 2)
    data = synthetic_data(cfg, max(256, 4 * B))
    fresh_compile_caches()
    with tempfile.TemporaryDirectory() as d:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            train(cfg, data, d, device=device, progress=False)
    out = breakdown(prof.events())
    flops, how = count_train_flops(cfg, data, device)
    it, ks = out["iteration_seconds"], out["kernel_seconds"]
    out.update(B=B, K=K, flops=flops, counted_by=how, share=ks / it, kernel_flops_per_s=flops / ks)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.kernels", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default=",".join(DEFAULT), help=f"comma-separated subset of {sorted(WORKLOADS)}")
    ap.add_argument("--variant", default="optimised", help="as_given, plain or optimised (bench/variants.py)")
    ap.add_argument("--quick", action="store_true", help="the quick scale's sizes (a smoke run)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--out", default=str(ROOT / "bench"))
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise SystemExit(f"bench.kernels: unknown workload(s) {unknown}; known: {sorted(WORKLOADS)}")
    device, scale = "cpu", "quick" if args.quick else "cpu"
    if args.variant not in variants(device):
        raise SystemExit(f"bench.kernels: unknown variant {args.variant!r}; use one of {sorted(variants(device))}")
    params = load_params(args.params)
    # the ceiling: the best of a measurement now and one at the end (as bench.run takes the best it sees)
    ceiling = ceil.measure(scale, device)["best_flops_per_s"]
    result = {"schema": 1, "machine": record.machine(device), "variant": args.variant, "scale": scale,
              "load_start": record.loadavg(), "workloads": {}}
    print(f"bench.kernels: {result['machine']['text']}; variant {args.variant}; load {result['load_start']}", flush=True)
    for name in names:
        w = WORKLOADS[name]
        cfg = run_config(params, w)
        cfg = apply(cfg, variants(device, cfg).get(args.variant))   # absent: the variant runs as the config as given
        sc = scale_for(w, scale, cfg)
        B, K = sc.train
        r = measure(cfg, B, cfg["sampler"]["K"] if K is None else K, device, sc.warmup)
        result["workloads"][name] = r
    ceiling = max(ceiling, ceil.measure(scale, device)["best_flops_per_s"])
    result.update(ceiling=ceiling, load_end=record.loadavg())
    print(f"ceiling {ceiling / 1e9:.0f} GFLOP/s; load at the end {result['load_end']}")
    for name, r in result["workloads"].items():
        r.update(mfu=r["flops"] / r["iteration_seconds"] / ceiling, kernel_mfu=r["kernel_flops_per_s"] / ceiling)
        rest = ", ".join(f"{o['op'].removeprefix('aten::')[:40]} {o['seconds'] * 1e3:.1f} ms" for o in r["others"][:4])
        print(f"{name:<16} B={r['B']:<4} K={r['K']:<3} iteration {r['iteration_seconds'] * 1e3:9.1f} ms  kernels "
              f"{r['kernel_seconds'] * 1e3:9.1f} ms (share {r['share']:.2f}, kernel MFU {r['kernel_mfu']:.2f})  "
              f"MFU {r['mfu']:.2f} under the profiler; largest other: {rest}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "kernels.json", result)
    print(f"bench.kernels: wrote {out / 'kernels.json'}")
    return result


if __name__ == "__main__":
    main()
