"""Backbones net(y, t) -> one scalar per example.  ``build_net`` makes one from its stored arguments."""
from __future__ import annotations

from torch import nn

from drl.nets.mlp import MLPEnergy


def build_net(args: dict) -> nn.Module:
    kind = args["kind"]
    if kind == "mlp":
        return MLPEnergy(**{k: v for k, v in args.items() if k != "kind"})
    raise ValueError(f"unknown energy.net.kind {kind!r}; available: mlp")
