"""Performance switches of a run (the ``perf`` section of params.yaml).

* ``sn_power_iteration``: ``per_call`` (default), ``released`` or ``per_iteration``: how often a
  training iteration runs the spectral norms' power iterations; see ``fixed_weights``.
* ``channels_last``: the network's 4-D weights (convolutions) in channels-last memory format.
* ``compile``: the energy and score of MCMC chains (Langevin, HMC, AIS) by ``torch.compile`` (``chain_score``).
* ``cuda_graphs``: the Langevin step captured once per chain in a CUDA graph and replayed
  (``CudaGraph``, ``run_steps``); CUDA only.

Only ``sn_power_iteration`` changes the function computed (in training mode; see ``fixed_weights``);
the others compute the same function in another order of floating-point operations, or (CUDA
graphs) with the same kernels.  tests/test_perf.py checks each against the plain path;
tests/test_released_parity.py checks ``released`` against outputs of the released code.
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from typing import Callable

import torch
from torch import nn
from torch.nn.utils import parametrize

SN_MODES = ("per_call", "released", "per_iteration")


@dataclass(frozen=True)
class Perf:
    sn_power_iteration: str = "per_call"
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self):
        if self.sn_power_iteration not in SN_MODES:
            raise ValueError(f"unknown perf.sn_power_iteration {self.sn_power_iteration!r}; use one of {SN_MODES}")


def _parametrized(module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, tensor name) of every parametrised tensor (spectral norm) in ``module``."""
    return [(name, m, tensor) for name, m in module.named_modules() if parametrize.is_parametrized(m)
            for tensor in m.parametrizations]


def configure(ebm: nn.Module, cfg: dict | None, device: str | torch.device) -> nn.Module:
    """Apply a run's ``perf`` section to ``ebm`` (already on ``device``) and return it.  For training,
    call it before the optimizer and the EMA copy are made and before a state is loaded, so that a
    resumed run has the memory formats of an uninterrupted one (the arithmetic then matches bitwise).

    ``cuda_graphs`` off CUDA is ignored with a warning (one params.yaml serves CPU and GPU machines;
    the function computed is the same either way)."""
    perf = Perf(**(cfg or {}))
    if perf.cuda_graphs and torch.device(device).type != "cuda":
        warnings.warn(f"perf.cuda_graphs is for CUDA devices; ignored on {device}", stacklevel=2)
        perf = replace(perf, cuda_graphs=False)
    if perf.channels_last:
        ebm.to(memory_format=torch.channels_last)   # 4-D parameters only; y keeps its format
    ebm.perf = perf
    return ebm


# Spectral norm W / sigma(W), with sigma from power iteration (drl/nets/wrn.py; torch's
# spectral_norm for the MLP).  In training mode every evaluation of a weight runs a power iteration
# (u, v advance) unless ``fixed_weights`` holds the weights; the settings differ in how many
# evaluations one training iteration (a K-step Langevin chain, then the loss) makes:
# * ``per_call`` (default): one power iteration per weight evaluation, with drl's own call
#   structure: the time embedding once per chain (``time_context``), K score evaluations, pos and
#   neg batched in one loss call.  A convolution's u, v advance K + 1 times, the time-embedding
#   layers' (temb denses, each block's projection) twice, and each Langevin step sees a slightly
#   different sigma.
# * ``released``: the released code's call structure exactly: every network call recomputes the
#   time embedding, the chain makes K + 1 evaluations (the last, at y_K after the last step, only
#   advances u, v: the released sampler computes a gradient there that it never uses), and the loss
#   evaluates pos, then neg, in two calls: K + 3 power iterations for every layer.  With u, v far
#   from converged (early training; the released code starts from random u) this changes the
#   results; with converged u, v it agrees with per_call to float32 rounding.
# * ``per_iteration`` (SN-GAN's practice, Miyato et al. 2018): inside ``fixed_weights`` each weight
#   is evaluated once -- one power iteration, one W / sigma -- and that tensor serves the whole chain
#   and the loss, gradients flowing to W through it in the loss.  The chain then samples one fixed
#   energy.
# In eval mode (EMA copy, sampling) u, v are frozen and all settings compute the same weights
# (``released`` then keeps per_call's call structure); ``fixed_weights`` then only saves
# recomputing them.
@contextmanager
def fixed_weights(module: nn.Module):
    """Within: every parametrised weight of ``module`` is computed once, on entry (with gradient
    tracking, for the loss), and reused by every call (``torch.nn.utils.parametrize.cached``)."""
    with parametrize.cached():
        with torch.enable_grad():
            for _, m, tensor in _parametrized(module):
                getattr(m, tensor)
        yield


@contextmanager
def training_iteration(ebm: nn.Module):
    """Around one training iteration's forward (chain and loss): ``fixed_weights`` under
    ``sn_power_iteration: per_iteration``, nothing under ``per_call`` or ``released``."""
    if ebm.perf.sn_power_iteration == "per_iteration":
        with fixed_weights(ebm):
            yield
    else:
        yield


