"""Training loop: resume is exact, checkpoints carry the model arguments, divergence is caught."""
import numpy as np
import pytest
import torch

from drl.data.toy2d import get_toy
from drl.sample import progressive_sample
from drl.train import DivergenceError, load_model, train
from drl.noise import from_generator


def tiny_cfg(**train_overrides):
    cfg = {
        "group": "test", "dataset": "checkerboard",
        "diffusion": {"schedule": "linear_sigma2", "T": 3, "sigma2_min": 0.02, "sigma2_max": 0.3,
                      "top_level": "conditional"},
        "energy": {"parameterisation": "plain",
                   "net": {"kind": "mlp", "dim": 2, "width": 16, "depth": 1, "temb_dim": 8,
                           "activation": "silu", "spectral_norm": False}},
        "sampler": {"K": 3, "step_size": "paper", "b": 0.5, "noise_scale": 1.0},
        "objective": {"name": "recovery_likelihood", "loss_weights": "uniform"},
        "train": {"iterations": 20, "batch_size": 32, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                  "warmup": 5, "ema": 0.9, "seed": 3, "checkpoint_every": 10, "log_every": 5,
                  "max_abs_energy": 1e6},
    }
    cfg["train"].update(train_overrides)
    return cfg


@pytest.fixture(scope="module")
def data():
    return get_toy("checkerboard").sample(2000, np.random.default_rng(0)).astype(np.float32)


def _same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Stop(Exception):
    pass


def train_until_first_checkpoint(cfg, data, out_dir, monkeypatch):
    """Run ``train`` and stop it right after it writes its first resumable state (a simulated kill)."""
    import drl.train as T

    real_save = T.torch_save

    def save_then_stop(path, obj):
        real_save(path, obj)
        if str(path).endswith("state.pt"):
            raise Stop

    with monkeypatch.context() as m:
        m.setattr(T, "torch_save", save_then_stop)
        with pytest.raises(Stop):
            train(cfg, data, out_dir, progress=False)


def test_resume_is_bitwise_identical(tmp_path, data, monkeypatch):
    """A run stopped after its checkpoint at iteration 10 and rerun ends in exactly the state of an
    uninterrupted run (same seeds; CPU)."""
    full = torch.load(train(tiny_cfg(), data, tmp_path / "full", progress=False), weights_only=True)
    train_until_first_checkpoint(tiny_cfg(), data, tmp_path / "resumed", monkeypatch)
    assert not (tmp_path / "resumed" / "model.pt").exists()
    assert torch.load(tmp_path / "resumed" / "state.pt", weights_only=True)["iteration"] == 10
    resumed = torch.load(train(tiny_cfg(), data, tmp_path / "resumed", progress=False), weights_only=True)
    _same_state(full["model"], resumed["model"])
    _same_state(full["ema"], resumed["ema"])
    assert [r["loss"] for r in full["log"]] == [r["loss"] for r in resumed["log"]]
    assert not (tmp_path / "resumed" / "state.pt").exists()


def test_resume_refuses_a_state_from_another_config(tmp_path, data, monkeypatch):
    train_until_first_checkpoint(tiny_cfg(), data, tmp_path, monkeypatch)
    with pytest.raises(RuntimeError, match="different configuration"):
        train(tiny_cfg(lr=2e-3), data, tmp_path, progress=False)


def test_checkpoint_alone_rebuilds_the_model_for_sampling(tmp_path, data):
    path = train(tiny_cfg(), data, tmp_path, progress=False)
    ebm, ckpt = load_model(path)
    assert ckpt["iteration"] == 20 and ebm.T == 3
    levels = progressive_sample(ebm, 50, (2,), K=3, randn_like=from_generator(torch.Generator().manual_seed(0)))
    assert len(levels) == 4 and all(x.shape == (50, 2) and torch.isfinite(x).all() for x in levels)
    # EMA and live weights differ, and both are stored
    assert any(not torch.equal(ckpt["ema"][k], ckpt["model"][k]) for k in ckpt["model"])
    assert (tmp_path / "train_log.csv").read_text().startswith("iteration,loss")


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_state(tmp_path, data):
    bad = data.copy()
    with pytest.raises(DivergenceError, match="sampler.b"):
        train(tiny_cfg(lr=1e3, max_abs_energy=50.0, iterations=200, checkpoint_every=1), bad, tmp_path,
              progress=False)
    assert not (tmp_path / "model.pt").exists()
    assert (tmp_path / "state.pt").exists()
    state = torch.load(tmp_path / "state.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_posterior_mean_positives_keep_the_draws_and_simple_weights_reach_the_loss(data):
    """``objective.positive: posterior_mean`` changes y_t^+ only (the same x_0, t and x_{t+1} draws), to
    E[y_t | x_{t+1}, x_0]; ``loss_weights: simple`` multiplies each example's eq. 14 by
    sigma_cum_{t+1}^2 / sigma_{t+1}^2 in the training loop's objective."""
    from drl.diffusion import posterior_mean
    from drl.model import build_model
    from drl.objectives import dsm_loss
    from drl.train import Objective, draw_batch, training_data

    cfg = tiny_cfg()
    cfg["objective"] = {"name": "dsm", "loss_weights": "simple", "positive": "posterior_mean"}
    torch.manual_seed(0)
    ebm = build_model({k: cfg[k] for k in ("diffusion", "energy", "sampler")})
    x_all = training_data(data, "cpu")
    y, xn, t = draw_batch(x_all, 64, ebm.sched, torch.Generator().manual_seed(5))
    y_pm, xn_pm, t_pm = draw_batch(x_all, 64, ebm.sched, torch.Generator().manual_seed(5), positive="posterior_mean")
    assert torch.equal(xn, xn_pm) and torch.equal(t, t_pm) and not torch.equal(y, y_pm)
    x0 = x_all[torch.randint(len(x_all), (64,), generator=torch.Generator().manual_seed(5))]
    torch.testing.assert_close(y_pm, posterior_mean(ebm.sched, x0, xn, t))
    loss, _ = Objective(ebm, cfg["objective"], cfg["sampler"])(y_pm, xn, t, torch.Generator())
    plain, _ = dsm_loss(ebm, y_pm, xn, t)
    snr = torch.as_tensor(ebm.sched.sigma_cum[1:] ** 2 / ebm.sched.sigma[1:] ** 2, dtype=plain.dtype)[t]
    torch.testing.assert_close(loss, plain * snr)
    assert not torch.allclose(loss, plain)
