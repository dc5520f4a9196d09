"""FLOP counts of the DRL workloads: analytic (passes x per-pass FLOPs, from the network's layers) and
measured (``torch.utils.flop_counter.FlopCounterMode`` on the real code path).

What is counted, in both: the matrix products (dense layers, 3x3 convolutions and their input and
weight gradients), 2 FLOPs per multiply-add, biases and elementwise work not counted -- the
convention of FlopCounterMode and of "model FLOPs" in MFU.

Per example, with the layers of ``layers(net)``:

* ``Y``: forward FLOPs of the layers on y's path (convs / MLP layers, the dense head), ``Y1`` of
  the first of them (its input is y, which needs no gradient in the loss's backward);
* ``Tt``: forward FLOPs of the layers that depend on t alone (time embedding and its projections,
  ``time_context``), ``T1`` of the first (its input, the sinusoidal embedding, needs no gradient);
* ``s_y``, ``s_t``: spectral norm's sigma = u^T W v per evaluation of the weights, once per call and
  per batch (2 out in FLOPs a layer: drl's ``SpectralNorm`` forms u^T W as a matrix product); the
  power iteration (matrix-vector products) is not counted, nor is torch's ``spectral_norm`` of the
  MLP, which uses matrix-vector products only; the backward of sigma to W in the loss costs s again.

A score call ``grad_y f`` (eq. 17) with the time context given costs ``2 B Y`` (forward and input
gradient, same FLOPs per layer), the time context ``B Tt``, and the spectral norm of the weights a
chain uses either ``s = s_y + s_t`` once per chain (drl/perf.py fixes them: eval mode, or
``sn_power_iteration: per_iteration``) or ``s_t + K s_y`` (every call evaluates them: training with
``per_call``).  Training iteration (Algorithm 1, K >= 1 Langevin steps,
loss f(y^-) - f(y^+) on the 2B stacked examples, backward for the weights), per_call:

    F_train = (B Tt + s_t) + K (2 B Y + s_y) + 6 B (Y + Tt) - 2 B (Y1 + T1) + 2 (s_y + s_t)

i.e. about (2K + 6) B F_fwd with F_fwd = Y + Tt: 66 forward passes per example at K = 30.  K = 0
(normal approximation, eq. 12) replaces the Langevin part by one score call without a cached
context: B (Y + Tt) + (s_y + s_t) + B Y.  ``tests/test_bench.py`` checks every formula here against
FlopCounterMode on the library's code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

from drl.nets.mlp import MLPEnergy
from drl.nets.wrn import SpectralNorm, WRNEnergy
from drl.perf import weights_fixed_in_chain


@dataclass(frozen=True)
class Layer:
    name: str
    flops: int          # forward FLOPs per example
    path: str           # "y": on y's path; "t": depends on t alone (time_context)
    first: bool         # its input needs no gradient in the loss's backward (y, or the sinusoidal embedding)
    sn_flops: int       # sigma = u^T W v per evaluation (0 without spectral norm)


def _sn(layer: nn.Module) -> int:
    if not parametrize.is_parametrized(layer, "weight"):
        return 0
    if not any(isinstance(p, SpectralNorm) for p in layer.parametrizations["weight"]):
        return 0
    w = layer.weight
    return 2 * w.shape[0] * math.prod(w.shape[1:])


def _linear(name: str, layer: nn.Linear, path: str, first: bool = False) -> Layer:
    return Layer(name, 2 * layer.in_features * layer.out_features, path, first, _sn(layer))


def _conv(name: str, layer: nn.Conv2d, side: int, path: str = "y", first: bool = False) -> Layer:
    kh, kw = layer.kernel_size
    return Layer(name, 2 * layer.out_channels * layer.in_channels * kh * kw * side * side, path, first, _sn(layer))


def wrn_layers(net: WRNEnergy) -> list[Layer]:
    """Paper Table 4 / ``drl/nets/wrn.py``: 3x3 convs at the resolution of their level (2x2 pooling
    after ``down_after`` blocks), dense time-embedding MLP and projections, the head."""
    side = net.resolution
    out = [_linear("temb0", net.temb0, "t", first=True), _linear("temb1", net.temb1, "t"),
           _conv("conv_in", net.conv_in, side, first=True)]
    for i, (block, down) in enumerate(zip(net.blocks, net.down_after)):
        out += [_conv(f"block{i}.conv1", block.conv1, side), _linear(f"block{i}.temb", block.temb, "t"),
                _conv(f"block{i}.conv2", block.conv2, side)]
        if isinstance(block.shortcut, nn.Conv2d):
            out.append(_conv(f"block{i}.shortcut", block.shortcut, side))
        side //= 2 if down else 1
    out.append(_linear("out", net.out, "t" if net.head == "temb" else "y"))
    return out


def mlp_layers(net: MLPEnergy) -> list[Layer]:
    """``drl/nets/mlp.py``: time-embedding MLP and per-block projections, input layer, blocks, head."""
    out = [_linear("temb.0", net.temb[0], "t", first=True), _linear("temb.2", net.temb[2], "t"),
           _linear("inp", net.inp, "y", first=True)]
    for i, block in enumerate(net.blocks):
        out += [_linear(f"block{i}.fc1", block.fc1, "y"), _linear(f"block{i}.temb", block.temb, "t"),
                _linear(f"block{i}.fc2", block.fc2, "y")]
    out.append(_linear("head", net.head, "y"))
    return out


def layers(net: nn.Module) -> list[Layer]:
    if isinstance(net, WRNEnergy):
        return wrn_layers(net)
    if isinstance(net, MLPEnergy):
        return mlp_layers(net)
    raise TypeError(f"no FLOP model for {type(net).__name__}")


@dataclass(frozen=True)
class NetCost:
    """Per-example forward FLOPs of a network, split as in the module docstring."""
    Y: int
    Y1: int
    Tt: int
    T1: int
    s_y: int
    s_t: int

    @property
    def fwd(self) -> int:
        """Forward FLOPs of f(y, t) per example (time embedding included)."""
        return self.Y + self.Tt

    @property
    def s(self) -> int:
        return self.s_y + self.s_t

    # One score call grad_y f(y, t) (the one place it is computed: ConditionalEBM.score), time
    # context given: forward and input gradient of y's path.
    def score(self, n: int) -> int:
        return 2 * n * self.Y

    def forward(self, n: int) -> int:
        return n * self.fwd

    # Eq. 12 (normal approximation): one score call that computes the time context itself.
    def normal_approximation(self, n: int) -> int:
        return self.forward(n) + n * self.Y + self.s

    # Spectral norm in one MCMC chain of K score calls: the weights once for the chain ("once":
    # drl.perf.chain_weights, in eval mode or under sn_power_iteration per_iteration), or at every
    # call ("per_call": the time context's, then y's path's at each step; training, per_call).
    def chain_sn(self, K: int, mode: str) -> int:
        if mode not in ("once", "per_call"):
            raise ValueError(f"unknown spectral-norm mode {mode!r}")
        return self.s if mode == "once" else self.s_t + K * self.s_y


def net_cost(net: nn.Module) -> NetCost:
    ls = layers(net)
    pick = lambda path, attr="flops", first=None: sum(getattr(l, attr) for l in ls  # noqa: E731
                                                      if l.path == path and (first is None or l.first == first))
    return NetCost(Y=pick("y"), Y1=pick("y", first=True), Tt=pick("t"), T1=pick("t", first=True),
                   s_y=pick("y", "sn_flops"), s_t=pick("t", "sn_flops"))


def chain_mode(ebm: nn.Module) -> str:
    """How the library evaluates spectral-norm weights in this model's chains: "once" per chain
    where drl.perf fixes them (eval mode, or training with sn_power_iteration per_iteration), else
    "per_call" (a power iteration at every call)."""
    return "once" if weights_fixed_in_chain(ebm) else "per_call"


# Algorithm 1: y^- by K Langevin steps (eq. 17) from x_{t+1} (eq. 12 when K = 0), then the loss on
# [y^+, y^-] and its backward to the weights.  ``sn``: the run's perf.sn_power_iteration -- per_call
# (every network call evaluates the weights) or per_iteration (once, shared by chain and loss).
def train_step(c: NetCost, B: int, K: int, sn: str = "per_call") -> dict:
    """Analytic FLOPs of one training iteration: {"flops", "formula", "passes"} (passes: forward-pass
    equivalents per example, flops / (B F_fwd))."""
    if sn not in ("per_call", "per_iteration"):
        raise ValueError(f"no analytic FLOP formula for sn_power_iteration {sn!r} (per_call and per_iteration "
                         f"have one; the FlopCounterMode count covers every setting)")
    chain = c.forward(B) + B * c.Y if K == 0 else B * c.Tt + K * c.score(B)
    chain_s = 0 if sn == "per_iteration" else (c.s if K == 0 else c.chain_sn(K, "per_call"))
    loss = 3 * c.forward(2 * B) - 2 * B * (c.Y1 + c.T1) + 2 * c.s
    flops = chain + chain_s + loss
    formula = ("B (Y + Tt) + B Y" if K == 0 else "B Tt + 2 K B Y") + \
        {"per_iteration": "", "per_call": " + s" if K == 0 else " + s_t + K s_y"}[sn] + \
        " + 6 B (Y + Tt) - 2 B (Y1 + T1) + 2 s"
    return {"flops": flops, "formula": f"{formula}, B={B}, K={K}, sn={sn}, {_terms(c)}",
            "passes": flops / (B * c.fwd)}


# Algorithm 2, ``levels`` levels of progressive sampling of n chains: per level the time context
# and K score calls, spectral norm per ``chain`` (``chain_mode``); K = 0: one normal approximation.
def sample_levels(c: NetCost, n: int, K: int, levels: int, chain: str = "per_call") -> dict:
    per_level = c.normal_approximation(n) if K == 0 else n * c.Tt + K * c.score(n) + c.chain_sn(K, chain)
    return {"flops": levels * per_level, "formula": (
        f"levels x ({'B (Y + Tt) + B Y + s' if K == 0 else 'B Tt + 2 K B Y + ' + _sn_text(chain)}), "
        f"levels={levels}, B={n}, K={K}, {_terms(c)}")}


# Section 4.2 long-run chains (drl.hmc.long_run_levels): per level the normal approximation, then
# for k > 1 one chain: the time context, the target at the start and (k - 1) HMC transitions of L
# leapfrog steps, one score call each.
def long_run_levels(c: NetCost, n: int, k: int, L: int, levels: int, chain: str = "per_call") -> dict:
    per_level = c.normal_approximation(n)
    calls = 1 + (k - 1) * L
    if k > 1:
        per_level += n * c.Tt + calls * c.score(n) + c.chain_sn(calls, chain)
    return {"flops": levels * per_level, "formula": (
        f"levels x (B (Y + Tt) + B Y + s + [k>1] (B Tt + (1 + (k-1) L) 2 B Y + {_sn_text(chain, '(1 + (k-1) L)')})), "
        f"levels={levels}, B={n}, k={k}, L={L}, {_terms(c)}")}


# Neal's AIS (drl.evaluate.partition.estimate_log_z_ais, fixed step sizes): the log weights need
# f(., t) at every level and f(., t + 1) below the top (T + (T - 1) forwards, each evaluating the
# weights); HMC chains run on levels T-1 .. 1 (level 0's never: x_0 is not weighted): context,
# start, h transitions of L steps.
def ais(c: NetCost, n: int, T: int, h: int, L: int, chain: str = "per_call") -> dict:
    calls = 1 + h * L
    flops = (2 * T - 1) * (c.forward(n) + c.s) + (T - 1) * (n * c.Tt + calls * c.score(n) + c.chain_sn(calls, chain))
    return {"flops": flops, "formula": (f"(2T - 1)(B (Y + Tt) + s) + (T - 1)(B Tt + (1 + h L) 2 B Y + "
                                        f"{_sn_text(chain, '(1 + h L)')}), T={T}, B={n}, h={h}, L={L}, {_terms(c)}")}


def _sn_text(chain: str, calls: str = "K") -> str:
    return "s" if chain == "once" else f"s_t + {calls} s_y"


def _terms(c: NetCost) -> str:
    return (f"Y={c.Y:.4g}, Y1={c.Y1:.4g}, Tt={c.Tt:.4g}, T1={c.T1:.4g}, s_y={c.s_y:.4g}, s_t={c.s_t:.4g} "
            f"(F_fwd={c.fwd:.4g} per example)")


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker, whose backward hooks make
    ``torch.autograd.grad`` on a fresh leaf fail ("A leaf node was passed to _will_engine_execute_node"),
    as every score call does; only the global total is read here."""
    parents = ("Global",)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def flop_counter() -> FlopCounterMode:
    """FlopCounterMode (its registry of counted ops and their formulas) counting the global total only."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    return counter


def count(fn, *args, **kwargs) -> tuple[int, object]:
    """(FLOPs FlopCounterMode counts while ``fn`` runs, fn's result)."""
    with flop_counter() as counter:
        out = fn(*args, **kwargs)
    return int(counter.get_total_flops()), out


def module_forward_flops(model: nn.Module, example: torch.Tensor) -> int:
    """Counted forward FLOPs of ``model`` on one batch (e.g. an extractor without an analytic model)."""
    with torch.no_grad():
        return count(model, example)[0]
