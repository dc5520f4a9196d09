"""Training loop: Adam with linear warm-up, EMA of weights, atomic checkpoints, resume by
rerunning the same command, and a divergence guard.  Under torchrun the batch is split over the
processes with DistributedDataParallel (``drl/distributed.py``); rank 0 writes every file."""
from __future__ import annotations

import copy
import csv
import math
import signal
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from drl import distributed, perf
from drl.data.pixels import is_image_array, to_model_space
from drl.diffusion import Schedule, diffused_pair, posterior_mean
from drl.energy import ConditionalEBM
from drl.io import atomic_path, load_checkpoint, torch_save
from drl.model import MODEL_KEYS, build_model, load_model  # noqa: F401 (load_model: the trainer's own checkpoints)
from drl.noise import from_generator
from drl.objectives import dsm_loss, recovery_likelihood_loss
from drl.power_iteration import training_iteration



class DivergenceError(RuntimeError):
    """The loss became NaN/inf or an energy exceeded ``train.max_abs_energy``; ``record`` says where
    (iteration, loss, max |f|) for the run's metrics."""

    def __init__(self, message: str, record: dict):
        super().__init__(message)
        self.record = {**record, "message": message}


class Preempted(SystemExit):
    """SIGTERM (SLURM pre-emption) or SIGINT stopped training after state.pt was saved.  A SystemExit
    with the shell's status 128 + signal (143, 130): the job fails, so Snakemake and DVC do not mark
    it done, and ``except Exception`` does not swallow it."""

    def __init__(self, signum: int, message: str):
        super().__init__(128 + signum)
        self.signum, self.message = signum, message

    def __str__(self) -> str:
        return self.message


@contextmanager
def _stop_requests():
    """While training, SIGTERM and SIGINT only record their number in the yielded list (the loop
    stops at the end of the iteration); a second Ctrl-C interrupts at once.  The previous handlers
    are restored on exit.  Off the main thread Python cannot install handlers: nothing changes."""
    got = [0]

    def handler(signum, frame):
        if signum == got[0] == signal.SIGINT:
            raise KeyboardInterrupt
        got[0] = signum

    if threading.current_thread() is not threading.main_thread():
        yield got
        return
    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield got
    finally:
        for s, h in old.items():
            signal.signal(s, signal.SIG_DFL if h is None else h)  # None: a handler not set from Python


class EMA:
    """Exponential moving average of the parameters; buffers (e.g. spectral-norm vectors) are copied."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.lerp_(p, 1.0 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)


def _lr(cfg: dict, it: int) -> float:
    """Linear warm-up over ``warmup`` iterations, then constant (released code) or cosine decay to 0."""
    lr = cfg["lr"] * min(1.0, (it + 1) / max(cfg["warmup"], 1))
    if cfg.get("lr_schedule", "constant") == "cosine" and it >= cfg["warmup"]:
        frac = (it - cfg["warmup"]) / max(cfg["iterations"] - cfg["warmup"], 1)
        lr *= 0.5 * (1 + math.cos(math.pi * frac))
    return lr


def training_data(data: np.ndarray, device: str) -> torch.Tensor | np.ndarray:
    """2-D points go to the device as float32; uint8 images (N, H, W, C) stay in host memory (a memory
    map for large datasets) and are converted batch by batch in ``draw_batch``."""
    return data if is_image_array(data) else torch.as_tensor(np.array(data, dtype=np.float32), device=device)


def draw_batch(x_all: torch.Tensor | np.ndarray, n: int, sched: Schedule, gen: torch.Generator, hflip: bool = False,
               positive: str = "sample"):
    """n training pairs: x_0 from the data (random horizontal flip, paper App. B), a level t, then
    (y_t^+, x_{t+1}) by eq. 15-16; with ``positive="posterior_mean"`` y_t^+ is replaced by its mean
    given x_{t+1} and x_0 (the same draws; for DSM the same objective up to a constant)."""
    device = gen.device
    idx = torch.randint(len(x_all), (n,), generator=gen, device=device)
    if isinstance(x_all, np.ndarray):  # uint8 images -> model space [-1, 1], NCHW; sorted rows read a memory map in order
        x0 = torch.from_numpy(to_model_space(x_all[np.sort(idx.cpu().numpy())])).to(device)
    else:
        x0 = x_all[idx]
    if hflip:
        flip = torch.rand(n, generator=gen, device=device) < 0.5
        x0 = torch.where(flip.view(-1, *[1] * (x0.dim() - 1)), x0.flip(-1), x0)
    t = torch.randint(sched.T, (n,), generator=gen, device=device)
    y_pos, x_next = diffused_pair(sched, x0, t, gen)
    if positive == "posterior_mean":
        y_pos = posterior_mean(sched, x0, x_next, t)
    return y_pos, x_next, t


class Objective(nn.Module):
    """The per-example loss of a batch as one module, so that DistributedDataParallel wraps all of
    it: the MCMC chain inside differentiates w.r.t. y only (``torch.autograd.grad``), which runs no
    parameter-gradient hook, and the loss's backward averages the parameter gradients over ranks."""

    def __init__(self, ebm: ConditionalEBM, ocfg: dict, scfg: dict):
        super().__init__()
        self.ebm, self.ocfg, self.scfg = ebm, ocfg, scfg

    def forward(self, y_pos, x_next, t, gen):
        with training_iteration(self.ebm):   # spectral norm: one power iteration here or per call
            if self.ocfg["name"] == "dsm":  # eq. 14
                return dsm_loss(self.ebm, y_pos, x_next, t, self.ocfg["loss_weights"])
            # Algorithm 1: negatives by K Langevin steps from x_{t+1}, loss w_t (f(y^-, t) - f(y^+, t)).
            return recovery_likelihood_loss(self.ebm, y_pos, x_next, t, self.scfg["K"], self.ocfg["loss_weights"],
                                            self.scfg["noise_scale"], from_generator(gen))


