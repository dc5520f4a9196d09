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

``bridges`` (not in the paper): geometric intermediate densities between consecutive levels, placed
where the pilot's log weights vary most.  On a trained T1k model most of the log-weight variance sits
in the last few levels (f = net / delta_t^2 with delta_0^2 ~ 1e-4), and a heavy-tailed weight makes
the estimate rise with the chain count; bridges lower that variance at a cost of their transitions.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np
import torch

from drl.energy import ConditionalEBM, model_device
from drl.evaluate.partition import LOG_2PI, curve_sizes, estimate_log_z, fp32, level_scales, log_jacobians
from drl.hmc import Target, hmc_levels, hmc_transition, hmc_transitions, require_fp32, search_step_size
from drl.perf import chain_score


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
    """Return {"step_size", "acceptance" (mean of the final round), "rounds", "log_w_sd"}, tensors [T]
    by level t; log_w_sd: the sd over the pilot's chains of level t's AIS log weight (taken on them
    before level t's rounds), which places ``bridges``."""
    _check_ais_args(ebm, n_steps, jitter)
    sigma, s = ebm.levels["sigma_next"], ebm.levels["y_scale"]
    eps = float(0.25 * s[-1] * sigma[-1] if init_step_size is None else init_step_size)
    out = {"step_size": torch.zeros(ebm.T, dtype=torch.float64),
           "acceptance": torch.zeros(ebm.T, dtype=torch.float64),
           "rounds": torch.zeros(ebm.T, dtype=torch.long),
           "log_w_sd": torch.zeros(ebm.T, dtype=torch.float64)}
    x = torch.randn((n_chains, *shape), generator=generator, device=device)
    for t in hmc_levels(ebm, "adapt AIS-HMC", progress):
        if t < ebm.T - 1:
            eps *= float(sigma[t] / sigma[t + 1])
        with chain_score(ebm) as score:
            f_t, _, f_up, _ = level_pair(ebm, t, score, n_chains, device)(float(s[t]) * x)
        out["log_w_sd"][t] = float((f_t - f_up).std())
        chains = {"x": x}

        def one_round(eps, chains=chains, t=t):
            chains["x"], probs = _marginal_transitions(ebm, chains["x"], t, eps, n_steps, n_leapfrog, generator, jitter)
            return float(probs.mean())

        eps, rate, r = search_step_size(one_round, eps, target, factor, max_rounds, f"AIS-HMC step size of level {t}")
        out["step_size"][t], out["acceptance"][t], out["rounds"][t] = eps, rate, r
        x = chains["x"]
    return out


# Both ends of the step from level t+1 down to t, in level t's y = s_t x (``score`` from ``chain_score``),
# for n chains: y -> (f(y, t), grad_y f(y, t), f(r y, t+1), grad_y f(r y, t+1)) with r = s_{t+1} / s_t,
# i.e. the log densities log g_t(x), log g_{t+1}(x) of drl/evaluate/partition.py up to constants, and
# f(u, T) = -|u|^2 / 2 above the top EBM level (x_T ~ N(0, I)).  The time contexts are computed once.
def level_pair(ebm: ConditionalEBM, t: int, score: Callable, n: int, device):
    s = level_scales(ebm)
    r = float(s[t + 1] / s[t])
    tt = torch.full((n,), t, dtype=torch.long, device=device)
    ctx_t = ebm.time_context(tt)
    ctx_up = ebm.time_context(tt + 1) if t + 1 < ebm.T else None

    def pair(y: torch.Tensor):
        f_t, g_t = score(y, tt, ctx_t)
        u = r * y
        if t + 1 == ebm.T:
            f_up, g_up = -0.5 * u.double().flatten(1).pow(2).sum(1), -u
        else:
            f_up, g_up = score(u, tt + 1, ctx_up)
        return f_t.double(), g_t, f_up.double(), r * g_up

    return pair


