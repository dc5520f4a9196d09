"""Fixed instruments and uncertainty: the shipped digits classifier is the instrument params.yaml
names (checked by sha256), FID/IS carry standard errors (half-sampling) that match the spread
of independent sample sets (a Gaussian oracle), tables print value ± se, and `drl compare` says whether
a change is beyond that spread and whether the instrument or machine changed."""
from __future__ import annotations

import copy
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from drl.cli import main
from drl.config import ParamsError, validate
from drl.data.raw import file_sha256
from drl.evaluate.fidelity import EvaluationError, bootstrap, frechet_distance, resolve_extractor
from drl.provenance import machine
from drl.report.compare import compare, divergence_notes, provenance_notes
from drl.report.tables import table_rows, to_markdown
from torch_fidelity.metric_fid import fid_features_to_statistics

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
SHIPPED = {**PARAMS["extractors"]["digits_classifier"],
           "weights": str(ROOT / PARAMS["extractors"]["digits_classifier"]["weights"])}


# ---------------------------------------------------------------- the fixed instrument
def test_the_shipped_classifier_is_the_one_params_names():
    assert file_sha256(SHIPPED["weights"]) == SHIPPED["sha256"]
    ex = resolve_extractor(SHIPPED, "extractors.digits_classifier")
    assert ex.describe()["sha256"] == SHIPPED["sha256"] and ex.channels == 1


