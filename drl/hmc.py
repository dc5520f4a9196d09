"""Hamiltonian Monte Carlo on the conditional EBMs and the long-run chains of Section 4.2.

Section 4.2 (model T1k): at every time step t = T-1..0 the first sampling step is the normal
approximation (eq. 12) from x_{t+1}; the following ones are HMC (Neal 2011, "MCMC using
Hamiltonian dynamics", Handbook of MCMC ch. 5) with L = 2 leapfrog steps and a Metropolis test on
the conditional log density of eq. 16,

    log p(y | x_{t+1}) = f(y, t) - |x_{t+1} - y|^2 / (2 sigma_{t+1}^2) + const,

with a step size eps_t per time step adapted so that the mean acceptance rate lies in [0.6, 0.9]
(Fig. 6 left and centre).  Momenta are N(0, I) (unit mass).  All tensors stay in y's dtype
except the per-chain log densities and energies, which are summed and differenced in float64.

``jitter`` (not in the paper; default 0): each transition draws every chain's step uniformly from
eps (1 +- jitter), Neal's (2011, Section 5.4.2) remedy for periodic trajectories.  With L = 2
and a nearly Gaussian conditional of sd s, eps = sqrt(2) s maps y - mean to -(y - mean) exactly
(acceptance 1, no mixing at all).  Acceptance is not monotone in h = eps / s: in D = 3 it stays
above 0.83 for every h < 1.5 and is 0.98 at sqrt(2), so the band [0.6, 0.9] includes step sizes
next to that point; ``adapt_step_sizes`` approaches the band from small steps, and low-dimensional
runs (2-D toys) may add jitter ~0.2 as well.  In high dimensions the band sits well below the
resonance (D = 64: h in [0.42, 0.7]; images: smaller still).
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Iterator

import torch
from tqdm import tqdm

from drl.energy import ConditionalEBM, recovery_log_density
from drl.mcmc import normal_approximation
from drl.noise import from_generator
from drl.perf import chain_score

# y -> (log p(y) up to a constant, float64 [n]; grad_y log p(y), y's dtype and shape)
Target = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def require_fp32(device: torch.device) -> None:
    if torch.is_autocast_enabled(device.type):
        raise ValueError("HMC's Metropolis test differences energies of size ~D, beyond bf16's "
                         "three digits: sample in fp32, outside bf16 autocast (train.precision is for training)")


def _kinetic(p: torch.Tensor) -> torch.Tensor:
    return 0.5 * p.double().pow(2).flatten(1).sum(1)


# The leapfrog method (Neal 2011, Section 5.2.3.3): L steps of size eps for the Hamiltonian
# H(y, p) = -log p(y) + |p|^2 / 2, the half momentum steps of consecutive steps merged.
# ``grad`` is grad log p at y.
def leapfrog(target: Target, y, grad, p, step_size, n_leapfrog: int):
    p = p + 0.5 * step_size * grad
    for i in range(n_leapfrog):
        y = y + step_size * p
        logp, grad = target(y)
        p = p + (step_size if i < n_leapfrog - 1 else 0.5 * step_size) * grad
    return y, logp, grad, p


# One HMC transition (Neal 2011, Section 5.3.2): fresh momentum p ~ N(0, I), L leapfrog steps
# to (y', p'), and per chain a Metropolis test accepting with probability
# min(1, exp(H(y, p) - H(y', p'))); log of it formed in float64, NaN proposals rejected.
# ``state`` = (y, log p(y), grad log p(y)), carried over so that a transition costs L gradients.
# With ``jitter`` the step of each chain is eps (1 + jitter U(-1, 1)), drawn independently of y.
def hmc_transition(target: Target, state, step_size, n_leapfrog: int = 2, generator=None,
                   jitter: float = 0.0):
    """Return (the new state, the Metropolis acceptance probability of each chain, float64 [n])."""
    y, logp, grad = state
    if jitter:
        one_per_chain = (y.shape[0], *[1] * (y.dim() - 1))
        u = torch.rand(one_per_chain, generator=generator, dtype=y.dtype, device=y.device)
        step_size = step_size * (1.0 + jitter * (2.0 * u - 1.0))
    p = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
    y1, logp1, grad1, p1 = leapfrog(target, y, grad, p, step_size, n_leapfrog)
    log_alpha = (logp1 - _kinetic(p1)) - (logp - _kinetic(p))
    log_alpha = torch.nan_to_num(log_alpha, nan=-math.inf).clamp(max=0.0)
    u = torch.rand(log_alpha.shape, generator=generator, dtype=torch.float64, device=y.device)
    accept = torch.log(u) < log_alpha
    per_chain = accept.view(-1, *[1] * (y.dim() - 1))
    state = (torch.where(per_chain, y1, y), torch.where(accept, logp1, logp),
             torch.where(per_chain, grad1, grad))
    return state, log_alpha.exp()


# ``n_steps`` HMC transitions on p(y_t | x_{t+1}) (eq. 16) started at y, all chains at levels t.
def hmc(ebm: ConditionalEBM, y: torch.Tensor, x_next: torch.Tensor, t: torch.Tensor, step_size,
        n_steps: int, n_leapfrog: int = 2, generator=None, jitter: float = 0.0):
    """Return (y after n_steps >= 1 transitions, acceptance probabilities float64 [n_steps, n]).
    ``step_size``: a float, or a tensor broadcastable to y (e.g. one per chain, shaped [n, 1, ...])."""
    if n_steps < 1:
        raise ValueError(f"n_steps must be >= 1, got {n_steps}")
    if not 0.0 <= jitter < 1.0:
        raise ValueError(f"jitter must lie in [0, 1), got {jitter}")
    require_fp32(y.device)
    return hmc_transitions(ebm, lambda ctx, score: recovery_log_density(ebm, x_next, t, score, ctx), t, y.detach(),
                        step_size, n_steps, n_leapfrog, generator, jitter)


def hmc_transitions(ebm: ConditionalEBM, make_target: Callable[[object, Callable], Target], t: torch.Tensor,
                 y: torch.Tensor, step_size, n_steps: int, n_leapfrog: int, generator, jitter: float):
    """``n_steps`` HMC transitions from y on ``make_target(ebm.time_context(t), score)``, the network's
    weights computed once for the chain and ``score`` the chain's (``drl.perf.chain_score``); returns
    (y, acceptance float64 [n_steps, n])."""
    with chain_score(ebm) as score:
        target = make_target(ebm.time_context(t), score)
        state = (y, *target(y))
        probs = []
        for _ in range(n_steps):
            state, prob = hmc_transition(target, state, step_size, n_leapfrog, generator, jitter)
            probs.append(prob)
    return state[0], torch.stack(probs)


def hmc_levels(ebm: ConditionalEBM, desc: str, progress: bool):
    return tqdm(reversed(range(ebm.T)), total=ebm.T, desc=desc, disable=not progress, mininterval=2.0)


# Section 4.2: "for each time step we adaptively adjust the step size of HMC to make the average
# acceptance rate range in [0.6, 0.9], which is computed over 1000 chains for 100 steps".
# The chains follow Algorithm 2 from x_T ~ N(0, I) (a conditional top level is needed, as for
# eq. 12).  At level t they start from the normal approximation (eq. 12) and run rounds of
# ``n_steps`` HMC steps, each round continuing the chains and measuring the mean Metropolis
# acceptance probability over all its chains and steps (the expected acceptance rate).  After a
# round above the band eps_t is multiplied by ``factor``, after one below it divided; each reversal
# of direction square-roots the factor (bisection in log eps).  Adaptation of level t stops at the
# first round inside the band (or after ``max_rounds``, with a warning); its end states, divided by
# y_scale[t], start level t-1.  Level T-1 starts at ``init_step_size``, by default sigma_T / 4: the
# conditional's sd is at most about the tether's sigma_{t+1}, and approaching the band from small
# steps lands on its first branch, below the L = 2 resonance at eps = sqrt(2) sd (module docstring;
# starting at sigma_T, a toy's top level settled there).  Level t then starts at
# eps_{t+1} sigma_{t+1} / sigma_{t+2}, keeping eps / sigma, which the band fixes when sigma is small.
def adapt_step_sizes(ebm: ConditionalEBM, n_chains: int, shape: tuple, n_steps: int = 100,
                     target: tuple[float, float] = (0.6, 0.9), n_leapfrog: int = 2,
                     init_step_size: float | None = None, factor: float = 1.5, max_rounds: int = 20,
                     jitter: float = 0.0, generator=None, device="cpu", progress: bool = True) -> dict:
    """Return {"step_size": eps_t, "acceptance": mean acceptance of the final round, "rounds"},
    each a tensor [T] indexed by level t (float64, float64, int64)."""
    sigma = ebm.levels["sigma_next"]
    eps = float(0.25 * sigma[-1] if init_step_size is None else init_step_size)
    out = {"step_size": torch.zeros(ebm.T, dtype=torch.float64),
           "acceptance": torch.zeros(ebm.T, dtype=torch.float64),
           "rounds": torch.zeros(ebm.T, dtype=torch.long)}
    x = torch.randn((n_chains, *shape), generator=generator, device=device)
    for t in hmc_levels(ebm, "adapt HMC", progress):
        if t < ebm.T - 1:
            eps *= float(sigma[t] / sigma[t + 1])
        tt = torch.full((n_chains,), t, dtype=torch.long, device=device)
        chains = {"y": normal_approximation(ebm, x, tt, randn_like=from_generator(generator))}

        def one_round(eps, chains=chains, tt=tt, x=x):
            chains["y"], probs = hmc(ebm, chains["y"], x, tt, eps, n_steps, n_leapfrog, generator, jitter)
            return float(probs.mean())

        eps, rate, r = search_step_size(one_round, eps, target, factor, max_rounds, f"HMC step size of level {t}")
        out["step_size"][t], out["acceptance"][t], out["rounds"][t] = eps, rate, r
        x = chains["y"] / float(ebm.levels["y_scale"][t])
    return out


# The per-level search of Section 4.2's adaptation: rounds of HMC steps, eps multiplied by ``factor``
# after a round above the band and divided after one below, the factor square-rooted at each reversal
# of direction (bisection in log eps); it stops at the first round inside the band, or warns after
# ``max_rounds``.
def search_step_size(one_round: Callable[[float], float], eps: float, target: tuple[float, float],
                     factor: float, max_rounds: int, what: str) -> tuple[float, float, int]:
    """``one_round(eps)`` runs one round (continuing its chains) and returns its mean acceptance.
    Returns (eps, the last round's acceptance, rounds used)."""
    lo, hi = target
    mult, direction = factor, 0
    for r in range(1, max_rounds + 1):
        rate = one_round(eps)
        if lo <= rate <= hi:
            return eps, rate, r
        if r == max_rounds:
            break
        new_direction = 1 if rate > hi else -1
        if direction and new_direction != direction:
            mult = math.sqrt(mult)
        eps, direction = eps * mult**new_direction, new_direction
    warnings.warn(f"{what}: acceptance {rate:.3f} outside [{lo}, {hi}] after {max_rounds} rounds (step size {eps:.3g})")
    return eps, rate, max_rounds


# Section 4.2's long-run chains (Fig. 7): Algorithm 2 where each time step t takes
# ``steps_per_level`` sampling steps, the first the normal approximation (eq. 12) from x_{t+1} and
# the rest HMC steps of size step_sizes[t]; the paper runs 1, 10 and 100 steps per time step
# (1k, 10k and 100k steps in all at T1k).
def long_run_levels(ebm: ConditionalEBM, n: int, shape: tuple, steps_per_level: int, step_sizes,
                    n_leapfrog: int = 2, jitter: float = 0.0, generator=None, device="cpu",
                    x_T: torch.Tensor | None = None,
                    progress: bool = True) -> Iterator[tuple[torch.Tensor, float]]:
    """Yield (x_T, nan), then (x_t, mean HMC acceptance at level t; nan when steps_per_level = 1)
    for t = T-1..0, one level at a time.  ``x_T``: the chains' start (default n draws of N(0, I)).
    For ``drl.evaluate.partition.estimate_log_z`` (Fig. 6 right) pass
    ``sampler=lambda n, g: (x for x, _ in long_run_levels(ebm, n, shape, k, eps, generator=g))``."""
    if steps_per_level < 1:
        raise ValueError(f"steps_per_level must be >= 1, got {steps_per_level}")
    if len(step_sizes) != ebm.T:
        raise ValueError(f"need one HMC step size per level (T = {ebm.T}), got {len(step_sizes)}")
    if x_T is None:
        x_T = torch.randn((n, *shape), generator=generator, device=device)
    elif tuple(x_T.shape) != (n, *shape):
        raise ValueError(f"x_T has shape {tuple(x_T.shape)}, expected {(n, *shape)}")
    x = x_T
    yield x, math.nan
    for t in hmc_levels(ebm, f"long-run HMC ({steps_per_level}/level)", progress):
        tt = torch.full((n,), t, dtype=torch.long, device=x.device)
        y = normal_approximation(ebm, x, tt, randn_like=from_generator(generator))
        rate = math.nan
        if steps_per_level > 1:
            y, probs = hmc(ebm, y, x, tt, float(step_sizes[t]), steps_per_level - 1, n_leapfrog,
                           generator, jitter)
            rate = float(probs.mean())
        x = y / float(ebm.levels["y_scale"][t])
        yield x, rate


def long_run_sample(ebm: ConditionalEBM, n: int, shape: tuple, steps_per_level: int, step_sizes,
                    n_leapfrog: int = 2, jitter: float = 0.0, generator=None, device="cpu",
                    x_T: torch.Tensor | None = None, progress: bool = True) -> tuple[torch.Tensor, dict]:
    """Return (x_0 [n, *shape], {"step_size": eps_t, "acceptance": mean HMC acceptance}), the
    diagnostics float64 tensors [T] indexed by level t (acceptance nan when steps_per_level = 1)."""
    acceptance = torch.full((ebm.T,), math.nan, dtype=torch.float64)
    levels = long_run_levels(ebm, n, shape, steps_per_level, step_sizes, n_leapfrog, jitter, generator,
                             device, x_T, progress)
    for i, (x, rate) in enumerate(levels):
        if i:
            acceptance[ebm.T - i] = rate
    return x, {"step_size": torch.as_tensor(step_sizes, dtype=torch.float64), "acceptance": acceptance}
