"""Annealed importance sampling (Neal 2001, "Annealed importance sampling", Statistics and Computing
11:125-139) for log Z_0 of the level-0 marginal EBM, over the levels g_T = N(0, I), g_{T-1}, ..., g_0
of drl/evaluate/partition.py, with its log weights (eq. 34'), as an alternative to the paper's
estimator there (App. A.4).

x_T ~ N(0, I); at level t the weight g_t(x_{t+1}) / g_{t+1}(x_{t+1}) is taken on the chain's
x_{t+1}, which then takes ``hmc_steps`` HMC transitions (Metropolis-adjusted, on the marginal
f(y, t), no tether) that leave g_t invariant, giving x_t.  The weights of one chain *multiply*, and
Z_0 / Z_T ~= (1/M) sum_i prod_t w_ti is unbiased for *any* such transitions, however poorly they mix
(mixing only affects the variance), and for any EBM, consistent across levels or not; the per-level
ratios it reports are those of the cumulative weights (``combine_ais_log_weights``).  Its log is a
stochastic lower bound, as the paper's.  Only ``space="x"`` applies (chains carry x).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch

from drl.energy import ConditionalEBM, model_device
from drl.evaluate.partition import curve_sizes, estimate_log_z, fp32
from drl.hmc import Target, hmc_levels, hmc_transitions, require_fp32, search_step_size


# The level-t *marginal* of eq. 32 as an HMC target: log p(y) = f(y, t) + const, y = y_scale[t] x_t,
# no tether to x_{t+1}.  HMC with a Metropolis test on it leaves the x-space marginal
# g_t(x) ∝ exp f(y_scale[t] x, t) invariant, the transitions of annealed importance sampling
# (Neal 2001, "Annealed importance sampling", Statistics and Computing 11; here replacing the
# progressive samples of App. A.4, see drl/evaluate/partition.py).
def marginal_target(t: torch.Tensor, ctx, score: Callable) -> Target:
    def target(y: torch.Tensor):
        f, grad = score(y, t, ctx)
        return f.detach().double(), grad

    return target


def _marginal_transitions(ebm: ConditionalEBM, x: torch.Tensor, t: int, step_size: float, n_steps: int,
                          n_leapfrog: int, generator, jitter: float):
    """``n_steps`` HMC transitions on the level-t marginal from x (x-space in and out); returns
    (x, acceptance probabilities float64 [n_steps, n])."""
    tt = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
    s = float(ebm.levels["y_scale"][t])
    y, probs = hmc_transitions(ebm, lambda ctx, score: marginal_target(tt, ctx, score), tt, (s * x).detach(),
                            step_size, n_steps, n_leapfrog, generator, jitter)
    return y / s, probs


def _check_ais_args(ebm: ConditionalEBM, n_steps: int, jitter: float, step_sizes=None) -> None:
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must lie in [0, 1), got {jitter}")
    if step_sizes is not None and len(step_sizes) != ebm.T:
        raise ValueError(f"need one HMC step size per level (T = {ebm.T}), got {len(step_sizes)}")
    require_fp32(model_device(ebm))


# Neal (2001) annealed importance sampling along the levels, from g_T = N(0, I) down to g_0 (the
# chains of ``estimate_log_z_ais``): x_T ~ N(0, I); for t = T-1..0, x_t = x_{t+1}
# after ``n_steps`` HMC transitions of size step_sizes[t] (y-space units, y = y_scale[t] x) on the
# level-t marginal (``marginal_target``).  The AIS weight of level t, g_t(x_{t+1}) / g_{t+1}(x_{t+1}),
# is evaluated on x_{t+1} *before* the level-t transitions: ``level_log_weights`` does exactly that
# with the yielded x_{t+1}, since this generator runs level t only when asked for the next value.
def ais_levels(ebm: ConditionalEBM, n: int, shape: tuple, n_steps: int, step_sizes, n_leapfrog: int = 2,
               jitter: float = 0.0, generator=None, device="cpu",
               progress: bool = False) -> Iterator[tuple[torch.Tensor, float]]:
    """Yield (x_T, nan), then (x_t, mean HMC acceptance at level t) for t = T-1..0, lazily.  The
    step sizes must be fixed in advance (e.g. by ``adapt_marginal_step_sizes`` on separate chains):
    then every transition leaves its level invariant and the AIS weights are unbiased."""
    _check_ais_args(ebm, n_steps, jitter, step_sizes)
    x = torch.randn((n, *shape), generator=generator, device=device)
    yield x, math.nan
    for t in hmc_levels(ebm, f"AIS-HMC ({n_steps}/level)", progress):
        x, probs = _marginal_transitions(ebm, x, t, float(step_sizes[t]), n_steps, n_leapfrog, generator, jitter)
        yield x, float(probs.mean())


# Step sizes for ``ais_levels`` from a pilot run of its own chains (Neal 2001 AIS; band as in
# Section 4.2 / ``adapt_step_sizes``): the pilot anneals ``n_chains`` chains from N(0, I) level by
# level; at level t it runs rounds of ``n_steps`` marginal HMC transitions, multiplying eps_t by
# ``factor`` after a round whose mean acceptance lies above the band and dividing after one below
# (square-rooting the factor at each reversal), until a round lands in the band.  The pilot's chains
# are then discarded: the AIS run that uses the step sizes draws fresh ones, so its kernels do not
# depend on its own states.  Level T-1 starts at ``init_step_size`` (default y_scale[T-1] sigma_T / 4,
# from small steps as in ``adapt_step_sizes``), level t < T-1 at eps_{t+1} sigma_{t+1} / sigma_{t+2}.
def adapt_marginal_step_sizes(ebm: ConditionalEBM, n_chains: int, shape: tuple, n_steps: int = 10,
                              target: tuple[float, float] = (0.6, 0.9), n_leapfrog: int = 2,
                              init_step_size: float | None = None, factor: float = 1.5,
                              max_rounds: int = 20, jitter: float = 0.0, generator=None, device="cpu",
                              progress: bool = False) -> dict:
    """Return {"step_size", "acceptance" (mean of the final round), "rounds"}, tensors [T] by level t."""
    _check_ais_args(ebm, n_steps, jitter)
    sigma, s = ebm.levels["sigma_next"], ebm.levels["y_scale"]
    eps = float(0.25 * s[-1] * sigma[-1] if init_step_size is None else init_step_size)
    out = {"step_size": torch.zeros(ebm.T, dtype=torch.float64),
           "acceptance": torch.zeros(ebm.T, dtype=torch.float64),
           "rounds": torch.zeros(ebm.T, dtype=torch.long)}
    x = torch.randn((n_chains, *shape), generator=generator, device=device)
    for t in hmc_levels(ebm, "adapt AIS-HMC", progress):
        if t < ebm.T - 1:
            eps *= float(sigma[t] / sigma[t + 1])
        chains = {"x": x}

        def one_round(eps, chains=chains, t=t):
            chains["x"], probs = _marginal_transitions(ebm, chains["x"], t, eps, n_steps, n_leapfrog, generator, jitter)
            return float(probs.mean())

        eps, rate, r = search_step_size(one_round, eps, target, factor, max_rounds, f"AIS-HMC step size of level {t}")
        out["step_size"][t], out["acceptance"][t], out["rounds"][t] = eps, rate, r
        x = chains["x"]
    return out


# Neal (2001) annealed importance sampling: the weights of one chain multiply along the levels, so
# Z_0 / Z_T ~= (1/M) sum_i prod_t w_ti (an unbiased estimate for any level-invariant transitions),
# not the product over levels of per-level means (eq. 36), which assumes every level's samples come
# from that level's own marginal (App. A.4).  With W^(t)_i = prod_{s >= t} w_si (W^(T) = 1) the
# estimate factorises exactly into per-level ratios sum_i W^(t)_i / sum_i W^(t+1)_i, reported as
# ``log_ratio`` (they telescope to ``log_z0``), with the ESS of W^(t) and the delta-method SE of each.
def combine_ais_log_weights(log_w: np.ndarray, log_jac: np.ndarray, log_z_top: float,
                            curve_points: int = 64) -> dict:
    """AIS from per-chain, per-level log weights [M, T] (column t: level t, computed on x_{t+1});
    the same keys as ``combine_log_weights``.  ``se`` is the delta-method standard error of
    ``log_z0`` (the std of W^(0) / mean W^(0) over sqrt(M))."""
    log_w = np.asarray(log_w, np.float64)
    M, T = log_w.shape
    if M == 0:
        raise ValueError("no samples")
    cum = np.concatenate([np.cumsum(log_w[:, ::-1], axis=1)[:, ::-1], np.zeros((M, 1))], 1)  # log W^(t), t=0..T
    lse = np.logaddexp.reduce(cum, axis=0)
    norm = np.exp(cum - lse + math.log(M))                               # W^(t) / mean W^(t)
    ess = np.exp(2 * lse - np.logaddexp.reduce(2 * cum, axis=0))
    pts = curve_sizes(M, curve_points)
    run = np.logaddexp.accumulate(cum[:, 0])
    curve = [[int(m), float(log_z_top + run[m - 1] - math.log(m) + log_jac.sum())] for m in pts]
    per_level = []
    for t in range(T):
        per_level.append({
            "t": t,
            "log_ratio": float(lse[t] - lse[t + 1] + log_jac[t]),
            "log_jacobian": float(log_jac[t]),
            "ess": float(ess[t]),
            "ess_fraction": float(ess[t] / M),
            "log_w_mean": float(log_w[:, t].mean()),
            "log_w_std": float(log_w[:, t].std()),
            "se": float((norm[:, t] - norm[:, t + 1]).std() / math.sqrt(M)),
        })
    log_z0 = float(log_z_top + lse[0] - math.log(M) + log_jac.sum())
    return {"log_z0": log_z0, "log_z_top": float(log_z_top), "n_samples": int(M),
            "se": float(norm[:, 0].std() / math.sqrt(M)), "curve": curve, "per_level": per_level}


# Neal's (2001) annealed importance sampling proper (not the paper's App. A.4 estimator): chains
# x_T ~ N(0, I) annealed through the x-space level marginals g_{T-1}, ..., g_1 by ``hmc_steps`` HMC
# transitions per level on the marginal f(y, t) (``ais_levels``), the weight of level t the
# same eq. 34' log weight on x_{t+1} as before (``level_log_weights``, space "x"), combined per chain
# (``combine_ais_log_weights``).  ``step_size``: y-space HMC step, one float for all levels or T of
# them; None: adapted to the acceptance band ``target`` by a pilot of ``adapt_chains`` separate chains
# (``adapt_marginal_step_sizes``), so the kernels are fixed before the AIS chains start.
def estimate_log_z_ais(ebm: ConditionalEBM, n_samples: int, shape: tuple, hmc_steps: int,
                       n_leapfrog: int = 2, step_size=None, jitter: float = 0.2, generator=None,
                       batch_size: int = 1000, adapt_chains: int = 1000,
                       target: tuple[float, float] = (0.6, 0.9), device=None, progress: bool = True,
                       curve_points: int = 64) -> dict:
    """log Z_0 by AIS with HMC transitions; ``estimate_log_z``'s dict plus ``transitions``
    ("ais_hmc"), ``hmc_steps``, ``n_leapfrog``, ``jitter``, ``step_size`` (per level t) and
    ``acceptance`` (mean HMC acceptance per level t over all chains; nan at level 0, never run)."""
    device = model_device(ebm) if device is None else torch.device(device)
    with fp32(ebm):
        if step_size is None:
            steps = adapt_marginal_step_sizes(ebm, adapt_chains, shape, min(hmc_steps, 10), target, n_leapfrog,
                                              jitter=jitter, generator=generator, device=device)["step_size"]
            steps = [float(e) for e in steps]
        else:
            steps = np.atleast_1d(np.asarray(step_size, np.float64))
            if steps.shape not in ((1,), (ebm.T,)) or not np.all(steps > 0):
                raise ValueError(f"step_size must be one positive number or T = {ebm.T} of them, got {step_size!r}")
            steps = [float(e) for e in np.broadcast_to(steps, (ebm.T,))]
        rates = []

        def sampler(n, gen):
            for i, (x, rate) in enumerate(ais_levels(ebm, n, shape, hmc_steps, steps, n_leapfrog, jitter, gen,
                                                     device)):
                if i:
                    rates.append((ebm.T - i, n, rate))
                yield x

        out = estimate_log_z(ebm, n_samples, shape, 0, generator, batch_size, space="x", sampler=sampler,
                             device=device, progress=progress, curve_points=curve_points, combine=combine_ais_log_weights)
    acc = np.full(ebm.T, np.nan)
    for t in range(1, ebm.T):
        got = [(n, r) for tt, n, r in rates if tt == t]
        acc[t] = sum(n * r for n, r in got) / sum(n for n, _ in got)
    out.update(transitions="ais_hmc", K=None, noise_scale=None, hmc_steps=hmc_steps, n_leapfrog=n_leapfrog,
               jitter=jitter, step_size=steps, acceptance=[float(a) for a in acc])
    return out
