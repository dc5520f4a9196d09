"""Faults under the real engines: a job of `snakemake` or `dvc repro` killed (SIGKILL, or SIGTERM as
SLURM pre-emption sends), the engine itself killed, two Snakemake invocations on one directory.
After each, rerunning the same command completes, and the results equal an uninterrupted run's."""
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch

from test_faults import PARAMS, PREPARED, TRAIN, RUN, _load, _same_weights, _temp_files
from test_workflow import ROOT, _env, run

pytestmark = pytest.mark.e2e

# 1000 iterations (a few seconds of training): long enough to be killed mid-run at will
ENGINE_PARAMS = PARAMS.replace("iterations: 200,", "iterations: 1000,")
# for the lock test: a training job that runs until it is stopped (pre-empted) by SIGTERM
ENGINE_PARAMS = ENGINE_PARAMS.replace("runs:\n", "runs:\n  toy_slow:\n    <<: *tiny\n    "
                                      + TRAIN.replace("200", "1000000").replace("1.0e+6", "1.0e+30") % 100000 + "\n")
SLOW_MODEL = "results/faults/runs/toy_slow/model.pt"
METRICS = "results/faults/metrics/toy.json"
TARGETS = [METRICS, f"{RUN}/samples.npy"]
SNAKEMAKE = ["snakemake", "--cores", "1", *TARGETS]


