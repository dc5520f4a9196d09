"""The GPU check (``python -m bench.run --check OUT``, bench/gpu_check.sh): the CUDA paths against a CPU float64
copy (same perturbed weights, inputs, noise; relative L2 errors within TOLERANCES, values / gradients, which catch
wrong arithmetic, not rounding); training MFU of CIFAR-10 N = 8, B = 256, K = 30 in bf16 and fp32; sampling and
Inception rates; the 50k-iteration run and FID-50k at those rates; the perf variants (and without CUDA graphs); DDP
weak scaling with several GPUs.  --smoke (or no CUDA): tiny sizes.  Steps that do not fit in --budget-s are skipped,
an alarm or SIGTERM stops a running one.  OUT: results.json, summary.md, row.md, rewritten after every step."""
from __future__ import annotations

import copy
import datetime as dt
import itertools
import signal
import time
import traceback
from contextlib import nullcontext
from pathlib import Path

import torch

from bench import ddp
from bench.ceiling import machine, rates
from bench.workloads import apply, measure_features, measure_sample, measure_train, on_device, variants
from drl.config import load_params
from drl.io import write_json, write_text
from drl.mcmc import langevin
from drl.model import sample_shape
from drl.sample import progressive_levels
from drl.train import Objective, Preempted, build_model

TOLERANCES = {"fp32-strict": (1e-4, 1e-4), "fp32": (1e-2, 5e-2), "bf16": (5e-2, 2.5e-1), "fp32+perf": (1e-2, 5e-2)}
NOMINAL_PEAK = {"H200": {"bf16": 989.4e12, "fp32": 494.7e12}, "H100 80GB HBM3": {"bf16": 989.4e12, "fp32": 494.7e12}}
PAPER_ITERATIONS, FID_SAMPLES, DEADLINE_MARGIN_S = 50_000, 50_000, 20
PROJECTION = {"train": ("paper_run_hours", "paper run {:.1f} h"), "sample": ("fid50k_minutes", "FID-50k sampling {:.1f} min"),
              "fid": ("fid50k_minutes", "FID-50k features {:.2f} min")}
# train: (B, K, warm-up, reps); sample: (n, levels); fid: (images, batch); check_net: the correctness
# checks' network (N = 2 on CUDA: the bf16 tolerances are argued for its ~20 layers)
SCALES = {"cuda": {"net": {}, "train": (256, 30, 2, 3), "check_net": {"n_blocks": 2}, "sample": (1000, 1), "fid": (2000, 500),
                   "ddp": {"workload": "cifar10_n2", "precision": "bf16", "batch": 128, "warmup": 3, "reps": 5}, "ddp_s": 60},
          "smoke": {"net": {"resolution": 8, "ch": 8, "ch_mult": [1, 2], "n_blocks": 1, "temb_dim": 16}, "train": (4, 2, 1, 2),
                    "check_net": {}, "sample": (4, 1), "fid": (2, 2), "ddp": {"workload": "toy_mlp", "procs": [1, 2], "quick": True},
                    "ddp_s": 30}}


class Stopped(Exception):
    """The time limit (SIGALRM or SIGTERM): the running step stops, the rest are skipped."""


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


def _quantities(ebm, run, x: dict, K: int) -> dict:
    """f, grad_y f, Langevin drift, one progressive level (eval mode), Algorithm 1's loss and its
    parameter gradient (training mode), each computed inside ``run()`` (perf switches, precision)."""
    ebm.eval()
    with run():
        f, grad = ebm.score(x["y"], x["t"])
        drift = langevin(ebm, x["x_next"], x["t"], K, noise_scale=0.0) - x["x_next"]
        level = list(itertools.islice(progressive_levels(ebm, x["x_T"], K, noise_scale=0.0), 2))[1] - x["x_T"]
    ebm.train()
    ebm.zero_grad(set_to_none=True)
    with run():
        loss, _ = Objective(ebm, {"name": "recovery_likelihood", "loss_weights": "released"},
                            {"K": K, "noise_scale": 0.0})(x["y_pos"], x["x_next"], x["t"], None)
    loss.mean().backward()
    grads = torch.cat([p.grad.flatten() for p in ebm.parameters() if p.grad is not None])
    return {"energy": f, "score": grad, "langevin_drift": drift, "loss": loss, "loss_grad": grads,
            "progressive_level": level}


