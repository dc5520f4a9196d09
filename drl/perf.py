"""Speed switches of a run (the ``perf`` section of params.yaml) and ``train.precision``, applied
around the plain maths from outside: the model holds none of them.

* ``channels_last``: the network's 4-D weights (convolutions) in channels-last memory format
  (``configure``, once, on the model's tensors).
* ``compile``: the energy and score of MCMC chains (Langevin, HMC, AIS) by ``torch.compile``; eager,
  with a warning, where torch.compile does not work (no C++ compiler: ``compiler_unavailable``).
* ``cuda_graphs``: the chain's score captured in a CUDA graph and replayed (``GraphedScore``); CUDA only.
* precision ``bf16`` (``train.precision``): the model under bf16 autocast (``execution``); the
  network's output is cast back to y's dtype (``ConditionalEBM.forward``), so everything outside
  the backbone stays fp32.

A stage enters ``execution(perf, precision, device)`` around its work; the samplers ask
``chain_score(ebm)`` for their score function, which is the eager ``ConditionalEBM.score`` unless the
surrounding execution says otherwise.  All compute the same function in another order of
floating-point operations (bf16: in another precision); tests/test_perf.py checks each against the
plain path.  The spectral-norm schedule, which changes the function, is not here: it is part of the
model (``energy.sn_power_iteration``, drl/power_iteration.py).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, replace
from functools import cache
from typing import Callable

import torch
from torch import nn

from drl.power_iteration import chain_weights, parametrized, weights_fixed_in_chain


@dataclass(frozen=True)
class Perf:
    channels_last: bool = False
    compile: bool = False
    cuda_graphs: bool = False


PLAIN = Perf()
_CURRENT: ContextVar[Perf] = ContextVar("drl_perf", default=PLAIN)


def configure(ebm: nn.Module, cfg: dict | None, device: str | torch.device) -> Perf:
    """A run's ``perf`` section as a ``Perf``, with ``channels_last`` applied to ``ebm`` (already on
    ``device``).  For training, call it before the optimizer and the EMA copy are made and before a
    state is loaded, so that a resumed run has the memory formats of an uninterrupted one.
    ``cuda_graphs`` off CUDA is ignored with a warning (one params.yaml serves CPU and GPU machines)."""
    cfg = dict(cfg or {})
    if "sn_power_iteration" in cfg:
        raise ValueError("perf.sn_power_iteration is now energy.sn_power_iteration: it changes the function "
                         "trained, so it belongs to the model's definition; move it there")
    perf = Perf(**cfg)
    if perf.cuda_graphs and torch.device(device).type != "cuda":
        warnings.warn(f"perf.cuda_graphs is for CUDA devices; ignored on {device}", stacklevel=2)
        perf = replace(perf, cuda_graphs=False)
    if perf.channels_last:
        ebm.to(memory_format=torch.channels_last)   # 4-D parameters only; y keeps its format
    return perf


@contextmanager
def execution(perf: Perf = PLAIN, precision: str = "fp32", device: str | torch.device = "cpu"):
    """Within: chains use ``perf``'s score (``chain_score``) and the model runs under bf16 autocast
    when ``precision`` is "bf16" (no cast cache: CUDA graph capture requires it off)."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"unknown precision {precision!r}; use 'fp32' or 'bf16'")
    token = _CURRENT.set(perf)
    try:
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=precision == "bf16",
                            cache_enabled=False):
            yield
    finally:
        _CURRENT.reset(token)


def current() -> Perf:
    return _CURRENT.get()


def _energy_sum(ebm: nn.Module, params: dict, y: torch.Tensor, t: torch.Tensor, ctx):
    f = torch.func.functional_call(ebm, params, (y, t), {"ctx": ctx})
    return f.sum(), f


@cache
def _compiled_score() -> Callable:
    """(grad_y sum_i f(y_i, t_i), (sum, f)) as one compiled forward-and-backward graph (the parameters
    are inputs that need no gradient, so the backward computes the input gradient only)."""
    return torch.compile(torch.func.grad_and_value(_energy_sum, argnums=2, has_aux=True), dynamic=False)


