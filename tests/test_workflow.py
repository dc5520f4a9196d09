"""The Snakemake and DVC workflows describe the same DAG, and both run end to end with the real
`snakemake` and `dvc` binaries on a tiny configuration."""
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from drl.config import load_params
from drl.workflow import EXTERNAL_DVC_YAML, dvc_files, train_command
from test_tables import numbers_only

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
    """(command, inputs, outputs) of every job of a forced dry run, parsed from its report.  The
    `--workers {threads}` Snakemake adds to `drl prepare` is dropped: a CPU budget, not an input
    (tests/test_parallel_prepare.py: the same bytes for any count)."""
    out = run(["snakemake", "-n", "-p", "--forceall", target], cwd).stdout
    jobs = []
    for block in out.split("\nrule ")[1:]:
        fields = dict(re.findall(r"^\s+(input|output): (.*)$", block, flags=re.M))
        cmd = re.search(r"^Shell command: (.*?) > logs/", block, flags=re.M)
        if cmd:
            command = re.sub(r"^(drl prepare .*) --workers \d+$", r"\1", cmd.group(1))
            jobs.append((command, frozenset(fields.get("input", "").split(", ")) - {""},
                         frozenset(fields["output"].split(", "))))
    return sorted(jobs, key=lambda j: j[0])


def dvc_jobs(root: Path):
    """(command, inputs, outputs) of every stage of the generated DVC pipeline files."""
    jobs = []
    for name in ("dvc.yaml", EXTERNAL_DVC_YAML):
        if not (root / name).exists():
            continue
        for st in yaml.safe_load((root / name).read_text())["stages"].values():
            outs = [o if isinstance(o, str) else next(iter(o))
                    for o in st.get("outs", []) + st.get("metrics", []) + st.get("plots", [])]
            jobs.append((st["cmd"], frozenset(st.get("deps", [])), frozenset(outs)))
    return sorted(jobs, key=lambda j: j[0])


def test_dvc_files_are_generated_from_params():
    for name, text in dvc_files(load_params(ROOT / "params.yaml")).items():
        assert (ROOT / name).read_text() == text, f"{name} is stale: run `drl dvc-yaml`"


def test_snakemake_and_dvc_describe_the_same_dag():
    sm = [j for j in snakemake_jobs(ROOT, "all") if not j[0].startswith("drl missing-input")]
    dv = dvc_jobs(ROOT)
    assert len(sm) == len(dv) > 0
    assert sm == dv


def test_code_dependencies_follow_each_stage_functions_imports():
    """Imports inside functions count (the stages import lazily), a module's own helpers are followed,
    and a stage does not depend on code only other stages import."""
    from drl.code_deps import function_code
    from drl.workflow import code

    assert "drl/hmc.py" in code("evaluate") and "drl/hmc.py" in code("long_run")
    assert "drl/hmc.py" not in code("train") and "drl/hmc.py" not in code("sample")
    assert "drl/train.py" not in code("sample")  # sampling loads the model without the trainer
    assert {"drl/evaluate/quadrature.py", "drl/evaluate/partition.py"} <= set(code("evaluate"))  # via helpers
    assert "drl/interpolate.py" in code("figure") and "drl/cli.py" not in code("figure")
    assert set(function_code("drl.stages.data", "prepare")) >= {"drl/data/images.py", "drl/data/lsun.py"}
    # computed once per process, but each caller gets its own list: a caller's edit does not reach the next
    first = code("train")
    first.append("not/a/module.py")
    assert "not/a/module.py" not in code("train")


def test_every_command_dispatches_to_a_stage_function():
    import importlib

    from drl.cli import COMMANDS

    for name, (target, _, _) in COMMANDS.items():
        module, function = target.split(":")
        assert module.startswith("drl.stages.") and callable(getattr(importlib.import_module(module), function)), name


def test_stages_that_read_raw_data_have_their_own_dvc_file():
    root_stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    external = yaml.safe_load((ROOT / EXTERNAL_DVC_YAML).read_text())["stages"]
    assert "train_toy_checkerboard_drl" in root_stages and "prepare_cifar10" not in root_stages
    assert {"prepare_cifar10", "train_cifar10_t6_k30", "table_table2"} <= set(external)
    assert all(st["wdir"] == "../.." for st in external.values())
    assert not any("metrics" in st for st in external.values())   # not committed: DVC would warn they are missing


