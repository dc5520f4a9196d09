"""bench/: the FLOP counts behind MFU (FlopCounterMode on the real code paths = the analytic formulas),
the latest.json schema and RESULTS.md row of a --quick run, gpu_check's CPU smoke mode, and DDP weak
scaling (bench/ddp_scaling.py) on 1 and 2 CPU processes with its failure paths.  No timing
assertions: the numbers depend on the machine."""
from __future__ import annotations

import copy
import json
import os
import re
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # bench/ is a folder of the repository, not an installed package
    sys.path.insert(0, str(ROOT))

from bench import flops  # noqa: E402
from bench import workloads as W  # noqa: E402
from drl.evaluate.partition import estimate_log_z_ais  # noqa: E402
from drl.hmc import long_run_levels  # noqa: E402
from drl.sample import progressive_levels  # noqa: E402
from drl.train import MODEL_KEYS, build_model  # noqa: E402

TRAIN = {"iterations": 1, "batch_size": 3, "lr": 1e-4, "beta1": 0.9, "beta2": 0.999, "eps": 1e-7, "warmup": 1,
         "ema": 0.9, "seed": 0, "checkpoint_every": 1, "log_every": 1, "max_abs_energy": 1e9}
WRN = {"kind": "wrn", "resolution": 8, "in_channels": 1, "ch": 4, "ch_mult": [1, 2], "n_blocks": 2, "temb_dim": 8,
       "head": "temb", "spectral_norm": True}
MLP = {"kind": "mlp", "dim": 2, "width": 16, "depth": 2, "temb_dim": 8, "activation": "silu", "spectral_norm": True}


def cfg_of(net: dict, K: int, top: str = "marginal") -> dict:
    return {"group": "t", "dataset": "d",
            "diffusion": {"schedule": "linear_sigma2", "T": 3, "sigma2_min": 0.02, "sigma2_max": 0.3, "top_level": top},
            "energy": {"parameterisation": "net_over_s2", "net": net},
            "sampler": {"K": K, "step_size": "paper", "b": 0.1, "noise_scale": 1.0},
            "objective": {"name": "recovery_likelihood", "loss_weights": "released"},
            "train": dict(TRAIN), "sample": {"n": 4, "K": K, "noise_scale": 1.0, "seed": 1},
            "evaluate": {"partition": {"transitions": "ais_hmc", "n_samples": 4, "hmc_steps": 2, "seed": 0}}}


@pytest.mark.parametrize("sn", ["per_call", "per_iteration"])
@pytest.mark.parametrize("net", [WRN, MLP], ids=["wrn", "mlp"])
@pytest.mark.parametrize("K", [0, 1, 3])
def test_train_step_flops_counted_equal_analytic(net, K, sn):
    """FlopCounterMode around drl.train.train (one iteration, less the model build) = passes x per-pass
    FLOPs from the layers (bench/flops.py), spectral norm (either perf.sn_power_iteration) and K = 0
    (normal approximation) included; at K = 3 the count is the K = 1, 2 extension bench uses for K = 30."""
    cfg = cfg_of(net, K, "conditional" if K == 0 else "marginal")
    if sn == "per_iteration":
        cfg["perf"] = {"sn_power_iteration": sn}
    data = W.synthetic_data(cfg, 16)
    counted, how = W.count_train_flops(cfg, data, "cpu")
    analytic = flops.train_step(W.net_cost(cfg), TRAIN["batch_size"], K, sn)
    assert counted == analytic["flops"], (how, analytic["formula"])


def test_train_flops_extension_in_K_is_exact():
    """Counting at K = 1 and 2 and extending linearly gives the count of the K = 3 iteration itself."""
    cfg = cfg_of(WRN, 3)
    data = W.synthetic_data(cfg, 16)
    extended, how = W.count_train_flops(cfg, data, "cpu")
    assert "linear in K" in how
    import tempfile

    from drl.train import train

    with tempfile.TemporaryDirectory() as d:
        total, _ = flops.count(train, cfg, data, d, progress=False)
    built, _ = flops.count(build_model, {k: cfg[k] for k in MODEL_KEYS})
    assert extended == total - built


