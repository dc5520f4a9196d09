"""drl/config.py and the repository's params.yaml: every problem is reported at once, by key."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

from drl.config import ParamsError, load_params, run_config, validate

PARAMS_YAML = Path(__file__).resolve().parents[1] / "params.yaml"
DRL = "toy_checkerboard_drl"          # conditional top level, linear_sigma2, paper step size
SHORT = "toy_checkerboard_shortrun"   # marginal top level, T = 1
RINGS = "toy_rings_drl"
EIGHT = "toy_eight_gaussians_drl"


@pytest.fixture
def params() -> dict:
    """A fresh valid params dict.  The JSON round trip is a deep copy that also unshares the
    sections YAML merge keys (<<: *toy_drl) make common to several runs."""
    return json.loads(json.dumps(yaml.safe_load(PARAMS_YAML.read_text())))


def problems(exc: pytest.ExceptionInfo) -> tuple[int, list[str]]:
    msg = str(exc.value)
    m = re.search(r"has (\d+) problem\(s\)", msg)
    assert m, msg
    lines = [ln.strip()[2:] for ln in msg.splitlines()[1:] if ln.strip().startswith("- ")]
    assert len(lines) == int(m.group(1)), msg
    return int(m.group(1)), lines


def test_repository_params_load_and_validate():
    params = load_params(PARAMS_YAML)
    assert set(params) >= {"datasets", "runs", "figures"}
    assert DRL in params["runs"] and SHORT in params["runs"]
    # merge keys resolved: each run has every stage section
    for name, run in params["runs"].items():
        for section in ("diffusion", "energy", "sampler", "objective", "train", "sample", "evaluate"):
            assert section in run, (name, section)
        assert run["dataset"] in params["datasets"]
    assert params["runs"][SHORT]["diffusion"]["top_level"] == "marginal"
    assert params["runs"][SHORT]["sampler"]["K"] == 180
    assert params["runs"][DRL]["sampler"]["K"] == 30


def test_validate_returns_the_params(params):
    assert validate(params) is params


def test_schema_errors_reported_together_by_key(params):
    run = params["runs"][DRL]
    run["train"]["learning_rate"] = 0.1          # unknown key
    run["train"]["iterations"] = "many"          # wrong type
    run["diffusion"]["T"] = 0                    # below minimum
    run["sampler"]["K"] = -1                     # below minimum
    run["sampler"]["b"] = -0.5                   # not > 0
    params["runs"][SHORT]["objective"]["name"] = "contrastive"   # not in enum
    params["surprise"] = 1                       # unknown top-level key
    with pytest.raises(ParamsError) as exc:
        validate(params, source="my_params.yaml")
    msg = str(exc.value)
    assert msg.startswith("my_params.yaml ")
    n, lines = problems(exc)
    assert n == 7, msg

    def line_for(key_path: str) -> str:
        hits = [ln for ln in lines if ln.split(": ", 1)[0] == key_path]
        assert len(hits) == 1, (key_path, lines)
        return hits[0]

    assert "learning_rate" in line_for(f"runs.{DRL}.train")
    assert "many" in line_for(f"runs.{DRL}.train.iterations")
    assert "0" in line_for(f"runs.{DRL}.diffusion.T")
    assert "-1" in line_for(f"runs.{DRL}.sampler.K")
    assert "-0.5" in line_for(f"runs.{DRL}.sampler.b")
    assert "contrastive" in line_for(f"runs.{SHORT}.objective.name")
    assert "surprise" in line_for("(top level)")
    # the other runs that share the anchor are untouched and not reported
    assert not any(RINGS in ln for ln in lines)


def test_ais_bridges_are_refused_beside_a_fixed_step_size(params):
    """The bridges are placed by the step-size pilot, which a fixed ``step_size`` skips."""
    part = params["runs"][DRL]["evaluate"]["partition"]
    assert part["transitions"] == "ais_hmc"
    part["bridges"] = 20
    validate(copy.deepcopy(params))
    part["step_size"] = 0.1
    with pytest.raises(ParamsError) as exc:
        validate(params)
    _, lines = problems(exc)
    assert lines == [f"runs.{DRL}.evaluate.partition: bridges need the step-size pilot to be placed, and a fixed "
                     "step_size skips it: drop step_size (the pilot adapts the steps), or set bridges: 0"], lines
    part["bridges"] = 0
    validate(params)


def test_missing_required_section_named(params):
    del params["runs"][DRL]["evaluate"]
    del params["datasets"]["rings"]["seed"]
    with pytest.raises(ParamsError) as exc:
        validate(params)
    _, lines = problems(exc)
    assert any(ln.startswith(f"runs.{DRL}: ") and "'evaluate'" in ln for ln in lines), lines
    assert any(ln.startswith("datasets.rings: ") and "'seed'" in ln for ln in lines), lines


def test_semantic_checks_wait_for_schema_errors(params):
    params["runs"][DRL]["dataset"] = "nowhere"           # semantic
    params["runs"][DRL]["train"]["iterations"] = "many"  # schema
    with pytest.raises(ParamsError) as exc:
        validate(params)
    n, lines = problems(exc)
    assert n == 1 and lines[0].startswith(f"runs.{DRL}.train.iterations: ")


SEMANTIC_CASES = {
    "compile_with_per_call_spectral_norm": (
        lambda p: p["runs"]["digits_t6_k30"]["perf"].update(compile=True),
        "runs.digits_t6_k30.perf.compile", "per_iteration"),
    "missing_dataset": (
        lambda p: p["runs"][DRL].update(dataset="moons"),
        f"runs.{DRL}.dataset", "moons"),
    "figure_missing_run": (
        lambda p: p["figures"]["fig3_rings"]["runs"].append("ghost_run"),
        "figures.fig3_rings.runs", "ghost_run"),
    "K0_marginal": (
        lambda p: p["runs"][SHORT]["sampler"].update(K=0),
        f"runs.{SHORT}.sampler.K", "conditional"),
    "dsm_marginal": (
        lambda p: p["runs"][SHORT]["objective"].update(name="dsm"),
        f"runs.{SHORT}.objective.name", "dsm"),
    "released_step_clean_level0": (
        lambda p: p["runs"][DRL]["sampler"].update(step_size="released"),
        f"runs.{DRL}.sampler.step_size", "released"),
    "released_schedule_T1": (
        lambda p: p["runs"][EIGHT]["diffusion"].update(schedule="released", T=1),
        f"runs.{EIGHT}.diffusion.T", "T"),
    "sigma2_min_above_max": (
        lambda p: p["runs"][RINGS]["diffusion"].update(sigma2_min=0.5, sigma2_max=0.1),
        f"runs.{RINGS}.diffusion.sigma2_min", "sigma2_max"),
    "toy_dataset_without_toy": (
        lambda p: p["datasets"]["rings"].pop("toy"),
        "datasets.rings.toy", "toy"),
    "points_dataset_without_path": (
        lambda p: p["datasets"].update(mine={"source": "points", "seed": 0}),
        "datasets.mine.path", "points"),
    "batch_not_divisible_by_gpus": (
        lambda p: p["runs"]["cifar10_t6_k30"].update(resources={"gpu": 3}),
        "runs.cifar10_t6_k30.train.batch_size", "resources.gpu"),
    "quadrature_on_images": (
        lambda p: p["runs"]["digits_t6_k30"]["evaluate"].update(quadrature={"extent": 4.0, "grid": 64}),
        "runs.digits_t6_k30.evaluate.quadrature", "2-D"),
    "unknown_extractor": (
        lambda p: p["runs"]["digits_t6_k30"]["evaluate"]["fidelity"].update(extractor="vgg"),
        "runs.digits_t6_k30.evaluate.fidelity.extractor", "vgg"),
    "classifier_without_dataset": (
        lambda p: p["extractors"]["digits_classifier"].pop("dataset"),
        "extractors.digits_classifier.dataset", "classifier"),
    "inception_without_weights": (
        lambda p: p["extractors"]["inception"].pop("weights"),
        "extractors.inception.weights", "inception"),
    "table_metric_not_measured": (
        lambda p: p["tables"]["table3"].update(columns=["test_bpd", "kl_nats"]),
        "tables.table3.rows[6]", "kl_nats"),
    "table_missing_run": (
        lambda p: p["tables"]["table3"]["rows"].append({"label": "x", "run": "ghost"}),
        "tables.table3.rows[7].run", "ghost"),
    "samples_figure_of_a_toy": (
        lambda p: p["figures"]["fig_samples_digits"].update(runs=[RINGS]),
        "figures.fig_samples_digits.kind", "image"),
    "interpolation_of_a_toy": (
        lambda p: p["figures"]["fig5_interpolation_digits"].update(runs=[RINGS]),
        "figures.fig5_interpolation_digits.kind", "image"),
    "group_named_like_a_rule": (
        lambda p: p["runs"][RINGS].update(group="train"),
        f"runs.{RINGS}.group", "rule"),
    "long_run_with_a_marginal_top": (
        lambda p: p["runs"]["digits_t6_k30"].update(long_run=dict(p["runs"]["digits_t1k"]["long_run"])),
        "runs.digits_t6_k30.long_run", "conditional"),
    "table_selects_an_unrun_chain_length": (
        lambda p: p["tables"]["demo_table2"]["rows"][2].update(select="long_run.7"),
        "tables.demo_table2.rows[2].select", "7 steps per level"),
    "hmc_figure_of_a_run_without_long_run": (
        lambda p: p["figures"]["fig6_hmc_digits"].update(runs=[EIGHT]),
        "figures.fig6_hmc_digits.kind", "long_run"),
    "claim_on_an_unknown_row": (
        lambda p: p["tables"]["digits_table2"]["claims"][0].update(rows=["T = 6, K = 30", "T = 6, K = 20"]),
        "tables.digits_table2.claims[0].rows", "T = 6, K = 20"),
    "claim_on_a_metric_not_in_the_table": (
        lambda p: p["tables"]["digits_table2"]["claims"][0].update(metric="kl_nats"),
        "tables.digits_table2.claims[0].metric", "kl_nats"),
    "comparison_with_one_run": (
        lambda p: p["figures"]["fig2_checkerboard"]["runs"].pop(),
        "figures.fig2_checkerboard.runs", "two"),
}


@pytest.mark.parametrize("case", sorted(SEMANTIC_CASES))
def test_semantic_error_named(params, case):
    mutate, key, word = SEMANTIC_CASES[case]
    mutate(params)
    with pytest.raises(ParamsError) as exc:
        validate(params)
    n, lines = problems(exc)
    assert n == 1, lines
    assert lines[0].startswith(key + ": "), lines
    assert word in lines[0]


def test_spectral_norm_schedule_under_perf_is_refused_naming_its_place(params):
    params["runs"][DRL]["perf"] = {"sn_power_iteration": "per_iteration"}
    with pytest.raises(ParamsError) as exc:
        validate(params)
    assert any(line.startswith(f"runs.{DRL}.perf.sn_power_iteration: now runs.{DRL}.energy.sn_power_iteration")
               for line in problems(exc)[1]), str(exc.value)
    params["runs"][DRL]["perf"] = 3   # not a mapping: the schema's error, not a TypeError of this check
    with pytest.raises(ParamsError, match=f"runs.{DRL}.perf: 3 is not of type 'object'"):
        validate(params)
    del params["runs"][DRL]["perf"]
    params["runs"]["digits_t6_k30"]["perf"]["compile"] = True
    params["runs"]["digits_t6_k30"]["energy"]["sn_power_iteration"] = "per_iteration"
    validate(params)


def test_semantic_errors_reported_together(params):
    for mutate, _, _ in SEMANTIC_CASES.values():
        mutate(params)
    with pytest.raises(ParamsError) as exc:
        validate(params)
    n, lines = problems(exc)
    assert n == len(SEMANTIC_CASES)
    assert sorted(ln.split(": ", 1)[0] for ln in lines) == sorted(k for _, k, _ in SEMANTIC_CASES.values())


def test_missing_dataset_lists_defined(params):
    params["runs"][DRL]["dataset"] = "moons"
    with pytest.raises(ParamsError) as exc:
        validate(params)
    for ds in params["datasets"]:
        assert ds in str(exc.value)


@pytest.mark.parametrize("fix", [
    lambda d: d.update(sigma0=0.01),
    lambda d: d.update(schedule="released", T=6),
])
def test_released_step_size_ok_with_noised_level0(params, fix):
    params["runs"][DRL]["sampler"]["step_size"] = "released"
    fix(params["runs"][DRL]["diffusion"])
    assert validate(params) is params


def test_posterior_mean_positives_and_simple_weights_are_for_dsm_only(params):
    """Recovery likelihood's f(y^+) is not linear in y^+, so its mean would change the objective; the
    loss weights are each objective's own (released: recovery likelihood; simple: DSM)."""
    obj = params["runs"][DRL]["objective"]
    params["runs"][DRL]["diffusion"]["top_level"] = "conditional"
    obj.update(name="dsm", loss_weights="simple", positive="posterior_mean")
    validate(copy.deepcopy(params))
    for bad, key in [({"name": "recovery_likelihood", "loss_weights": "uniform"}, "positive"),
                     ({"name": "recovery_likelihood", "positive": "sample"}, "loss_weights"),
                     ({"loss_weights": "released"}, "loss_weights")]:
        p = copy.deepcopy(params)
        p["runs"][DRL]["objective"].update(bad)
        with pytest.raises(ParamsError) as exc:
            validate(p)
        _, lines = problems(exc)
        assert len(lines) == 1 and lines[0].startswith(f"runs.{DRL}.objective.{key}: "), lines