def _dry_run_jobs(target: str) -> dict[str, set[str]]:
    """Rule name -> the set of its jobs' wildcard values (or outputs), from `snakemake -n target`."""
    out = run(["snakemake", "-n", "--forceall", target], ROOT).stdout
    jobs: dict[str, set[str]] = {}
    for block in out.split("\nrule ")[1:]:
        rule = block.split(":", 1)[0].strip()
        wc = re.search(r"^\s+wildcards: (.*)$", block, flags=re.M)
        output = re.search(r"^\s+output: (.*)$", block, flags=re.M).group(1)
        jobs.setdefault(rule, set()).add(wc.group(1) if wc else output)
    return jobs


@pytest.mark.parametrize("table", ["table1", "table2", "table3"])
def test_paper_table_dry_run_lists_every_configuration_and_the_raw_files(table):
    params = load_params(ROOT / "params.yaml")
    tcfg = params["tables"][table]
    jobs = _dry_run_jobs(tcfg["output"])
    runs = {r["run"] for r in tcfg["rows"] if "run" in r}
    assert {w.split("run=")[1] for w in jobs["train"]} == runs
    assert {w.split("run=")[1] for w in jobs["evaluate"]} == runs
    # the raw files with an address are fetched (and verified), not asked for
    assert jobs["fetch"] == {"fetched=data/raw/cifar-10-python.tar.gz",
                             f"fetched={params['extractors']['inception']['weights']}"}
    assert "missing_input" not in jobs
    assert jobs["prepare"] == {"dataset=cifar10"} and len(jobs["refstats"]) == 1


def _refstats_jobs(target: str, cores: int) -> list[str]:
    out = run(["snakemake", "-n", "--forceall", "--cores", str(cores), target], ROOT).stdout
    return [b for b in out.split("\nrule ")[1:] if b.startswith("refstats:")]


def test_reference_statistics_go_first_on_the_threads_their_extractor_needs():
    """Every evaluation of a dataset waits on its reference statistics, so they run as soon as it is
    prepared.  The digits classifier's take one thread: with two, on `--cores 2` (the demo), the job
    waited until both running trainings had ended.  Inception's take 8 where there are cores."""
    (digits,) = _refstats_jobs("demo", 2)
    assert "priority: 1000" in digits and not re.search(r"^\s+threads:", digits, flags=re.M), digits
    (inception,) = _refstats_jobs(load_params(ROOT / "params.yaml")["tables"]["table2"]["output"], 16)
    assert "priority: 1000" in inception and re.search(r"^\s+threads: 8$", inception, flags=re.M), inception


def test_figure_dry_run_trains_each_pictured_model():
    jobs = _dry_run_jobs("results/paper/figures/fig1.png")
    assert {w.split("run=")[1] for w in jobs["train"]} == {"lsun_church128_t6", "lsun_bedroom128_t6", "celeba64_t6"}
    # CelebA has no stable address: it stays a missing input; LSUN's LMDB zips are fetched and unpacked
    assert jobs["missing_input"] == {"raw=data/raw/celeba/list_eval_partition.txt", "raw=data/raw/celeba/img_align_celeba"}
    assert "fetched_dir=data/raw/lsun/bedroom_val_lmdb" in jobs["fetch_unpacked"]


TINY = (ROOT / ".test" / "params.yaml").read_text()


# the shipped classifier, the one instrument of every digits FID/IS, in both configurations
TINY_SHA256 = load_params(ROOT / "params.yaml")["extractors"]["digits_classifier"]["sha256"]


def test_the_tiny_configuration_measures_with_the_shipped_instrument():
    assert yaml.safe_load(TINY)["extractors"]["digits_classifier"]["sha256"] == TINY_SHA256


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
                "results/demo/figures/fig2_checkerboard.png", "results/demo/figures/fig3_checkerboard.png",
                "results/demo/metrics/digits_t6.json", "results/demo/figures/fig_digits.png",
                "results/demo/figures/fig_interp.png", "results/demo/metrics/digits_t10.json",
                "results/demo/runs/digits_t10/samples.png", "results/demo/runs/digits_t10/hmc_steps.csv",
                "results/demo/figures/fig_hmc.png", "results/demo/figures/fig_long_run.png",
                "results/demo/table_digits.csv", "results/demo/table_digits.md", "results/demo/table_long_run.csv"]