def test_another_classifier_file_is_refused_with_the_key_and_the_fix(tmp_path):
    other = tmp_path / "digits_classifier.pt"
    shutil.copy(SHIPPED["weights"], other)
    with open(other, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(EvaluationError) as exc:
        resolve_extractor({**SHIPPED, "weights": str(other)}, "extractors.digits_classifier")
    msg = str(exc.value)
    assert "extractors.digits_classifier.sha256" in msg and str(other) in msg and file_sha256(other) in msg
    assert "git checkout" in msg
    resolve_extractor({**SHIPPED, "weights": str(other), "sha256": file_sha256(other)})  # named: accepted


def test_the_workflow_never_retrains_the_instrument():
    from drl.workflow import stages

    params = validate(copy.deepcopy(PARAMS))   # expands the runs with seeds
    names = [s.name for s in stages(params)]
    assert not [n for n in names if n.startswith("extractor")]
    refstats = [s for s in stages(params) if s.name.startswith("refstats_digits")]
    weights = PARAMS["extractors"]["digits_classifier"]["weights"]
    assert refstats and all(weights in s.deps for s in refstats)


# ---------------------------------------------------------------- bootstrap against an oracle
def test_half_sampling_se_matches_the_spread_of_independent_sample_sets():
    """A Gaussian oracle at the digits' scale: 128-d features of n = 500 samples ~ N(shift, 1.69 C),
    reference = the exact data Gaussian N(0, C).  The FID of n samples varies from set to set with
    some SD; the standard error from ONE set must estimate it.  Measured: SD 0.62 over 200 sets
    (FID 31.8); half-sampling se / SD 1.03-1.22 over 6 seeds (the ordinary bootstrap gave 1.3-1.45,
    and its percentile interval lay entirely above the FID, shifted by the duplicates).  The band
    0.8-1.4 allows the ~7 % sampling error of a 100-resample se and of a 150-set SD."""
    d, n = 128, 500
    rng = np.random.default_rng(0)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    cov = a @ a.T + 0.1 * np.eye(d)
    chol, shift = np.linalg.cholesky(cov), 0.3 * rng.standard_normal(d)
    ref = {"mu": np.zeros(d), "sigma": cov}

    def draw():
        return torch.from_numpy(1.3 * rng.standard_normal((n, d)) @ chol.T + shift)

    sd = np.std([frechet_distance(fid_features_to_statistics(draw()), ref) for _ in range(150)], ddof=1)
    logits, x = torch.from_numpy(rng.standard_normal((n, 3))), draw()
    out = bootstrap(x, logits, ref, 100, is_splits=1, seed=1)
    assert out["n_bootstrap"] == 100 and 0.8 * sd < out["fid_se"] < 1.4 * sd, (out["fid_se"], sd)
    fid = frechet_distance(fid_features_to_statistics(x), ref)
    assert out["fid_ci_low"] == pytest.approx(fid - 1.96 * out["fid_se"]) and out["fid_ci_high"] > fid
    assert out["is_mean_se"] > 0 and out["is_mean_ci_low"] < out["is_mean_ci_high"]
    with pytest.raises(EvaluationError, match="at least 2"):
        bootstrap(logits, logits, ref, 1, 1)
    with pytest.raises(EvaluationError, match="is_splits"):
        bootstrap(logits[:10], logits[:10], ref, 5, 6)


def test_bootstrap_is_the_same_when_repeated():
    rng = np.random.default_rng(3)
    f, logits = torch.from_numpy(rng.standard_normal((50, 3))), torch.from_numpy(rng.standard_normal((50, 4)))
    ref = {"mu": np.zeros(3), "sigma": np.eye(3)}
    assert bootstrap(f, logits, ref, 20, 2) == bootstrap(f, logits, ref, 20, 2)


@pytest.mark.parametrize("edit, key", [
    (lambda r: r["evaluate"]["fidelity"].update(bootstrap=1), "runs.digits_t6_k30.evaluate.fidelity.bootstrap"),
    (lambda r: r["sample"].update(n=15), "runs.digits_t6_k30.sample.n"),
])
def test_standard_errors_need_enough_samples(edit, key):
    params = copy.deepcopy(PARAMS)
    edit(params["runs"]["digits_t6_k30"])
    with pytest.raises(ParamsError, match=key.replace(".", r"\.")):
        validate(params)
    params["runs"]["digits_t6_k30"]["evaluate"]["fidelity"]["bootstrap"] = 0   # no standard errors: accepted
    params["runs"]["digits_t6_k30"]["sample"]["n"] = 15
    validate(params)


# ---------------------------------------------------------------- tables and compare
def test_tables_print_value_and_standard_error():
    table = {"columns": ["fid", "is_mean"], "rows": [{"label": "Ours", "run": "r"}]}
    rows = table_rows(table, lambda run: {"fid": 112.584, "fid_se": 3.14159, "is_mean": 6.95})
    assert rows[0]["fid_se"] == 3.14159 and rows[0]["is_mean_se"] == ""
    md = to_markdown("T", table["columns"], rows)
    assert "| 112.6 ± 3.1 | 6.95 |" in md and "standard error" in md
    assert "| 112.6 |" in to_markdown("T", ["fid"], table_rows({"columns": ["fid"], "rows": [{"label": "a", "run": "r"}]},
                                                               lambda r: {"fid": 112.6, "fid_se": float("nan")}))
    assert "0.1234 ± 0.0056" in to_markdown("T", ["x"], table_rows(
        {"columns": ["x"], "rows": [{"label": "a", "run": "r"}]}, lambda r: {"x": 0.123449, "x_se": 0.005612}))


def test_compare_judges_changes_against_the_combined_standard_error():
    old = {"fid": 100.0, "fid_se": 3.0, "is_mean": 7.0, "is_mean_se": 0.1, "kl_nats": 0.12,
           "long_run": {"10": {"fid": 50.0, "fid_se": 1.0}}, "n_samples": 500}
    new = {"fid": 105.0, "fid_se": 4.0, "is_mean": 7.5, "is_mean_se": 0.1, "kl_nats": 0.13,
           "long_run": {"10": {"fid": 50.5, "fid_se": 1.0}}, "n_samples": 500}
    rows = {r["metric"]: r for r in compare(old, new)}
    assert set(rows) == {"fid", "is_mean", "kl_nats", "long_run.10.fid"}
    assert rows["fid"]["se_diff"] == pytest.approx(5.0) and rows["fid"]["verdict"] == "within spread"
    assert rows["is_mean"]["z"] == pytest.approx(0.5 / np.hypot(0.1, 0.1)) and rows["is_mean"]["verdict"] == "beyond spread"
    assert rows["kl_nats"]["verdict"] == "no spread given" and rows["long_run.10.fid"]["verdict"] == "within spread"
    # a run that newly diverged has null metrics: listed, not silently skipped
    gone = {r["metric"]: r["verdict"] for r in compare(old, {"fid": None, "diverged_iteration": 7})}
    assert gone["fid"] == gone["is_mean"] == "only in the old file" and "diverged_iteration" not in gone
    assert divergence_notes(old, {"diverged_iteration": 7}) == ["the new run DIVERGED at iteration 7: its metrics are null"]


def test_compare_says_when_the_instrument_or_machine_changed():
    m = machine("cpu")
    assert m["cpu"] and m["torch_cpu_capability"] and m["threads"] >= 1 and m["torch"] == torch.__version__
    a = {"extractor": {"sha256": "a" * 64}, "trained_on": m, "evaluated_on": m}
    assert provenance_notes(a, a) == []
    other_isa = "AVX2" if m["torch_cpu_capability"] == "AVX512" else "AVX512"   # whichever this machine is not
    b = {**a, "extractor": {"sha256": "b" * 64}, "trained_on": {**m, "cpu": "Other CPU", "torch_cpu_capability": other_isa}}
    notes = provenance_notes(a, b)
    assert "INSTRUMENT CHANGED" in notes[0] and "Other CPU" in notes[1] and other_isa in notes[1]


def test_compare_cli_against_a_git_revision(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "params.yaml", "params.yaml")
    metrics, prov = tmp_path / "results/g/metrics/r.json", tmp_path / "results/g/provenance/r.json"
    metrics.parent.mkdir(parents=True)
    prov.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"fid": 100.0, "fid_se": 2.0}))
    prov.write_text(json.dumps({"extractor": {"sha256": "a" * 64}}))
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q"], check=True)
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-qm", "x"], check=True)
    metrics.write_text(json.dumps({"fid": 120.0, "fid_se": 2.0}))
    assert main(["compare", "results/g/metrics/r.json"]) == 0
    out = capsys.readouterr().out
    assert "results/g/metrics/r.json@HEAD" in out and "beyond spread" in out and "INSTRUMENT" not in out
    assert main(["compare", "results/g/metrics/r.json", "--rev", "HEAD~5"]) == 2   # no such version
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "results/g/metrics/q.json"
    other.write_text(json.dumps({"fid": 101.0, "fid_se": 2.0}))
    assert main(["compare", "--pair", str(other), "results/g/metrics/r.json"]) == 0
    assert "q.json -> results/g/metrics/r.json" in capsys.readouterr().out
    # two files without --pair: each against its committed version, never silently with each other
    assert main(["compare", "results/g/metrics/r.json", "results/g/metrics/q.json"]) == 2



