"""The partition function of the level-0 marginal EBM (paper Appendix A.4, eqs. 32-36) and the
normalised test log-density / bits per dimension it gives (Section 4.2, Table 3).

Levels and what is normalised
-----------------------------
EBM level t = 0..T-1 defines the marginal model (eq. 32)

    p_theta(y_t) = exp f(y_t, t) / Z_t,        Z_t = integral exp f(y, t) dy,

of ``y_t = s_t x_t`` with ``s_t = ebm.levels["y_scale"][t]`` (a[t+1], or 1 at a marginal top
level).  ``f`` is ``ebm(y, t)``, so the released ``net_over_s2`` parameterisation is included.
Z_t is the normaliser in *y*-space, the paper's Z_{theta,t} and ``LevelDensity(ebm, t).log_z``.

Above the top EBM level sits the auxiliary level T, x_T ~ N(0, I) (Algorithm 2's start), with
s_T = 1, f(u, T) = -|u|^2 / 2 and the closed form  log Z_T = (D / 2) log(2 pi).  This is the
paper's "starting from t = T, where p_T follows Gaussian distribution".  It is the same under
both ``diffusion.top_level`` options: with ``conditional`` the top EBM level T-1 models
y_{T-1} = a[T] x_{T-1} tethered to x_T, with ``marginal`` (released code) it models y_{T-1} = x_{T-1}
with no tether; in neither case is Z_{T-1} known in closed form, and in both it is estimated by
importance sampling from N(0, I), exactly as every other ratio below (eq. 33 with t = T-1).

Ratio of consecutive normalisers (eqs. 33-34), with a change of variables
-------------------------------------------------------------------------
For any c > 0, substituting y = c u in Z_t,

    Z_t / Z_{t+1} = c^D E_{u ~ p_theta(y_{t+1})} [ exp( f(c u, t) - f(u, t+1) ) ]          (33')
                 ~= c^D (1/M) sum_i exp( f(c u_i, t) - f(u_i, t+1) ),   u_i = s_{t+1} x_{t+1,i},   (34')

with x_{t+1,i} the progressive samples (Algorithm 2) at level t+1.  ``space="y"`` takes c = 1:
the paper's eqs. 33-34 literally (the level-(t+1) sample y_{t+1} is plugged into f(., t)).
``space="x"`` (default) takes c = s_t / s_{t+1}: the proposal is then the sample x_{t+1} itself,
evaluated at y = s_t x_{t+1}, i.e. importance sampling between the *x*-space densities
g_t(x) = s_t^D exp f(s_t x, t) / Z_t of consecutive levels, which overlap far better (x_{t+1} =
a[t+1] x_t + sigma[t+1] eps); the Jacobian D log c = D log(s_t / s_{t+1}) is added to the level's
log ratio.  Both are unbiased for Z_t / Z_{t+1} (their logs are stochastic lower bounds, A.4
eqs. 37-38); they differ only in variance.  Summed over levels (eq. 36),

    log Z_0 = log Z_T + sum_{t=0}^{T-1} log (Z_t / Z_{t+1})                                (36)

where in ``space="x"`` the Jacobians telescope to D log(s_0 / s_T) = D log s_0.

Validity: eq. 33 needs x_{t+1,i} to be distributed as the EBM's own level-(t+1) marginal.  The
progressive sampler delivers that only when the model's levels are mutually consistent and the
MCMC is exact (the paper's T1k/HMC setting); x_T ~ N(0, I) is exact, so the top ratio always is.
Variance: in D dimensions the log-weights of two Gaussians whose per-dimension variances differ by
a relative eps have variance about D eps^2 / 2, so with few levels and large D (T6, CIFAR) the
estimate is dominated by a few samples; ``per_level`` reports the effective sample size so that
this is visible (the paper used T = 1000 levels).

Two estimators: the paper's (App. A.4) and annealed importance sampling (Neal 2001)
----------------------------------------------------------------------------------
``estimate_log_z`` is the paper's: every level's ratio is averaged separately over the samples of
level t+1 and the logs are summed (eq. 36).  It is unbiased only when the x_{t+1,i} are exact draws
from the EBM's *own* level-(t+1) marginal g_{t+1}.  Progressive samples (Algorithm 2) are not: they
come from the model's recovery conditionals, which agree with its marginals only if the levels are
mutually consistent, and through finitely many unadjusted Langevin steps (on the trained checkerboard
model, K = 30 leaves a 0.036-nat gap to quadrature).
Annealed importance sampling (Neal 2001) over the same levels and log weights is in
drl/evaluate/ais.py; the test log-density and bits per dimension are in drl/evaluate/likelihood.py.
"""
from __future__ import annotations

