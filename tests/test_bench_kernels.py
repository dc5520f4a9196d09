"""bench/kernels.py: the split of a training iteration into FLOP kernels and the rest.  No timing is
asserted; the window (the last iteration), the kernel selection and the identity MFU = kernel MFU x
share are."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.kernels import breakdown  # noqa: E402
from bench.run import main  # noqa: E402


def _iterations(calls: list[int]) -> list:
    """A profile of len(calls) 'iterations': calls[i] linear layers (addmm, whose own children are
    copies and views), a SiLU after each, then an optimizer step."""
    layer = torch.nn.Linear(64, 64)
    opt = torch.optim.SGD(layer.parameters(), lr=0.0)
    x = torch.randn(32, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for n in calls:
            h = x
            for _ in range(n):
                h = torch.nn.functional.silu(layer(h))
            h.sum().backward()
            opt.step()
    return prof.events()


def test_breakdown_takes_the_last_iteration_and_each_kernel_once():
    r = breakdown(_iterations([3, 5]), top=1000)   # every other op, not the 6 slowest: no timing decides it
    # the last iteration: 5 forward addmm, and in the backward 5 input-gradient mm (4 reach an earlier
    # layer's output; the first layer's input needs none) and 5 weight-gradient mm; none from the first
    assert r["kernel_calls"] == 5 + 4 + 5
    assert 0 < r["kernel_seconds"] < r["iteration_seconds"]
    others = {o["op"] for o in r["others"]}
    assert "aten::silu" in others and not others & {"aten::mm", "aten::addmm"}


def test_breakdown_needs_two_optimizer_steps():
    with pytest.raises(ValueError, match="fewer than two optimizer steps"):
        breakdown(_iterations([2]))


def test_quick_kernels_run():
    toy = main(["--kernels", "--quick", "--workloads", "toy_mlp", "--variants", "as_given"])["toy_mlp"]
    assert toy["flops"] > 0 and toy["kernel_calls"] > 0
    assert 0 < toy["share"] <= 1 and toy["kernel_mfu"] >= toy["mfu"]
    assert toy["mfu"] == pytest.approx(toy["kernel_mfu"] * toy["share"])


def test_unknown_variant_is_named():
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["--kernels", "--quick", "--workloads", "toy_mlp", "--variants", "fastest"])