def test_test_log_likelihood_se_adds_the_test_spread_and_log_z_error():
    """mean(log g - log Z) over n test examples: var = var(log g) / n + se(log Z)^2 (log Z shifts all
    alike); checked against the spread of the mean over many simulated test sets and log Z estimates."""
    from drl.evaluate.likelihood import bits_per_dim, mean_log_likelihood_se

    rng = np.random.default_rng(0)
    n, sd, z_se = 200, 3.0, 0.4
    means = [np.mean(rng.normal(-10, sd, n) - rng.normal(0, z_se)) for _ in range(4000)]
    se = mean_log_likelihood_se(rng.normal(-10, sd, n), z_se)
    assert se == pytest.approx(np.std(means), rel=0.1) and se == pytest.approx(np.hypot(sd / np.sqrt(n), z_se), rel=0.1)
    assert mean_log_likelihood_se([1.0], 0.1) is None
    dim = 64   # bits/dim are affine in log p with slope -1 / (D log 2): the se scales by that
    assert bits_per_dim(0.0, dim) - bits_per_dim(1.0, dim) == pytest.approx(1 / (dim * np.log(2)))


def test_retraining_the_classifier_is_an_explicit_action_that_names_the_new_hash(tmp_path, monkeypatch, capsys):
    params = copy.deepcopy(PARAMS)
    params["extractors"]["digits_classifier"].update(weights="clf.pt", epochs=1, width=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    assert main(["prepare", "--dataset", "digits"]) == 0
    assert main(["extractor", "--extractor", "digits_classifier"]) == 0
    out = capsys.readouterr().out
    sha = file_sha256(tmp_path / "clf.pt")
    assert f"sha256 {sha}" in out and "set extractors.digits_classifier.sha256 in params.yaml" in out
    with pytest.raises(EvaluationError, match="extractors.digits_classifier.sha256"):   # until params names it
        resolve_extractor(params["extractors"]["digits_classifier"], "extractors.digits_classifier")
    assert main(["extractor", "--extractor", "inception"]) == 2   # only classifiers are trained here
