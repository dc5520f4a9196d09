"""``make bench``: in one process, this machine's matmul / 3x3-conv ceiling, then the DRL workloads as
FLOP/s and model FLOP utilisation (MFU = counted FLOPs / median seconds / ceiling).

    python -m bench.run                      # every workload at the CPU scale (or CUDA scale on --device cuda)
    python -m bench.run --quick              # tiny sizes: a smoke run of the harness (seconds to a minute)
    python -m bench.run --workloads toy_mlp,fid_classifier --out /tmp/b

Writes ``OUT/latest.json`` (atomically) and appends one dated row per variant to ``OUT/RESULTS.md``
(OUT defaults to bench/).  Workloads, scales and what each measures: bench/workloads.py; the perf
variants: bench/variants.py.
"""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch

from bench import ceiling as ceil
from bench import record
from bench.features import measure_features
from bench.variants import apply, variants
from bench.workloads import EXTRACTORS, WORKLOADS, measure_workload, run_config
from drl.config import load_params

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("train_step", "sample", "hmc", "ais")


def _si(x: float, unit: str = "FLOP") -> str:
    for scale, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= scale:
            return f"{x / scale:.3g} {p}{unit}"
    return f"{x:.3g} {unit}"


def _line(name: str, kind: str, r: dict) -> str:
    what = {"train_step": lambda: f"B={r['B']} K={r['K']}", "sample": lambda: f"n={r['n']} levels={r['levels']}/{r['T']} K={r['K']}",
            "hmc": lambda: f"n={r['n']} k={r['k']} levels={r['levels']}", "ais": lambda: f"n={r['n']} T={r['T']} h={r['hmc_steps']}",
            "features": lambda: f"n={r['n']} batch={r['batch']}"}[kind]()
    s = (f"{name:<24} {kind:<10} {what:<26} {_si(r['flops']):>11}/call (analytic {_si(r['flops_analytic'])})"
         f"  {r['seconds']:.4g} s  {_si(r['flops_per_s'], 'FLOP/s')}")
    if "mfu" in r:
        s += f"  MFU {r['mfu']:.2f} (local {r['mfu_local']:.2f})"
    if r.get("images_per_s") is not None:
        s += f"  {r['images_per_s']:.4g} img/s" + (" (projected)" if r.get("projected") else "")
    return s


def _selected(arg: str | None) -> list[str]:
    known = {**WORKLOADS, **EXTRACTORS}
    if not arg:
        return list(WORKLOADS) + list(EXTRACTORS)
    names = [n.strip() for n in arg.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"bench: unknown workload(s) {unknown}; known: {sorted(known)}")
    return names


