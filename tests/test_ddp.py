"""Multi-process training (DistributedDataParallel under torchrun, gloo on CPU) and bf16 autocast.

One torchrun launch of this file (``_worker``, 2 processes) makes every multi-process result the
tests below check: a ``drl train`` run through the CLI, a stopped-and-resumed run of the same
configuration, and runs on a fixed global batch with a deterministic chain to compare with one
process.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from drl import distributed
from drl import train as T
from drl.cli import main
from drl.config import load_params, run_config
from drl.diffusion import make_schedule
from drl.mcmc import langevin
from drl.perf import execution
from drl.train import build_model, draw_batch, train
from drl.noise import from_generator
from test_train import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
RUN = "toy_checkerboard_drl"  # a run of the repository's params.yaml, given tiny settings
EQ_ITERS = 3


def _equivalence_cfg(objective: str) -> dict:
    """Deterministic given the batch: no Langevin noise (noise_scale 0); Adam's eps near the
    gradient's size, so the update depends on the gradient's scale, not only on its sign."""
    cfg = tiny_cfg(iterations=EQ_ITERS, lr=1e-2, eps=1e-2, log_every=1)
    cfg["sampler"]["noise_scale"] = 0.0
    cfg["objective"]["name"] = objective
    cfg["energy"]["net"]["spectral_norm"] = objective == "recovery_likelihood"
    return cfg


def _fixed_batches(cfg: dict, data: np.ndarray) -> list:
    """The global batches of every iteration, the same in every process."""
    g = torch.Generator().manual_seed(123)
    sched = make_schedule(cfg["diffusion"])
    x = torch.as_tensor(data)
    return [draw_batch(x, cfg["train"]["batch_size"], sched, g) for _ in range(EQ_ITERS)]


def _serve(batches: list):
    """A ``draw_batch`` handing each rank its slice of the fixed global batch."""
    it = iter(batches)

    def draw(x_all, n, sched, gen, hflip=False, positive="sample"):
        rank = dist.get_rank() if dist.is_initialized() else 0
        return tuple(v[rank * n:(rank + 1) * n] for v in next(it))

    return draw


class Stop(Exception):
    pass


def _stop_at_first_checkpoint(cfg, data, out_dir):
    """``train`` killed right after its first state.pt, on every rank at the same point."""
    real_save, real_gather = T.torch_save, distributed.gather

    def save_then_stop(path, obj):
        real_save(path, obj)
        if Path(path).name == "state.pt":
            raise Stop

    def gather_then_stop(obj, w):
        out = real_gather(obj, w)
        if not w.main:
            raise Stop
        return out

    T.torch_save, distributed.gather = save_then_stop, gather_then_stop
    try:
        train(cfg, data, out_dir, progress=False)
        raise AssertionError("the run was not stopped")
    except Stop:
        pass
    finally:
        T.torch_save, distributed.gather = real_save, real_gather
    dist.barrier()


def _worker(out: Path) -> None:
    os.chdir(out / "project")
    # 1. `drl train` through the CLI, which joins and leaves the process group itself
    assert main(["train", "--run", RUN, "--device", "cpu"]) == 0
    cfg = run_config(load_params(), RUN)
    data = np.load(f"data/prepared/{cfg['dataset']}/train.npy")
    # the other runs share one process group, so that a stopped run's ranks carry on together (a
    # store of its own: a second group on torchrun's store can meet the first one's stale keys)
    dist.init_process_group("gloo", init_method=f"file://{out / 'store'}", rank=int(os.environ["RANK"]),
                            world_size=int(os.environ["WORLD_SIZE"]))
    # 2. the same run stopped after its first checkpoint, then rerun
    _stop_at_first_checkpoint(cfg, data, out / "resumed")
    assert not (out / "resumed" / "model.pt").exists()
    assert torch.load(out / "resumed" / "state.pt", weights_only=True)["iteration"] == 10
    train(cfg, data, out / "resumed", progress=False)
    # 3. fixed global batches, deterministic chains
    for objective in ("recovery_likelihood", "dsm"):
        eq_cfg = _equivalence_cfg(objective)
        T.draw_batch = _serve(_fixed_batches(eq_cfg, data))
        train(eq_cfg, data, out / objective, progress=False)
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def data():
    from drl.data.toy2d import get_toy

    return get_toy("checkerboard").sample(2000, np.random.default_rng(0)).astype(np.float32)


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory, data):
    """Output of one 2-process torchrun launch of ``_worker``."""
    out = tmp_path_factory.mktemp("ddp")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runs"][RUN].update({k: v for k, v in tiny_cfg().items() if k not in ("group", "dataset")})
    (out / "project").mkdir()
    (out / "project" / "params.yaml").write_text(yaml.safe_dump(params))
    prepared = out / "project" / "data" / "prepared" / params["runs"][RUN]["dataset"]
    prepared.mkdir(parents=True)
    np.save(prepared / "train.npy", data)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             __file__, str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both workers
        log, _ = proc.communicate()
    assert proc.returncode == 0, log[-8000:]
    return out


def _close(a: dict, b: dict, atol: float) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.mark.parametrize("objective", ["recovery_likelihood", "dsm"])
def test_two_processes_match_one_on_the_same_global_batch(ddp_out, data, tmp_path, monkeypatch, objective):
    """Each rank takes half of each fixed global batch (spectral-norm MLP under recovery
    likelihood, K = 3 Langevin steps; plain MLP under DSM's double backward).  Parameters, EMA and
    spectral-norm vectors after 3 Adam steps, and the logged global-mean loss, match one process on
    the whole batch to 1e-6 (float32 summation order; no synchronisation would differ by ~1e-3)."""
    cfg = _equivalence_cfg(objective)
    monkeypatch.setattr(T, "draw_batch", _serve(_fixed_batches(cfg, data)))
    single = torch.load(train(cfg, data, tmp_path, progress=False), weights_only=True)
    ddp = torch.load(ddp_out / objective / "model.pt", weights_only=True)
    _close(ddp["model"], single["model"], atol=1e-6)
    _close(ddp["ema"], single["ema"], atol=1e-6)
    torch.manual_seed(cfg["train"]["seed"])
    init = build_model(single["model_cfg"]).state_dict()
    assert max((single["model"][k] - init[k]).abs().max() for k in init) > 1e-3  # the steps moved the weights
    for r, s in zip(ddp["log"], single["log"]):
        for key in ("loss", "f_pos", "f_neg"):
            assert r[key] == pytest.approx(s[key], rel=1e-5, abs=1e-6), key


def test_torchrun_cli_writes_one_model_and_a_stopped_run_resumes_bitwise(ddp_out):
    group = yaml.safe_load((ddp_out / "project" / "params.yaml").read_text())["runs"][RUN]["group"]
    run_dir = ddp_out / "project" / "results" / group / "runs" / RUN
    # (and drl train's lock file, .lock)
    assert sorted(p.name for p in run_dir.iterdir() if p.name != ".lock") == ["config.json", "model.pt", "train_log.csv"]
    full = torch.load(run_dir / "model.pt", weights_only=True)
    resumed = torch.load(ddp_out / "resumed" / "model.pt", weights_only=True)
    assert full["iteration"] == 20 and len(full["log"]) == 4
    for key in ("model", "ema"):
        assert all(torch.equal(full[key][k], resumed[key][k]) for k in full[key]), key
    assert [r["loss"] for r in full["log"]] == [r["loss"] for r in resumed["log"]]
    assert not (ddp_out / "resumed" / "state.pt").exists()


def test_a_batch_that_does_not_split_over_the_processes_fails_before_any_work(tmp_path, monkeypatch, capsys):
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "3")  # 256 examples over 3 processes; no data prepared
    assert main(["train", "--run", RUN]) == 2
    err = capsys.readouterr().err
    assert f"runs.{RUN}.train.batch_size" in err and "world size of 3" in err
    assert not (tmp_path / "results").exists()


# -- bf16 autocast -------------------------------------------------------------------------------

def test_bf16_keeps_y_and_the_energy_in_float32_and_close_to_fp32():
    """The backbone runs in bf16 (8-bit mantissa): f and grad_y f agree with fp32 to 2e-2 relative
    (measured: 5e-3); y, f and the score stay float32 through a K = 5 Langevin chain."""
    cfg = tiny_cfg()
    torch.manual_seed(0)
    ebm = build_model({k: cfg[k] for k in T.MODEL_KEYS})
    g = torch.Generator().manual_seed(0)
    y, t = torch.randn(256, 2, generator=g), torch.randint(ebm.T, (256,), generator=g)
    f32, s32 = ebm.score(y, t)
    with execution(precision="bf16"):
        f16, s16 = ebm.score(y, t)
    assert f16.dtype == s16.dtype == torch.float32
    assert (f16 - f32).abs().max() < 0.02 * f32.abs().max()
    assert (s16 - s32).norm() < 0.02 * s32.norm()
    seen = []
    real_score = ebm.score
    ebm.score = lambda y, t, **kw: seen.append(y.dtype) or real_score(y, t, **kw)
    with execution(precision="bf16"):
        y_neg = langevin(ebm, y, t, 5, randn_like=from_generator(g))
    assert y_neg.dtype == torch.float32 and seen == [torch.float32] * 5 and torch.isfinite(y_neg).all()


def test_bf16_training_is_finite_and_close_to_fp32(tmp_path, data):
    """10 Adam steps (lr 1e-3): bf16 weights stay float32 and within 2e-3 of the fp32 run's
    (measured: 5e-4; each step moves a weight by up to ~lr, so 10 steps of opposite sign would
    differ by 2e-2), and the logged mean energies (~0.25) agree to 5e-3 (measured: 4e-4)."""
    fp32 = torch.load(train(tiny_cfg(iterations=10), data, tmp_path / "fp32", progress=False), weights_only=True)
    bf16 = torch.load(train(tiny_cfg(iterations=10, precision="bf16"), data, tmp_path / "bf16", progress=False),
                      weights_only=True)
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in bf16["model"].values())
    _close(bf16["model"], fp32["model"], atol=2e-3)
    for r, s in zip(bf16["log"], fp32["log"]):
        assert np.isfinite(r["loss"])
        for key in ("f_pos", "f_neg"):
            assert r[key] == pytest.approx(s[key], abs=5e-3), key


if __name__ == "__main__":  # under torchrun, from the ddp_out fixture
    _worker(Path(sys.argv[1]))
