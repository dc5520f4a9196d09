"""DDP weak scaling (``python -m bench.run --ddp``): ``drl.train.train`` under torchrun with n = 1, 2, 4, ...
processes (CUDA: one GPU each, up to the visible GPUs; CPU: 1 and 2 sharing the cores, cores // n threads
each, which measures DDP's overhead, not a gain of hardware: read ``efficiency_per_core``), each with the
same per-process batch.  s/iter: the median after warm-up of rank 0's train_log.csv; efficiency =
images/s(n) / (n / n0 x images/s(n0)), n0 the first count.  A launch past its time limit is killed with
its workers (each in a session of its own)."""
from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import suppress
from pathlib import Path

import torch

from bench.workloads import WORKLOADS, iteration_seconds, run_config, scaled, synthetic_data
from drl.config import load_params
from drl.train import train

ROOT = Path(__file__).resolve().parents[1]


def _kill(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun (stopped first, so its workers stay its children) and every process below it."""
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGSTOP)
    children: dict[int, list[int]] = {}
    for p in Path("/proc").glob("[0-9]*"):
        with suppress(OSError, ValueError, IndexError):
            children.setdefault(int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]), []).append(int(p.name))
    todo = [proc.pid]
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            for kill in (os.killpg, os.kill):   # a worker leads a group of its own (its compile workers)
                with suppress(ProcessLookupError, PermissionError):
                    kill(child, signal.SIGKILL)
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def launch(n: int, spec: dict, run_dir: Path, timeout_s: float) -> float:
    """One torchrun launch of n workers (``worker``) on ``spec``; returns its wall seconds."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "spec.json").write_text(json.dumps(spec))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n), "--no-python",
           sys.executable, "-c", "import sys; from bench.ddp import worker; worker(sys.argv[1])", f"{run_dir}/spec.json"]
    # torchrun sets OMP_NUM_THREADS=1 for several processes unless it is set: the workers' share
    env = {**os.environ, "OMP_NUM_THREADS": str(spec["threads"]),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0, rc, log = time.time(), None, run_dir / "torchrun.log"
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1.0))
        except subprocess.TimeoutExpired:
            pass
        finally:
            if proc.poll() is None:   # past its limit, or interrupted: leave no worker behind
                _kill(proc)
    tail = f": {' '.join(cmd)}\noutput tail:\n{log.read_text(errors='replace')[-4000:]}"
    if rc is None:
        raise TimeoutError(f"torchrun with {n} process(es) ran past its limit of {timeout_s:.0f} s and was killed{tail}")
    if rc != 0:
        raise RuntimeError(f"torchrun with {n} process(es) failed (exit status {rc}){tail}")
    return time.time() - t0


