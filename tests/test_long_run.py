"""The long-run stage of Section 4.2 (drl/evaluate/long_run.py) against oracle EBMs, and the
Gaussian base energy that keeps small T1k models' chains stable (drl/energy.py)."""
import math

import numpy as np
import torch
from torch import nn

from drl.diffusion import linear_sigma2_schedule, make_schedule
from drl.energy import ConditionalEBM
from drl.evaluate.long_run import combine, long_run_chains
from drl.nets.mlp import MLPEnergy
from drl.sample import progressive_sample
from drl.noise import from_generator
from oracles import GaussianMixtureData, OffsetNet, OracleNet

OFFSETS = np.linspace(-2.0, 3.0, 10)


class Flat(nn.Module):
    """An oracle on flattened images: the stage works on (C, H, W) examples."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, y, t):
        return self.inner(y.flatten(1), t)


def test_gaussian_base_energy_is_the_unit_gaussian_level_density_and_keeps_t1k_chains_stable():
    """With a zero net, base "gaussian" gives f(y, t) = -|y|^2 / (2 s_t^2) exactly; on N(0, I) data
    it is then the exact energy of every level, so 1000 normal-approximation steps (DDPM schedule)
    keep x ~ N(0, I) (per-step error O(sigma^4)), while without it x_t = (x_{t+1} + sigma eps) / a
    and the variance recursion v_t = (v_{t+1} + sigma_{t+1}^2) / a_{t+1}^2 takes x_0's sd to ~220."""
    sched = make_schedule({"schedule": "ddpm_linear_beta", "T": 1000, "top_level": "conditional"})
    net = MLPEnergy(dim=16, width=8, depth=1, temb_dim=8, in_shape=[1, 4, 4], zero_head=True)
    ebm = {b: ConditionalEBM(net, sched, "paper", 1.0, "net_over_s2", base=b) for b in ("gaussian", "none")}
    y, t = torch.randn(5, 1, 4, 4), torch.tensor([0, 1, 500, 998, 999])
    s = torch.as_tensor(sched.y_scale, dtype=torch.float32)[t]
    torch.testing.assert_close(ebm["gaussian"](y, t), -0.5 * (y.flatten(1) ** 2).sum(1) / s**2)
    torch.testing.assert_close(ebm["none"](y, t), torch.zeros(5))
    sd = {b: progressive_sample(e, 2000, (1, 4, 4), 0, randn_like=from_generator(torch.Generator().manual_seed(0)),
                                keep_levels=False)[-1].std().item() for b, e in ebm.items()}
    assert abs(sd["gaussian"] - 1) < 0.03, sd
    v = 1.0
    for t in reversed(range(sched.T)):
        v = (v + sched.sigma[t + 1] ** 2) / sched.y_scale[t] ** 2
    expected = math.sqrt(v)
    assert abs(sd["none"] / expected - 1) < 0.05, (sd, expected)


def test_long_run_stage_on_an_oracle_gives_data_statistics_and_the_known_partition_function():
    """long_run_chains on the exact EBM of Gaussian 2x2 'images' (T = 10 levels up to sigma^2 = 0.9,
    so x_T is nearly N(0, I); levels offset so that log Z_0 is known): step sizes adapted into the
    band; with 20 steps per level (1 + 19 HMC) x_0 (uint8) has the data's mean and the log Z_0
    estimate is within 4 standard errors of the closed form, while the normal approximation alone
    (1 step per level, large sigma) is far off."""
    data = GaussianMixtureData([[0.3, -0.2, 0.1, 0.0]], [0.3])
    sched = linear_sigma2_schedule(10, 0.05, 0.9)
    ebm = ConditionalEBM(Flat(OffsetNet(OracleNet(data, sched), OFFSETS)), sched, "paper", 1.0, "plain")
    cfg = {"n": 3000, "batch_size": 1000, "steps_per_level": [1, 20], "seed": 0, "jitter": 0.2,
           "adapt": {"n_chains": 200, "n_steps": 10}}
    out = long_run_chains(ebm, cfg, (1, 2, 2), progress=False)
    assert ((out["adapt_acceptance"] >= 0.6) & (out["adapt_acceptance"] <= 0.9)).all()
    assert list(out["steps_per_level"]) == [1, 20] and out["step_size"].shape == (10,)
    assert np.isnan(out["acceptance_1"]).all() and ((out["acceptance_20"] > 0.5) & (out["acceptance_20"] < 0.95)).all()
    assert out["samples_1"].shape == out["samples_20"].shape == (3000, 2, 2, 1)
    assert out["log_w_1"].shape == out["log_w_20"].shape == (3000, 10)
    x0 = out["samples_20"].astype(np.float64) / 127.5 - 1  # uint8 NHWC -> model space
    np.testing.assert_allclose(x0.reshape(3000, 4).mean(0), data.means[0], atol=0.03)
    log_z0 = 0.5 * 4 * math.log(2 * math.pi) + OFFSETS[0]
    est = {k: combine(out, k) for k in (1, 20)}
    assert abs(est[20]["log_z0"] - log_z0) < 4 * est[20]["se"] + 0.01, (est[20]["log_z0"], log_z0, est[20]["se"])
    assert abs(est[1]["log_z0"] - log_z0) > 0.5
