"""The Snakemake and DVC workflows describe the same DAG, and both run end to end with the real
`snakemake` and `dvc` binaries on a tiny configuration."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from drl.config import load_params
from drl.workflow import dvc_yaml_text

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env():
    env = dict(os.environ)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env.setdefault("GIT_AUTHOR_NAME", "drl-test")
    env.setdefault("GIT_AUTHOR_EMAIL", "drl-test@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "drl-test")
    env.setdefault("GIT_COMMITTER_EMAIL", "drl-test@example.invalid")
    return env


def run(cmd, cwd, check=True):
    p = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, shell=isinstance(cmd, str))
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}):\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
    p.out = p.stdout + p.stderr
    return p


def snakemake_jobs(cwd, target):
    """(command, inputs, outputs) of every job of a forced dry run, parsed from its report."""
    out = run(["snakemake", "-n", "-p", "--forceall", target], cwd).stdout
    jobs = []
    for block in out.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, flags=re.M))
        cmd = re.search(r"^Shell command: (.*?) > logs/", block, flags=re.M)
        if cmd:
            jobs.append((cmd.group(1), frozenset(fields.get("input", "").split(", ")) - {""},
                         frozenset(fields["output"].split(", "))))
    return sorted(jobs, key=lambda j: j[0])


def dvc_jobs(dvc_yaml: dict):
    jobs = []
    for st in dvc_yaml["stages"].values():
        outs = [o if isinstance(o, str) else next(iter(o)) for o in st.get("outs", []) + st.get("metrics", [])]
        deps = [d for d in st["deps"] if not d.startswith("drl/")]
        jobs.append((st["cmd"], frozenset(deps), frozenset(outs)))
    return sorted(jobs, key=lambda j: j[0])


def test_dvc_yaml_is_generated_from_params():
    assert (ROOT / "dvc.yaml").read_text() == dvc_yaml_text(load_params(ROOT / "params.yaml")), \
        "dvc.yaml is stale: run `drl dvc-yaml`"


def test_snakemake_and_dvc_describe_the_same_dag():
    sm = snakemake_jobs(ROOT, "all")
    dv = dvc_jobs(yaml.safe_load((ROOT / "dvc.yaml").read_text()))
    assert len(sm) == len(dv) > 0
    assert sm == dv


TINY = """
_defaults:
  tiny: &tiny
    diffusion: {schedule: linear_sigma2, T: 3, sigma2_min: 0.02, sigma2_max: 0.3, top_level: conditional}
    energy:
      parameterisation: plain
      net: {kind: mlp, dim: 2, width: 16, depth: 1, temb_dim: 8, activation: silu, spectral_norm: false}
    sampler: {K: 5, step_size: paper, b: 0.5, noise_scale: 1.0}
    objective: {name: recovery_likelihood, loss_weights: uniform}
    train: {iterations: 60, batch_size: 64, lr: 0.002, beta1: 0.9, beta2: 0.999, eps: 1.0e-8, warmup: 10,
            ema: 0.9, seed: 0, checkpoint_every: 20, log_every: 10, max_abs_energy: 1.0e+6}
    sample: {n: 400, K: 5, noise_scale: 1.0, seed: 1}
    evaluate: {extent: 4.0, grid: 64}
datasets:
  checkerboard: {source: toy, toy: checkerboard, n_train: 2000, n_test: 500, seed: 0}
runs:
  toy_checkerboard_drl:
    <<: *tiny
    group: demo
    dataset: checkerboard
  toy_checkerboard_shortrun:
    <<: *tiny
    group: demo
    dataset: checkerboard
    diffusion: {schedule: linear_sigma2, T: 1, sigma2_min: 1.0, sigma2_max: 1.0, top_level: marginal}
    sampler: {K: 15, step_size: paper, b: 0.1, noise_scale: 1.0}
    sample: {n: 400, K: 15, noise_scale: 1.0, seed: 1}
figures:
  fig2_checkerboard: {kind: comparison, group: demo, runs: [toy_checkerboard_drl, toy_checkerboard_shortrun]}
  fig3_checkerboard: {kind: progressive, group: demo, runs: [toy_checkerboard_drl]}
