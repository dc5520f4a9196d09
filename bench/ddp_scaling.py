"""Weak scaling of data-parallel training: ``drl.train.train`` under torchrun with 1, 2, ...
processes, each taking the same per-process batch, so a perfect scaling keeps the seconds per
iteration constant and multiplies images/s by the process count.

    python -m bench.ddp_scaling                          # cifar10_n2 at the CPU scale on 1 and 2 processes
    python -m bench.ddp_scaling --quick --workload toy_mlp --out /tmp/ddp
    python -m bench.ddp_scaling --device cuda            # 1, 2, 4, ... processes up to the visible GPUs

For each process count n, ``python -m torch.distributed.run --standalone --nproc_per_node n`` starts
n workers (``--worker``, below); each runs ``drl.train.train`` itself, which under torchrun wraps the
objective in DistributedDataParallel (gloo on CPU, NCCL with one GPU per local rank on CUDA,
drl/distributed.py) and splits the global ``train.batch_size`` = n x the workload's per-process batch
over the ranks.  Seconds per iteration: the median after warm-up of rank 0's ``train_log.csv``
(``log_every: 1``), as ``bench.workloads.measure_train`` takes them; images/s = global batch /
seconds; efficiency = images/s(n) / (n / n0 x images/s(n0)), n0 the smallest count measured (1 by
default, whose efficiency is then exactly 1).  n = 1 is the plain single-process path
(drl/distributed.py does nothing for one process), so the efficiency includes DDP's whole cost.

Threads: each worker sets torch's intra-op threads (and OMP_NUM_THREADS) to max(1, cores // n), so
on CPU every count uses the same cores: CPU scaling measures DDP's overhead (gradient all-reduce,
synchronisation, smaller per-process matrices) on shared cores, not the gain of extra hardware.

Writes ``OUT/ddp_scaling.json`` (atomically, after every process count) and prints a short table.
A failed or timed-out torchrun launch stops the run with its output's tail (exit status 1); a timed
out or interrupted launch is killed whole: torchrun's process group and its workers' (torchrun puts
each worker in a session of its own).
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from bench import record
from bench.timing import summary
from bench.variants import apply, variants
from bench.workloads import WORKLOADS, _iteration_seconds, _scaled, run_config, scale_for, synthetic_data
from drl.config import load_params
from drl.io import write_json

ROOT = Path(__file__).resolve().parents[1]
TAIL_CHARS = 4000


class LaunchError(RuntimeError):
    """A torchrun launch failed or ran past its time limit (``timed_out``); the message ends with its
    output's tail."""

    def __init__(self, message: str, timed_out: bool = False):
        super().__init__(message)
        self.timed_out = timed_out


def cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_procs(device: str) -> list[int]:
    """CUDA: 1, 2, 4, ... and the visible GPU count itself; CPU: 1 and 2."""
    if not device.startswith("cuda"):
        return [1, 2]
    gpus = torch.cuda.device_count()
    out, n = [], 1
    while n <= gpus:
        out.append(n)
        n *= 2
    return out + ([gpus] if gpus and out[-1] != gpus else [])


def parse_procs(text: str) -> list[int]:
    try:
        procs = sorted({int(p) for p in text.split(",") if p.strip()})
    except ValueError:
        raise SystemExit(f"ddp_scaling: --procs takes comma-separated process counts (e.g. 1,2,4), not {text!r}")
    if not procs or procs[0] < 1:
        raise SystemExit(f"ddp_scaling: --procs {text!r}: process counts must be positive integers")
    return procs