@pytest.mark.e2e
def test_snakemake_runs_the_tiny_pipeline_and_reruns_on_param_change(project):
    run(["snakemake", "--cores", "2", "demo"], project)
    for f in DEMO_OUTPUTS:
        assert (project / f).stat().st_size > 0, f
    m = json.loads((project / DEMO_OUTPUTS[0]).read_text())
    assert m["kl_nats"] > 0 and m["iterations"] == 60
    # the image path: digits prepared, a classifier extractor, FID/IS against its reference
    # statistics, bits/dim from the importance-sampled log Z, a sample grid and a table
    d = json.loads((project / "results/demo/metrics/digits_t6.json").read_text())
    assert d["iterations"] == 6 and d["fid"] > 0 and d["test_bpd"] > 0
    # the certified bound moves every test log-density by the same log Z difference (8 x 8 pixels)
    assert d["test_bpd_lower_bound"] - d["test_bpd"] == pytest.approx(
        (d["log_z_lower_bound"] - d["log_z_ais"]) / (64 * math.log(2)), rel=1e-9, abs=1e-9)
    assert all(numbers_only(json.loads(f.read_text())) for f in (project / "results/demo/metrics").glob("*.json"))
    assert np.load(project / "results/demo/runs/digits_t6/samples.npy").shape == (40, 8, 8, 1)
    table = (project / "results/demo/table_digits.csv").read_text().splitlines()
    assert table[0] == ("section,label,source,run,extractor,n_seeds,fid,fid_se,fid_sd_seeds,fid_paper,is_mean,"
                        "is_mean_se,is_mean_sd_seeds,is_mean_paper,test_bpd,test_bpd_se,test_bpd_sd_seeds,test_bpd_paper")
    assert d["fid_se"] > 0 and d["fid_ci_low"] < d["fid_ci_high"] and d["n_bootstrap"] == 200 and d["test_bpd_se"] > 0
    # beside the metrics: the instrument and the machines
    prov = json.loads((project / "results/demo/provenance/digits_t6.json").read_text())
    assert prov["extractor"]["name"] == "digits_classifier" and prov["extractor"]["sha256"] == TINY_SHA256
    assert prov["trained_on"]["cpu"] and prov["evaluated_on"]["torch_cpu_capability"]
    assert table[2].startswith(",digits T6,measured,digits_t6,digits_classifier,1,")
    assert (project / "results/demo/runs/toy_checkerboard_drl/config.json").exists()
    toy = json.loads((project / "results/demo/provenance/toy_checkerboard_drl.json").read_text())
    assert toy["log_z_ais_method"] == "ais_hmc" and np.isfinite(m["log_z_ais"] - m["log_z_quadrature"])
    # Section 4.2: adapted step sizes, chains of 1 and 3 steps per level, each scored, and a table row per length
    lr = json.loads((project / "results/demo/metrics/digits_t10.json").read_text())["long_run"]
    assert set(lr) == {"1", "3"} and all(v["fid"] > 0 and v["n_samples"] == 12 for v in lr.values())
    assert lr["1"]["acceptance_mean"] is None and 0 < lr["3"]["acceptance_mean"] <= 1
    steps = (project / "results/demo/runs/digits_t10/hmc_steps.csv").read_text().splitlines()
    assert steps[0] == "t,step_size,adapt_acceptance,acceptance_1,acceptance_3" and len(steps) == 11
    rows = (project / "results/demo/table_long_run.csv").read_text().splitlines()
    assert rows[2].split(",")[6] == repr(lr["3"]["fid"])
    # one command yields the HTML report with the tables, figures, sample grids and metrics
    run(["snakemake", "--report", "report.html", "demo"], project)
    html = (project / "report.html").read_text()
    assert "fig_hmc.png" in html and "table_long_run.csv" in html
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
    text = original.replace("      quadrature: {extent: 4.0, grid: 64}\n      partition:",
                            "      quadrature: {extent: 4.0, grid: 96}\n      partition:")
    new, old = yaml.safe_load(text)["runs"], yaml.safe_load(original)["runs"]
    assert new["toy_checkerboard_drl"]["evaluate"]["quadrature"]["grid"] == 96
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
    # DVC plots: the training curves, the HMC step sizes and every figure
    plots = json.loads(run("dvc plots show --json", project).stdout)["data"]
    assert {"results/demo/runs/digits_t10/hmc_steps.csv", "results/demo/runs/digits_t6/train_log.csv",
            "results/demo/figures/fig_hmc.png"} <= set(plots), sorted(plots)


