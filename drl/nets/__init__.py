"""Backbones net(y, t) -> one scalar per example.  ``build_net`` makes one from its stored arguments."""
from __future__ import annotations

from torch import nn

from drl.nets.mlp import MLPEnergy
from drl.nets.wrn import WRNEnergy

NETS = {"mlp": MLPEnergy, "wrn": WRNEnergy}


def build_net(args: dict) -> nn.Module:
    kind = args["kind"]
    if kind not in NETS:
        raise ValueError(f"unknown energy.net.kind {kind!r}; available: {', '.join(NETS)}")
    return NETS[kind](**{k: v for k, v in args.items() if k != "kind"})
