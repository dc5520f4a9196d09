"""When spectral norm's power iterations run during a training iteration: ``energy.sn_power_iteration``,
part of the model's definition (it changes the function trained, so a run cannot resume across a change).

Spectral norm is W / sigma(W), sigma from power iteration (drl/nets/wrn.py; torch's spectral_norm
for the MLP).  In training mode every evaluation of a weight runs a power iteration (u, v advance)
unless ``fixed_weights`` holds the weights.  The settings differ in how many evaluations one training
iteration (a K-step Langevin chain, then the loss) makes:

* ``per_call`` (default): one power iteration per weight evaluation, with drl's own call structure:
  the time embedding once per chain (``time_context``), K score evaluations, pos and neg batched in
  one loss call.  A convolution's u, v advance K + 1 times, the time-embedding layers' twice.
* ``released``: the released code's call structure exactly: every network call recomputes the time
  embedding, the chain makes K + 1 evaluations (the last, at y_K, only advances u, v: the released
  sampler computes a gradient there that it never uses), and the loss evaluates pos, then neg, in two
  calls: K + 3 power iterations for every layer.  With u, v far from converged (early training; the
  released code starts from random u) this changes the results; with converged u, v it agrees with
  per_call to float32 rounding.
* ``per_iteration`` (SN-GAN's practice, Miyato et al. 2018): inside ``fixed_weights`` each weight is
  evaluated once -- one power iteration, one W / sigma -- and that tensor serves the whole chain and
  the loss, gradients flowing to W through it in the loss.  The chain then samples one fixed energy.

In eval mode (EMA copy, sampling) u, v are frozen and all settings compute the same weights
(``released`` then keeps per_call's call structure); ``fixed_weights`` then only saves recomputing them.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize

SN_MODES = ("per_call", "released", "per_iteration")


def check_mode(mode: str) -> str:
    if mode not in SN_MODES:
        raise ValueError(f"unknown energy.sn_power_iteration {mode!r}; use one of {SN_MODES}")
    return mode


def parametrized(module: nn.Module) -> list[tuple[str, nn.Module, str]]:
    """(module name, module, tensor name) of every parametrised tensor (spectral norm) in ``module``."""
    return [(name, m, tensor) for name, m in module.named_modules() if parametrize.is_parametrized(m)
            for tensor in m.parametrizations]


def _mode(ebm: nn.Module) -> str:
    return getattr(ebm, "sn_power_iteration", "per_call")


@contextmanager
def fixed_weights(module: nn.Module):
    """Within: every parametrised weight of ``module`` is computed once, on entry (with gradient
    tracking, for the loss), and reused by every call (``torch.nn.utils.parametrize.cached``)."""
    with parametrize.cached():
        with torch.enable_grad():
            for _, m, tensor in parametrized(module):
                getattr(m, tensor)
        yield


@contextmanager
def training_iteration(ebm: nn.Module):
    """Around one training iteration's forward (chain and loss): ``fixed_weights`` under
    ``per_iteration``, nothing under ``per_call`` or ``released``."""
    if _mode(ebm) == "per_iteration":
        with fixed_weights(ebm):
            yield
    else:
        yield


def weights_fixed_in_chain(ebm: nn.Module) -> bool:
    """Whether ``ebm``'s spectral-norm weights stay fixed through an MCMC chain (eval mode, or ``per_iteration``)."""
    return not ebm.training or _mode(ebm) == "per_iteration"


def released_call_structure(ebm: nn.Module) -> bool:
    """Whether the chain and the loss make the released code's network calls (``released`` in
    training mode): time embedding in every call, K + 1 chain evaluations, pos and neg in two calls."""
    return ebm.training and _mode(ebm) == "released"


@contextmanager
def chain_weights(ebm: nn.Module):
    """Around an MCMC chain: ``fixed_weights`` where the weights cannot change within the chain,
    where it computes the weights every call would; nothing otherwise (a power iteration per call)."""
    if weights_fixed_in_chain(ebm):
        with fixed_weights(ebm):
            yield
    else:
        yield
