"""A study, not part of the pipeline: does a warm start by denoising score matching speed up the demo's
T6 recovery-likelihood training?  (README, "Demo and T1k settings": it does not.)

Phase 1: each level's f(., t) fitted to the score of y_t's own marginal, y_t = m_t x_0 + s_t eps
(m_t = y_scale[t] alpha_cum[t], s_t = y_scale[t] sigma_cum[t]): multi-level denoising score matching
(Vincent 2011; Song & Ermon 2019) with the noise-prediction weighting 1/2 |s_t grad_y f + eps|^2,
which is what recovery likelihood's optimum f(y, t) = log p(y_t) + c_t has as its gradient.
Phase 2: recovery likelihood (Algorithm 1) as `drl train`, with the same optimizer and EMA.

    python -m bench.t6_warm_start --run RUN --dsm 5000 --rl 1000

RUN is a params.yaml run (the study: digits_t6_k30 with energy.sn_power_iteration: per_iteration
and perf: {channels_last: true, compile: true}).  Writes the EMA checkpoints model_dsm.pt,
model_rl<N>.pt (every 500) and model.pt into RUN's folder; `drl sample --run RUN` and
`drl evaluate --run RUN` score model.pt (copy another checkpoint over it to score that one).
"""
import argparse
import json
import time

import numpy as np
import torch

from drl import paths, perf
from drl.config import load_params, run_config
from drl.data.pixels import to_model_space
from drl.diffusion import _per_example
from drl.io import torch_save
from drl.model import MODEL_KEYS, build_model
from drl.power_iteration import training_iteration
from drl.stages.common import prepared
from drl.train import EMA, Objective, _lr, draw_batch


# Multi-level DSM on each level's own marginal: y_t = m_t x_0 + s_t eps, loss 1/2 |s_t grad_y f(y_t, t) + eps|^2
# (batch mean), whose minimiser has grad_y f(., t) = grad log p(y_t), as recovery likelihood's optimum.
def marginal_dsm_loss(ebm, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    sched = ebm.sched
    s = _per_example(sched.y_scale * sched.sigma_cum[:-1], t, x0)
    y = _per_example(sched.y_scale * sched.alpha_cum[:-1], t, x0) * x0 + s * eps
    with training_iteration(ebm):
        _, grad = ebm.score(y, t, create_graph=True)
    return 0.5 * ((s * grad + eps).flatten(1) ** 2).sum(1).mean()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True)
    p.add_argument("--dsm", type=int, required=True, help="warm-start iterations")
    p.add_argument("--rl", type=int, required=True, help="recovery-likelihood iterations after them")
    args = p.parse_args()
    cfg = run_config(load_params("params.yaml"), args.run)
    tcfg, out = cfg["train"], paths.run_dir(cfg["group"], args.run)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(tcfg["seed"])
    ebm = build_model({k: cfg[k] for k in MODEL_KEYS})
    fast = perf.configure(ebm, cfg.get("perf"), "cpu")
    opt = torch.optim.Adam(ebm.parameters(), lr=tcfg["lr"], betas=(tcfg["beta1"], tcfg["beta2"]), eps=tcfg["eps"])
    ema = EMA(ebm, tcfg["ema"])
    gen = torch.Generator().manual_seed(tcfg["seed"])
    data = prepared(cfg["dataset"], "train")
    sched, B = ebm.sched, tcfg["batch_size"]

    def save(name, iteration):
        torch_save(out / name, {"model_cfg": {k: cfg[k] for k in MODEL_KEYS}, "cfg": cfg, "model": ebm.state_dict(),
                                "ema": ema.model.state_dict(), "iteration": iteration, "log": []})

    log, t0 = [], time.time()

    def step(phase, it, loss):
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema.update(ebm)
        if (it + 1) % 250 == 0:
            log.append({"phase": phase, "iteration": it + 1, "loss": loss.item(), "seconds": time.time() - t0})
            print(log[-1], flush=True)

    for it in range(args.dsm):
        for g in opt.param_groups:
            g["lr"] = tcfg["lr"] * min(1.0, (it + 1) / tcfg["warmup"])
        idx = torch.randint(len(data), (B,), generator=gen)
        x0 = torch.from_numpy(to_model_space(data[np.sort(idx.numpy())]))
        t = torch.randint(sched.T, (B,), generator=gen)
        eps = torch.randn(x0.shape, generator=gen)
        step("dsm", it, marginal_dsm_loss(ebm, x0, t, eps))
    save("model_dsm.pt", args.dsm)
    objective = Objective(ebm, cfg["objective"], cfg["sampler"])
    for it in range(args.rl):
        for g in opt.param_groups:   # the warm-up only once, in whichever phase comes first
            g["lr"] = _lr(tcfg, it) if args.dsm == 0 else tcfg["lr"]
        y_pos, x_next, t = draw_batch(data, B, sched, gen, False, "sample")
        with perf.execution(fast, "fp32", "cpu"):
            loss, _ = objective(y_pos, x_next, t, gen)
        step("rl", it, loss.mean())
        if (it + 1) % 500 == 0 and it + 1 < args.rl:
            save(f"model_rl{it + 1}.pt", args.dsm + it + 1)
    save("model.pt", args.dsm + args.rl)
    (out / "warm_start_log.json").write_text(json.dumps(log, indent=1))


if __name__ == "__main__":
    main()