def correctness(cfg: dict, device: str, B: int = 2, K: int = 3, perf: bool = False) -> dict:
    """{mode: {"errors", "tolerance", "ok"}}: fp32-strict (TF32 off), fp32 (PyTorch's default: TF32
    convolutions), bf16 (autocast); with ``perf``: fp32+perf (the run's perf switches)."""
    torch.manual_seed(0)
    base, T, shape = build_model(cfg), cfg["diffusion"]["T"], sample_shape(cfg["energy"]["net"])
    with torch.no_grad():
        for p in base.parameters():   # the zero-initialised convolutions take part
            p.add_(0.05 * torch.randn_like(p))
    for _ in range(10):   # settle the spectral-norm vectors
        base.train()(torch.randn(2, *shape), torch.tensor([0, T - 1]))
    g = torch.Generator().manual_seed(1)
    x = {k: torch.randn(B, *shape, generator=g) for k in ("y", "x_next", "y_pos", "x_T")} | {"t": torch.randint(T, (B,), generator=g)}
    ref = _quantities(*on_device(copy.deepcopy(base).double(), {}, "cpu"),
                      {k: v.double() if v.is_floating_point() else v for k, v in x.items()}, K)
    out = {}
    for mode in ("fp32+perf",) if perf else ("fp32-strict", "fp32", "bf16"):
        m, run = on_device(copy.deepcopy(base), cfg if perf else {}, device, "bf16" if mode == "bf16" else "fp32")
        with torch.backends.cudnn.flags(enabled=True, allow_tf32=False) if mode == "fp32-strict" else nullcontext():
            got = _quantities(m, run, {k: v.to(device) for k, v in x.items()}, K)
        errors = {k: _rel(got[k], ref[k]) for k in ref}
        tol = TOLERANCES[mode]
        out[mode] = {"errors": errors, "tolerance": tol,
                     "ok": all(e <= tol[0 if k in ("energy", "loss") else 1] for k, e in errors.items())}
    return out