import math
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from drl.energy import ConditionalEBM, model_device
from drl.noise import from_generator
from drl.sample import progressive_levels

LOG_2PI = math.log(2.0 * math.pi)


def fp32(ebm: ConditionalEBM):
    """Evaluate f in fp32 even inside bf16 autocast (``drl.perf.execution``): the log weights are
    differences of values of size ~D, far beyond bf16's three significant digits."""
    return torch.autocast(model_device(ebm).type, enabled=False)


def level_scales(ebm: ConditionalEBM) -> np.ndarray:
    """s_t for t = 0..T: y_t = s_t x_t at the EBM levels, and s_T = 1 for x_T ~ N(0, I)."""
    return np.concatenate([np.asarray(ebm.levels["y_scale"], np.float64), [1.0]])


def log_jacobians(ebm: ConditionalEBM, dim: int, space: str = "x") -> np.ndarray:
    """D log c_t of eq. 33' for t = 0..T-1 (zeros for ``space="y"``)."""
    if space not in ("x", "y"):
        raise ValueError(f"space must be 'x' or 'y', got {space!r}")
    s = level_scales(ebm)
    return dim * np.log(s[:-1] / s[1:]) if space == "x" else np.zeros(ebm.T)


@torch.no_grad()
def level_log_weights(ebm: ConditionalEBM, levels: Iterable[torch.Tensor], space: str = "x") -> np.ndarray:
    """Log importance weights of eq. 34' for one batch, float64 array [n, T]; column t holds
    f(c_t u, t) - f(u, t+1) with u = s_{t+1} x_{t+1} (f(u, T) = -|u|^2 / 2).

    ``levels`` yields x_T, x_{T-1}, ..., x_1 (a list [x_T, ..., x_0] from ``progressive_sample``
    also works; x_0 is ignored).  The Jacobian D log c_t is not included (``log_jacobians``)."""
    log_jacobians(ebm, 1, space)  # validates ``space``
    T, s, dev = ebm.T, level_scales(ebm), model_device(ebm)
    cols: list[np.ndarray | None] = [None] * T
    for i, x in enumerate(levels):
        t = T - 1 - i  # x is x_{t+1}
        x = x.to(dev)
        n = x.shape[0]
        u = float(s[t + 1]) * x
        c = s[t] / s[t + 1] if space == "x" else 1.0
        with fp32(ebm):  # (only here: the sampler, run by the loop's next(), keeps its precision)
            f_t = ebm(float(c) * u, torch.full((n,), t, dtype=torch.long, device=dev)).double()
            if t + 1 == T:
                f_next = -0.5 * u.double().flatten(1).pow(2).sum(1)
            else:
                f_next = ebm(u, torch.full((n,), t + 1, dtype=torch.long, device=dev)).double()
        cols[t] = (f_t - f_next).cpu().numpy()
        if t == 0:
            break  # before asking a lazy sampler for x_0 (with AIS, for level-0 transitions)
    if any(c is None for c in cols):
        raise ValueError(f"levels must yield the T = {T} samples x_T, ..., x_1")
    return np.stack(cols, 1)


def curve_sizes(n: int, k: int) -> np.ndarray:
    return np.unique(np.concatenate([np.geomspace(1, n, max(k, 2)).round().astype(int), [n]]))