def _resume_key(cfg: dict) -> dict:
    """What must match for a run to resume, flattened to params keys: all but the seed list (a run's
    own train.seed is in its train section) and the perf switches, which compute the same function
    (drl/perf.py); what changes the function (e.g. energy.sn_power_iteration) is in the model's sections."""
    return {f"{k}.{s}" if isinstance(v, dict) else k: sv
            for k, v in cfg.items() if k not in ("perf", "seeds", "seed_of")
            for s, sv in (v.items() if isinstance(v, dict) else [(None, v)])}


def train(cfg: dict, data: np.ndarray, out_dir: str | Path, device: str = "cpu", progress: bool = True) -> Path:
    """Train one run; returns the path of the final checkpoint ``model.pt``.

    ``state.pt`` in ``out_dir`` holds the latest resumable state; rerunning resumes from it.  Under
    torchrun every process calls this; each takes ``batch_size / world_size`` examples per step.
    """
    w = distributed.world()
    with distributed.process_group(device, w) as device:
        return _train(cfg, data, Path(out_dir), device, progress and w.main, w)


def _train(cfg: dict, data: np.ndarray, out_dir: Path, device: str, progress: bool, w: distributed.World) -> Path:
    tcfg, ocfg, scfg = cfg["train"], cfg["objective"], cfg["sampler"]
    B = distributed.local_batch(tcfg["batch_size"], w)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_cfg = {k: cfg[k] for k in MODEL_KEYS}
    torch.manual_seed(tcfg["seed"])
    ebm = build_model(model_cfg).to(device)
    fast, precision = perf.configure(ebm, cfg.get("perf"), device), tcfg.get("precision", "fp32")
    opt = torch.optim.Adam(ebm.parameters(), lr=tcfg["lr"], betas=(tcfg["beta1"], tcfg["beta2"]), eps=tcfg["eps"])
    ema = EMA(ebm, tcfg["ema"])
    gen = torch.Generator(device=device).manual_seed(distributed.rank_seed(tcfg["seed"], w))
    start, log_rows = 0, []
    state_path, final_path = out_dir / "state.pt", out_dir / "model.pt"
    if state_path.exists():
        st = load_checkpoint(state_path, device)
        old, new = _resume_key(st["cfg"]), _resume_key(cfg)   # other perf switches may change between sessions
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            raise RuntimeError(f"{state_path} was written for a different configuration ({', '.join(changed)} "
                               "changed); delete it to start afresh")
        if len(st["generators"]) != w.size:
            raise RuntimeError(f"{state_path} was written by {len(st['generators'])} process(es); resume with "
                               f"as many (this is {w.size}) or delete it to start afresh")
        ebm.load_state_dict(st["model"])
        ema.model.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generators"][w.rank].cpu())  # a generator state is a CPU tensor, also on CUDA
        start, log_rows = st["iteration"], st["log"]
    objective = distributed.replicate(Objective(ebm, ocfg, scfg), device, w)

    x_all = training_data(data, device)
    iters = tcfg["iterations"]

    def save_state(it):
        generators = distributed.gather(gen.get_state(), w)
        if w.main:
            torch_save(state_path, {"cfg": cfg, "model": ebm.state_dict(), "ema": ema.model.state_dict(),
                                    "optimizer": opt.state_dict(), "generators": generators,
                                    "iteration": it, "log": log_rows})

    t0 = time.time()
    with _stop_requests() as signalled:
        bar = tqdm(range(start, iters), initial=start, total=iters, desc="train", disable=not progress,
                   mininterval=2.0)
        for it in bar:
            for group in opt.param_groups:
                group["lr"] = _lr(tcfg, it)
            y_pos, x_next, t = draw_batch(x_all, B, ebm.sched, gen, tcfg.get("hflip", False),
                                          ocfg.get("positive", "sample"))
            with perf.execution(fast, precision, device):   # the perf switches and precision, around the plain maths
                loss, info = objective(y_pos, x_next, t, gen)
            loss = loss.mean()
            # Global batch means (the log does not depend on the world size), the largest |f| and the
            # largest signal number any rank received: one all_reduce, so all ranks stop together.
            stats = distributed.mean(torch.stack([loss.detach(), info["f_pos"].mean(), info["f_neg"].mean()]), w)
            global_loss, f_pos, f_neg = stats.tolist()
            flag = torch.tensor(float(signalled[0]), device=device)
            max_f, stop = distributed.maximum(torch.stack([info["f_neg"].detach().abs().max().float(), flag]), w).tolist()
            if not math.isfinite(global_loss) or max_f > tcfg["max_abs_energy"]:
                raise DivergenceError(
                    f"training diverged at iteration {it} (loss {global_loss:.4g}, max |f| {max_f:.4g}); "
                    + (f"the last good state is in {state_path}" if state_path.exists() else
                       "no checkpoint was written before (train.checkpoint_every)")
                    + ". Likely causes: Langevin steps too large for the energy "
                    "(lower sampler.b, or raise sampler.K) or too high a learning rate (lower train.lr)",
                    {"iteration": it, "loss": global_loss, "max_abs_f": max_f})
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            ema.update(ebm)
            if (it + 1) % tcfg["log_every"] == 0 or it + 1 == iters:
                log_rows.append({"iteration": it + 1, "loss": global_loss, "f_pos": f_pos, "f_neg": f_neg,
                                 "lr": _lr(tcfg, it), "seconds": time.time() - t0})
                bar.set_postfix(loss=f"{global_loss:.3g}")
            if it + 1 < iters and (stop or (it + 1) % tcfg["checkpoint_every"] == 0):
                save_state(it + 1)
                if stop:  # a signal during the last iteration lets the run finish instead
                    bar.close()
                    msg = (f"{signal.Signals(int(stop)).name} at iteration {it + 1} of {iters}: saved {state_path}; "
                           f"rerun the same command to resume")
                    if w.main:
                        print(msg, file=sys.stderr, flush=True)
                    distributed.barrier(w)  # state.pt is in place before any rank exits (torchrun then stops the rest)
                    raise Preempted(int(stop), msg)

    if w.main:
        torch_save(final_path, {"model_cfg": model_cfg, "cfg": cfg, "model": ebm.state_dict(),
                                "ema": ema.model.state_dict(), "iteration": iters, "log": log_rows})
        write_log(out_dir, log_rows)
        state_path.unlink(missing_ok=True)
    distributed.barrier(w)  # the other ranks return once model.pt is in place
    return final_path