def mix(b: float, f_t, g_t, f_up, g_up):
    """log h_b = b log g_t + (1 - b) log g_{t+1} and its gradient, from ``level_pair``'s values."""
    return b * f_t + (1 - b) * f_up, b * g_t + (1 - b) * g_up


# Geometric bridges (Neal 2001: f_j = f_0^beta_j f_n^(1 - beta_j)) between consecutive levels:
# the step from g_{t+1} down to g_t passes through h_b ∝ g_{t+1}^(1-b) g_t^b at b = 1/J_t, 2/J_t, ..., 1,
# each followed by ``n_steps`` HMC transitions that leave h_b invariant (b = 1: g_t itself, as
# ``ais_levels``).  The chain's log weight gains log h_b(x) - log h_b'(x) = (b - b') (log g_t(x) -
# log g_{t+1}(x)) on its state x before the transitions at b, the AIS weight of Neal (2001) with
# intermediate densities h; column t of the result sums level t's gains, so ``combine_ais_log_weights``
# applies unchanged.  The HMC step at b interpolates the levels' adapted steps geometrically (in x-space).
# Level 0's last transitions are not run (they would not change the weight).  J_t = 1 everywhere gives the
# algorithm of ``ais_levels`` (whose weights, by eq. 34', are the same maths in another rounding).
def bridged_ais_log_weights(ebm: ConditionalEBM, n: int, shape: tuple, n_steps: int, step_sizes, bridges,
                            n_leapfrog: int = 2, jitter: float = 0.0, generator=None, device="cpu",
                            progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain, per-level log weights [n, T] (float64, Jacobians excluded) and the mean HMC acceptance
    per level [T] (nan at level 0 when J_0 = 1).  ``bridges``: J_t >= 1 per level t (J_t - 1 bridges)."""
    _check_ais_args(ebm, n_steps, jitter, step_sizes)
    if len(bridges) != ebm.T or min(bridges) < 1:
        raise ValueError(f"need J_t >= 1 for each of the T = {ebm.T} levels, got {list(bridges)}")
    s = [float(v) for v in level_scales(ebm)]   # s_0..s_T, s_T = 1
    log_w, acc = np.zeros((n, ebm.T)), np.full(ebm.T, math.nan)
    y = torch.randn((n, *shape), generator=generator, device=device)   # x_T = y at level T (s_T = 1)
    for t in hmc_levels(ebm, f"AIS-HMC ({n_steps}/level, bridged)", progress):
        y = y * (s[t] / s[t + 1])
        eps_t = float(step_sizes[t])
        eps_up = eps_t if t + 1 == ebm.T else float(step_sizes[t + 1]) * s[t] / s[t + 1]
        J, probs = int(bridges[t]), []
        with chain_score(ebm) as score:
            pair = level_pair(ebm, t, score, n, device)
            for j in range(1, J + 1):
                b, b_prev = j / J, (j - 1) / J
                f_t, g_t, f_up, g_up = pair(y)
                log_w[:, t] += ((b - b_prev) * (f_t - f_up)).cpu().numpy()
                if t == 0 and j == J:
                    break

                def target(y, b=b):
                    return mix(b, *pair(y))

                state = (y.detach(), *mix(b, f_t, g_t, f_up, g_up))   # the weight's evaluation starts the chain
                for _ in range(n_steps):
                    state, p = hmc_transition(target, state, eps_t ** b * eps_up ** (1 - b), n_leapfrog, generator, jitter)
                    probs.append(p)
                y = state[0]
        if probs:
            acc[t] = float(torch.stack(probs).mean())
    return log_w, acc


# J_t for ``bridged_ais_log_weights``: ``bridges`` extra densities shared out in proportion to the sd of
# each level's log weight (for small steps the variance a level adds falls as 1 / J_t, and shares
# proportional to sd minimise the total for a given count).
def allocate_bridges(log_w_sd, bridges: int) -> list[int]:
    sd = np.nan_to_num(np.asarray(log_w_sd, np.float64))
    if bridges == 0 or sd.sum() <= 0:
        return [1] * len(sd)
    return [1 + int(k) for k in np.round(bridges * sd / sd.sum())]


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
# ``bridges`` > 0: that many geometric bridges besides, shared out by the pilot's log-weight sd
# (``allocate_bridges``, ``bridged_ais_log_weights``); they need the pilot (step_size None).
def estimate_log_z_ais(ebm: ConditionalEBM, n_samples: int, shape: tuple, hmc_steps: int,
                       n_leapfrog: int = 2, step_size=None, jitter: float = 0.2, generator=None,
                       batch_size: int = 1000, adapt_chains: int = 1000,
                       target: tuple[float, float] = (0.6, 0.9), device=None, progress: bool = True,
                       curve_points: int = 64, bridges: int = 0) -> dict:
    """log Z_0 by AIS with HMC transitions; ``estimate_log_z``'s dict plus ``transitions``
    ("ais_hmc"), ``hmc_steps``, ``n_leapfrog``, ``jitter``, ``step_size`` (per level t),
    ``acceptance`` (mean HMC acceptance per level t over all chains; nan at level 0, never run
    unless bridged) and ``bridges`` (J_t per level t: J_t - 1 bridges below level t + 1)."""
    device = model_device(ebm) if device is None else torch.device(device)
    if bridges < 0 or (bridges and step_size is not None):
        raise ValueError(f"bridges must be >= 0 and are placed by the step-size pilot: leave step_size unset "
                         f"(got bridges={bridges}, step_size={step_size!r})")
    with fp32(ebm):
        if step_size is None:
            pilot = adapt_marginal_step_sizes(ebm, adapt_chains, shape, min(hmc_steps, 10), target, n_leapfrog,
                                              jitter=jitter, generator=generator, device=device)
            steps = [float(e) for e in pilot["step_size"]]
        else:
            steps = np.atleast_1d(np.asarray(step_size, np.float64))
            if steps.shape not in ((1,), (ebm.T,)) or not np.all(steps > 0):
                raise ValueError(f"step_size must be one positive number or T = {ebm.T} of them, got {step_size!r}")
            steps = [float(e) for e in np.broadcast_to(steps, (ebm.T,))]
        rates = []
        if bridges:
            J = allocate_bridges(pilot["log_w_sd"], bridges)
            dim = int(np.prod(shape))
            parts = []
            for start in range(0, n_samples, batch_size):
                n = min(batch_size, n_samples - start)
                lw, acc_n = bridged_ais_log_weights(ebm, n, shape, hmc_steps, steps, J, n_leapfrog, jitter,
                                                    generator, device, progress)
                parts.append(lw)
                rates += [(t, n, float(acc_n[t])) for t in range(ebm.T)]
            out = combine_ais_log_weights(np.concatenate(parts), log_jacobians(ebm, dim, "x"), 0.5 * dim * LOG_2PI,
                                          curve_points)
            out.update(dim=dim, space="x")
        else:
            J = [1] * ebm.T

            def sampler(n, gen):
                for i, (x, rate) in enumerate(ais_levels(ebm, n, shape, hmc_steps, steps, n_leapfrog, jitter, gen,
                                                         device)):
                    if i:
                        rates.append((ebm.T - i, n, rate))
                    yield x

            out = estimate_log_z(ebm, n_samples, shape, 0, generator, batch_size, space="x", sampler=sampler,
                                 device=device, progress=progress, curve_points=curve_points,
                                 combine=combine_ais_log_weights)
    acc = np.full(ebm.T, np.nan)
    for t in range(ebm.T):
        got = [(n, r) for tt, n, r in rates if tt == t and not math.isnan(r)]
        if got:
            acc[t] = sum(n * r for n, r in got) / sum(n for n, _ in got)
    out.update(transitions="ais_hmc", K=None, noise_scale=None, hmc_steps=hmc_steps, n_leapfrog=n_leapfrog,
               jitter=jitter, step_size=steps, acceptance=[float(a) for a in acc], bridges=J)
    return out