def test_sampling_hmc_ais_flops_counted_equal_analytic():
    torch.manual_seed(0)
    cfg = cfg_of(WRN, 2, "conditional")
    ebm = build_model({k: cfg[k] for k in MODEL_KEYS}).eval()
    c = flops.net_cost(ebm.net)
    shape, n = (1, 8, 8), 3

    def levels(K, m):
        it = progressive_levels(ebm, torch.randn(n, *shape), K)
        for _ in range(m + 1):
            next(it)

    mode = flops.chain_mode(ebm)   # eval mode: spectral norm once per chain (drl.perf.chain_weights)
    for K in (0, 2):
        assert flops.count(levels, K, 2)[0] == flops.sample_levels(c, n, K, 2, mode)["flops"]

    def chains(k):
        it = long_run_levels(ebm, n, shape, k, [0.01] * ebm.T, 2, progress=False)
        for _ in range(3):
            next(it)

    for k in (1, 3):
        assert flops.count(chains, k)[0] == flops.long_run_levels(c, n, k, 2, 2, mode)["flops"]
    counted, _ = flops.count(estimate_log_z_ais, ebm, n, shape, 2, 2, step_size=0.01, batch_size=n, progress=False)
    assert counted == flops.ais(c, n, ebm.T, 2, 2, mode)["flops"]


def test_analytic_paper_network_is_about_66_passes_per_example():
    """The arithmetic of RESULTS.md: CIFAR-10 N = 8 at K = 30 costs ~(2K + 6) forward passes per example, and
    the paper's run (50k iterations of 256) about 9 EFLOP."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    cfg = copy.deepcopy(params["runs"]["cifar10_t6_k30"])
    with torch.device("meta"):
        c = W.net_cost(cfg)
    step = flops.train_step(c, 256, 30)
    assert 64 < step["passes"] < 66.5
    assert 1.0e10 < c.fwd < 1.25e10   # ~5.6 G multiply-adds a forward pass of one 32x32 image
    assert 8e18 < 50_000 * step["flops"] < 10e18


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from bench.run import main

    out = tmp_path_factory.mktemp("bench")
    argv = ["--quick", "--workloads", "toy_mlp,fid_classifier", "--variants", "as_given", "--out", str(out),
            "--params", str(ROOT / "params.yaml")]
    first = main(argv)
    main(argv + ["--no-record"])
    return out, first


def test_quick_run_latest_json_schema(quick_run):
    out, result = quick_run
    latest = json.loads((out / "latest.json").read_text())
    assert latest["schema"] == 1 and latest["mode"] == "quick" and latest["machine"]["cores"] >= 1
    c = latest["ceiling"]
    assert c["best"] >= max(c["start"], c["end"]) > 0
    toy = latest["workloads"]["toy_mlp"]
    for kind in ("train_step", "sample", "ais"):
        r = toy[kind]
        assert r["flops"] == r["flops_analytic"] > 0
        assert r["seconds"] > 0 and r["mfu"] > 0 and r["mfu"] == pytest.approx(r["flops_per_s"] / c["best"])
        assert np.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
    assert toy["train_step"]["images_per_s"] == pytest.approx(toy["train_step"]["B"] / toy["train_step"]["seconds"])
    assert toy["sample"]["projected"]   # --quick runs K = 2 of the run's 30 steps
    assert latest["fid"]["fid_classifier"]["mfu"] > 0
    assert result["workloads"].keys() == latest["workloads"].keys()


def test_quick_run_appends_one_row_per_run(quick_run):
    from bench.record import HEADER, MARKER

    out, _ = quick_run
    lines = (out / "RESULTS.md").read_text().splitlines()
    table = lines[lines.index(MARKER) + 2:]
    assert table[:2] == HEADER.splitlines()
    rows = [line for line in table[2:] if line.startswith("|")]
    assert len(rows) == 1   # the --no-record run added none
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert len(cells) == len(HEADER.splitlines()[0].strip("|").split("|"))
    assert cells[2].startswith("quick, as_given (") and cells[5] == "— · — · —"   # no CIFAR workloads in this run


def test_gpu_check_smoke_on_cpu(tmp_path):
    out = tmp_path / "gpu"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), str(out), "--smoke", "--no-variants", "--budget-s", "120"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    res = json.loads((out / "results.json").read_text())
    assert res["scale"] == "smoke" and not res["errors"] and not res["skipped"]
    chk = res["steps"]["correctness"]
    assert set(chk) == {"fp32-strict", "fp32", "bf16"} and all(m["ok"] for m in chk.values())
    assert {"train_bf16", "train_fp32", "sample_bf16", "sample_fp32", "fid_inception"} <= set(res["summary"])
    assert res["summary"]["train_bf16"]["paper_run_hours"] > 0
    assert (out / "summary.md").read_text() in proc.stdout   # the table is printed last
    assert proc.stdout.rstrip().endswith("FID-50k sampling <= 10 min.")
    assert (out / "row.md").read_text().startswith("| ") and (out / "log.txt").exists()
    ddp = res["steps"]["ddp_scaling"]   # the DDP step: the toy MLP on 1 and 2 CPU processes
    assert ddp["measurable"] and [r["procs"] for r in ddp["results"]] == [1, 2]
    assert json.loads((out / "ddp_scaling.json").read_text())["results"] == ddp["results"]
    assert "DDP weak scaling: toy_mlp" in proc.stdout


def test_gpu_check_alarm_stops_a_running_step_and_still_writes_the_table(tmp_path, monkeypatch, capsys):
    """The deadline is an alarm (SIGALRM), which drl.train's SIGTERM handler cannot swallow: a step
    still running at budget + margin is stopped, the rest are skipped, and the table is written."""
    from bench import gpu_check

    def slow_ceiling(*args, **kwargs):
        time.sleep(30)

    monkeypatch.setattr(gpu_check.ceil, "measure", slow_ceiling)
    monkeypatch.setattr(gpu_check, "DEADLINE_MARGIN_S", -19.0)   # the alarm 2 s after the start
    res = gpu_check.main([str(tmp_path), "--smoke", "--no-variants", "--budget-s", "21"])
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
    only prints gpu_check's help)."""
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
    assert "usage: python -m bench.gpu_check" in proc.stdout


