"""Fault injection: SIGKILL at random points of every stage, SIGTERM/SIGINT during training (SLURM
pre-emption, Ctrl-C), a full disk while checkpointing.  Nothing half-written ever appears under a
final name, rerunning the same command completes, and a resumed run ends bitwise equal (CPU) to an
uninterrupted one with the same seeds."""
import csv
import errno
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import drl.train as T
from drl.cli import main
from drl.data.toy2d import get_toy
from drl.io import atomic_path
from test_tables import numbers_only
from test_train import tiny_cfg

TRAIN = ("train: {iterations: 200, batch_size: 64, lr: 0.002, beta1: 0.9, beta2: 0.999, eps: 1.0e-8, warmup: 10,"
         " ema: 0.9, seed: 0, checkpoint_every: %d, log_every: 10, max_abs_energy: 1.0e+6}")
ITERS, EVERY = 200, 20
# `toy_term` differs only in checkpoint_every (> iterations): any state.pt it has was written on a signal
PARAMS = f"""
_defaults:
  tiny: &tiny
    group: faults
    dataset: checkerboard
    diffusion: {{schedule: linear_sigma2, T: 3, sigma2_min: 0.02, sigma2_max: 0.3, top_level: conditional}}
    energy:
      parameterisation: plain
      net: {{kind: mlp, dim: 2, width: 16, depth: 1, temb_dim: 8, activation: silu, spectral_norm: false}}
    sampler: {{K: 5, step_size: paper, b: 0.5, noise_scale: 1.0}}
    objective: {{name: recovery_likelihood, loss_weights: uniform}}
    {TRAIN % EVERY}
    sample: {{n: 400, K: 5, noise_scale: 1.0, seed: 1}}
    evaluate: {{quadrature: {{extent: 4.0, grid: 64}}}}
datasets:
  checkerboard: {{source: toy, toy: checkerboard, n_train: 2000, n_test: 500, seed: 0}}
runs:
  toy: *tiny
  toy_term:
    <<: *tiny
    {TRAIN % 100000}
  toy_diverge:  # a learning rate 500x too high: the energies explode within a few dozen iterations
    <<: *tiny
    train: {{iterations: 200, batch_size: 64, lr: 1.0, beta1: 0.9, beta2: 0.999, eps: 1.0e-8, warmup: 10,
             ema: 0.9, seed: 0, checkpoint_every: 5, log_every: 10, max_abs_energy: 100.0}}
tables:
  sweep:
    output: results/faults/sweep.csv
    group: faults
    title: a sweep with one diverged run
    columns: [kl_nats]
    rows:
      - {{label: lr 0.002, run: toy}}
      - {{label: lr 1.0, run: toy_diverge}}
"""
PREPARED, RUN = "data/prepared/checkerboard", "results/faults/runs/toy"
STAGES = {  # stage -> (command, final outputs)
    "prepare": (["prepare", "--dataset", "checkerboard"],
                [f"{PREPARED}/{f}" for f in ("train.npy", "test.npy", "labels.npz", "manifest.json")]),
    "train": (["train", "--run", "toy", "--device", "cpu"],
              [f"{RUN}/{f}" for f in ("state.pt", "model.pt", "train_log.csv", "config.json")]),
    "sample": (["sample", "--run", "toy", "--device", "cpu"], [f"{RUN}/samples.npy", f"{RUN}/samples.png"]),
    "evaluate": (["evaluate", "--run", "toy", "--device", "cpu"], ["results/faults/metrics/toy.json"]),
}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def _drl(args, cwd, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "drl.cli", "--params", "params.yaml", *args], cwd=cwd, env=ENV,
                            **kw)