def _tail(path: Path) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no output)"
    return text[-TAIL_CHARS:] if text.strip() else "(no output)"


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc's parent links; none where there is no /proc)."""
    children: dict[int, list[int]] = {}
    for p in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(p.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun's process group and its workers' groups: torchrun starts every worker in a
    session of its own, so killing torchrun's group alone would leave them running.  torchrun is
    stopped first, so that its workers are still its children (found through /proc) when killed."""
    _signal_group(proc.pid, signal.SIGSTOP)
    for pid in _descendants(proc.pid):
        _signal_group(pid, signal.SIGKILL)   # a worker leads its own group (its compile workers, if any)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def launch(n: int, spec: dict, run_dir: Path, timeout_s: float) -> float:
    """One torchrun launch of n workers on ``spec`` in ``run_dir``; returns its wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec))
    log = run_dir / "torchrun.log"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "bench.ddp_scaling", "--worker", str(run_dir / "spec.json")]
    # torchrun sets OMP_NUM_THREADS=1 for several processes unless it is set: set it to the workers' share
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]),
           "PYTHONPATH": os.pathsep.join([str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p])}
    t0 = time.time()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            raise LaunchError(f"torchrun with {n} process(es) ran past its limit of {timeout_s:.0f} s and was killed "
                              f"(with its workers): {' '.join(cmd)}\noutput tail:\n{_tail(log)}", True) from None
        finally:
            if proc.poll() is None:   # interrupted (Ctrl-C, SIGTERM's exception): leave no worker behind
                _kill_group(proc)
    if rc != 0:
        raise LaunchError(f"torchrun with {n} process(es) failed (exit status {rc}): {' '.join(cmd)}\n"
                          f"output tail:\n{_tail(log)}")
    return time.time() - t0


def _worker(spec_path: str) -> None:
    """One torchrun process: ``drl.train.train`` on the spec's config and synthetic data."""
    from drl.train import train

    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    data = synthetic_data(spec["cfg"], spec["data_rows"], spec["data_seed"])
    train(spec["cfg"], data, spec["run_dir"], device=spec["device"], progress=False)


COLUMNS = (f"{'procs':>5}  {'threads/proc':>12}  {'global batch':>12}  {'s/iter':>10}  {'images/s':>10}  "
           f"{'efficiency':>10}  {'per core':>8}  {'launch s':>8}")


def _line(r: dict) -> str:
    per_core = "—" if r["efficiency_per_core"] is None else f"{r['efficiency_per_core']:.2f}"
    return (f"{r['procs']:>5}  {r['threads_per_proc']:>12}  {r['global_batch']:>12}  {r['seconds']:>10.4g}  "
            f"{r['images_per_s']:>10.4g}  {r['efficiency']:>10.2f}  {per_core:>8}  {r['launch_wall_s']:>8.1f}")


def table(result: dict) -> str:
    head = (f"ddp_scaling: {result['workload']} ({result['title']}), {result['variant']} "
            f"(perf {result['perf'] or 'off'}), {result['precision']}, {result['device']}, weak scaling: "
            f"{result['per_process_batch']} images per process, K = {result['K']}, {result['warmup']} warm-up + "
            f"{result['reps']} timed iterations")
    if not result["measurable"]:
        return head + f"\n{result['reason']}"
    lines = [head, COLUMNS]
    lines += [_line(r) for r in result["results"]]
    lines += [f"n = {n}: skipped ({why})" for n, why in result["skipped"].items()]
    lines.append(result["note"])
    return "\n".join(lines)


