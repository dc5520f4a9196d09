"""Training loop: Adam with linear warm-up, EMA of weights, atomic checkpoints, resume by
rerunning the same command, and a divergence guard."""
from __future__ import annotations

import copy
import csv
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from drl.diffusion import diffused_pair, make_schedule
from drl.energy import ConditionalEBM
from drl.io import atomic_path, torch_save
from drl.nets import build_net
from drl.objectives import dsm_loss, recovery_likelihood_loss

MODEL_KEYS = ("diffusion", "energy", "sampler")


class DivergenceError(RuntimeError):
    pass


def build_model(model_cfg: dict) -> ConditionalEBM:
    """The EBM from a run's ``diffusion``, ``energy`` and ``sampler`` sections (stored in checkpoints)."""
    sched = make_schedule(model_cfg["diffusion"])
    energy, sampler = model_cfg["energy"], model_cfg["sampler"]
    return ConditionalEBM(build_net(energy["net"]), sched, sampler["step_size"], sampler["b"],
                          energy["parameterisation"])


def load_model(path, ema: bool = True) -> tuple[ConditionalEBM, dict]:
    """Rebuild the EBM from a checkpoint alone (sampling needs no flags)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ebm = build_model(ckpt["model_cfg"])
    ebm.load_state_dict(ckpt["ema" if ema else "model"])
    ebm.eval()
    return ebm, ckpt


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


def train(cfg: dict, data: np.ndarray, out_dir: str | Path, device: str = "cpu", progress: bool = True) -> Path:
    """Train one run; returns the path of the final checkpoint ``model.pt``.

    ``state.pt`` in ``out_dir`` holds the latest resumable state; rerunning resumes from it.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tcfg, ocfg, scfg = cfg["train"], cfg["objective"], cfg["sampler"]
    model_cfg = {k: cfg[k] for k in MODEL_KEYS}
    torch.manual_seed(tcfg["seed"])
    ebm = build_model(model_cfg).to(device)
    opt = torch.optim.Adam(ebm.parameters(), lr=tcfg["lr"], betas=(tcfg["beta1"], tcfg["beta2"]), eps=tcfg["eps"])
    ema = EMA(ebm, tcfg["ema"])
    gen = torch.Generator(device=device).manual_seed(tcfg["seed"])
    start, log_rows = 0, []
    state_path, final_path = out_dir / "state.pt", out_dir / "model.pt"
    if state_path.exists():
        st = torch.load(state_path, map_location=device, weights_only=False)
        if st["cfg"] != cfg:
            raise RuntimeError(f"{state_path} was written for a different configuration; delete it to start afresh")
        ebm.load_state_dict(st["model"])
        ema.model.load_state_dict(st["ema"])
        opt.load_state_dict(st["optimizer"])
        gen.set_state(st["generator"])
        start, log_rows = st["iteration"], st["log"]

    x_all = torch.as_tensor(data, dtype=torch.float32, device=device)
    T, B, iters = ebm.T, tcfg["batch_size"], tcfg["iterations"]

    def save_state(it):
        torch_save(state_path, {"cfg": cfg, "model": ebm.state_dict(), "ema": ema.model.state_dict(),
                                "optimizer": opt.state_dict(), "generator": gen.get_state(),
                                "iteration": it, "log": log_rows})

    t0 = time.time()
    bar = tqdm(range(start, iters), initial=start, total=iters, desc="train", disable=not progress,
               mininterval=2.0)
    for it in bar:
        for group in opt.param_groups:
            group["lr"] = _lr(tcfg, it)
        x0 = x_all[torch.randint(len(x_all), (B,), generator=gen, device=device)]
        if tcfg.get("hflip", False):
            flip = torch.rand(B, generator=gen, device=device) < 0.5
            x0 = torch.where(flip.view(-1, *[1] * (x0.dim() - 1)), x0.flip(-1), x0)
        t = torch.randint(T, (B,), generator=gen, device=device)
        y_pos, x_next = diffused_pair(ebm.sched, x0, t, gen)
        if ocfg["name"] == "dsm":
            loss, info = dsm_loss(ebm, y_pos, x_next, t)
        else:
            loss, info = recovery_likelihood_loss(ebm, y_pos, x_next, t, scfg["K"], ocfg["loss_weights"],
                                                  scfg["noise_scale"], gen)
        loss = loss.mean()
        if not math.isfinite(loss.item()) or info["f_neg"].abs().max().item() > tcfg["max_abs_energy"]:
            raise DivergenceError(
                f"training diverged at iteration {it} (loss {loss.item():.4g}, max |f| "
                f"{info['f_neg'].abs().max().item():.4g}); the last good state is in {state_path}. "
                "Lower train.lr or sampler.b, or raise sampler.K.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(ebm)
        if (it + 1) % tcfg["log_every"] == 0 or it + 1 == iters:
            log_rows.append({"iteration": it + 1, "loss": loss.item(), "f_pos": info["f_pos"].mean().item(),
                             "f_neg": info["f_neg"].mean().item(), "lr": _lr(tcfg, it),
                             "seconds": time.time() - t0})
            bar.set_postfix(loss=f"{loss.item():.3g}")
        if (it + 1) % tcfg["checkpoint_every"] == 0 and it + 1 < iters:
            save_state(it + 1)

    torch_save(final_path, {"model_cfg": model_cfg, "cfg": cfg, "model": ebm.state_dict(),
                            "ema": ema.model.state_dict(), "iteration": iters, "log": log_rows})
    with atomic_path(out_dir / "train_log.csv") as tmp, open(tmp, "w", newline="") as fh:
        if log_rows:
            w = csv.DictWriter(fh, fieldnames=list(log_rows[0]))
            w.writeheader()
            w.writerows(log_rows)
    state_path.unlink(missing_ok=True)
    return final_path