"""


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A copy of the project with the tiny params.yaml, in its own git + DVC repository."""
    d = tmp_path_factory.mktemp("project")
    for name in ("drl", "workflow"):
        shutil.copytree(ROOT / name, d / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", d / "Snakefile")
    (d / "params.yaml").write_text(TINY)
    (d / ".gitignore").write_text("logs/\n.snakemake/\n__pycache__/\n")
    run("drl dvc-yaml", d)
    run("git init -q && dvc init -q && git add -A && git commit -qm init", d)
    return d


DEMO_OUTPUTS = ["results/demo/metrics/toy_checkerboard_drl.json", "results/demo/metrics/toy_checkerboard_shortrun.json",
                "results/demo/figures/fig2_checkerboard.png", "results/demo/figures/fig3_checkerboard.png"]


@pytest.mark.e2e
def test_snakemake_runs_the_tiny_pipeline_and_reruns_on_param_change(project):
    run(["snakemake", "--cores", "2", "demo"], project)
    for f in DEMO_OUTPUTS:
        assert (project / f).stat().st_size > 0, f
    m = json.loads((project / DEMO_OUTPUTS[0]).read_text())
    assert m["kl_nats"] > 0 and m["iterations"] == 60
    assert (project / "results/demo/runs/toy_checkerboard_drl/config.json").exists()
    assert "Nothing to be done" in run(["snakemake", "--cores", "2", "demo"], project).out
    # a changed evaluate setting reruns only that run's evaluation and the figures that read it
    original = _change_drl_evaluate_grid(project)
    dry = run(["snakemake", "-n", "demo"], project).out
    assert re.search(r"^evaluate\s+1$", dry, flags=re.M) and not re.search(r"^train\s", dry, flags=re.M), dry
    (project / "params.yaml").write_text(original)
    # a fresh clone has the committed metrics and figures but no models: the demo must train
    (project / "results/demo/runs/toy_checkerboard_drl/model.pt").unlink()
    dry = run(["snakemake", "-n", "demo"], project).out
    assert re.search(r"^train\s+1$", dry, flags=re.M), dry


def _change_drl_evaluate_grid(project):
    """Give the DRL run its own evaluate section with a new grid; returns the original text."""
    original = (project / "params.yaml").read_text()
    text = original.replace("    dataset: checkerboard\n  toy_checkerboard_shortrun:",
                            "    dataset: checkerboard\n    evaluate: {extent: 4.0, grid: 96}\n"
                            "  toy_checkerboard_shortrun:")
    new, old = yaml.safe_load(text)["runs"], yaml.safe_load(original)["runs"]
    assert new["toy_checkerboard_drl"]["evaluate"]["grid"] == 96
    assert new["toy_checkerboard_shortrun"] == old["toy_checkerboard_shortrun"]
    (project / "params.yaml").write_text(text)
    return original


@pytest.mark.e2e
def test_dvc_repro_reruns_only_changed_stages_and_diffs_metrics(project):
    run("dvc repro -q", project)
    for f in DEMO_OUTPUTS:
        assert (project / f).exists(), f
    run("git add -A && git commit -qm 'tiny run'", project)
    assert "up to date" in run("dvc status", project).out.lower()
    model = project / "results/demo/runs/toy_checkerboard_drl/model.pt"
    mtime = model.stat().st_mtime_ns
    _change_drl_evaluate_grid(project)
    status = run("dvc status", project).out
    changed = set(re.findall(r"^(\S+):\s*$", status, flags=re.M))
    assert changed == {"evaluate_toy_checkerboard_drl", "figure_fig2_checkerboard", "figure_fig3_checkerboard"}, status
    run("dvc repro -q", project)
    assert model.stat().st_mtime_ns == mtime  # training was not rerun
    diff = run("dvc metrics diff --json", project).stdout
    changed_metrics = json.loads(diff)["results/demo/metrics/toy_checkerboard_drl.json"]
    assert "kl_nats" in changed_metrics
