"""The benchmark's one entry point (``make bench``):

    python -m bench.run [--quick] [--workloads toy_mlp,fid_classifier] [--variants as_given] [--device cuda]
    python -m bench.run --check OUT [--smoke] [--budget-s 420]    the GPU check (bench/gpu_check.sh, bench/check.py)
    python -m bench.run --ddp [--device cuda] [--workloads toy_mlp] [--procs 1,2] [--quick]    DDP weak scaling
    python -m bench.run --kernels [--workloads toy_mlp] [--variants optimised]    where a CPU iteration's time goes

By default: this machine's ceiling (bench/ceiling.py), then every workload (bench/workloads.py) in every perf
variant as FLOP/s and MFU = FlopCounterMode FLOPs / median seconds / ceiling (the best rate seen at the start,
in a probe before each workload, ``mfu_local``, and at the end); a row per variant goes to bench/RESULTS.md."""
from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
import time
from pathlib import Path

import torch

from bench import check, ddp, kernels
from bench.ceiling import machine, rates
from bench.workloads import EXTRACTORS, WORKLOADS, apply, measure_workload, run_config, settings, variants
from drl.config import load_params

ROOT = Path(__file__).resolve().parents[1]
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
VARIANTS = ("as_given", "plain", "optimised", "no_graphs")
MARKER = "<!-- bench/run.py appends one row per run and variant below this line -->"


def parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add = ap.add_argument
    add("--check", metavar="OUT", help="the GPU check (bench/check.py), its results in the folder OUT")
    add("--ddp", action="store_true", help="DDP weak scaling (bench/ddp.py)")
    add("--kernels", action="store_true", help="profile training iterations on the CPU (bench/kernels.py)")
    add("--quick", "--smoke", action="store_true", help="tiny sizes (a smoke run; the numbers mean little)")
    add("--budget-s", type=float, help="--check (default 420 s), --ddp: steps that would not fit are skipped")
    add("--workloads", help=f"comma-separated subset of {[*WORKLOADS, *EXTRACTORS]}")
    add("--variants", help=f"comma-separated subset of {VARIANTS} (default: each that differs from as_given)")
    add("--device", default="cpu", help="cpu (default), cuda or auto")
    add("--procs", help="--ddp: process counts, e.g. 1,2,4 (default: CUDA 1, 2, 4, ... GPUs; CPU 1, 2)")
    add("--precision", choices=["fp32", "bf16"], help="--ddp: train.precision (default: the run's)")
    add("--params", default=str(ROOT / "params.yaml"))
    add("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="the table a row is appended to")
    add("--no-record", action="store_true", help="append no row")
    add("--note", help="added to the row's machine cell (e.g. 'shared, under load')")
    return ap.parse_args(argv)


def selected(arg: str | None, default) -> list[str]:
    names = [n.strip() for n in arg.split(",") if n.strip()] if arg else list(default)
    if unknown := [n for n in names if n not in {**WORKLOADS, **EXTRACTORS}]:
        raise SystemExit(f"bench: unknown workload(s) {unknown}; known: {[*WORKLOADS, *EXTRACTORS]}")
    return names


def main(argv: list[str] | None = None) -> dict:
    args = parse(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    if unknown := set((args.variants or "as_given").split(",")) - set(VARIANTS):
        raise SystemExit(f"bench: unknown variant(s) {sorted(unknown)}; known: {VARIANTS}")
    scale = "quick" if args.quick else "cuda" if device.startswith("cuda") else "cpu"
    if args.check:
        return check.main(args)
    if args.kernels:
        names = selected(args.workloads, ["toy_mlp", "digits_wrn", "digits_mlp", "cifar10_n2_b16"])
        return kernels.run(load_params(args.params), names, args.variants or "optimised", scale)
    if not args.ddp:
        return run_bench(args, device, scale)
    try:
        procs = [int(p) for p in args.procs.split(",")] if args.procs else None
        r = ddp.measure(selected(args.workloads, ["cifar10_n2"])[0], procs, device, args.quick, args.params,
                        args.precision, budget_s=args.budget_s)
    except (RuntimeError, TimeoutError, ValueError) as exc:   # a failed launch (its output's tail), a bad request
        print(f"bench --ddp: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print("\n" + ddp.table(r), flush=True)
    return r


def _si(x: float, unit: str = "FLOP/s") -> str:
    return next((f"{x / s:.3g} {p}{unit}" for s, p in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
                 if abs(x) >= s), f"{x:.3g} {unit}")


def _line(key: str, kind: str, r: dict) -> str:
    sizes = " ".join(f"{k}={r[k]}" for k in ("B", "n", "K", "k", "levels") if k in r)
    s = f"{key:<26} {kind:<10} {sizes:<22} {_si(r['flops'], 'FLOP'):>11}/call  {r['seconds']:.4g} s  {_si(r['flops_per_s'])}"
    s += f"  MFU {r['mfu']:.2f} (local {r['mfu_local']:.2f})" if "mfu" in r else ""
    return s + (f"  {r['images_per_s']:.4g} img/s" + " (projected)" * bool(r.get("projected")) if r["images_per_s"] else "")


def run_bench(args, device: str, scale: str) -> dict:
    t0, cuda, params = time.time(), device.startswith("cuda"), load_params(args.params)
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "mode": scale, "device": device,
           "machine": machine(device), "note": args.note, "load_start": os.getloadavg()[0], "workloads": {}}
    print(f"bench: {res['machine']['text']}; scale {scale}; load {res['load_start']}" + (" (high: other processes lower "
          "every rate; compare mfu_local)" if res["load_start"] > 0.5 * os.cpu_count() else ""), flush=True)
    names = selected(args.workloads, [*WORKLOADS, *EXTRACTORS])
    precision = {n: params["runs"][WORKLOADS[n]["run"]]["train"].get("precision", "fp32") if cuda and n in WORKLOADS
                 else "fp32" for n in names}   # CPU: bf16 autocast is no target; MFU against fp32
    seen = {p: [rates(scale, device, DTYPES[p])["best"]] for p in set(precision.values())}
    entries = []   # (measurement, precision, local probe)
    for name in names:
        cfg = run_config(params, name) if name in WORKLOADS else None
        for v, overrides in (variants(device, cfg) if cfg else {"as_given": None}).items():
            if v in (args.variants or v).split(","):
                p, key, c = precision[name], name + ("" if v == "as_given" else f"@{v}"), cfg and apply(cfg, overrides)
                seen[p].append(local := rates(scale, device, DTYPES[p], reps=2)["best"])
                r = measure_workload(name, c, scale, device, log=lambda k, m, key=key: print(_line(key, k, m), flush=True))
                res["workloads"][key] = {"variant": v, "settings": settings(c, cuda) if c else {}, "measured": r}
                entries += [(m, p, local) for m in r.values()]
    for p in seen:
        seen[p].append(rates(scale, device, DTYPES[p])["best"])
    best = {p: max(v) for p, v in seen.items()}
    for m, p, local in entries:
        m.update(mfu=m["flops_per_s"] / best[p], mfu_local=m["flops_per_s"] / local)
    s = seen.get("fp32") or next(iter(seen.values()))
    res.update(ceiling={"start": s[0], "end": s[-1], "best": max(s), "by_precision": best}, load_end=os.getloadavg()[0],
               wall_seconds=time.time() - t0)
    print("\nceiling (best seen): " + ", ".join(f"{_si(v)} {p}" for p, v in best.items())
          + f"; load {res['load_start']} -> {res['load_end']}")
    for key, w in res["workloads"].items():
        print("\n".join(_line(key, kind, m) for kind, m in w["measured"].items()))
        if "train" in w["measured"]:
            g, m = 0.40 if cuda else WORKLOADS[key.split("@")[0]]["goal"], w["measured"]["train"]["mfu"]
            print(f"goal {key}: train MFU {m:.2f} vs {g:.2f}: {'met' if m >= g else 'not met'}")
    if not args.no_record:
        rows = [_row(res, v) for v in VARIANTS if any(w["variant"] == v for w in res["workloads"].values())]
        append_rows(Path(args.results), rows)
        print(f"bench: appended {len(rows)} row(s) to {args.results} in {res['wall_seconds']:.0f} s")
    return res


def _row(res: dict, v: str) -> str:
    """A row of the CPU table of bench/RESULTS.md for variant ``v`` (feature extractors: as given)."""
    sfx, c = "" if v == "as_given" else f"@{v}", res["ceiling"]
    g = lambda w, k, f="mfu": res["workloads"].get(w + sfx * (k != "features"), {}).get("measured", {}).get(k, {}).get(f)  # noqa: E731
    fmt = lambda *xs: " · ".join("—" if x is None else f"{x:.2f}" for x in xs)  # noqa: E731
    on = sorted({f"{k}: {x}" if isinstance(x, str) else k for w in res["workloads"].values() if w["variant"] == v
                 for k, x in w["settings"].items() if x != settings({}, True)[k]})
    n8, b16 = (res["workloads"].get(w + sfx, {}).get("measured", {}).get("train") for w in ("cifar10_n8", "cifar10_n2_b16"))
    return "| " + " | ".join([
        res["date"][:16].replace("T", " "), res["machine"]["text"] + (f" — {res['note']}" if res["note"] else ""),
        f"{res['mode']}, {v} ({', '.join(on) or 'perf off'})", f"{fmt(res['load_start'])} → {fmt(res['load_end'])}",
        f"{c['start'] / 1e9:.0f} / {c['end'] / 1e9:.0f} / {c['best'] / 1e9:.0f}",
        fmt(*(g(w, "train") for w in ("cifar10_n2", "cifar10_n5", "cifar10_n8"))),
        fmt(*(g(w, "train") for w in ("toy_mlp", "digits_wrn", "digits_mlp"))),
        fmt(*(g(w, "sample") for w in ("cifar10_n8", "toy_mlp", "digits_wrn", "digits_mlp"))),
        fmt(g("digits_mlp", "hmc"), g("toy_mlp", "ais"), g("fid_inception", "features"), g("fid_classifier", "features")),
        "—" if n8 is None else f"{n8['seconds']:.2f} ({n8['B']}, {n8['K']})",
        "—" if b16 is None else f"{b16['mfu']:.2f}, {b16['seconds']:.1f}", f"{res['wall_seconds']:.0f}"]) + " |"


def append_rows(path: Path, rows: list[str]) -> None:
    """Insert ``rows`` at the end of the table that follows ``MARKER`` (whose header names the columns)."""
    lines = path.read_text().splitlines()
    start = next(i for i in range(lines.index(MARKER), len(lines)) if lines[i].startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    path.write_text("\n".join(lines[:end] + rows + lines[end:]) + "\n")


if __name__ == "__main__":
    main()