def worker(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    train(spec["cfg"], synthetic_data(spec["cfg"], spec["rows"]), spec["run_dir"], device=spec["device"], progress=False)


def measure(workload: str = "cifar10_n2", procs: list[int] | None = None, device: str = "cpu", quick: bool = False,
            params: str | Path = ROOT / "params.yaml", precision: str | None = None, batch: int | None = None,
            warmup: int | None = None, reps: int | None = None, timeout_s: float = 600.0,
            budget_s: float | None = None, log=print) -> dict:
    """Weak scaling of ``workload`` over ``procs``.  With ``budget_s`` a count whose launch would not fit
    (judged by the previous one) is skipped, and one killed at the end of the budget is recorded as
    skipped.  Raises RuntimeError (a failed launch), TimeoutError, or ValueError for an impossible request."""
    t0, cuda = time.time(), device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: CUDA is not available here")
    gpus, cores = torch.cuda.device_count() if cuda else 0, len(os.sched_getaffinity(0))
    procs = sorted(set(procs or ({2**i for i in range(gpus.bit_length())} | {gpus} if cuda else {1, 2})))
    if not procs or procs[0] < 1 or (cuda and procs[-1] > gpus):
        raise ValueError(f"process counts {procs}: need 1 or more, and on CUDA one GPU each ({gpus} visible)")
    sc, cfg = WORKLOADS[workload]["quick" if quick else "cuda" if cuda else "cpu"], run_config(load_params(params), workload)
    cfg["train"]["precision"] = precision or cfg["train"].get("precision", "fp32")
    B, K = batch or sc["train"][0], sc["train"][1] or cfg["sampler"]["K"]
    warmup, reps = sc["warmup"] if warmup is None else warmup, reps or sc["reps"]
    r = {"workload": workload, "device": device, "cores": cores, "gpus": gpus, "precision": cfg["train"]["precision"],
         "perf": cfg.get("perf"), "per_process_batch": B, "K": K, "warmup": warmup, "reps": reps, "procs": procs,
         "measurable": len(procs) > 1, "reason": None, "results": [], "skipped": {}}
    if len(procs) < 2:
        return {**r, "reason": f"{gpus} GPU: DDP scaling not measurable" if cuda else "one process count: nothing to compare"}
    log(f"{workload}, {B} images per process, procs {procs}")
    last = None
    with tempfile.TemporaryDirectory(prefix="ddp.") as tmp:
        for n in procs:
            left = None if budget_s is None else budget_s - (time.time() - t0)
            if left is not None and (left <= 0 or (last is not None and left < 1.5 * last)):
                r["skipped"][n] = f"{left:.0f} s of the budget left, the previous launch took {last or 0:.0f} s"
                continue
            threads, run_dir = max(1, cores // n), Path(tmp) / f"n{n}"
            spec = {"cfg": scaled(cfg, n * B, K, warmup + reps), "rows": max(256, 4 * n * B), "run_dir": str(run_dir),
                    "device": device, "threads": threads}
            try:
                last = launch(n, spec, run_dir, timeout_s if left is None else min(timeout_s, left))
            except TimeoutError:
                if left is None or left >= timeout_s:
                    raise
                r["skipped"][n] = f"killed at the end of the budget ({left:.0f} s were left)"
                break
            s = statistics.median(iteration_seconds(run_dir / "train_log.csv")[warmup:])
            x = {"procs": n, "threads_per_proc": threads, "global_batch": n * B, "seconds": s, "images_per_s": n * B / s}
            first = (r["results"] or [x])[0]
            per_core = lambda y: y["images_per_s"] / (y["procs"] * y["threads_per_proc"])  # noqa: E731
            x.update(efficiency=x["images_per_s"] / (n / first["procs"] * first["images_per_s"]),
                     efficiency_per_core=None if cuda else per_core(x) / per_core(first))
            r["results"].append(x)
            log(_line(x))
    if len(r["results"]) < 2:
        r.update(measurable=False, reason="fewer than two process counts measured (time budget): no scaling to report")
    return r


def _line(x: dict) -> str:
    return (f"| {x['procs']} | {x['threads_per_proc']} | {x['global_batch']} | {x['seconds']:.4g} | "
            f"{x['images_per_s']:.4g} | {x['efficiency']:.2f} | {x['efficiency_per_core'] or '—':.4} |")


def table(r: dict) -> str:
    lines = [f"DDP weak scaling: {r['workload']}, {r['per_process_batch']} images per process, K = {r['K']}, "
             f"{r['precision']}, {r['device']} ({r['warmup']} warm-up + {r['reps']} timed iterations)"]
    if not r["measurable"]:
        return "\n".join(lines + [r["reason"]])
    lines += ["", "| processes | threads each | global batch | s/iter | img/s | efficiency | per core |", "|---" * 7 + "|"]
    lines += [*map(_line, r["results"]), *(f"n = {n}: skipped ({why})" for n, why in r["skipped"].items())]
    return "\n".join(lines + ([] if r["device"].startswith("cuda") else [
        f"CPU: {r['cores']} core(s) shared: DDP's overhead, not a speed-up; 'per core' (1 = no overhead) is the figure"]))