def main(args) -> dict:
    """``args``: bench.run's options (check: the output folder; quick, budget_s, params, variants)."""
    cuda = torch.cuda.is_available()
    device, scale = "cuda" if cuda else "cpu", "smoke" if args.quick or not cuda else "cuda"
    S, out, t0, budget = SCALES[scale], Path(args.check), time.time(), [args.budget_s or 420.0]
    out.mkdir(parents=True, exist_ok=True)
    cfg = copy.deepcopy(load_params(args.params)["runs"]["cifar10_t6_k30"])
    cfg["energy"]["net"].update(S["net"])
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "scale": scale, "device": device,
           "machine": machine(device), "net": cfg["energy"]["net"], "steps": {}, "skipped": {}, "errors": {}}
    left = lambda: budget[0] - (time.time() - t0)  # noqa: E731 (budget[0] is set to 0 when the time is up)
    print(f"gpu_check: {res['machine']['text']}; scale {scale}; budget {budget[0]:.0f} s", flush=True)

    def step(name: str, need_s: float, fn) -> None:
        t = time.time()
        if left() < need_s:
            res["skipped"][name] = f"needs ~{need_s:.0f} s, {left():.0f} s left"
        else:
            try:
                torch._dynamo.reset()   # each step compiles as a fresh process would
                res["steps"][name] = fn()
            except (Exception, Preempted) as exc:   # one failing step must not lose the others' results
                if isinstance(exc, (Stopped, Preempted)):
                    budget[0] = 0.0
                res["errors"][name] = f"{type(exc).__name__}: {exc}"
                traceback.print_exc()
        print(f"[{name}] {res['skipped'].get(name) or res['errors'].get(name) or f'{time.time() - t:.1f} s'}", flush=True)
        finish(res, out, t0)

    def steps() -> None:
        for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            step(f"ceiling_{p}", 20, lambda: rates("cuda" if scale == "cuda" else "quick", device, dtype))
        check_cfg = copy.deepcopy(cfg)
        check_cfg["energy"]["net"].update(S["check_net"])
        step("correctness", 60, lambda: correctness(check_cfg, device))
        B, K, warmup, reps = S["train"]
        chosen = (args.variants or "as_given,optimised,no_graphs").split(",")   # plain: on request
        todo = {v: o for v, o in variants(device, cfg).items() if v in chosen}
        for v in sorted(todo, key=["as_given", "optimised", "no_graphs", "plain"].index):
            c, sfx, extra = apply(cfg, todo[v]), "" if v == "as_given" else f"@{v}", 0 if v == "as_given" else 2
            if v not in ("as_given", "no_graphs"):   # no_graphs computes what optimised does
                step(f"correctness{sfx}", 90, lambda: correctness(apply(check_cfg, todo[v]), device, perf=True))
            for p in ("bf16",) if v == "no_graphs" else ("bf16", "fp32"):
                c["train"]["precision"] = p
                step(f"train_{p}{sfx}", 60 if v == "as_given" else 120, lambda: measure_train(c, B, K, device, warmup + extra, reps))
            for p in {"as_given": ("bf16", "fp32"), "optimised": ("bf16",), "no_graphs": ("bf16",)}.get(v, ()):
                step(f"sample_{p}{sfx}", 60, lambda: measure_sample(c, *S["sample"], None, device, 1 + extra, 2, p))
            if v == "as_given":
                step("fid_inception", 30, lambda: measure_features("fid_inception", *S["fid"], device, 1, 2))
        one_gpu = cuda and scale == "cuda" and torch.cuda.device_count() < 2   # recorded at once, nothing runs
        step("ddp_scaling", 0 if one_gpu else S["ddp_s"], lambda: ddp.measure(
            device=device if scale == "cuda" else "cpu", params=args.params, timeout_s=max(1.0, left() - 10),
            budget_s=left() - 10, log=lambda *a: print("[ddp_scaling]", *a, flush=True), **S["ddp"]))

    def stop(signum, frame):
        budget[0] = 0.0
        raise Stopped(f"stopped by {signal.Signals(signum).name} (time limit)")

    previous = {s: signal.signal(s, stop) for s in (signal.SIGTERM, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, max(1.0, left() + DEADLINE_MARGIN_S))
    try:
        steps()
    except Stopped as exc:   # the alarm between two steps
        res["errors"]["stopped"] = str(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        for s, h in previous.items():
            signal.signal(s, h)
    print("\n" + finish(res, out, t0), flush=True)
    return res


def finish(res: dict, out: Path, t0: float) -> str:
    """MFU against the measured ceiling of each precision and the data sheet's peak, the projections;
    writes results.json, summary.md and row.md; returns the table."""
    steps, gpu = res["steps"], res["machine"].get("gpu") or ""
    nominal = next((v for k, v in NOMINAL_PEAK.items() if k in gpu), None)
    best = {p: steps[f"ceiling_{p}"]["best"] for p in ("fp32", "bf16") if f"ceiling_{p}" in steps}
    summary = {}
    for name, r in steps.items():
        if name.startswith(("train", "sample", "fid")):
            p = "bf16" if "bf16" in name else "fp32"
            summary[name] = {"seconds": r["seconds"], "images_per_s": r["images_per_s"], "flops_per_s": r["flops_per_s"],
                             "mfu": r["flops_per_s"] / best[p] if p in best else None,
                             "mfu_nominal": r["flops_per_s"] / nominal[p] if nominal else None,
                             PROJECTION[name.split("_")[0]][0]: PAPER_ITERATIONS * r["seconds"] / 3600
                             if name.startswith("train") else FID_SAMPLES / r["images_per_s"] / 60}
    res.update(summary=summary, nominal_peak=nominal, ceiling=best, elapsed_s=time.time() - t0)
    write_json(out / "results.json", res)
    table = _table(res)
    write_text(out / "summary.md", table + "\n")
    write_text(out / "row.md", _row(res) + "\n")
    return table


def _f(x, spec=".2f") -> str:
    return "—" if x is None else format(x, spec)


def _checks(res: dict) -> dict:
    """Every correctness mode run, a perf variant's named after it."""
    return {mode if name == "correctness" else name.split("@")[1]: c
            for name, r in res["steps"].items() if name.startswith("correctness") for mode, c in r.items()}


def _table(res: dict) -> str:
    lines = [f"gpu_check {res['date']} on {res['machine']['text']} (scale {res['scale']}, {res['elapsed_s']:.0f} s)", ""]
    if chk := _checks(res):
        lines += ["| rel. L2 error vs CPU float64 | " + " | ".join(chk) + " |", "|---|" + "---|" * len(chk)]
        lines += [f"| {q} | " + " | ".join(_f(c["errors"][q], ".2e") for c in chk.values()) + " |"
                  for q in next(iter(chk.values()))["errors"]]
        lines += ["| tolerance (values / gradients) | " + " | ".join(
            f"{c['tolerance'][0]:g} / {c['tolerance'][1]:g}: {'ok' if c['ok'] else 'FAIL'}" for c in chk.values()) + " |", ""]
    lines.append("ceiling TFLOP/s (best of matmul, conv3x3): " + ", ".join(
        f"{p} {v / 1e12:.3g}" for p, v in res["ceiling"].items()) + "; data sheet (dense; fp32 runs use TF32): "
        + (", ".join(f"{p} {v / 1e12:.1f}" for p, v in res["nominal_peak"].items()) if res["nominal_peak"] else "—"))
    lines += ["", "| workload | s/call | img/s | TFLOP/s | MFU (measured) | MFU (data sheet) | projection |",
              "|---|---|---|---|---|---|---|"]
    for name, r in res["summary"].items():
        key, text = PROJECTION[name.split("_")[0]]
        lines.append(f"| {name} | {r['seconds']:.3g} | {r['images_per_s']:.4g} | {r['flops_per_s'] / 1e12:.3g} | "
                     f"{_f(r['mfu'])} | {_f(r['mfu_nominal'])} | {text.format(r[key])} |")
    if d := res["steps"].get("ddp_scaling"):
        lines += ["", ddp.table(d)]
    lines += [f"\n{k}: {v}" for k, v in {**res["skipped"], **res["errors"]}.items()]
    return "\n".join(lines + ["\nGoals: bf16 MFU >= 0.40, paper run <= 8 h, FID-50k sampling <= 10 min."])


def _row(res: dict) -> str:
    """A row for the GPU table of bench/RESULTS.md."""
    g = lambda k, f="mfu": res["summary"].get(k, {}).get(f)  # noqa: E731
    pair = lambda k, f, spec=".2f": f"{_f(g(k + '_bf16', f), spec)} / {_f(g(k + '_fp32', f), spec)}"  # noqa: E731
    mfu = lambda p: f"{_f(g(f'train_{p}'))} / {_f(g(f'train_{p}', 'mfu_nominal'))}"  # noqa: E731
    d = res["steps"].get("ddp_scaling")
    return "| " + " | ".join([
        res["date"][:16].replace("T", " "), res["machine"]["text"], res["scale"],
        " · ".join(f"{m}: {'ok' if c['ok'] else 'FAIL'}" for m, c in _checks(res).items()) or "—",
        mfu("bf16"), mfu("fp32"), pair("train", "paper_run_hours", ".1f"), pair("sample", "images_per_s", ".0f"),
        pair("sample", "fid50k_minutes", ".1f"), _f(g("fid_inception", "images_per_s"), ".0f"),
        f"train MFU {_f(g('train_bf16@optimised'))} / {_f(g('train_bf16@no_graphs'))}, sampling img/s "
        f"{_f(g('sample_bf16@optimised', 'images_per_s'), '.0f')} / {_f(g('sample_bf16@no_graphs', 'images_per_s'), '.0f')}",
        "—" if d is None else " · ".join(f"{r['procs']}: {r['efficiency']:.2f}" for r in d["results"][1:])
        if d["measurable"] else d["reason"], f"{res['elapsed_s']:.0f}"]) + " |"
