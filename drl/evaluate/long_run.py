"""Section 4.2's long-run chain analysis as one stage: per-level HMC step sizes (Fig. 6 left and
centre), chains with 1, 10, 100 sampling steps per time step (Fig. 7), and for each chain length
the log Z_0 estimate along the chains' own levels (App. A.4, Fig. 6 right).

Everything is written to one ``.npz`` (``drl long-run``); ``drl evaluate`` scores its samples
(FID/IS per chain length) and the figures read it.  Keys:

* ``step_size``, ``adapt_acceptance``, ``adapt_rounds``: float64/int64 [T] indexed by level t;
* ``steps_per_level``: int64 [m], the chain lengths;
* per chain length k: ``samples_k`` (uint8 NHWC x_0), ``acceptance_k`` (mean HMC acceptance per
  level, float64 [T], nan at k = 1) and ``log_w_k`` (eq. 34' log weights, float64 [n, T]), with
  ``log_jacobian`` [T] and ``log_z_top`` their common terms (``combine``).
"""
from __future__ import annotations

import math

import numpy as np
import torch
from tqdm import tqdm

from drl.data.pixels import to_uint8
from drl.evaluate.partition import LOG_2PI, combine_log_weights, level_log_weights, log_jacobians
from drl.hmc import adapt_step_sizes, long_run_levels


# Section 4.2: adapt eps_t on ``adapt.n_chains`` chains, then for each k in steps_per_level run n
# chains of Algorithm 2 with k sampling steps per time step (normal approximation + k - 1 HMC
# steps), collecting x_0 and the log weights of eq. 34' between consecutive levels of the chains.
def long_run_chains(ebm, cfg: dict, shape: tuple, device="cpu", progress: bool = True) -> dict[str, np.ndarray]:
    a = cfg["adapt"]
    gen = torch.Generator(device=device).manual_seed(cfg["seed"])
    adapted = adapt_step_sizes(ebm, a["n_chains"], shape, a["n_steps"], tuple(a.get("target", (0.6, 0.9))),
                               cfg.get("n_leapfrog", 2), factor=a.get("factor", 1.5),
                               max_rounds=a.get("max_rounds", 20), jitter=cfg.get("jitter", 0.0), generator=gen,
                               device=device, progress=progress)
    dim = int(np.prod(shape))
    out = {"step_size": adapted["step_size"].numpy(), "adapt_acceptance": adapted["acceptance"].numpy(),
           "adapt_rounds": adapted["rounds"].numpy(), "steps_per_level": np.asarray(cfg["steps_per_level"], np.int64),
           "log_jacobian": log_jacobians(ebm, dim, "x"), "log_z_top": np.float64(0.5 * dim * LOG_2PI)}
    n, batch = cfg["n"], cfg.get("batch_size", cfg["n"])
    for k in cfg["steps_per_level"]:
        samples, log_w, rates = [], [], []
        for start in tqdm(range(0, n, batch), desc=f"long run {k}/level", disable=not progress, mininterval=2.0):
            m = min(batch, n - start)
            acc = np.full(ebm.T, math.nan)
            chain = long_run_levels(ebm, m, shape, k, adapted["step_size"], cfg.get("n_leapfrog", 2),
                                    cfg.get("jitter", 0.0), gen, device, progress=False)

            def levels():  # x_T, ..., x_1, recording each level's acceptance on the way
                for i, (x, rate) in enumerate(chain):
                    if i:
                        acc[ebm.T - i] = rate
                    yield x

            it = levels()
            log_w.append(level_log_weights(ebm, it, "x"))  # consumes x_T, ..., x_1
            samples.append(to_uint8(next(it)))  # x_0
            rates.append(acc * m)
        out[f"samples_{k}"] = np.concatenate(samples)
        out[f"log_w_{k}"] = np.concatenate(log_w)
        out[f"acceptance_{k}"] = np.sum(rates, axis=0) / n
    return out


def combine(chains, k: int, curve_points: int = 64) -> dict:
    """Eqs. 34-36 for the chains with k steps per level: ``combine_log_weights``'s dict."""
    return combine_log_weights(chains[f"log_w_{k}"], chains["log_jacobian"], float(chains["log_z_top"]), curve_points)


def hmc_steps_csv(chains) -> str:
    """hmc_steps.csv (a DVC plot): per level t the adapted step size, the adaptation's acceptance and
    each chain length's mean acceptance."""
    ks = [int(k) for k in chains["steps_per_level"]]
    rows = ["t,step_size,adapt_acceptance," + ",".join(f"acceptance_{k}" for k in ks)]
    for t in range(len(chains["step_size"])):
        rows.append(",".join(f"{v:.6g}" for v in [t, chains["step_size"][t], chains["adapt_acceptance"][t],
                                                   *(chains[f"acceptance_{k}"][t] for k in ks)]))
    return "\n".join(rows) + "\n"