def test_K0_and_dsm_ok_with_conditional_top(params):
    params["runs"][DRL]["diffusion"]["top_level"] = "conditional"
    params["runs"][DRL]["sampler"]["K"] = 0
    params["runs"][DRL]["objective"]["name"] = "dsm"
    assert validate(params) is params


def test_long_run_needs_a_fidelity_extractor(params):
    params["runs"]["cifar10_t1k_k0_dsm"]["long_run"] = dict(params["runs"]["cifar10_t1k_k0"]["long_run"])
    params["runs"]["cifar10_t1k_k0_dsm"]["evaluate"] = {"partition": {"n_samples": 10, "K": 0, "seed": 0}}
    with pytest.raises(ParamsError) as exc:
        validate(params)
    assert ("runs.cifar10_t1k_k0_dsm.long_run: needs evaluate.fidelity (its extractor scores every chain length)"
            in problems(exc)[1])


def test_load_params_missing_file(tmp_path):
    path = tmp_path / "nope" / "params.yaml"
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    assert str(path) in str(exc.value) and "not found" in str(exc.value)


def test_load_params_invalid_yaml(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("datasets: {a: [1, 2\nruns: :\n")
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    assert str(path) in str(exc.value) and "YAML" in str(exc.value)


def test_load_params_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    assert str(path) in str(exc.value)


def test_load_params_names_file_in_validation_errors(tmp_path, params):
    params["runs"][DRL]["sampler"]["K"] = -1
    path = tmp_path / "bad_params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as exc:
        load_params(path)
    assert str(exc.value).startswith(str(path))
    assert f"runs.{DRL}.sampler.K" in str(exc.value)


def test_params_error_is_value_error():
    assert issubclass(ParamsError, ValueError)


def test_run_config(params):
    assert run_config(params, DRL) is params["runs"][DRL]
    with pytest.raises(ParamsError) as exc:
        run_config(params, "no_such_run")
    msg = str(exc.value)
    assert "no_such_run" in msg
    for name in params["runs"]:
        assert name in msg


def test_reserved_group_names_are_the_workflow_rules():
    """Read from the rule files, so a new rule is reserved without a list to keep: every rule the real
    `snakemake --list-rules` shows is reserved, except the target rules the groups themselves make."""
    import os
    import subprocess
    import sys

    from drl.config import reserved_groups
    from drl.workflow import groups

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    listed = subprocess.run(["snakemake", "--list-rules"], cwd=root, env=env, capture_output=True, text=True, check=True)
    rules = set(listed.stdout.split())
    assert reserved_groups() == rules - set(groups(load_params(root / "params.yaml")))
    assert {"long_run", "missing_input", "fetch"} <= reserved_groups()


@pytest.mark.parametrize("group", ["long_run", "missing_input", "fetch_unpacked"])
def test_a_group_named_like_any_rule_is_refused(params, group):
    params["runs"][RINGS]["group"] = group
    with pytest.raises(ParamsError, match=f"runs.{RINGS}.group: '{group}' is the name of a workflow rule"):
        validate(params, "params.yaml")