def _add_mfu(entry: dict, best: float, local: float) -> None:
    entry["mfu"] = entry["flops_per_s"] / best
    entry["mfu_local"] = entry["flops_per_s"] / local


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes (a smoke run; numbers mean little)")
    ap.add_argument("--workloads", help=f"comma-separated subset of {sorted({**WORKLOADS, **EXTRACTORS})}")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="folder of latest.json and RESULTS.md")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variants", help="comma-separated subset of as_given, plain, optimised (default: every one "
                    "the schema's perf section allows, bench/variants.py)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, = cores)")
    ap.add_argument("--no-record", action="store_true", help="write latest.json only, no RESULTS.md row")
    ap.add_argument("--note", help="text added to the machine cell of the RESULTS.md row (e.g. 'shared, under load')")
    args = ap.parse_args(argv)

    t_start = time.time()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if args.threads:
        torch.set_num_threads(args.threads)
    scale = "quick" if args.quick else ("cuda" if device.startswith("cuda") else "cpu")
    params = load_params(args.params)
    names = _selected(args.workloads)
    out_dir = Path(args.out)
    result = {"schema": 1, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "mode": scale,
              "device": device, "machine": record.machine(device), "note": args.note, "load_start": record.loadavg(),
              "argv": sys.argv[1:] if argv is None else argv, "workloads": {}, "fid": {}}
    print(f"bench: {result['machine']['text']}; scale {scale}; load {result['load_start']}", flush=True)
    if (result["load_start"] or 0) > 0.5 * (os.cpu_count() or 1):
        print(f"bench: warning: the 1-minute load average is {result['load_start']} on {os.cpu_count()} cores; other "
              "processes will lower every rate (multi-threaded kernels suffer most when threads wait for each other): "
              "benchmark an idle machine, or compare mfu_local", flush=True)

    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    need = {"fp32"} | {params["runs"][WORKLOADS[n].run]["train"].get("precision", "fp32")
                       for n in names if n in WORKLOADS}
    if not device.startswith("cuda"):
        need = {"fp32"}  # CPU bf16 autocast is not a target here; its MFU is taken against fp32
    start = {p: ceil.measure(scale, device, dtypes[p]) for p in sorted(need)}
    for p, c in start.items():
        print(f"ceiling {p}: matmul {_si(c['matmul']['flops_per_s'], 'FLOP/s')}, conv3x3 contiguous "
              f"{_si(c['conv_contiguous']['flops_per_s'], 'FLOP/s')}, channels-last "
              f"{_si(c['conv_channels_last']['flops_per_s'], 'FLOP/s')} -> {_si(c['best_flops_per_s'], 'FLOP/s')}",
              flush=True)
    probes: dict[str, list[float]] = {p: [c["best_flops_per_s"]] for p, c in start.items()}
    entries = []   # (entry, precision, local probe)
    log = lambda n, k, r: print(_line(n, k, r), flush=True)  # noqa: E731

    for name in names:
        if name in EXTRACTORS:
            local = ceil.probe(scale, device)
            probes["fp32"].append(local)
            n, batch = EXTRACTORS[name][scale]
            r = measure_features(name, n, batch, device, warmup=1, reps=3)
            r["title"] = EXTRACTORS[name]["title"]
            result["fid"][name] = r
            entries.append((r, "fp32", local))
            log(name, "features", r)
            continue
        w = WORKLOADS[name]
        for variant, perf in variants(device, run_config(params, w)).items():
            if args.variants and variant not in args.variants.split(","):
                continue
            cfg = apply(run_config(params, w), perf)
            precision = cfg["train"].get("precision", "fp32") if device.startswith("cuda") else "fp32"
            local = ceil.probe(scale, device, dtypes[precision])
            probes[precision].append(local)
            key = name if variant == "as_given" else f"{name}@{variant}"
            r = measure_workload(w, cfg, scale, device, log=lambda n, k, r, key=key: log(key, k, r))
            r["variant"] = variant
            result["workloads"][key] = r
            entries += [(r[k], precision, local) for k in KINDS if k in r]

    end = {p: ceil.measure(scale, device, dtypes[p]) for p in sorted(need)}
    best = {p: max(probes[p] + [end[p]["best_flops_per_s"]]) for p in need}
    for e, p, local in entries:
        _add_mfu(e, best[p], local)
    result["ceiling"] = {"start": start["fp32"]["best_flops_per_s"], "end": end["fp32"]["best_flops_per_s"],
                         "best": best["fp32"], "probes": probes["fp32"], "detail_start": start, "detail_end": end,
                         "by_precision": best}
    result["load_end"] = record.loadavg()
    result["wall_seconds"] = time.time() - t_start

    print(f"\nceiling (best seen in this process): {_si(best['fp32'], 'FLOP/s')} fp32"
          + "".join(f", {_si(v, 'FLOP/s')} {p}" for p, v in best.items() if p != "fp32")
          + f"; load {result['load_start']} -> {result['load_end']}")
    for key, r in result["workloads"].items():
        for k in KINDS:
            if k in r:
                print(_line(key, k, r[k]))
    for key, r in result["fid"].items():
        print(_line(key, "features", r))
    goals = {"paper": 0.90, "demo": 0.75}
    for key, r in result["workloads"].items():
        if "train_step" in r:
            g = goals[r["goal"]] if not device.startswith("cuda") else 0.40
            m = r["train_step"]["mfu"]
            print(f"goal {key}: train MFU {m:.2f} vs {g:.2f}: {'met' if m >= g else 'not met'}")

    out_dir.mkdir(parents=True, exist_ok=True)
    record.write_latest(out_dir / "latest.json", result)
    if not args.no_record:
        measured = {r["variant"] for r in result["workloads"].values()} or {"as_given"}
        rows = [record.row(result, v) for v in variants(device) if v in measured]
        record.append_rows(out_dir / "RESULTS.md", rows)
    print(f"bench: wrote {out_dir / 'latest.json'}" + ("" if args.no_record else f" and a row of {out_dir / 'RESULTS.md'}")
          + f" in {result['wall_seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
