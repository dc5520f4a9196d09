"""bench/: FlopCounterMode's count behind MFU (through score calls, extended in K), the perf variants, a --quick
run's MFU and RESULTS.md row, the GPU check's CPU smoke mode (bench/gpu_check.sh) with its time limit and
pre-flight, and DDP weak scaling's failure paths.  No timing assertions: the numbers depend on the machine."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import check, ddp  # noqa: E402
from bench import workloads as W  # noqa: E402
from bench.run import MARKER, main, selected  # noqa: E402
from drl.train import build_model, train  # noqa: E402

TRAIN = {"iterations": 1, "batch_size": 3, "lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "warmup": 1,
         "ema": 0.9, "seed": 0, "checkpoint_every": 1, "log_every": 1, "max_abs_energy": 1e9}
WRN = {"kind": "wrn", "resolution": 8, "in_channels": 1, "ch": 4, "ch_mult": [1, 2], "n_blocks": 2, "temb_dim": 8,
       "head": "temb", "spectral_norm": True}


def cfg_of(net: dict, K: int) -> dict:
    return {"group": "t", "dataset": "d",
            "diffusion": {"schedule": "linear_sigma2", "T": 3, "sigma2_min": 0.02, "sigma2_max": 0.3, "top_level": "marginal"},
            "energy": {"parameterisation": "net_over_s2", "net": net},
            "sampler": {"K": K, "step_size": "paper", "b": 0.1, "noise_scale": 1.0},
            "objective": {"name": "recovery_likelihood", "loss_weights": "released"},
            "train": dict(TRAIN), "sample": {"n": 4, "K": K, "noise_scale": 1.0, "seed": 1}}


def test_count_sees_through_score_calls():
    """A module's output differentiated for a fresh leaf by torch.autograd.grad, as every score call does
    (FlopCounterMode's own module tracker fails there): forward and input gradient, 2 n k m FLOPs each."""
    x, layer = torch.randn(5, 7, requires_grad=True), torch.nn.Linear(7, 3, bias=False)
    assert W.count(lambda: torch.autograd.grad(layer(x).sum(), x)) == 2 * (2 * 5 * 7 * 3)


def test_train_flops_extension_in_K_is_exact():
    """Counting at K = 1 and 2 and extending linearly gives the count of the K = 3 iteration itself."""
    cfg = cfg_of(WRN, 3)
    data = W.synthetic_data(cfg, 16)
    with tempfile.TemporaryDirectory() as d:
        whole = W.count(train, cfg, data, d, progress=False) - W.count(build_model, cfg)
    assert W.count_train_flops(cfg, data, "cpu") == whole > 0


def test_flops_are_counted_eager_whatever_the_speed_switches():
    """compile (and CUDA graphs) are off while FlopCounterMode counts, which sees into neither."""
    cfg = cfg_of(WRN, 1)
    cfg["energy"]["sn_power_iteration"] = "per_iteration"   # compile with spectral norm needs it
    data = W.synthetic_data(cfg, 16)
    assert W.count_train_flops(W.apply(cfg, {"perf": {"compile": True}}), data, "cpu") == W.count_train_flops(cfg, data, "cpu")


def test_variants_are_those_that_change_the_settings():
    plain_run, cl_run = cfg_of(WRN, 1), W.apply(cfg_of(WRN, 1), {"perf": {"channels_last": True}})
    assert list(W.variants("cpu", plain_run)) == ["as_given", "optimised"]   # plain = the run as given
    assert list(W.variants("cpu", cl_run)) == ["as_given", "plain", "optimised"]
    cuda = W.variants("cuda", cl_run)
    assert cuda["optimised"]["perf"]["cuda_graphs"] and not cuda["no_graphs"]["perf"]["cuda_graphs"]
    assert not W.variants("cpu")["optimised"]["perf"]["cuda_graphs"]
    assert W.settings(W.apply(plain_run, cuda["optimised"]), cuda=False)["cuda_graphs"] is False


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    results = tmp_path_factory.mktemp("bench") / "RESULTS.md"
    shutil.copy(ROOT / "bench" / "RESULTS.md", results)
    argv = ["--quick", "--workloads", "toy_mlp,fid_classifier", "--variants", "as_given", "--results", str(results)]
    first = main(argv)
    main(argv + ["--no-record"])
    return results, first


def test_quick_run_mfu_against_the_best_ceiling_seen(quick_run):
    _, res = quick_run
    c, toy = res["ceiling"], res["workloads"]["toy_mlp"]["measured"]
    assert res["mode"] == "quick" and c["best"] >= max(c["start"], c["end"]) > 0
    assert set(toy) == {"train", "sample", "ais"}
    for r in toy.values():
        assert r["flops"] > 0 and r["seconds"] > 0 and r["mfu"] == pytest.approx(r["flops_per_s"] / c["best"])
        assert r["mfu_local"] >= r["mfu"]   # over a probe no better than the best
    assert toy["train"]["images_per_s"] == pytest.approx(toy["train"]["B"] / toy["train"]["seconds"])
    assert toy["sample"]["images_per_s"] is None   # --quick runs K = 2 of the run's 30 steps: no rate to project
    assert res["workloads"]["fid_classifier"]["measured"]["features"]["mfu"] > 0


def test_quick_run_appends_one_row_below_the_cpu_table(quick_run):
    results, _ = quick_run
    before = (ROOT / "bench" / "RESULTS.md").read_text().splitlines()
    after = results.read_text().splitlines()
    assert len(after) == len(before) + 1   # the --no-record run added none
    i = next(i for i, (a, b) in enumerate(zip(after, before + [""])) if a != b)
    header, row = after[after.index(MARKER) + 2], after[i]
    assert after[i - 1].startswith("| ") and not after[i + 1].startswith("|")   # the table's last row
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == len(header.strip("|").split("|"))
    assert cells[2].startswith("quick, as_given (") and cells[5] == "— · — · —"   # no CIFAR workloads in this run


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    # the budget only decides which steps are skipped (about 45 s of work here): generous, so that a loaded
    # machine (CI runs the SLURM test beside this one) still runs every step
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--smoke", "--variants", "as_given",
                           "--budget-s", "600"], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["scale"] == "smoke" and not res["errors"] and not res["skipped"]
    chk = res["steps"]["correctness"]
    assert set(chk) == {"fp32-strict", "fp32", "bf16"} and all(m["ok"] for m in chk.values())
    assert set(res["summary"]) == {"train_bf16", "train_fp32", "sample_bf16", "sample_fp32", "fid_inception"}
    train_bf16 = res["summary"]["train_bf16"]
    assert train_bf16["paper_run_hours"] == pytest.approx(50_000 * train_bf16["seconds"] / 3600)
    assert (out / "summary.md").read_text() in proc.stdout   # the table is printed last
    assert proc.stdout.rstrip().endswith("FID-50k sampling <= 10 min.")
    assert (out / "row.md").read_text().startswith("| ") and (out / "log.txt").exists()
    d = res["steps"]["ddp_scaling"]   # the DDP step: the toy MLP on 1 and 2 CPU processes
    assert d["measurable"] and [r["procs"] for r in d["results"]] == [1, 2] and "DDP weak scaling: toy_mlp" in proc.stdout
    one, two = d["results"]
    assert two["global_batch"] == 2 * one["global_batch"] == 2 * d["per_process_batch"]
    assert one["efficiency"] == one["efficiency_per_core"] == 1.0
    assert two["efficiency"] == pytest.approx(two["images_per_s"] / (2 * one["images_per_s"]))
    assert [r["threads_per_proc"] for r in d["results"]] == [max(1, d["cores"] // n) for n in (1, 2)]


def test_gpu_check_alarm_stops_a_running_step_and_still_writes_the_table(tmp_path, monkeypatch, capsys):
    """The deadline is an alarm (SIGALRM), which drl.train's SIGTERM handler cannot swallow: a step
    still running at budget + margin is stopped, the rest are skipped, and the table is written."""
    monkeypatch.setattr(check, "rates", lambda *a, **k: time.sleep(30))
    monkeypatch.setattr(check, "DEADLINE_MARGIN_S", -19.0)   # the alarm 2 s after the start
    res = main(["--check", str(tmp_path), "--smoke", "--variants", "as_given", "--budget-s", "21"])
    assert res["errors"]["ceiling_fp32"] == "Stopped: stopped by SIGALRM (time limit)"
    assert "correctness" in res["skipped"] and not res["steps"]
    assert (tmp_path / "summary.md").read_text().rstrip() in capsys.readouterr().out
    assert json.loads((tmp_path / "results.json").read_text())["errors"] == res["errors"]


def _python_without_jsonschema(tmp_path: Path) -> Path:
    """An interpreter that cannot import jsonschema (a module of that name on its path that refuses),
    keeping whatever PYTHONPATH it is given ahead of the refusal."""
    blocker = tmp_path / "block"
    blocker.mkdir()
    (blocker / "jsonschema.py").write_text("raise ImportError('no jsonschema here')\n")
    py = tmp_path / "python"
    py.write_text(f'#!/bin/sh\nPYTHONPATH="${{PYTHONPATH:+$PYTHONPATH:}}{blocker}" exec {sys.executable} "$@"\n')
    py.chmod(0o755)
    return py


def _gpu_check(tmp_path: Path, py: Path, wheels: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(tmp_path / "out"), *args],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHON": str(py), "DRL_WHEELS": str(wheels)})


def test_gpu_check_preflight_names_a_missing_package(tmp_path):
    """An interpreter without the packages, and no wheels to add them, is refused before anything
    runs, with the fix named."""
    proc = _gpu_check(tmp_path, _python_without_jsonschema(tmp_path), tmp_path / "no-wheels", "--smoke")
    assert proc.returncode == 2
    assert "no jsonschema here" in proc.stderr and "make gpu-wheels" in proc.stderr
    assert not (tmp_path / "out" / "results.json").exists()


def test_gpu_check_installs_carried_wheels_for_what_is_missing(tmp_path):
    """Wheels in $DRL_WHEELS (default .whl/, from `make gpu-wheels`) are installed when the interpreter
    lacks a package, ahead of its own: here a jsonschema wheel makes the pre-flight pass (the run then
    only prints the bench's help)."""
    import zipfile

    wheels = tmp_path / "wheels"
    wheels.mkdir()
    info = "jsonschema-0.0.dist-info"
    files = {"jsonschema.py": "CARRIED = True\n",
             f"{info}/METADATA": "Metadata-Version: 2.1\nName: jsonschema\nVersion: 0.0\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(wheels / "jsonschema-0.0-py3-none-any.whl", "w") as z:
        for name, text in files.items():
            z.writestr(name, text)
    proc = _gpu_check(tmp_path, _python_without_jsonschema(tmp_path), wheels, "--help")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "usage: python -m bench.run" in proc.stdout


def test_ddp_failed_launch_exits_non_zero_with_the_workers_error(tmp_path, capsys):
    """A worker that raises (here: training diverges at once) fails the torchrun launch; the command
    exits 1 naming the launch and quoting the worker's error."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runs"]["toy_checkerboard_drl"]["train"]["max_abs_energy"] = 1e-12
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        main(["--ddp", "--quick", "--workloads", "toy_mlp", "--procs", "1,2", "--params", str(tmp_path / "params.yaml")])
    assert exc.value.code == 1
    err = capsys.readouterr().err
    assert "torchrun with 1 process(es) failed" in err and "training diverged at iteration 0" in err


def _processes_with(text: str) -> list[int]:
    pids = []
    for p in Path("/proc").iterdir():
        try:
            if p.name.isdigit() and text in (p / "cmdline").read_bytes().decode(errors="replace"):
                pids.append(int(p.name))
        except OSError:
            pass
    return pids


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="finds the workers through /proc")
def test_ddp_timeout_kills_torchrun_and_its_workers():
    with pytest.raises(TimeoutError, match="ran past its limit of 5 s") as exc:
        ddp.measure("toy_mlp", [2, 4], "cpu", quick=True, reps=10**6, timeout_s=5, log=lambda *a: None)
    spec = re.search(r"(\S+/spec\.json)", str(exc.value)).group(1)
    deadline = time.time() + 10
    while _processes_with(spec) and time.time() < deadline:   # SIGKILLed: gone once reaped
        time.sleep(0.2)
    assert not _processes_with(spec)


def test_ddp_bad_requests_and_one_process_count(capsys, monkeypatch):
    """Bad process counts and a missing CUDA stop with a message before any launch; one process count,
    or one GPU, records that scaling is not measurable (no launch, no made-up numbers)."""
    for procs, message in (("0,1", "process counts [0, 1]"), ("1,two", "invalid literal")):
        with pytest.raises(SystemExit) as exc:
            main(["--ddp", "--procs", procs])
        assert exc.value.code == 1 and message in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            main(["--ddp", "--device", "cuda"])
        assert "CUDA is not available" in capsys.readouterr().err
    r = main(["--ddp", "--quick", "--workloads", "toy_mlp", "--procs", "1"])
    assert not r["measurable"] and not r["results"] and "one process count" in r["reason"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    r = ddp.measure("cifar10_n2", None, "cuda")
    assert not r["measurable"] and r["procs"] == [1] and r["reason"] == "1 GPU: DDP scaling not measurable"


def test_workload_and_variant_selection():
    assert selected(None, ["toy_mlp"]) == ["toy_mlp"]
    assert selected("toy_mlp, fid_classifier", []) == ["toy_mlp", "fid_classifier"]
    with pytest.raises(SystemExit, match="unknown workload"):
        selected("toy_mlp,nope", [])
    with pytest.raises(SystemExit, match="unknown variant"):
        main(["--variants", "fastest"])


def test_t6_warm_start_fits_each_level_to_its_own_marginal():
    """The warm-start study's multi-level DSM (bench/t6_warm_start.py) on Gaussian data: a per-level
    quadratic energy reaches log p(y_t) itself, mean mu_t and variance tau_t^2 (recovery likelihood's
    optimum), not eq. 14's noisier tau_t^2 + sigma_{t+1}^2; a target without y_t's scale a_{t+1}
    would miss tau_t^2 by 5-20 % on this schedule.  (A clean level 0, sigma_cum[0] = 0, has nothing
    to denoise: the loss is constant there.)"""
    import numpy as np

    from bench.t6_warm_start import marginal_dsm_loss
    from drl.diffusion import linear_sigma2_schedule
    from drl.energy import ConditionalEBM
    from oracles import GaussianMixtureData, QuadraticNet

    data = GaussianMixtureData([[0.6, -0.4]], [0.5])
    sched = linear_sigma2_schedule(3, 0.05, 0.2, sigma0=0.3)   # level 0 noised, as the released schedule's
    ebm = ConditionalEBM(QuadraticNet(sched.T, 2), sched, "paper", 0.4, "plain")
    g, rng = torch.Generator().manual_seed(0), np.random.default_rng(0)
    opt = torch.optim.Adam(ebm.parameters(), lr=0.05)
    for it in range(500):
        for grp in opt.param_groups:   # decay so the stochastic estimate settles
            grp["lr"] = 0.05 * (0.02 ** (it / 500))
        x0 = torch.tensor(data.sample(1024, rng), dtype=torch.float32)
        t = torch.randint(sched.T, (1024,), generator=g)
        loss = marginal_dsm_loss(ebm, x0, t, torch.randn(x0.shape, generator=g))
        opt.zero_grad()
        loss.backward()
        opt.step()
    for t in range(sched.T):
        mu, tau, _ = data.level(sched, t)
        np.testing.assert_allclose(ebm.net.mu[t].detach().numpy(), mu[0], atol=0.03)
        assert ebm.net.log_v[t].exp().item() / tau[0] ** 2 == pytest.approx(1, abs=0.03)