def test_ddp_scaling_quick_on_one_and_two_cpu_processes(tmp_path, capsys):
    """Weak scaling through torchrun: each count's global batch is n x the per-process batch, n = 1 is
    the efficiency's baseline, and on CPU each process gets cores // n threads."""
    from bench.ddp_scaling import main

    returned = main(["--quick", "--workload", "toy_mlp", "--procs", "1,2", "--device", "cpu",
                     "--out", str(tmp_path)])
    res = json.loads((tmp_path / "ddp_scaling.json").read_text())
    assert res["results"] == json.loads(json.dumps(returned["results"]))
    assert res["measurable"] and res["scaling"] == "weak" and res["workload"] == "toy_mlp" and res["scale"] == "quick"
    assert res["machine"]["cores"] >= 1 and "perf" in res
    assert res["per_process_batch"] == W.WORKLOADS["toy_mlp"].scales["quick"].train[0]
    one, two = res["results"]
    assert (one["procs"], two["procs"]) == (1, 2)
    assert one["global_batch"] == res["per_process_batch"] and two["global_batch"] == 2 * one["global_batch"]
    assert one["efficiency"] == one["efficiency_per_core"] == 1.0
    assert two["efficiency"] == pytest.approx(two["images_per_s"] / (2 * one["images_per_s"]))
    for r in (one, two):
        assert r["images_per_s"] > 0 and r["images_per_s"] == pytest.approx(r["global_batch"] / r["seconds"])
        assert r["threads_per_proc"] == max(1, res["cores"] // r["procs"])
        assert r["timing"]["reps"] == res["reps"] and len(r["warmup_seconds"]) == res["warmup"]
    assert not list(tmp_path.glob(".*.tmp"))   # written through a temp file and os.replace
    out = capsys.readouterr().out
    assert "shared cores" in out and "efficiency" in out


def test_ddp_scaling_failed_launch_exits_non_zero_with_the_workers_error(tmp_path, capsys):
    """A worker that raises (here: training diverges at once) fails the torchrun launch; the command
    exits 1 naming the launch and quoting the worker's error."""
    import yaml

    from bench.ddp_scaling import main

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["runs"]["toy_checkerboard_drl"]["train"] = {**params["runs"]["toy_checkerboard_drl"]["train"],
                                                       "max_abs_energy": 1e-12}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit) as exc:
        main(["--quick", "--workload", "toy_mlp", "--procs", "1,2", "--out", str(tmp_path / "out"),
              "--params", str(tmp_path / "params.yaml")])
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
def test_ddp_scaling_timeout_kills_torchrun_and_its_workers(tmp_path):
    from bench.ddp_scaling import LaunchError, measure

    with pytest.raises(LaunchError, match="ran past its limit of 5 s") as exc:
        measure("toy_mlp", [2, 4], "cpu", tmp_path, quick=True, reps=10**6, timeout_s=5, log=lambda *a: None)
    spec = re.search(r"--worker (\S+)", str(exc.value)).group(1)
    deadline = time.time() + 10
    while _processes_with(spec) and time.time() < deadline:   # SIGKILLed: gone once reaped
        time.sleep(0.2)
    assert not _processes_with(spec)