def _project(path: Path, dvc: bool = False) -> Path:
    path.mkdir()
    for name in ("drl", "workflow"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", path / "Snakefile")
    (path / "params.yaml").write_text(ENGINE_PARAMS)
    if dvc:
        (path / ".gitignore").write_text("logs/\n.snakemake/\n__pycache__/\n")
        run("drl dvc-yaml", path)
        run("git init -q && dvc init -q && git add -A && git commit -qm init", path)
    return path


def _start(cmd, cwd) -> subprocess.Popen:
    """The engine in a session of its own, so that it and all its jobs can be killed at once."""
    return subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _job(engine: subprocess.Popen, stage: str, timeout: float = 120) -> psutil.Process:
    """The running `drl <stage>` process among the engine's descendants."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert engine.poll() is None, engine.stdout.read()[-3000:]
        for p in psutil.Process(engine.pid).children(recursive=True):
            try:
                cmd = p.cmdline()
            except psutil.NoSuchProcess:
                continue
            if len(cmd) > 2 and Path(cmd[1]).name == "drl" and cmd[2] == stage:
                return p
        time.sleep(0.02)
    raise AssertionError(f"no drl {stage} job appeared")


def _iteration_of_state(project: Path, after: int = 0, timeout: float = 120) -> int:
    """Wait until the run's state.pt holds an iteration > ``after``; that iteration."""
    path, deadline = project / RUN / "state.pt", time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            it = torch.load(path, weights_only=True)["iteration"]
            if it > after:
                return it
        except (FileNotFoundError, RuntimeError, EOFError):  # not there yet (it appears whole, by rename)
            pass
        time.sleep(0.02)
    raise AssertionError(f"state.pt did not pass iteration {after}")


def _finish(engine: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    out = engine.communicate(timeout=timeout)[0]
    return engine.returncode, out


def _same_results(project: Path, ref: Path) -> None:
    assert not (project / RUN / "state.pt").exists()
    _same_weights(project / RUN / "model.pt", ref / RUN / "model.pt")
    assert np.array_equal(np.load(project / RUN / "samples.npy"), np.load(ref / RUN / "samples.npy"))
    assert json.loads((project / METRICS).read_text()) == json.loads((ref / METRICS).read_text())
    assert not _temp_files(project)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The targets made by one uninterrupted Snakemake run."""
    project = _project(tmp_path_factory.mktemp("engine") / "reference")
    run(SNAKEMAKE, project)
    return project


def test_snakemake_jobs_and_snakemake_itself_killed_then_the_same_command_completes(reference, tmp_path):
    project = _project(tmp_path / "project")
    # 1. SIGKILL of the training job after its first checkpoint: Snakemake reports the failed job,
    #    removes nothing that is whole and releases its lock
    engine = _start(SNAKEMAKE, project)
    job = _job(engine, "train")
    _iteration_of_state(project)
    job.kill()
    rc, out = _finish(engine)
    assert rc != 0 and "Error in rule train" in out, out[-3000:]
    assert not (project / RUN / "model.pt").exists() and not list((project / ".snakemake/locks").glob("*"))
    first = _iteration_of_state(project)
    # 2. SIGTERM to the resumed training job (SLURM pre-emption): it saves state.pt and exits 143
    engine = _start(SNAKEMAKE, project)
    job = _job(engine, "train")
    _iteration_of_state(project, after=first)
    job.send_signal(signal.SIGTERM)
    rc, out = _finish(engine)
    log = (project / "logs/train/faults/toy.log").read_text()
    assert rc != 0 and "SIGTERM at iteration" in log, log[-2000:]
    second = _iteration_of_state(project)
    assert second > first
    # 3. SIGKILL of Snakemake and all its jobs at once: its lock stays, and Snakemake says to unlock
    engine = _start(SNAKEMAKE, project)
    _job(engine, "train")
    _iteration_of_state(project, after=second)
    os.killpg(engine.pid, signal.SIGKILL)
    engine.wait()
    locked = run(SNAKEMAKE, project, check=False)
    assert locked.returncode != 0 and "--unlock" in locked.out
    run(["snakemake", "--unlock"], project)
    run(SNAKEMAKE, project)  # the same command completes
    for f in ("train.npy", "test.npy"):
        _load(project / PREPARED / f)
    _same_results(project, reference)


def test_dvc_repro_jobs_and_dvc_itself_killed_then_the_same_command_completes(reference, tmp_path):
    project = _project(tmp_path / "project", dvc=True)
    repro = ["dvc", "repro", "evaluate_toy", "sample_toy"]
    # 1. SIGKILL of the training job: dvc repro fails and records nothing for it
    engine = _start(repro, project)
    job = _job(engine, "train")
    first = _iteration_of_state(project)
    job.kill()
    rc, out = _finish(engine)
    assert rc != 0 and not (project / RUN / "model.pt").exists(), out[-3000:]
    # 2. SIGKILL of dvc and its job together: its lock files name a dead process, which DVC skips
    engine = _start(repro, project)
    _job(engine, "train")
    _iteration_of_state(project, after=first)
    os.killpg(engine.pid, signal.SIGKILL)
    engine.wait()
    run(repro, project)  # the same command completes
    assert "up to date" in run(["dvc", "status", "evaluate_toy", "sample_toy"], project).out.lower()
    _same_results(project, reference)


def test_two_snakemake_runs_on_one_directory_respect_the_lock(tmp_path):
    """While one invocation trains, a second asking for the same output is refused before it touches
    a file, and one with other outputs (another run's training) runs beside it; all outputs are whole."""
    project = _project(tmp_path / "project")
    run(["snakemake", "--cores", "1", f"{PREPARED}/train.npy"], project)
    slow = ["snakemake", "--cores", "1", SLOW_MODEL]
    first = _start(slow, project)
    job = _job(first, "train")
    other = _start(["snakemake", "--cores", "1", "results/faults/runs/toy_term/model.pt"], project)
    _job(other, "train")
    both_training = job.is_running()
    # Snakemake should refuse a second run wanting the same output (IncompleteFilesException for the
    # first run's job outputs; LockException with --rerun-incomplete, as in the SLURM profile).  In
    # Snakemake 9.27 concurrent runs can drop each other's lock and incomplete markers, so the second
    # training job may start: then drl train's own lock of the run folder refuses it
    refused = []
    for cmd in (slow, [*slow, "--rerun-incomplete"]):
        r = run(cmd, project, check=False)
        log = (project / "logs/train/faults/toy_slow.log").read_text(errors="replace")
        by_snakemake = "IncompleteFilesException" in r.out or "LockException" in r.out
        refused.append(r.returncode != 0 and (by_snakemake or "toy_slow is already running there" in log))
    still_training = job.is_running()
    job.send_signal(signal.SIGTERM)  # pre-empted: it saves its state and fails
    results = [_finish(other), _finish(first)]
    assert both_training and still_training, "the first run stopped by itself"
    assert refused == [True, True]
    assert results[0][0] == 0, results[0][1][-3000:]
    assert results[1][0] != 0  # (its log was truncated by the refused jobs: the same log file)
    assert torch.load(project / "results/faults/runs/toy_term/model.pt", weights_only=True)["iteration"] == 1000
    # written only on the signal (checkpoint_every is larger than the run)
    assert torch.load(project / "results/faults/runs/toy_slow/state.pt", weights_only=True)["iteration"] > 0
    assert not _temp_files(project)