def weights_fixed_in_chain(ebm: nn.Module) -> bool:
    """Whether ``ebm``'s spectral-norm weights stay fixed through an MCMC chain (eval mode, or
    ``sn_power_iteration: per_iteration``); bench/flops.py counts the chains' FLOPs by it."""
    return not ebm.training or ebm.perf.sn_power_iteration == "per_iteration"


def released_call_structure(ebm: nn.Module) -> bool:
    """Whether the chain and the loss make the released code's network calls (``sn_power_iteration:
    released`` in training mode): time embedding in every call, K + 1 chain evaluations, pos and
    neg in two calls.  In eval mode u, v are frozen and ``released`` runs as ``per_call``."""
    return ebm.training and ebm.perf.sn_power_iteration == "released"


@contextmanager
def chain_weights(ebm: nn.Module):
    """Around an MCMC chain: ``fixed_weights`` where the weights cannot change within the chain (eval
    mode, or ``sn_power_iteration: per_iteration``), where it computes the weights every call would;
    nothing under ``per_call`` or ``released`` in training mode (a power iteration at every call)."""
    if weights_fixed_in_chain(ebm):
        with fixed_weights(ebm):
            yield
    else:
        yield


def _energy_sum(ebm: nn.Module, params: dict, y: torch.Tensor, t: torch.Tensor, ctx):
    f = torch.func.functional_call(ebm, params, (y, t), {"ctx": ctx})
    return f.sum(), f


@cache
def _compiled_score() -> Callable:
    """(grad_y sum_i f(y_i, t_i), (sum, f)) as one compiled forward-and-backward graph (the parameters
    are inputs that need no gradient, so the backward computes the input gradient only)."""
    return torch.compile(torch.func.grad_and_value(_energy_sum, argnums=2, has_aux=True), dynamic=False)


def _compiled_f_and_grad(ebm: nn.Module, params: dict, y: torch.Tensor, t: torch.Tensor, ctx):
    grad, (_, f) = _compiled_score()(ebm, params, y, t, ctx)
    return f, grad


@contextmanager
def _frozen_parametrizations(module: nn.Module):
    """The parametrisations in eval mode (spectral norm: W / sigma from the current u, v, no power
    iteration), their previous modes restored on exit."""
    lists = [m.parametrizations[tensor] for _, m, tensor in _parametrized(module)]
    modes = [p.training for p in lists]
    try:
        for p in lists:
            p.eval()
        yield
    finally:
        for p, mode in zip(lists, modes):
            p.train(mode)


# The energy and score (f(y, t), grad_y f(y, t)) of an MCMC chain (Langevin, HMC):
# ``ConditionalEBM.score`` (eager), or under ``perf.compile`` the same values from the compiled graph
# of ``_compiled_score``, given the parameters detached and the spectral norms frozen, i.e. the
# weights ``fixed_weights`` computes.
@contextmanager
def chain_score(ebm: nn.Module):
    """Yield score(y, t, ctx) -> (f(y, t), grad_y f(y, t)) for one chain, inside ``chain_weights``;
    f carries no autograd graph."""
    with chain_weights(ebm):
        if not ebm.perf.compile:
            def eager(y, t, ctx):
                f, grad = ebm.score(y, t, ctx=ctx)
                return f.detach(), grad

            yield eager
            return
        if not weights_fixed_in_chain(ebm) and _parametrized(ebm):
            raise ValueError("perf.compile with spectral norm needs perf.sn_power_iteration: per_iteration for "
                             "training: the compiled score takes the weights fixed through a chain, per_call "
                             "and released change them at every call")
        params = {name: p.detach() for name, p in ebm.named_parameters()}
        with _frozen_parametrizations(ebm), torch.no_grad():
            yield lambda y, t, ctx: _compiled_f_and_grad(ebm, params, y, t, ctx)


class CudaGraph:
    """One step captured in a CUDA graph (``torch.cuda.CUDAGraph``): ``warmup`` runs it on a side
    stream (as capture requires), ``capture`` records it without running it, ``replay`` runs the
    recorded kernels on the tensors the step used at capture."""

    def __init__(self):
        self.graph = torch.cuda.CUDAGraph()

    def warmup(self, step: Callable[[], None]) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            step()
        torch.cuda.current_stream().wait_stream(side)

    def capture(self, step: Callable[[], None]) -> None:
        with torch.cuda.graph(self.graph):
            step()

    def replay(self) -> None:
        self.graph.replay()


def run_steps(step: Callable[[], None], draw: Callable[[int], None], K: int, graph=None) -> None:
    """K steps, each after ``draw(k)`` (which fills the step's noise).  With a ``graph`` (CUDA graphs)
    the step must read and write only tensors that outlive the chain, in place, with no host
    synchronisation and no random draws: step 0 runs as the warm-up, step 1 is captured, and steps 1
    to K-1 replay it."""
    for k in range(K):
        draw(k)
        if graph is None:
            step()
        elif k == 0:
            graph.warmup(step)
        else:
            if k == 1:
                graph.capture(step)
            graph.replay()