def test_ddp_scaling_bad_requests_and_one_process_count(tmp_path, capsys, monkeypatch):
    """Bad process counts and a missing CUDA stop with a message before any launch; one process count,
    or one GPU, records that scaling is not measurable (no launch, no made-up numbers)."""
    from bench import ddp_scaling as D

    for procs in ("0,1", "1,two"):
        with pytest.raises(SystemExit, match="--procs"):
            D.main(["--procs", procs, "--out", str(tmp_path)])
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit) as exc:
            D.main(["--device", "cuda", "--out", str(tmp_path)])
        assert exc.value.code == 1 and "CUDA is not available" in capsys.readouterr().err
    r = D.main(["--quick", "--workload", "toy_mlp", "--procs", "1", "--out", str(tmp_path)])
    assert not r["measurable"] and not r["results"] and "only one process count" in r["reason"]
    assert json.loads((tmp_path / "ddp_scaling.json").read_text())["reason"] == r["reason"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "one GPU")
    monkeypatch.setattr(D.record, "machine", lambda device: {"text": "a one-GPU machine"})
    r = D.measure("cifar10_n2", None, "cuda", tmp_path)
    assert not r["measurable"] and r["procs"] == [1] and r["reason"] == "1 GPU: DDP scaling not measurable"


def test_counting_runs_eager_with_the_other_switches_kept():
    """FLOPs are counted with compile and CUDA graphs off (FlopCounterMode sees inside neither), the
    function-changing and layout switches as set, and the settings come back after, errors included."""
    from drl.perf import Perf
    from bench.variants import counting

    ebm = build_model({k: cfg_of(MLP, 1)[k] for k in MODEL_KEYS})
    ebm.perf = on = Perf(sn_power_iteration="per_iteration", channels_last=True, compile=True, cuda_graphs=True)
    with counting(ebm):
        assert ebm.perf == Perf(sn_power_iteration="per_iteration", channels_last=True)
    assert ebm.perf is on
    with pytest.raises(RuntimeError), counting(ebm):
        raise RuntimeError
    assert ebm.perf is on


def test_no_workloads_argument_selects_every_workload_and_extractor():
    from bench.run import _selected

    assert _selected(None) == [*W.WORKLOADS, *W.EXTRACTORS]
    assert _selected("toy_mlp, fid_classifier") == ["toy_mlp", "fid_classifier"]
    with pytest.raises(SystemExit, match="unknown workload"):
        _selected("toy_mlp,nope")
