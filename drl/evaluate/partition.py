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
``estimate_log_z_ais`` is annealed importance sampling (Neal 2001, "Annealed importance sampling",
Statistics and Computing 11:125-139) over the same sequence g_T = N(0, I), g_{T-1}, ..., g_0 with the
same log weights: x_T ~ N(0, I); at level t the weight g_t(x_{t+1}) / g_{t+1}(x_{t+1}) (eq. 34') is
taken on the chain's x_{t+1}, which then takes ``hmc_steps`` HMC transitions (Metropolis-adjusted, on
the marginal f(y, t), no tether) that leave g_t invariant, giving x_t.  The weights of one chain
*multiply*, and Z_0 / Z_T ~= (1/M) sum_i prod_t w_ti is unbiased for *any* such transitions, however
poorly they mix (mixing only affects the variance), and for any EBM, consistent across levels or not;
the per-level ratios it reports are those of the cumulative weights (``combine_ais_log_weights``).
Its log is a stochastic lower bound as above.  Only ``space="x"`` applies (chains carry x).

Test density and bits per dimension
-----------------------------------
Change of variables y_0 = s_0 x_0 over all D dimensions (Section 3.1, g(x) = a p(a x)):

    log g_0(x_0) = f(s_0 x_0, 0) - log Z_0 + D log s_0.

For 8-bit images scaled as x = p / 127.5 - 1 the pixel values are spaced by Delta = 2 / 255 (one
bin per value, centred on it).  The model's probability of the discrete image is
P = integral_{bin} g_0 ~= g_0(x) Delta^D, so

    bpd = -log2 P / D = ( -log g_0(x) / D - log Delta ) / log 2
        = ( -log g_0(x) / D + log 127.5 ) / log 2.

``dequantise="none"`` (default; the released code added no dequantisation noise) evaluates g_0 at
the pixel values themselves: the midpoint rule for the bin integral, neither a bound.
``dequantise="uniform"`` evaluates at x + u, u ~ U(-Delta/2, Delta/2)^D, whose expectation of
log g_0 + D log Delta is a lower bound on log P (Jensen; Theis et al. 2016), so that bpd is an
upper bound for the discrete model.  Level 0 models x_0, which under the released schedule is
lightly noised data (0.99995 x + 0.01 eps); the test images are evaluated as they are.
"""
from __future__ import annotations

import contextlib
import math
from typing import Callable, Iterable

import numpy as np
import torch
from tqdm import tqdm

from drl.energy import ConditionalEBM, model_device
from drl.sample import progressive_levels

LOG_2PI = math.log(2.0 * math.pi)
PIXEL_BIN = 2.0 / 255.0  # spacing of 8-bit values scaled by x / 127.5 - 1


@contextlib.contextmanager
def _fp32(ebm: ConditionalEBM):
    """Evaluate f in fp32 even for a model set to bf16 autocast (``ebm.precision``): the log weights
    are differences of values of size ~D, far beyond bf16's three significant digits."""
    old = getattr(ebm, "precision", None)
    if old is not None:
        ebm.precision = "fp32"
    try:
        yield
    finally:
        if old is not None:
            ebm.precision = old


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
        with _fp32(ebm):  # (only here: the sampler, run by the loop's next(), keeps its precision)
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


def _curve_points(n: int, k: int) -> np.ndarray:
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
    pts = _curve_points(M, curve_points)
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
    pts = _curve_points(M, curve_points)
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


def estimate_log_z(ebm: ConditionalEBM, n_samples: int, shape: tuple, K: int, generator=None,
                   batch_size: int = 1000, noise_scale: float = 1.0, space: str = "x",
                   sampler: Callable[[int, torch.Generator | None], Iterable[torch.Tensor]] | None = None,
                   device=None, progress: bool = True, curve_points: int = 64, combine: str = "levels") -> dict:
    """log Z_0 of the level-0 marginal EBM by eqs. 33-36 from ``n_samples`` progressive samples.

    ``shape``: one example's shape (D = prod(shape)); ``K``, ``noise_scale``: Algorithm 2's
    sampler settings (K = 0: normal approximation).  ``sampler(n, generator)`` replaces the
    progressive sampler; it must yield x_T, ..., x_1 (or return [x_T, ..., x_0]) for n examples.
    ``combine``: "levels" (eq. 36, ``combine_log_weights``) or "ais" (the rows are AIS chains,
    ``combine_ais_log_weights``; used by ``estimate_log_z_ais``).
    Returns the combiner's dict plus ``dim``, ``space``, ``K`` and ``noise_scale``;
    ``log_z0`` is log Z_0 in y-space, comparable to ``LevelDensity(ebm, 0, ...).log_z``."""
    if combine not in ("levels", "ais"):
        raise ValueError(f"combine must be 'levels' or 'ais', got {combine!r}")
    dim = int(np.prod(shape))
    device = model_device(ebm) if device is None else torch.device(device)
    log_jac = log_jacobians(ebm, dim, space)
    if sampler is None:
        def sampler(n, gen):
            return progressive_levels(ebm, torch.randn((n, *shape), generator=gen, device=device), K, noise_scale, gen)
    parts, done = [], 0
    with tqdm(total=n_samples, desc="log Z", unit="sample", disable=not progress, mininterval=2.0) as bar:
        while done < n_samples:
            n = min(batch_size, n_samples - done)
            parts.append(level_log_weights(ebm, sampler(n, generator), space))
            done += n
            bar.update(n)
    combiner = combine_log_weights if combine == "levels" else combine_ais_log_weights
    out = combiner(np.concatenate(parts), log_jac, 0.5 * dim * LOG_2PI, curve_points)
    out.update(dim=dim, space=space, K=K, noise_scale=noise_scale)
    return out


