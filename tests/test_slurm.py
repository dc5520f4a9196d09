"""The tiny pipeline of test_workflow.py runs through a real SLURM cluster with the project's
profile (workflow/profiles/slurm): every job is an sbatch job on the single-node cluster of
workflow/slurm/local-cluster.sh, and its metrics equal those of a local run.

Skipped when SLURM is not installed, unless DRL_SLURM_TEST=1: then the test installs the Debian
packages and starts the cluster itself (root and apt-get needed; about a minute on 2 cores).
A cluster this test started is stopped afterwards; one that was already running is left so.
"""
import json
import os
import re
import shutil
import socket
import subprocess

import pytest

from test_workflow import DEMO_OUTPUTS, ROOT, TINY, run  # the tiny project of the e2e tests

pytestmark = pytest.mark.slurm

SCRIPT = ROOT / "workflow" / "slurm" / "local-cluster.sh"
PROFILE = "workflow/profiles/slurm"
SLURM_TOOLS = ("slurmctld", "slurmd", "munged", "sbatch", "squeue", "scontrol")


def _cluster(action):
    return subprocess.run(["bash", str(SCRIPT), action], capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def slurm_cluster():
    installed = all(shutil.which(t) for t in SLURM_TOOLS)
    if not installed and os.environ.get("DRL_SLURM_TEST") != "1":
        pytest.skip("SLURM is not installed; DRL_SLURM_TEST=1 installs it and starts a local cluster")
    if _cluster("status").returncode == 0:
        yield  # a running cluster: use it and leave it running
        return
    if os.geteuid() != 0:
        pytest.skip("no SLURM cluster is running, and starting one (local-cluster.sh start) needs root")
    if not installed and not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and apt-get is not available to install it")
    p = _cluster("start")
    assert p.returncode == 0, f"local-cluster.sh start failed:\n{p.stdout}\n{p.stderr}"
    yield
    p = _cluster("stop")
    assert p.returncode == 0, f"local-cluster.sh stop failed:\n{p.stdout}\n{p.stderr}"


def _tiny_project(d):
    for name in ("drl", "workflow"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", d / "Snakefile")
    (d / "params.yaml").write_text(TINY)
    return d


def _metrics(project):
    return [json.loads((project / f).read_text()) for f in DEMO_OUTPUTS if f.endswith(".json")]


def test_tiny_pipeline_runs_through_slurm_with_the_profile(slurm_cluster, tmp_path):
    on_slurm = _tiny_project(tmp_path / "slurm")
    out = run(["snakemake", "--profile", PROFILE, "--slurm-init-seconds-before-status-checks", "2",
               "--slurm-keep-successful-logs", "demo"], on_slurm).out

    # every job of the DAG was an sbatch job, and SLURM ran each to completion on this node
    n_jobs = int(re.search(r"^total\s+(\d+)$", out, flags=re.M).group(1)) - 1  # less the `demo` target
    submitted = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+?)\)\.", out)
    assert n_jobs > 0 and len(submitted) == n_jobs, out
    for jobid, log in submitted:
        assert (on_slurm / ".snakemake" / "slurm_logs") in (on_slurm / log).parents, log
        assert (on_slurm / log).exists(), log
        info = run(["scontrol", "show", "job", jobid], on_slurm).stdout
        assert "JobState=COMPLETED" in info and "Partition=drl" in info, info
        assert re.search(rf"\bNodeList={re.escape(socket.gethostname().split('.')[0])}\b", info), info
    for f in DEMO_OUTPUTS:
        assert (on_slurm / f).stat().st_size > 0, f

    # the same numbers as a local run
    local = _tiny_project(tmp_path / "local")
    run(["snakemake", "--cores", "2", "demo"], local)
    assert _metrics(on_slurm) == _metrics(local)
