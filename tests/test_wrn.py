"""drl/nets/wrn.py: the paper's Wide-ResNet energy (Table 4, released net_res_temb2)."""
from __future__ import annotations

import jsonschema
import pytest
import torch
import yaml

from drl.config import SCHEMA_PATH
from drl.nets import build_net
from drl.nets.wrn import DEFAULT_CH_MULT, ResBlock, SpectralNorm, WRNEnergy
from drl.train import build_model

SMALL = {"kind": "wrn", "resolution": 8, "in_channels": 3, "ch": 8, "ch_mult": [1, 2], "n_blocks": 1,
         "temb_dim": 16}


def small_ebm(parameterisation: str = "net_over_s2", **net):
    cfg = {"diffusion": {"schedule": "linear_sigma2", "T": 6, "sigma2_min": 0.02, "sigma2_max": 0.3,
                         "top_level": "marginal"},
           "energy": {"parameterisation": parameterisation, "net": {**SMALL, **net}},
           "sampler": {"step_size": "paper", "b": 0.1}}
    return build_model(cfg)


def perturbed(ebm, scale: float = 0.05):
    """Give the zero-initialised convs (and everything else) non-trivial values, then settle the
    spectral-norm vectors with a few training-mode calls."""
    torch.manual_seed(1)
    with torch.no_grad():
        for p in ebm.parameters():
            p.add_(scale * torch.randn_like(p))
    ebm.train()
    y, t = torch.randn(2, 3, 8, 8, dtype=ebm.net.conv_in.bias.dtype), torch.tensor([0, 5])
    for _ in range(20):
        ebm(y, t)
    return ebm.eval()


def test_forward_shape_and_build_net_dispatch():
    torch.manual_seed(0)
    ebm = small_ebm()
    assert isinstance(ebm.net, WRNEnergy)
    y, t = torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 5])
    f = ebm(y, t)
    assert f.shape == (5,) and torch.isfinite(f).all()
    dense = build_net({**SMALL, "head": "dense"})
    assert dense(y, t).shape == (5,)
    plain = build_net({**SMALL, "spectral_norm": False})
    assert plain(y, t).shape == (5,) and not any(isinstance(m, SpectralNorm) for m in plain.modules())
    assert sum(isinstance(m, SpectralNorm) for m in ebm.net.modules()) == 2 + 1 + 3 + 4   # temb, in, blocks
    with pytest.raises(ValueError, match="head"):
        build_net({**SMALL, "head": "mean"})
    with pytest.raises(ValueError, match="ch_mult"):
        WRNEnergy(48)
    with pytest.raises(ValueError, match="divisible"):
        WRNEnergy(10, ch=8, ch_mult=(1, 2, 2))


@pytest.mark.parametrize("head", ["temb", "dense"])
def test_time_context_reuse_is_identical(head):
    torch.manual_seed(0)
    ebm = perturbed(small_ebm(head=head))
    y, t = torch.randn(4, 3, 8, 8), torch.tensor([0, 2, 4, 5])
    ctx = ebm.time_context(t)
    assert len(ctx) == len(ebm.net.blocks) + (head == "temb")
    assert torch.equal(ebm(y, t, ctx), ebm(y, t))
    f, g = ebm.score(y, t, ctx=ctx)
    f2, g2 = ebm.score(y, t)
    assert torch.equal(f, f2) and torch.equal(g, g2)


@pytest.mark.parametrize("parameterisation", ["plain", "net_over_s2"])
def test_score_matches_finite_differences_float64(parameterisation):
    torch.manual_seed(0)
    ebm = perturbed(small_ebm(parameterisation).double())
    y, t = torch.randn(2, 3, 8, 8, dtype=torch.float64), torch.tensor([1, 4])
    _, grad = ebm.score(y, t)
    h = 1e-6
    gen = torch.Generator().manual_seed(0)
    for idx in torch.randint(0, y[0].numel(), (24,), generator=gen).tolist():
        e = torch.zeros_like(y).view(2, -1)
        e[:, idx] = h
        e = e.view_as(y)
        with torch.no_grad():
            fd = (ebm(y + e, t) - ebm(y - e, t)) / (2 * h)
        torch.testing.assert_close(grad.view(2, -1)[:, idx], fd, rtol=1e-6, atol=1e-8)


def test_zero_init_blocks_are_exactly_their_shortcut():
    torch.manual_seed(0)
    net = WRNEnergy(16, in_channels=3, ch=8, ch_mult=(1, 2, 2), n_blocks=2).eval()
    seen = []

    def check(block, inputs, out):   # eval mode: recomputing the shortcut reuses the same weights
        seen.append(block)
        assert torch.equal(out, block.shortcut(inputs[0]))

    def zero_branch(conv, inputs, out):
        seen.append(conv)
        assert not out.any()

    handles = [block.register_forward_hook(check) for block in net.blocks]
    for block in net.blocks:
        block.conv2.register_forward_hook(zero_branch)
    y, t = torch.randn(3, 3, 16, 16), torch.tensor([0, 1, 2])
    net(y, t)
    for handle in handles:
        handle.remove()
    net.train()(y, t)   # training mode (power iterations run): the residual branch stays 0
    assert len(seen) == 6 + 2 * 6
    assert all(not b.conv2.weight.any() and torch.equal(b.g, torch.ones_like(b.g)) for b in net.blocks)
    conv_shortcuts = [isinstance(b.shortcut, torch.nn.Conv2d) for b in net.blocks]
    assert conv_shortcuts == [False, False, True, False, False, False]