# Neal's (2001) annealed importance sampling proper (not the paper's App. A.4 estimator): chains
# x_T ~ N(0, I) annealed through the x-space level marginals g_{T-1}, ..., g_1 by ``hmc_steps`` HMC
# transitions per level on the marginal f(y, t) (``drl.hmc.ais_levels``), the weight of level t the
# same eq. 34' log weight on x_{t+1} as before (``level_log_weights``, space "x"), combined per chain
# (``combine_ais_log_weights``).  ``step_size``: y-space HMC step, one float for all levels or T of
# them; None: adapted to the acceptance band ``target`` by a pilot of ``adapt_chains`` separate chains
# (``drl.hmc.adapt_marginal_step_sizes``), so the kernels are fixed before the AIS chains start.
def estimate_log_z_ais(ebm: ConditionalEBM, n_samples: int, shape: tuple, hmc_steps: int,
                       n_leapfrog: int = 2, step_size=None, jitter: float = 0.2, generator=None,
                       batch_size: int = 1000, adapt_chains: int = 1000,
                       target: tuple[float, float] = (0.6, 0.9), device=None, progress: bool = True,
                       curve_points: int = 64) -> dict:
    """log Z_0 by AIS with HMC transitions; ``estimate_log_z``'s dict plus ``transitions``
    ("ais_hmc"), ``hmc_steps``, ``n_leapfrog``, ``jitter``, ``step_size`` (per level t) and
    ``acceptance`` (mean HMC acceptance per level t over all chains; nan at level 0, never run)."""
    from drl.hmc import adapt_marginal_step_sizes, ais_levels

    device = model_device(ebm) if device is None else torch.device(device)
    with _fp32(ebm):
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
                             device=device, progress=progress, curve_points=curve_points, combine="ais")
    acc = np.full(ebm.T, np.nan)
    for t in range(1, ebm.T):
        got = [(n, r) for tt, n, r in rates if tt == t]
        acc[t] = sum(n * r for n, r in got) / sum(n for n, _ in got)
    out.update(transitions="ais_hmc", K=None, noise_scale=None, hmc_steps=hmc_steps, n_leapfrog=n_leapfrog,
               jitter=jitter, step_size=steps, acceptance=[float(a) for a in acc])
    return out


@torch.no_grad()
def test_log_likelihood(ebm: ConditionalEBM, x, log_z0: float, batch_size: int = 1000,
                        dequantise: str = "none", bin_width: float = PIXEL_BIN, generator=None,
                        progress: bool = False) -> np.ndarray:
    """log g_0(x) = f(s_0 x, 0) - log Z_0 + D log s_0 per example (float64 [n]); ``x`` [n, *shape]
    in the model's x-space.  ``dequantise="uniform"`` adds U(-bin_width/2, bin_width/2) noise."""
    if dequantise not in ("none", "uniform"):
        raise ValueError(f"dequantise must be 'none' or 'uniform', got {dequantise!r}")
    dev = model_device(ebm)
    x = torch.as_tensor(np.asarray(x) if not torch.is_tensor(x) else x, dtype=torch.float32)
    dim = int(np.prod(x.shape[1:]))
    s0 = float(ebm.levels["y_scale"][0])
    out = []
    for i in tqdm(range(0, len(x), batch_size), desc="test log p", disable=not progress, mininterval=2.0):
        xb = x[i:i + batch_size]
        if dequantise == "uniform":
            xb = xb + (torch.rand(xb.shape, generator=generator) - 0.5) * bin_width
        xb = xb.to(dev)
        with _fp32(ebm):
            f = ebm(s0 * xb, torch.zeros(len(xb), dtype=torch.long, device=dev)).double().cpu().numpy()
        out.append(f)
    return np.concatenate(out) - log_z0 + dim * math.log(s0)


test_log_likelihood.__test__ = False  # not a pytest test when imported into a test module


def bits_per_dim(log_p, dim: int, bin_width: float = PIXEL_BIN):
    """(-log p / D - log bin_width) / log 2: bits per dimension of a density log p (nats) over D
    dimensions of data quantised with spacing ``bin_width`` (2/255 for x = p / 127.5 - 1, giving
    (-log p / D + log 127.5) / log 2).  Elementwise; average the result over a test set."""
    return (-np.asarray(log_p, np.float64) / dim - math.log(bin_width)) / math.log(2.0)


def mean_log_likelihood_se(log_p, log_z_se: float) -> float | None:
    """Standard error of mean(log_p), log_p = log g(x_i) - log Z per test example: the test set's own
    spread, std / sqrt(n), and log Z's estimation error, which shifts every example alike, added in
    quadrature (None for a single example).  Bits/dim are affine in log p: their se is this / (D log 2)."""
    log_p = np.asarray(log_p, np.float64)
    return math.hypot(float(np.std(log_p, ddof=1)) / math.sqrt(len(log_p)), log_z_se) if len(log_p) > 1 else None