def _run(args, cwd) -> float:
    """Run a stage to completion; its wall time."""
    t0 = time.monotonic()
    p = _drl(args, cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err[-3000:]
    return time.monotonic() - t0


def _load(path: Path) -> None:
    """Load an output completely; raises if it is truncated or corrupt."""
    if path.suffix == ".npy":
        np.load(path)
    elif path.suffix == ".npz":
        with np.load(path) as z:
            [z[k] for k in z.files]
    elif path.suffix == ".pt":
        torch.load(path, weights_only=True)
    elif path.suffix == ".json":
        json.loads(path.read_text())
    elif path.suffix == ".png":
        Image.open(path).load()
    elif path.suffix == ".csv":
        rows = list(csv.DictReader(path.open()))
        assert rows and rows[-1]["iteration"] == str(ITERS), path  # train_log.csv is written whole, at the end


def _check_outputs(project: Path) -> None:
    for _, outputs in STAGES.values():
        for out in outputs:
            if (project / out).exists():
                _load(project / out)


def _same_weights(a: Path, b: Path) -> None:
    a, b = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    for key in ("model", "ema"):
        assert a[key].keys() == b[key].keys()
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


def _project(path: Path) -> Path:
    path.mkdir()
    (path / "params.yaml").write_text(PARAMS)
    return path


@pytest.fixture(scope="module")
def data():
    return get_toy("checkerboard").sample(2000, np.random.default_rng(0)).astype(np.float32)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The four stages run uninterrupted, and each one's wall time."""
    project = _project(tmp_path_factory.mktemp("faults") / "reference")
    seconds = {stage: _run(args, project) for stage, (args, _) in STAGES.items()}
    return project, seconds


def _temp_files(project: Path) -> set:
    return set(project.rglob(".*.tmp"))


def _outputs(project: Path, outputs) -> dict:
    return {o: (s.st_mtime_ns, s.st_size) for o in outputs if (s := _stat(project / o))}


def _stat(path: Path):
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _kill_at_random_points(args, outputs, project, n, seconds, rng) -> tuple[int, int]:
    """Start the stage ``n`` times and SIGKILL it: n - 2 times after a random delay (20-90 % of an
    uninterrupted run's wall time, most of which is Python and torch starting up), then as soon as a
    new temp file appears (mid-write), then as soon as an output appears or changes.  Every output
    is checked after each kill.  Returns how many runs were still running when killed, and how many
    of the two targeted kills hit."""
    killed = targeted = 0
    for i in range(n):
        temps, outs = _temp_files(project), _outputs(project, outputs)
        p = _drl(args, project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if i < n - 2:
            time.sleep(rng.uniform(0.2, 0.9) * seconds)
        else:
            writing = ((lambda: _temp_files(project) - temps) if i == n - 2 else
                       (lambda: _outputs(project, outputs) != outs))
            while p.poll() is None and not writing():
                time.sleep(0.001)
        if p.poll() is None:
            p.kill()
            killed += 1
            targeted += i >= n - 2
        p.wait()
        _check_outputs(project)
    return killed, targeted


@pytest.mark.parametrize("kills", [3, pytest.param(6, marks=pytest.mark.slow)])
def test_sigkill_at_random_points_leaves_only_complete_outputs_and_reruns_finish(reference, tmp_path, kills):
    ref, seconds = reference
    project = _project(tmp_path / "project")
    rng = np.random.default_rng(kills)
    report = {}
    for stage, (args, outputs) in STAGES.items():
        report[stage] = _kill_at_random_points(args, outputs, project, kills, seconds[stage], rng)
        _run(args, project)  # the same command completes
        _check_outputs(project)
    leftovers = sorted(p.name for p in _temp_files(project))  # hidden, never under a final name
    print(f"SIGKILLs (of {kills} each) that hit a running stage, and of the 2 targeted ones: {report}; "
          f"temp files left: {leftovers}")
    assert sum(k for k, _ in report.values()) >= 2 * kills  # most kill points are real kills, not finished runs
    for f in ("train.npy", "test.npy"):
        assert np.array_equal(np.load(project / PREPARED / f), np.load(ref / PREPARED / f))
    _same_weights(project / RUN / "model.pt", ref / RUN / "model.pt")
    assert not (project / RUN / "state.pt").exists()
    assert np.array_equal(np.load(project / RUN / "samples.npy"), np.load(ref / RUN / "samples.npy"))
    metrics = STAGES["evaluate"][1][0]
    assert json.loads((project / metrics).read_text()) == json.loads((ref / metrics).read_text())


def _wait_for(proc, marker: bytes, timeout: float) -> None:
    """Read the process's stderr until ``marker`` appears (e.g. tqdm's bar, shown once the signal
    handlers are in place)."""
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        assert time.monotonic() < deadline and proc.poll() is None, seen.decode(errors="replace")[-2000:]
        if select.select([proc.stderr], [], [], 0.1)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)


def test_sigterm_during_training_saves_state_exits_nonzero_and_resumes_bitwise(reference, tmp_path):
    ref, _ = reference
    project = _project(tmp_path / "project")
    shutil.copytree(ref / PREPARED, project / PREPARED)
    args = ["train", "--run", "toy_term", "--device", "cpu"]
    p = _drl(args, project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _wait_for(p, b"train:", 60)
    time.sleep(0.2)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    err = p.communicate(timeout=20)[1].decode()
    assert time.monotonic() - t0 < 5 and p.returncode == 128 + signal.SIGTERM, err[-2000:]
    state_path = project / "results/faults/runs/toy_term/state.pt"
    assert f"saved {Path('results/faults/runs/toy_term/state.pt')}; rerun the same command to resume" in err
    state = torch.load(state_path, weights_only=True)
    assert 0 < state["iteration"] < ITERS and f"SIGTERM at iteration {state['iteration']} of {ITERS}" in err
    assert not (state_path.parent / "model.pt").exists()
    _run(args, project)
    _same_weights(state_path.parent / "model.pt", ref / RUN / "model.pt")  # checkpoint_every changes nothing


def _signal_on_call(n: int, signum: int):
    """A ``draw_batch`` that sends this process ``signum`` at its n-th call."""
    real, calls = T.draw_batch, [0]

    def draw(*a, **kw):
        calls[0] += 1
        if calls[0] == n:
            signal.raise_signal(signum)
        return real(*a, **kw)

    return draw


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_training_at_the_end_of_its_iteration(data, tmp_path, monkeypatch, signum):
    cfg = tiny_cfg(iterations=20, checkpoint_every=10)

    def unhandled(*_):  # instead of the default action, which would end pytest itself
        raise AssertionError("train did not handle the signal")

    before = signal.signal(signum, unhandled)
    try:
        with monkeypatch.context() as m:
            m.setattr(T, "draw_batch", _signal_on_call(7, signum))
            with pytest.raises(T.Preempted) as exc:
                T.train(cfg, data, tmp_path / "stopped", progress=False)
        assert signal.getsignal(signum) is unhandled  # the previous handler is restored
    finally:
        signal.signal(signum, before)
    assert exc.value.code == 128 + signum and "rerun the same command to resume" in str(exc.value)
    assert torch.load(tmp_path / "stopped" / "state.pt", weights_only=True)["iteration"] == 7
    T.train(cfg, data, tmp_path / "stopped", progress=False)
    _same_weights(tmp_path / "stopped" / "model.pt", T.train(cfg, data, tmp_path / "full", progress=False))


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint(data, tmp_path, monkeypatch):
    """The 2nd state.pt write fails half-way with ENOSPC: the error names state.pt, the first
    checkpoint stays loadable, no temp file is left, and the run resumes once there is room."""
    cfg, out = tiny_cfg(iterations=30, checkpoint_every=10), tmp_path / "run"
    real_write, writes = Path.write_bytes, []

    def write_bytes(self, buf):
        if self.name.startswith(".state.pt."):
            writes.append(self)
            if len(writes) == 2:
                real_write(self, bytes(buf)[:len(buf) // 2])
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(self, buf)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", write_bytes)
        with pytest.raises(OSError) as exc:
            T.train(cfg, data, out, progress=False)
    assert exc.value.errno == errno.ENOSPC
    assert str(exc.value).endswith(f"could not write {out / 'state.pt'}: No space left on device; "
                                   "its previous version is intact")
    assert torch.load(out / "state.pt", weights_only=True)["iteration"] == 10
    assert sorted(p.name for p in out.iterdir()) == ["state.pt"]
    T.train(cfg, data, out, progress=False)
    _same_weights(out / "model.pt", T.train(cfg, data, tmp_path / "full", progress=False))


def test_atomic_path_names_only_write_errors(tmp_path):
    """Errors that are not the disk's (e.g. PIL's for an undecodable raw image, read inside the
    body while prepare streams images) pass unchanged."""
    with pytest.raises(OSError, match="^cannot identify image file$"):
        with atomic_path(tmp_path / "x.npy"):
            raise OSError("cannot identify image file")
    with pytest.raises(OSError, match=r"could not write .*x\.npy: Read-only file system; nothing was written"):
        with atomic_path(tmp_path / "x.npy"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert list(tmp_path.iterdir()) == []


def _children(pid: int) -> list[int]:
    return [int(c) for task in Path(f"/proc/{pid}/task").iterdir() for c in (task / "children").read_text().split()]


def _rank_pid(agent: int, rank: int, timeout: float = 60) -> int:
    """The pid of torchrun's worker of ``rank``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in _children(agent):
            if f"RANK={rank}".encode() in Path(f"/proc/{child}/environ").read_bytes().split(b"\0"):
                return child
        time.sleep(0.1)
    raise AssertionError(f"no worker of rank {rank}")


@contextmanager
def _torchrun_training(reference, tmp_path):
    """Two torchrun processes training `toy_term`, once both are past their first all_reduce (rank 0
    has logged); yields (project, the torchrun command, its Popen) and kills whatever hangs after."""
    ref, _ = reference
    project = _project(tmp_path / "project")
    shutil.copytree(ref / PREPARED, project / PREPARED)
    # a script of its own: torchrun's parser would take `--run` for its own `--run-path`
    (project / "train.py").write_text("import sys\nfrom drl.cli import main\n"
                                      "sys.exit(main(['train', '--run', 'toy_term', '--device', 'cpu']))\n")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "train.py"]
    p = subprocess.Popen(cmd, cwd=project, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_for(p, b"loss=", 120)
        yield project, cmd, p
    finally:
        if p.poll() is None:  # a hang: the workers run in sessions of their own
            for pid in [*_children(p.pid), p.pid]:
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_sigterm_to_one_torchrun_rank_stops_all_ranks_at_one_iteration(reference, tmp_path):
    """Only rank 1 gets SIGTERM; rank 0 learns it through the per-iteration all_reduce, writes
    state.pt and both exit non-zero; the same torchrun command then resumes and finishes."""
    with _torchrun_training(reference, tmp_path) as (project, cmd, p):
        os.kill(_rank_pid(p.pid, 1), signal.SIGTERM)
        err = p.communicate(timeout=30)[1].decode()
    state = torch.load(project / "results/faults/runs/toy_term/state.pt", weights_only=True)
    assert p.returncode != 0 and len(state["generators"]) == 2 and 0 < state["iteration"] < ITERS, err[-3000:]
    assert f"SIGTERM at iteration {state['iteration']} of {ITERS}" in err  # printed by rank 0, never signalled
    # torchrun's summary names the first rank to exit (then it stops the other, whichever it is)
    assert "exitcode  : 143" in err, err[-3000:]
    r = subprocess.run(cmd, cwd=project, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    assert torch.load(project / "results/faults/runs/toy_term/model.pt", weights_only=True)["iteration"] == ITERS


def _final_writes_raise(signum: int, name: str, monkeypatch) -> None:
    """Deliver ``signum`` to this process just before the rename that would put ``name`` in place."""
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == name:
            signal.raise_signal(signum)
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)


# stage -> (the output whose rename the signal precedes, inputs copied from the reference project)
SIGTERM_POINTS = {"prepare": ("train.npy", []), "train": ("model.pt", [PREPARED]),
                  "sample": ("samples.npy", [PREPARED, f"{RUN}/model.pt"]),
                  "evaluate": ("toy.json", [PREPARED, f"{RUN}/model.pt"])}


@pytest.mark.parametrize("stage", sorted(SIGTERM_POINTS))
def test_sigterm_in_any_stage_unwinds_leaving_no_temp_file_and_the_rerun_completes(reference, tmp_path, monkeypatch,
                                                                                    capsys, stage):
    """SLURM pre-emption outside the training loop: SIGTERM arrives while an output is being put in
    place.  The stage exits 143 naming the signal, the output is absent (not half there), no temp
    file is left, the previous handler is back, and the same command then completes."""
    ref, _ = reference
    project = _project(tmp_path / "project")
    name, inputs = SIGTERM_POINTS[stage]
    for path in inputs:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (ref / path).is_dir() else shutil.copy)(ref / path, project / path)
    monkeypatch.chdir(project)
    args, outputs = STAGES[stage]

    def unhandled(*_):  # instead of the default action, which would end pytest itself
        raise AssertionError(f"drl {stage} did not handle SIGTERM")

    before = signal.signal(signal.SIGTERM, unhandled)
    try:
        with monkeypatch.context() as m:
            _final_writes_raise(signal.SIGTERM, name, m)
            with pytest.raises(SystemExit) as exc:
                main(args)
        assert signal.getsignal(signal.SIGTERM) is unhandled
    finally:
        signal.signal(signal.SIGTERM, before)
    assert exc.value.code == 143 and f"drl {stage}: stopped by SIGTERM" in capsys.readouterr().err
    assert not any(Path(o).name == name and (project / o).exists() for o in outputs)
    assert not _temp_files(project)
    _check_outputs(project)
    assert main(args) == 0
    assert not _temp_files(project)
    if stage == "train":  # the final write was interrupted after the last checkpoint: the rerun resumed
        _same_weights(project / RUN / "model.pt", ref / RUN / "model.pt")
    for out in outputs:
        if (out.endswith(".npy") or "/metrics/" in out) and (project / out).exists():  # config.json has wall times
            assert (project / out).read_bytes() == (ref / out).read_bytes(), out


def test_divergence_keeps_the_last_good_checkpoint_and_the_metrics_and_tables_record_it(reference, tmp_path,
                                                                                         monkeypatch, capsys):
    ref, _ = reference
    project = _project(tmp_path / "project")
    for path in (PREPARED, RUN):
        shutil.copytree(ref / path, project / path)
    metrics = STAGES["evaluate"][1][0]  # of the run that did not diverge
    (project / metrics).parent.mkdir(parents=True)
    shutil.copy(ref / metrics, project / metrics)
    monkeypatch.chdir(project)
    run = Path("results/faults/runs/toy_diverge")

    assert main(["train", "--run", "toy_diverge", "--device", "cpu"]) == 0  # the sweep goes on
    err = capsys.readouterr().err
    state = torch.load(run / "state.pt", weights_only=True)  # the last good checkpoint is kept
    model = torch.load(run / "model.pt", weights_only=True)
    record = model["diverged"]
    assert "training diverged at iteration" in err and "lower sampler.b" in err and "lower train.lr" in err
    assert 0 < state["iteration"] == record["last_good_iteration"] == model["iteration"] <= record["iteration"] < ITERS
    assert record["iteration"] - state["iteration"] < 5  # checkpoint_every
    assert all(torch.equal(model[k][n], state[k][n]) for k in ("model", "ema") for n in state[k])
    assert json.loads((run / "config.json").read_text())["diverged"] == record
    # every declared output of the stage is in place (a workflow engine checks them), the log up to the weights
    logged = list(csv.DictReader(open(run / "train_log.csv")))
    assert [int(r["iteration"]) for r in logged] == [r["iteration"] for r in state["log"]]
    assert all(int(r["iteration"]) <= state["iteration"] for r in logged)

    assert main(["evaluate", "--run", "toy_diverge", "--device", "cpu"]) == 0
    metrics = json.loads(Path("results/faults/metrics/toy_diverge.json").read_text())
    assert numbers_only(metrics) and metrics["diverged_iteration"] == record["iteration"]
    assert metrics["iterations"] == state["iteration"]
    prov = json.loads(Path("results/faults/provenance/toy_diverge.json").read_text())   # a declared output too
    assert prov["run"] == "toy_diverge" and prov["evaluated_on"]["cpu"] and "extractor" not in prov
    assert prov["diverged"] == json.loads(json.dumps(record))
    assert {k: metrics[k] for k in ("kl_nats", "test_ll_nats", "log_z_quadrature")} == dict.fromkeys(
        ("kl_nats", "test_ll_nats", "log_z_quadrature"))
    assert main(["table", "--table", "sweep"]) == 0
    rows = list(csv.DictReader(open("results/faults/sweep.csv")))
    assert float(rows[0]["kl_nats"]) > 0 and rows[1]["kl_nats"] == "diverged"
    assert "| diverged |" in Path("results/faults/sweep.md").read_text()


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds torchrun's workers through /proc")
def test_a_dying_torchrun_rank_makes_all_ranks_exit_nonzero_promptly(reference, tmp_path):
    """SIGKILL to rank 1 mid-training (an OOM kill, a lost node): rank 0 must not hang in its next
    all_reduce; torchrun stops it and exits non-zero within seconds, and the rerun finishes."""
    with _torchrun_training(reference, tmp_path) as (project, cmd, p):
        rank0, rank1 = _rank_pid(p.pid, 0), _rank_pid(p.pid, 1)
        t0 = time.monotonic()
        os.kill(rank1, signal.SIGKILL)
        err = p.communicate(timeout=60)[1].decode()
        seconds = time.monotonic() - t0
    assert p.returncode != 0 and "exitcode  : -9" in err, err[-3000:]
    assert not Path(f"/proc/{rank0}").exists() and seconds < 30, seconds
    assert not (project / "results/faults/runs/toy_term/model.pt").exists()
    r = subprocess.run(cmd, cwd=project, env=ENV, capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    print(f"torchrun exited {p.returncode} {seconds:.1f} s after rank 1 was killed")


def test_two_processes_writing_the_same_outputs_do_not_corrupt_them(reference, tmp_path):
    """Outside any engine's lock (e.g. `drl sample` run by hand beside a workflow): each writer has a
    temp file of its own and renames it whole, so the outputs are one writer's complete version."""
    ref, _ = reference
    project = _project(tmp_path / "project")
    for path in (PREPARED, RUN):
        shutil.copytree(ref / path, project / path)
    (project / RUN / "samples.npy").unlink()
    args = STAGES["sample"][0]
    procs = [_drl(args, project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for _ in range(3)]
    for p in procs:
        assert p.wait(timeout=120) == 0, p.stderr.read().decode()[-2000:]
    assert not _temp_files(project)
    assert (project / RUN / "samples.npy").read_bytes() == (ref / RUN / "samples.npy").read_bytes()
    _load(project / RUN / "samples.png")