@cache
def compiler_unavailable() -> str | None:
    """None when ``torch.compile`` works on this machine, else why not, with a warning (once).  On a CPU
    inductor needs a working C++ compiler, which a user's machine may lack: ``compile`` is the same
    function in another summation order, so its chains then run eager rather than fail."""
    try:
        torch.compile(lambda x: torch.sin(x) * 2, dynamic=False)(torch.zeros(2))
    except torch._dynamo.exc.BackendCompilerFailed as e:
        reason = str(e).strip().splitlines()[0]
        warnings.warn(f"perf.compile: torch.compile does not work here ({reason}); chains run eager, the same "
                      "function (install a C++ compiler, e.g. g++, to compile, or set perf.compile: false)",
                      stacklevel=2)
        return reason
    return None


@contextmanager
def _frozen_parametrizations(module: nn.Module):
    """The parametrisations in eval mode (spectral norm: W / sigma from the current u, v, no power
    iteration), their previous modes restored on exit."""
    lists = [m.parametrizations[tensor] for _, m, tensor in parametrized(module)]
    modes = [p.training for p in lists]
    try:
        for p in lists:
            p.eval()
        yield
    finally:
        for p, mode in zip(lists, modes):
            p.train(mode)


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


class GraphedScore:
    """A chain's score(y, t, ctx) on a CUDA graph: the first call runs as the warm-up, the second is
    captured and every call from then on replays it, y copied into the captured input.  t and ctx are
    the chain's (fixed for a chain); the graph is made anew for every chain."""

    def __init__(self, score: Callable):
        self.score, self.graph, self.captured, self.y = score, CudaGraph(), False, None

    def _step(self) -> None:
        self.out = self.score(self.y, self.t, self.ctx)

    def __call__(self, y: torch.Tensor, t: torch.Tensor, ctx):
        if self.y is None:
            self.y, self.t, self.ctx = y.clone(), t, ctx
            self.graph.warmup(self._step)
            return self.out
        if t is not self.t or ctx is not self.ctx:
            raise ValueError("a graphed chain score was called with another t or time context")
        self.y.copy_(y)
        if not self.captured:
            self.graph.capture(self._step)
            self.captured = True
        self.graph.replay()
        return tuple(o.clone() for o in self.out)


# The energy and score (f(y, t), grad_y f(y, t)) of an MCMC chain (Langevin, HMC, AIS):
# ``ConditionalEBM.score`` (eager), or under ``compile`` the same values from the compiled graph of
# ``_compiled_score``, given the parameters detached and the spectral norms frozen, i.e. the weights
# ``chain_weights`` computes; under ``cuda_graphs`` either one replayed from a CUDA graph.
@contextmanager
def chain_score(ebm: nn.Module):
    """Yield score(y, t, ctx) -> (f(y, t), grad_y f(y, t)) for one chain, inside ``chain_weights``;
    f carries no autograd graph."""
    perf = current()
    with chain_weights(ebm):
        if perf.compile and compiler_unavailable() is None:
            if not weights_fixed_in_chain(ebm) and parametrized(ebm):
                raise ValueError("perf.compile with spectral norm needs energy.sn_power_iteration: per_iteration for "
                                 "training: the compiled score takes the weights fixed through a chain, per_call "
                                 "and released change them at every call")
            params = {name: p.detach() for name, p in ebm.named_parameters()}

            def score(y, t, ctx):
                grad, (_, f) = _compiled_score()(ebm, params, y, t, ctx)
                return f, grad

            with _frozen_parametrizations(ebm), torch.no_grad():
                yield GraphedScore(score) if perf.cuda_graphs else score
            return

        def score(y, t, ctx):
            f, grad = ebm.score(y, t, ctx=ctx)
            return f.detach(), grad

        yield GraphedScore(score) if perf.cuda_graphs else score