def measure(workload: str = "cifar10_n2", procs: list[int] | None = None, device: str = "cpu",
            out: str | Path | None = None, quick: bool = False, params: str | Path = ROOT / "params.yaml",
            variant: str = "as_given", precision: str | None = None, batch: int | None = None,
            K: int | None = None, warmup: int | None = None, reps: int | None = None, timeout_s: float = 600.0,
            budget_s: float | None = None, log=print) -> dict:
    """Weak scaling of ``workload`` over ``procs`` processes (default: ``default_procs``).  ``precision``
    (fp32, bf16) overrides the run's train.precision; ``batch`` (per process), ``K``, ``warmup``,
    ``reps`` override the workload's scale; ``timeout_s`` bounds each launch.  With ``budget_s``, a
    count whose launch would not fit (judged by the previous one's wall time) is skipped, a launch
    may only run for what is left, and one killed at the end of the budget is recorded as skipped
    (the counts measured before it are kept).  Raises LaunchError, or ValueError for an impossible
    request."""
    t_start = time.time()
    if workload not in WORKLOADS:
        raise ValueError(f"unknown workload {workload!r}; known: {sorted(WORKLOADS)}")
    cuda = device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here")
    w = WORKLOADS[workload]
    scale = "quick" if quick else ("cuda" if cuda else "cpu")
    sc = w.scales[scale]
    if sc.train is None:
        raise ValueError(f"{workload} has no training workload at the {scale} scale")
    base = run_config(load_params(params), w)
    chosen = variants(device, base)
    if variant not in chosen:
        raise ValueError(f"variant {variant!r} is not measured for {workload} on {device} (it would run as another "
                         f"one, or is unknown); choose from {sorted(chosen)}")
    cfg = apply(base, chosen[variant])
    if precision is not None:
        cfg["train"]["precision"] = precision
    sc = scale_for(w, scale, cfg)   # compiling stays out of the timing, as in measure_workload
    B = batch or sc.train[0]
    if K is None:
        K = cfg["sampler"]["K"] if sc.train[1] is None else sc.train[1]
    warmup = sc.warmup if warmup is None else warmup
    reps = sc.reps if reps is None else reps
    if B < 1 or warmup < 0 or reps < 1:
        raise ValueError(f"per-process batch {B}, warm-up {warmup}, reps {reps}: need batch >= 1, reps >= 1")
    procs = sorted(set(procs or default_procs(device)))
    gpus = torch.cuda.device_count() if cuda else 0
    if cuda and procs[-1] > gpus:
        raise ValueError(f"{procs[-1]} processes need {procs[-1]} GPUs (one per process); {gpus} visible")
    ncores = cores()
    note = (f"CPU: the {max(procs)} process(es) share this machine's {ncores} core(s) (threads per process = "
            f"cores // n): this measures DDP's overhead on shared cores, not the gain of extra hardware; where n "
            f"processes use the same cores as one, the ideal efficiency is about 1 / n, and 'per core' (images/s per "
            f"core used, relative to the first count; 1 = no overhead) is the figure to read"
            if not cuda else
            f"CUDA: one GPU per process ({gpus} visible, {torch.cuda.get_device_name(0)}); each process has "
            f"cores // n of the host's {ncores} cores")
    result = {"schema": 1, "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
              "device": device, "machine": record.machine(device), "cores": ncores, "gpus": gpus,
              "load_start": record.loadavg(), "workload": workload, "run": w.run, "title": w.title, "scale": scale,
              "variant": variant, "perf": cfg.get("perf"), "precision": cfg["train"].get("precision", "fp32"),
              "net": cfg["energy"]["net"], "K": K, "run_K": cfg["sampler"]["K"], "scaling": "weak",
              "per_process_batch": B, "warmup": warmup, "reps": reps, "procs": procs, "measurable": True,
              "reason": None, "note": note, "results": [], "skipped": {}}
    if cuda and gpus < 2:
        result.update(measurable=False, reason=f"{gpus} GPU: DDP scaling not measurable")
    elif len(procs) < 2:
        result.update(measurable=False, reason=f"only one process count ({procs[0]}): DDP scaling needs two or more "
                                               "to compare")
    out_path = Path(out) / "ddp_scaling.json" if out is not None else None

    def save():
        result["load_end"] = record.loadavg()
        result["wall_seconds"] = time.time() - t_start
        if out_path is not None:
            write_json(out_path, result)

    if not result["measurable"]:
        save()
        return result
    if not cuda and procs[-1] > ncores:
        log(f"ddp_scaling: warning: {procs[-1]} processes on {ncores} core(s): more processes than cores")
    log(f"ddp_scaling: {result['machine']['text']}; {workload} at the {scale} scale, {B} images per process, "
        f"procs {procs}; load {result['load_start']}")
    log(COLUMNS)
    last_wall = None
    with tempfile.TemporaryDirectory(prefix="ddp_scaling.") as tmp:
        for n in procs:
            left = None if budget_s is None else budget_s - (time.time() - t_start)
            if left is not None and (left <= 0 or (last_wall is not None and left < 1.5 * last_wall)):
                result["skipped"][str(n)] = (f"{left:.0f} s of the budget left, the previous launch took "
                                             f"{last_wall or 0:.0f} s")
                log(f"ddp_scaling: n = {n} skipped: {result['skipped'][str(n)]}")
                continue
            G = n * B
            c = _scaled(cfg, G, K, warmup + reps)
            threads = max(1, ncores // n)
            run_dir = Path(tmp) / f"n{n}"
            spec = {"cfg": c, "data_rows": max(256, 4 * G), "data_seed": 0, "run_dir": str(run_dir),
                    "device": device, "threads": threads}
            try:
                wall = launch(n, spec, run_dir, timeout_s if left is None else min(timeout_s, left))
            except LaunchError as exc:
                if not (exc.timed_out and left is not None and left < timeout_s):
                    raise
                result["skipped"][str(n)] = f"killed at the end of the budget ({left:.0f} s were left)"
                log(f"ddp_scaling: n = {n} {result['skipped'][str(n)]}")
                break
            per_iter = _iteration_seconds(run_dir / "train_log.csv")
            t = summary(per_iter[warmup:])
            r = {"procs": n, "threads_per_proc": threads, "per_process_batch": B, "global_batch": G,
                 "seconds": t["seconds"], "timing": t, "warmup_seconds": per_iter[:warmup],
                 "images_per_s": G / t["seconds"], "launch_wall_s": wall}
            first = result["results"][0] if result["results"] else r
            r["efficiency"] = r["images_per_s"] / (n / first["procs"] * first["images_per_s"])
            # CPU: images/s per core used (n x threads) relative to the first count; 1 = no DDP overhead
            per_core = lambda x: x["images_per_s"] / (x["procs"] * x["threads_per_proc"])  # noqa: E731
            r["efficiency_per_core"] = None if cuda else per_core(r) / per_core(first)
            result["results"].append(r)
            result["efficiency_baseline_procs"] = first["procs"]
            last_wall = wall
            log(_line(r))
            save()
    if len(result["results"]) < 2:
        result["measurable"] = False
        result["reason"] = "fewer than two process counts were measured (time budget): no scaling to report"
    save()
    return result


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(prog="python -m bench.ddp_scaling", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workload", default="cifar10_n2", help=f"one of {sorted(WORKLOADS)} (default cifar10_n2)")
    ap.add_argument("--procs", help="comma-separated process counts (default: CUDA 1, 2, 4, ... up to the GPUs; "
                    "CPU 1, 2)")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    ap.add_argument("--out", default=str(ROOT / "bench"), help="folder of ddp_scaling.json (default bench/)")
    ap.add_argument("--quick", action="store_true", help="the workload's tiny quick scale (a smoke run)")
    ap.add_argument("--params", default=str(ROOT / "params.yaml"))
    ap.add_argument("--variant", default="as_given", help="as_given (default), plain or optimised (bench/variants.py)")
    ap.add_argument("--precision", choices=["fp32", "bf16"], help="train.precision (default: the run's)")
    ap.add_argument("--batch", type=int, help="per-process batch (default: the workload's at the scale)")
    ap.add_argument("--K", type=int, help="Langevin steps (default: the workload's at the scale)")
    ap.add_argument("--warmup", type=int, help="untimed iterations (default: the workload's)")
    ap.add_argument("--reps", type=int, help="timed iterations (default: the workload's)")
    ap.add_argument("--timeout-s", type=float, default=600.0, help="limit of each torchrun launch (default 600)")
    ap.add_argument("--budget-s", type=float, help="total time; counts that would not fit are skipped")
    args = ap.parse_args(argv)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    try:
        result = measure(args.workload, parse_procs(args.procs) if args.procs else None, device, args.out,
                         args.quick, args.params, args.variant, args.precision, args.batch, args.K, args.warmup,
                         args.reps, args.timeout_s, args.budget_s)
    except (LaunchError, ValueError) as exc:
        print(f"ddp_scaling: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    print("\n" + table(result), flush=True)
    print(f"ddp_scaling: wrote {Path(args.out) / 'ddp_scaling.json'}", flush=True)
    return result


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        _worker(sys.argv[2])
    else:
        main()