def write_log(out_dir: Path, log_rows: list[dict]) -> None:
    """train_log.csv: the logged rows (iteration, loss, ..., seconds)."""
    with atomic_path(out_dir / "train_log.csv") as tmp, open(tmp, "w", newline="") as fh:
        if log_rows:
            writer = csv.DictWriter(fh, fieldnames=list(log_rows[0]))
            writer.writeheader()
            writer.writerows(log_rows)


def record_divergence(cfg: dict, out_dir: str | Path, err: DivergenceError) -> dict:
    """After ``err``: model.pt holds the last good weights -- state.pt's, or the initial ones (rebuilt
    from the seed) when no checkpoint preceded the divergence -- marked ``diverged`` with err's record,
    so that evaluation records the divergence instead of numbers, and train_log.csv its log up to
    them (both are the train stage's outputs).  state.pt is kept.  Returns the record."""
    out_dir = Path(out_dir)
    model_cfg = {k: cfg[k] for k in MODEL_KEYS}
    state_path = out_dir / "state.pt"
    if state_path.exists():
        good = load_checkpoint(state_path)
    else:
        torch.manual_seed(cfg["train"]["seed"])  # as _train does before building the model
        weights = build_model(model_cfg).state_dict()
        good = {"model": weights, "ema": weights, "iteration": 0, "log": []}
    record = {**err.record, "last_good_iteration": good["iteration"]}
    torch_save(out_dir / "model.pt", {"model_cfg": model_cfg, "cfg": cfg, "model": good["model"], "ema": good["ema"],
                                      "iteration": good["iteration"], "log": good["log"], "diverged": record})
    write_log(out_dir, good["log"])   # the stage's other output: the log up to the last good weights
    return record