def combine_log_weights(log_w: np.ndarray, log_jac: np.ndarray, log_z_top: float,
                        curve_points: int = 64) -> dict:
    """Eqs. 34-36 from per-level log weights [M, T] (float64 logsumexp throughout).

    Returns ``log_z0`` (eq. 36 with all M samples), ``curve`` ([m, log Z_0 estimate from the first m
    samples of every level] at about ``curve_points`` geometrically spaced m, as in Fig. 6 right)
    and ``per_level``: per level t the estimate of log Z_t / Z_{t+1} (Jacobian included), the
    Jacobian, the effective sample size (sum w)^2 / sum w^2, the mean and std of the log weights and
    the delta-method standard error sqrt(1 / ESS - 1 / M) of the log ratio; ``se`` is the
    delta-method standard error of ``log_z0`` (rows taken as independent chains, the correlation
    between the levels of one chain included).  All are rough when the ESS is small."""
    log_w = np.asarray(log_w, np.float64)
    M, T = log_w.shape
    if M == 0:
        raise ValueError("no samples")
    cum = np.logaddexp.accumulate(log_w, axis=0)                          # log sum_{i<=m} w_i
    pts = curve_sizes(M, curve_points)
    log_ratio_m = cum[pts - 1] - np.log(pts)[:, None] + log_jac[None]     # [len(pts), T]
    curve = [[int(m), float(log_z_top + r.sum())] for m, r in zip(pts, log_ratio_m)]
    lse = cum[-1]
    lse2 = np.logaddexp.reduce(2 * log_w, axis=0)
    ess = np.exp(2 * lse - lse2)
    per_level = []
    for t in range(T):
        per_level.append({
            "t": t,
            "log_ratio": float(lse[t] - math.log(M) + log_jac[t]),
            "log_jacobian": float(log_jac[t]),
            "ess": float(ess[t]),
            "ess_fraction": float(ess[t] / M),
            "log_w_mean": float(log_w[:, t].mean()),
            "log_w_std": float(log_w[:, t].std()),
            "se": float(math.sqrt(max(1.0 / ess[t] - 1.0 / M, 0.0))),
        })
    log_z0 = float(log_z_top + sum(p["log_ratio"] for p in per_level))
    # Delta method for the sum over levels: row i is one chain, so with w~_ti = w_ti / mean_i w_ti,
    # Var(log Z_0 estimate) ~= Var_i(sum_t w~_ti) / M; this keeps the covariance between levels of
    # one progressive chain, which makes the level errors add up with the same sign.
    se = float(np.exp(log_w - lse + math.log(M)).sum(1).std() / math.sqrt(M))
    return {"log_z0": log_z0, "log_z_top": float(log_z_top), "n_samples": int(M), "se": se,
            "curve": curve, "per_level": per_level}


def estimate_log_z(ebm: ConditionalEBM, n_samples: int, shape: tuple, K: int, generator=None,
                   batch_size: int = 1000, noise_scale: float = 1.0, space: str = "x",
                   sampler: Callable[[int, torch.Generator | None], Iterable[torch.Tensor]] | None = None,
                   device=None, progress: bool = True, curve_points: int = 64,
                   combine: Callable = combine_log_weights) -> dict:
    """log Z_0 of the level-0 marginal EBM by eqs. 33-36 from ``n_samples`` progressive samples.

    ``shape``: one example's shape (D = prod(shape)); ``K``, ``noise_scale``: Algorithm 2's
    sampler settings (K = 0: normal approximation).  ``sampler(n, generator)`` replaces the
    progressive sampler; it must yield x_T, ..., x_1 (or return [x_T, ..., x_0]) for n examples.
    ``combine``: eq. 36 (``combine_log_weights``), or drl.evaluate.ais's per-chain combination when
    the rows are AIS chains.
    Returns the combiner's dict plus ``dim``, ``space``, ``K`` and ``noise_scale``;
    ``log_z0`` is log Z_0 in y-space, comparable to ``LevelDensity(ebm, 0, ...).log_z``."""
    dim = int(np.prod(shape))
    device = model_device(ebm) if device is None else torch.device(device)
    log_jac = log_jacobians(ebm, dim, space)
    if sampler is None:
        def sampler(n, gen):
            return progressive_levels(ebm, torch.randn((n, *shape), generator=gen, device=device), K, noise_scale,
                                      from_generator(gen))
    parts, done = [], 0
    with tqdm(total=n_samples, desc="log Z", unit="sample", disable=not progress, mininterval=2.0) as bar:
        while done < n_samples:
            n = min(batch_size, n_samples - done)
            parts.append(level_log_weights(ebm, sampler(n, generator), space))
            done += n
            bar.update(n)
    out = combine(np.concatenate(parts), log_jac, 0.5 * dim * LOG_2PI, curve_points)
    out.update(dim=dim, space=space, K=K, noise_scale=noise_scale)
    return out