@pytest.mark.e2e
def test_editing_a_module_reruns_exactly_the_stages_that_import_it(project):
    """Code dependencies are derived from each stage's imports: AIS (drl/hmc.py) is run by evaluation
    and the long-run chains, never by training or sampling, and both engines see that."""
    run("dvc repro -q", project)
    hmc = project / "drl/hmc.py"
    original, stat = hmc.read_text(), hmc.stat()
    stages = yaml.safe_load((project / "dvc.yaml").read_text())["stages"]
    importers = {name for name, st in stages.items() if "drl/hmc.py" in st.get("deps", [])}
    assert {"evaluate_digits_t6", "evaluate_toy_checkerboard_drl", "long_run_digits_t10"} <= importers
    assert not any(n.startswith(("train_", "sample_", "prepare_", "table_")) for n in importers), importers
    try:
        hmc.write_text(original + "\n# an edit\n")
        status = run("dvc status", project).out
        assert set(re.findall(r"^(\S+):\s*$", status, flags=re.M)) == importers, status
        dry = run(["snakemake", "-n", "demo"], project).out
        planned = {m.group(1) for m in re.finditer(r"^(\w+)\s+\d+$", dry, flags=re.M)} - {"total", "demo"}
        assert planned >= {"evaluate", "long_run"} and not planned & {"train", "sample", "prepare"}, dry
    finally:
        hmc.write_text(original)
        os.utime(hmc, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert "up to date" in run("dvc status", project).out.lower()


def _lock_outputs(root: Path) -> dict[str, bytes]:
    """Every file DVC caches (models, samples, prepared data, logs), by path, with its bytes."""
    out = {}
    for stage in yaml.safe_load((root / "dvc.lock").read_text())["stages"].values():
        for o in stage.get("outs", []):
            p = root / o["path"]
            for f in sorted(p.rglob("*")) if p.is_dir() else [p]:
                if f.is_file():
                    out[str(f.relative_to(root))] = f.read_bytes()
    return out


@pytest.mark.e2e
def test_trained_artifacts_are_shared_through_a_dvc_remote(project, tmp_path):
    """A team shares models through a DVC remote on a shared path: push after a run; a teammate's fresh
    clone pulls every model, sample and metric byte for byte, and neither engine wants to rerun."""
    run("dvc repro -q", project)
    remote = tmp_path / "shared-remote"   # the team's path (e.g. /project/drl-dvc); the repository pins none
    run(f"dvc remote add -d shared {remote} && git add -A && git commit -qm 'run, and the team remote'", project)
    run("dvc push", project)
    clone = tmp_path / "clone"
    run(f"git clone -q {project} {clone}", tmp_path)
    assert not (clone / "results/demo/runs/digits_t6/model.pt").exists()
    # committed metrics are older than the models about to be pulled: Snakemake alone would rerun them
    pulled = run("drl pull --group demo", clone).out
    assert "both find them up to date" in pulled, pulled
    before = _lock_outputs(project)
    assert {"results/demo/runs/digits_t6/model.pt", "results/demo/runs/digits_t6/samples.npy",
            "data/prepared/digits/train.npy"} <= set(before)
    assert _lock_outputs(clone) == before
    for f in DEMO_OUTPUTS:  # metrics, figures and tables come from git
        assert (clone / f).read_bytes() == (project / f).read_bytes(), f
    assert "up to date" in run("dvc status", clone).out.lower()
    assert "Nothing to be done" in run(["snakemake", "-n", "demo"], clone).out
    # a pull that does not match the checkout touches nothing and names what changed (the grid is 64,
    # or 96 when the DVC test above ran first)
    text = (clone / "params.yaml").read_text()
    changed = re.sub(r"quadrature: \{extent: 4.0, grid: \d+\}\n      partition:",
                     "quadrature: {extent: 4.0, grid: 80}\n      partition:", text)
    assert changed != text
    (clone / "params.yaml").write_text(changed)
    refused = run("drl pull --group demo", clone, check=False)
    assert refused.returncode == 2 and "evaluate_toy_checkerboard_drl" in refused.out, refused.out


def test_runs_on_several_gpus_train_under_torchrun():
    params = load_params(ROOT / "params.yaml")
    cfg = json.loads(json.dumps(params["runs"]["cifar10_t6_k30"]))
    assert train_command(cfg, "r") == "drl train --run r"  # one GPU: one process
    cfg["resources"]["gpu"] = 4
    assert train_command(cfg, "r") == "torchrun --standalone --nproc_per_node 4 -m drl.cli -- train --run r"
