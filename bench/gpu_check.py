"""The GPU check (run by ``bench/gpu_check.sh OUT_DIR``): correctness of the CUDA paths
against a CPU float64 reference, training-iteration MFU of the paper's CIFAR-10 network (N = 8,
B = 256, K = 30) in bf16 and fp32, sampling throughput, FID feature extraction, and projected wall
times of the paper's 50k-iteration run and of FID-50k sampling.  A short table is printed last;
everything is in OUT_DIR (results.json, summary.md, row.md), rewritten after every step, so a run
cut short still leaves what it measured.

Correctness (same weights, same inputs, same noise; the reference is a float64 copy on the CPU;
the weights are perturbed first so the zero-initialised convolutions take part): the energy f(y, t),
the score grad_y f, K = 3 Langevin steps (eq. 17, drift only: noise_scale 0, so the noise term,
identical on both sides, does not hide the error), the training loss of Algorithm 1 (per example)
and its parameter gradient, and one progressive-sampling level (Algorithm 2).  Errors are relative
L2 norms ||a - b|| / ||b||.  Tolerances (values f and loss / gradients: score, drift, level, loss
gradient): ``fp32-strict`` (TF32 off) 1e-4 / 1e-4; ``fp32`` as the library runs it (cuDNN
convolutions may use TF32, PyTorch's default) 1e-2 / 5e-2; ``bf16`` (autocast, 8 significant bits)
5e-2 / 2.5e-1 -- gradients through ~20 bf16 layers of a random network lose more than values, and
these bounds catch wrong arithmetic (a missing term or a wrong sign is an error of order 1), not
rounding.

Order: ceilings, correctness, training (as given: bf16, fp32), sampling, FID features -- the
essentials, written out before anything compiles -- then, where the params schema has a ``perf``
section (bench/variants.py), the optimised path: its correctness (mode ``fp32+perf``, against a
float64 reference with the same function-changing switches) and its training MFU (--no-variants
skips them); last, with more than one GPU visible, DDP weak scaling over 1, 2, 4, ... GPUs
(bench/ddp_scaling.py: a few bf16 iterations of the paper's CIFAR-10 N = 2 network at 128 images
per GPU, each count in a torchrun launch of its own; counts that no longer fit the budget are
skipped).  With one GPU it records "1 GPU: DDP scaling not measurable".

Without CUDA, or with --smoke, the same steps run on the CPU at tiny sizes (a smoke test of the
script itself; its numbers mean nothing about a GPU); the DDP step then runs the toy MLP on 1 and 2
CPU processes.  Time: --budget-s (default 420 s) is checked
before each step; a step that would not fit is skipped and says so.  At the budget plus
``DEADLINE_MARGIN_S`` an alarm (SIGALRM, which ``drl.train.train``'s own SIGTERM / SIGINT handlers
leave alone) stops the running step and the table is still printed; SIGTERM (the shell script's hard
limit at 470 s) does the same where Python gets to handle it.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import signal
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from bench import ceiling as ceil
from bench import ddp_scaling, flops, record
from bench.features import measure_features
from bench.variants import FUNCTION_CHANGING, apply, variants
from bench.workloads import fresh_compile_caches, measure_sample, measure_train, net_cost, sample_shape
from drl.config import load_params
from drl.io import write_json, write_text
from drl.mcmc import langevin
from drl.perf import configure
from drl.sample import progressive_levels
from drl.train import MODEL_KEYS, Objective, Preempted, build_model

ROOT = Path(__file__).resolve().parents[1]
TOLERANCES = {"fp32-strict": (1e-4, 1e-4), "fp32": (1e-2, 5e-2), "bf16": (5e-2, 2.5e-1), "fp32+perf": (1e-2, 5e-2)}   # (values, gradients)
VALUES = ("energy", "loss")
# Dense peak of the GPU's data sheet (SXM, no sparsity), FLOP/s; MFU is also given against it.
NOMINAL_PEAK = {"H200": {"bf16": 989.4e12, "fp32": 494.7e12}, "H100 80GB HBM3": {"bf16": 989.4e12, "fp32": 494.7e12}}
PAPER_ITERATIONS = 50_000
FID_SAMPLES = 50_000

# What runs at each scale: the paper's CIFAR-10 run on CUDA, a tiny WRN in smoke mode.  ddp: the
# arguments of bench.ddp_scaling.measure (procs None: 1, 2, 4, ... up to the GPUs) and the seconds
# the step needs to start (its first two launches).
SCALES = {
    # check_net: the correctness checks run the N = 2 network (its ~20 layers are what the bf16
    # tolerances are argued for; a wrong kernel shows at any depth)
    "cuda": {"run": "cifar10_t6_k30", "net": {}, "train": (256, 30), "train_reps": (2, 3),
             "check": {"B": 2, "K": 3}, "check_net": {"n_blocks": 2}, "sample": (1000, 1, 30), "ceiling": "cuda", "fid": (2000, 500),
             "ddp": {"workload": "cifar10_n2", "device": "cuda", "procs": None, "quick": False, "precision": "bf16",
                     "batch": 128, "warmup": 3, "reps": 5, "need_s": 60}},
    "smoke": {"run": "cifar10_t6_k30", "net": {"resolution": 8, "ch": 8, "ch_mult": [1, 2], "n_blocks": 1,
                                              "temb_dim": 16},
              "train": (4, 2), "train_reps": (1, 2), "check": {"B": 2, "K": 3}, "check_net": {}, "sample": (4, 1, 2),
              "ceiling": "quick", "fid": (2, 2),
              "ddp": {"workload": "toy_mlp", "device": "cpu", "procs": [1, 2], "quick": True, "precision": None,
                      "batch": None, "warmup": None, "reps": None, "need_s": 30}},
}
# Seconds kept for the table and files after the DDP step.
DDP_MARGIN_S = 10
# The alarm that stops a running step fires this long after the budget (default 420 + 20 s from the
# start of main, inside gpu_check.sh's 470 s from the start of the process): the budget decides which
# steps start, the alarm bounds the last one.
DEADLINE_MARGIN_S = 20


class Budget:
    def __init__(self, seconds: float):
        self.t0, self.seconds = time.time(), seconds

    def left(self) -> float:
        return self.seconds - (time.time() - self.t0)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm().clamp_min(1e-300))


@contextmanager
def _tf32(allowed: bool):
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def _perturbed_model(cfg: dict):
    """The run's EBM with every parameter moved by 0.05 N(0, 1) (the zero-initialised convs then act)
    and its spectral-norm vectors settled by a few training-mode calls; fp32, CPU."""
    torch.manual_seed(0)
    ebm = build_model({k: cfg[k] for k in MODEL_KEYS})
    with torch.no_grad():
        for p in ebm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    shape = sample_shape(cfg["energy"]["net"])
    y, t = torch.randn(2, *shape), torch.tensor([0, ebm.T - 1])
    ebm.train()
    for _ in range(10):
        ebm(y, t)
    return ebm


# Each quantity on one model copy: f, grad_y f, Langevin drift (eq. 17), one progressive level
# (Algorithm 2), and the training loss of Algorithm 1 with its parameter gradient through
# drl.train.Objective (the training path, perf.training_iteration included).
def _quantities(ebm, inputs: dict, K: int) -> dict:
    y, x_next, t, y_pos = inputs["y"], inputs["x_next"], inputs["t"], inputs["y_pos"]
    ebm.eval()
    f, grad = ebm.score(y, t)
    drift = langevin(ebm, x_next, t, K, noise_scale=0.0) - x_next
    top = progressive_levels(ebm, inputs["x_T"], K, noise_scale=0.0)
    next(top)
    level = next(top) - inputs["x_T"]
    ebm.train()
    ebm.zero_grad(set_to_none=True)
    objective = Objective(ebm, {"name": "recovery_likelihood", "loss_weights": "released"},
                          {"K": K, "noise_scale": 0.0})
    loss, _ = objective(y_pos, x_next, t, None)
    loss.mean().backward()
    grads = torch.cat([p.grad.flatten() for p in ebm.parameters() if p.grad is not None])
    return {"energy": f, "score": grad, "langevin_drift": drift, "loss": loss, "loss_grad": grads,
            "progressive_level": level}


def correctness(cfg: dict, device: str, B: int, K: int, perf: dict | None = None) -> dict:
    """Without ``perf``: modes fp32-strict, fp32, bf16 of the plain path.  With it: mode ``fp32+perf``,
    the device model under those perf settings against a float64 reference under the settings among
    them that change the function (``FUNCTION_CHANGING``: spectral norm once per iteration)."""
    base = _perturbed_model(cfg)
    shape = sample_shape(cfg["energy"]["net"])
    g = torch.Generator().manual_seed(1)
    inputs = {"y": torch.randn(B, *shape, generator=g), "x_next": torch.randn(B, *shape, generator=g),
              "y_pos": torch.randn(B, *shape, generator=g), "x_T": torch.randn(B, *shape, generator=g),
              "t": torch.randint(base.T, (B,), generator=g)}
    ref_model = copy.deepcopy(base).double()
    if perf is not None:
        ref_model = configure(ref_model, {k: v for k, v in perf.items() if k in FUNCTION_CHANGING}, "cpu")
    ref = _quantities(ref_model, {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}, K)
    out = {}
    for mode in (("fp32-strict", "fp32", "bf16") if perf is None else ("fp32+perf",)):
        m = copy.deepcopy(base).to(device)
        m.precision = "bf16" if mode == "bf16" else "fp32"
        if perf is not None:
            m = configure(m, perf, device)
        with _tf32(False) if mode == "fp32-strict" else nullcontext():   # else: PyTorch's defaults
            got = _quantities(m, {k: v.to(device) for k, v in inputs.items()}, K)
        errs = {k: _rel(got[k], ref[k]) for k in ref}
        tol = {k: TOLERANCES[mode][0 if k in VALUES else 1] for k in ref}
        out[mode] = {"errors": errs, "tolerance": tol, "ok": all(errs[k] <= tol[k] for k in ref), "perf": perf}
    return out


class Stopped(Exception):
    """SIGTERM (gpu_check.sh's hard time limit): the running step stops, the rest are skipped, the
    table is still printed."""


def _nominal(gpu: str | None) -> dict | None:
    return next((v for k, v in NOMINAL_PEAK.items() if gpu and k in gpu), None)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("out", help="folder for results.json, summary.md and row.md")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on whatever device there is (CPU without CUDA)")
    ap.add_argument("--budget-s", type=float, default=420.0, help="time budget; steps that would not fit are skipped")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--no-variants", action="store_true", help="skip the perf variants (bench/variants.py)")
    args = ap.parse_args(argv)
    budget = Budget(args.budget_s)
    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    scale = "smoke" if args.smoke or not cuda else "cuda"
    S = SCALES[scale]
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = load_params(args.params)
    cfg = copy.deepcopy(params["runs"][S["run"]])
    cfg["energy"]["net"].update(S["net"])
    m = record.machine(device)
    paper_flops = flops.train_step(net_cost(cfg), 256, cfg["sampler"]["K"])["flops"]   # one iteration of the paper's run
    res = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "scale": scale, "device": device,
           "machine": m, "tf32": {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                  "cudnn": torch.backends.cudnn.allow_tf32},
           "run": S["run"], "net": cfg["energy"]["net"], "steps": {}, "skipped": {}, "errors": {}}
    print(f"gpu_check: {m['text']}; scale {scale}; budget {args.budget_s:.0f} s", flush=True)

    def save():
        res["elapsed_s"] = time.time() - budget.t0
        write_json(out_dir / "results.json", res)

    def step(name: str, need_s: float, fn):
        if budget.left() < need_s:
            res["skipped"][name] = f"needs ~{need_s:.0f} s, {budget.left():.0f} s left"
            print(f"[{name}] skipped: {res['skipped'][name]}", flush=True)
            return None
        t0 = time.time()
        try:
            fresh_compile_caches()   # each step compiles as a fresh process would
            r = fn()
        except (Exception, Preempted) as exc:  # one failing step must not lose the others' results (Stopped included)
            if isinstance(exc, (Stopped, Preempted)):
                budget.seconds = 0.0   # out of time: the remaining steps are skipped, the table is printed
            res["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] failed: {res['errors'][name]}\n{traceback.format_exc()}", flush=True)
            save()
            return None
        res["steps"][name] = r
        print(f"[{name}] {time.time() - t0:.1f} s", flush=True)
        save()
        return r

    def on_term(signum, frame):
        budget.seconds = 0.0
        raise Stopped(f"stopped by {signal.Signals(signum).name} (time limit)")

    previous = {sig: signal.signal(sig, on_term) for sig in (signal.SIGTERM, signal.SIGALRM)}
    signal.setitimer(signal.ITIMER_REAL, max(1.0, budget.left() + DEADLINE_MARGIN_S))
    def steps():
        dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
        for p in ("fp32", "bf16"):
            step(f"ceiling_{p}", 20, lambda p=p: ceil.measure(S["ceiling"], device, dtypes[p]))
        check_cfg = copy.deepcopy(cfg)
        check_cfg["energy"]["net"].update(S["check_net"])
        step("correctness", 60, lambda: correctness(check_cfg, device, **S["check"]))
        B, K = S["train"]
        warmup, reps = S["train_reps"]
        todo = {"as_given": None} if args.no_variants else variants(device, cfg)

        def train(variant: str, precision: str, need_s: float):
            c = apply(cfg, todo[variant])
            c["train"]["precision"] = precision
            name = f"train_{precision}" + ("" if variant == "as_given" else f"@{variant}")
            step(name, need_s, lambda: measure_train(c, B, K, device, warmup, reps))

        train("as_given", "bf16", 60)
        train("as_given", "fp32", 90)
        n, levels, Ks = S["sample"]
        for p in ("bf16", "fp32"):
            step(f"sample_{p}", 60, lambda p=p: measure_sample(cfg, n, levels, Ks, device, 1, 2, precision=p))
        step("fid_inception", 30, lambda: measure_features("fid_inception", *S["fid"], device, 1, 2))
        finish(res, out_dir, paper_flops)   # the essentials are on disk before the (compiling) variants start
        # optimised first: its compiled and graphed paths are what a first GPU run most needs to see
        for variant in sorted(todo, key=lambda v: v != "optimised"):
            perf = todo[variant]
            if variant == "as_given":
                continue
            step(f"correctness@{variant}", 90, lambda perf=perf: correctness(check_cfg, device, **S["check"], perf=perf))
            train(variant, "bf16", 120)
            train(variant, "fp32", 120)
        D = dict(S["ddp"])
        need_s = D.pop("need_s")
        one_gpu = D["device"] == "cuda" and torch.cuda.device_count() < 2   # recorded at once, nothing runs
        step("ddp_scaling", 0 if one_gpu else need_s,
             lambda: ddp(D, out_dir, args.params, budget.left() - DDP_MARGIN_S))

    try:
        steps()
    except Stopped as exc:   # the alarm between two steps
        res["errors"]["stopped"] = str(exc)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)   # no alarm while the table is written
        for sig, handler in previous.items():     # main may run inside another program (tests)
            signal.signal(sig, handler)
    save()
    table = finish(res, out_dir, paper_flops)
    print("\n" + table, flush=True)
    return res


def ddp(D: dict, out_dir: Path, params: str, seconds: float) -> dict:
    """DDP weak scaling (bench/ddp_scaling.py, which writes OUT_DIR/ddp_scaling.json) within ``seconds``."""
    if D["device"] == "cuda":
        torch.cuda.empty_cache()   # the workers share GPU 0 with this process's cached memory
    r = ddp_scaling.measure(D["workload"], D["procs"], D["device"], out_dir, D["quick"], params, "as_given",
                            D["precision"], D["batch"], None, D["warmup"], D["reps"], timeout_s=seconds,
                            budget_s=seconds, log=lambda *a: print("[ddp_scaling]", *a, flush=True))
    if not r["measurable"]:
        print(f"[ddp_scaling] {r['reason']}", flush=True)
    return r


# MFU against the measured ceiling of each precision (and the data-sheet peak), and projections:
# the paper's run (50k iterations of its B = 256, K = 30 iteration) and FID-50k sampling and
# features at the measured rates.
def finish(res: dict, out_dir: Path, paper_flops: int) -> str:
    steps = res["steps"]
    nominal = _nominal(res["machine"].get("gpu"))
    best = {p: steps[f"ceiling_{p}"]["best_flops_per_s"] for p in ("fp32", "bf16") if f"ceiling_{p}" in steps}
    summary = {}
    for name, r in steps.items():
        if not name.startswith(("train", "sample", "fid")):
            continue
        p = "bf16" if "bf16" in name else "fp32"
        row = {"flops_per_s": r["flops_per_s"], "seconds": r["seconds"], "images_per_s": r["images_per_s"],
               "mfu": r["flops_per_s"] / best[p] if p in best else None,
               "mfu_nominal": r["flops_per_s"] / nominal[p] if nominal else None}
        if name.startswith("train"):
            row["paper_run_hours"] = PAPER_ITERATIONS * paper_flops / r["flops_per_s"] / 3600
        if name.startswith("sample"):
            row["fid50k_sampling_minutes"] = FID_SAMPLES / r["images_per_s"] / 60
        if name.startswith("fid"):
            row["fid50k_features_minutes"] = FID_SAMPLES / r["images_per_s"] / 60
        summary[name] = row
    res.update(summary=summary, nominal_peak=nominal, paper_iteration_flops=paper_flops, ceiling=best)
    write_json(out_dir / "results.json", res)
    table = _table(res, best, nominal)
    write_text(out_dir / "summary.md", table + "\n")
    write_text(out_dir / "row.md", _row(res) + "\n")
    return table


def _f(x, spec=".3g"):
    return "—" if x is None else format(x, spec)


def _checks(res: dict) -> dict:
    """Every correctness mode run: {mode: {"errors", "tolerance", "ok", "perf"}}."""
    return {mode: c for name, r in res["steps"].items() if name.startswith("correctness") for mode, c in r.items()}


def _table(res: dict, best: dict, nominal: dict | None) -> str:
    lines = [f"gpu_check {res['date']} on {res['machine']['text']} (scale {res['scale']}, {res['elapsed_s']:.0f} s)", ""]
    chk = _checks(res)
    if chk:
        lines += ["| check (rel. L2 error vs CPU float64) | " + " | ".join(chk) + " |",
                  "|---|" + "---|" * len(chk)]
        for q in next(iter(chk.values()))["errors"]:
            lines.append(f"| {q} | " + " | ".join(_f(chk[mode]["errors"][q], ".2e") for mode in chk) + " |")
        lines.append("| tolerance (values / gradients) | " + " | ".join(
            f"{TOLERANCES[m][0]:g} / {TOLERANCES[m][1]:g}: {'ok' if chk[m]['ok'] else 'FAIL'}" for m in chk) + " |")
        lines.append("")
    lines += ["| ceiling | TFLOP/s |", "|---|---|"]
    lines += [f"| measured {p} (best of matmul, conv3x3) | {v / 1e12:.1f} |" for p, v in best.items()]
    if nominal:
        lines += [f"| data sheet {'bf16' if p == 'bf16' else 'TF32 (the fp32 runs: cuDNN convolutions in TF32)'} "
                  f"dense | {v / 1e12:.1f} |" for p, v in nominal.items()]
    lines += ["", "| workload | s/call | img/s | TFLOP/s | MFU (measured) | MFU (data sheet) | projection |",
              "|---|---|---|---|---|---|---|"]
    for name, r in res.get("summary", {}).items():
        proj = (f"paper run {r['paper_run_hours']:.1f} h" if "paper_run_hours" in r else
                f"FID-50k sampling {r['fid50k_sampling_minutes']:.1f} min" if "fid50k_sampling_minutes" in r else
                f"FID-50k features {r['fid50k_features_minutes']:.2f} min" if "fid50k_features_minutes" in r else "")
        lines.append(f"| {name} | {r['seconds']:.3g} | {r['images_per_s']:.4g} | {r['flops_per_s'] / 1e12:.3g} | "
                     f"{_f(r['mfu'], '.2f')} | {_f(r['mfu_nominal'], '.2f')} | {proj} |")
    d = res["steps"].get("ddp_scaling")
    if d:
        lines += ["", f"DDP weak scaling: {d['workload']}, {d['per_process_batch']} images per process, K = {d['K']}, "
                      f"{d['precision']}, {d['device']}"]
        if d["measurable"] or d["results"]:
            lines += ["", "| processes | s/iter | img/s | efficiency |", "|---|---|---|---|"]
            lines += [f"| {r['procs']} | {r['seconds']:.3g} | {r['images_per_s']:.4g} | {r['efficiency']:.2f} |"
                      for r in d["results"]]
            lines += [f"| {n} | skipped: {why} | | |" for n, why in d["skipped"].items()]
        if not d["measurable"]:
            lines.append(d["reason"])
    for k, v in {**res["skipped"], **res["errors"]}.items():
        lines.append(f"\n{k}: {v}")
    lines.append("\nGoals: bf16 MFU >= 0.40, paper run <= 8 h, FID-50k sampling <= 10 min.")
    return "\n".join(lines)


def _row(res: dict) -> str:
    """A row for the GPU table of bench/RESULTS.md."""
    s = res.get("summary", {})
    g = lambda k, f: s.get(k, {}).get(f)  # noqa: E731
    chk = _checks(res)
    opt = lambda k: "" if g(k + "@optimised", "mfu") is None else f" (optimised {g(k + '@optimised', 'mfu'):.2f})"  # noqa: E731
    d = res["steps"].get("ddp_scaling")
    ddp_cell = ("—" if d is None else " · ".join(f"{r['procs']}: {r['efficiency']:.2f}" for r in d["results"][1:])
                if d["measurable"] else d["reason"])
    return "| " + " | ".join([
        res["date"][:16].replace("T", " "), res["machine"]["text"], res["scale"],
        " · ".join(f"{m}: {'ok' if c['ok'] else 'FAIL'}" for m, c in chk.items()) or "—",
        f"{_f(g('train_bf16', 'mfu'), '.2f')} / {_f(g('train_bf16', 'mfu_nominal'), '.2f')}{opt('train_bf16')}",
        f"{_f(g('train_fp32', 'mfu'), '.2f')} / {_f(g('train_fp32', 'mfu_nominal'), '.2f')}{opt('train_fp32')}",
        f"{_f(g('train_bf16', 'paper_run_hours'), '.1f')} / {_f(g('train_fp32', 'paper_run_hours'), '.1f')}",
        f"{_f(g('sample_bf16', 'images_per_s'), '.0f')} / {_f(g('sample_fp32', 'images_per_s'), '.0f')}",
        f"{_f(g('sample_bf16', 'fid50k_sampling_minutes'), '.1f')} / {_f(g('sample_fp32', 'fid50k_sampling_minutes'), '.1f')}",
        f"{_f(g('fid_inception', 'images_per_s'), '.0f')}", ddp_cell,
        f"{res['elapsed_s']:.0f}"]) + " |"


if __name__ == "__main__":
    main()