def test_spectral_norm_divides_or_only_bounds():
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3, dtype=torch.float64)
    sigma = torch.linalg.matrix_norm(w.flatten(1), ord=2)
    for scale in (0.3, 3.0):
        full = SpectralNorm(w * scale / sigma, warmup=200).double()
        bound = SpectralNorm(w * scale / sigma, bound_only=True, warmup=200).double()
        full.eval(), bound.eval()
        torch.testing.assert_close(torch.linalg.matrix_norm(full(w * scale / sigma).flatten(1), ord=2),
                                   torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(torch.linalg.matrix_norm(bound(w * scale / sigma).flatten(1), ord=2),
                                   torch.tensor(min(scale, 1.0), dtype=torch.float64))


def test_zero_weight_keeps_power_iteration_alive():
    """A zero-initialised layer has sigma 0; once training moves it, sigma must be tracked."""
    torch.manual_seed(0)
    sn = SpectralNorm(torch.zeros(5, 7), bound_only=True)
    assert torch.equal(sn(torch.zeros(5, 7)), torch.zeros(5, 7))
    assert sn._u.norm() > 0.99 and sn._v.norm() > 0.99
    w = 4 * torch.randn(5, 7)
    for _ in range(100):      # training mode: one power iteration per call
        out = sn(w)
    torch.testing.assert_close(torch.linalg.matrix_norm(out, ord=2), torch.tensor(1.0), rtol=1e-4, atol=1e-4)
    u = sn._u.clone()
    sn.eval()
    sn(w)
    assert torch.equal(sn._u, u)   # eval mode: vectors frozen


def test_parameter_counts_match_the_paper():
    """Released settings at 32x32 (ch 128, ch_mult (1,2,2,2), temb head): 9.1M / 21.9M / 34.8M."""
    expected = {2: (9.1e6, 9_056_256), 5: (21.9e6, 21_944_832), 8: (34.8e6, 34_833_408)}
    for n_blocks, (paper, exact) in expected.items():
        net = WRNEnergy(32, n_blocks=n_blocks)
        count = sum(p.numel() for p in net.parameters())
        assert abs(count - paper) / paper < 0.01, (n_blocks, count)
        assert count == exact, (n_blocks, count)
        del net


@pytest.mark.parametrize("resolution", [32, 64, 128])
def test_higher_resolutions_build_with_table4_channels(resolution):
    torch.manual_seed(0)
    net = WRNEnergy(resolution, ch=8, n_blocks=1)
    assert net.ch_mult == DEFAULT_CH_MULT[resolution]
    assert [b.conv1.out_channels for b in net.blocks] == [8 * m for m in DEFAULT_CH_MULT[resolution]]
    assert sum(net.down_after) == len(net.ch_mult) - 1 and not net.down_after[-1]
    f = net(torch.randn(1, 3, resolution, resolution), torch.tensor([3]))
    assert f.shape == (1,) and torch.isfinite(f).all()


def test_channels_last_and_bfloat16():
    torch.manual_seed(0)
    net = perturbed(small_ebm("plain")).net
    y, t = torch.randn(3, 3, 8, 8), torch.tensor([0, 3, 5])
    ref = net(y, t)
    cl = net.to(memory_format=torch.channels_last)
    torch.testing.assert_close(cl(y.to(memory_format=torch.channels_last), t), ref, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = net(y, t)
        assert net.blocks[0].conv1.weight.dtype == torch.float32   # spectral norm stays in fp32
    torch.testing.assert_close(f.float(), ref, rtol=0.05, atol=0.05 * ref.abs().max().item())
    f = net.to(torch.bfloat16)(y.to(torch.bfloat16), t)
    assert f.dtype == torch.bfloat16 and torch.isfinite(f).all()


def test_block_is_resblock_of_table4e():
    block = ResBlock(4, 8, temb_width=16, sn=True, n_iter=1)
    assert block.conv1.kernel_size == block.conv2.kernel_size == block.shortcut.kernel_size == (3, 3)
    assert block.conv2.parametrizations.weight[0].bound_only
    assert not block.conv1.parametrizations.weight[0].bound_only


def test_schema_accepts_wrn_and_keeps_kinds_apart():
    """The energy.net block of drl/schema/params.schema.yaml on its own."""
    schema = yaml.safe_load(SCHEMA_PATH.read_text())
    net_schema = schema["$defs"]["run"]["properties"]["energy"]["properties"]["net"]
    validator = jsonschema.Draft202012Validator(net_schema)

    def errors(net: dict) -> list[str]:
        return [e.message for e in validator.iter_errors(net)]

    assert errors({**SMALL, "head": "temb", "spectral_norm": True, "sn_power_iterations": 1}) == []
    assert errors({"kind": "mlp", "dim": 2, "width": 128, "depth": 3, "temb_dim": 32,
                   "activation": "silu", "spectral_norm": False}) == []
    assert any("'width' is not one of" in m for m in errors({**SMALL, "width": 64}))
    assert any("'ch' is not one of" in m for m in errors({"kind": "mlp", "dim": 2, "ch": 8}))
    assert errors({"kind": "wrn"}) == ["'resolution' is a required property"]
    assert errors({**SMALL, "ch_mult": []}) and errors({**SMALL, "head": "mean"})
