"""Training seeds as a params key: a run with ``seeds`` is trained once per seed by runs the workflow
expands (never copied by hand), both engines see them, and tables report mean and spread over them."""
from __future__ import annotations

import copy
import re
import shutil
from pathlib import Path

import pytest
import yaml

from drl.config import ParamsError, seed_runs, source_run, validate
from drl.report.tables import table_rows, to_markdown
from drl.workflow import dvc_files, stages
from test_workflow import run

ROOT = Path(__file__).resolve().parents[1]
RAW = yaml.safe_load((ROOT / "params.yaml").read_text())


def _with_seeds(seeds, run="digits_t6_k30"):
    params = copy.deepcopy(RAW)
    params["runs"][run]["seeds"] = seeds
    return params


def test_a_run_with_seeds_expands_into_one_run_per_seed():
    params = validate(_with_seeds([0, 1, 2]))
    assert seed_runs(params, "digits_t6_k30") == ["digits_t6_k30", "digits_t6_k30_seed1", "digits_t6_k30_seed2"]
    base = params["runs"]["digits_t6_k30"]
    for s in (1, 2):
        r = params["runs"][f"digits_t6_k30_seed{s}"]
        assert r["train"] == {**base["train"], "seed": s} and source_run(params, f"digits_t6_k30_seed{s}") == "digits_t6_k30"
        assert {k: v for k, v in r.items() if k not in ("train", "seed_of")} == {k: v for k, v in base.items()
                                                                             if k not in ("train", "seeds")}
    assert validate(params) is params and len(params["runs"]) == len(validate(copy.deepcopy(RAW))["runs"]) + 2   # again: a no-op
    by_name = {s.name: s for s in stages(params)}
    # the copies' stages track their run's params.yaml keys (they have none of their own), not the seed
    # list: adding a seed adds a training and retrains nothing
    assert by_name["train_digits_t6_k30_seed2"].params == by_name["train_digits_t6_k30"].params
    assert not [p for s in stages(params) for p in s.params if p.endswith(".seeds")]
    assert all(p.startswith(("runs.digits_t6_k30.", "datasets.", "extractors."))
               for s in ("train", "sample", "evaluate") for p in by_name[f"{s}_digits_t6_k30_seed1"].params)
    table = by_name["table_demo_table1"]
    assert {f"results/demo/metrics/digits_t6_k30{x}.json" for x in ("", "_seed1", "_seed2")} <= set(table.deps)
    assert "train_digits_t6_k30_seed1" in dvc_files(params)["dvc.yaml"]


@pytest.mark.parametrize("edit, key, words", [
    (lambda p: p["runs"]["digits_t6_k30"].update(seeds=[5, 1]), "runs.digits_t6_k30.seeds", "first seed (5)"),
    (lambda p: p["runs"].update(digits_t6_k30_seed1=copy.deepcopy(p["runs"]["digits_t1k"])) or
     p["runs"]["digits_t6_k30"].update(seeds=[0, 1]), "runs.digits_t6_k30.seeds", "defines itself"),
    (lambda p: p["runs"]["digits_t1k"].update(seed_of="digits_t6_k30"), "runs.digits_t1k", "'seed_of' was unexpected"),
    (lambda p: p["runs"]["digits_t6_k30"].update(seeds=[0]), "runs.digits_t6_k30.seeds", "short"),
])
def test_bad_seeds_are_refused_naming_the_key(edit, key, words):
    params = copy.deepcopy(RAW)
    edit(params)
    with pytest.raises(ParamsError) as exc:
        validate(params)
    assert key in str(exc.value) and words in str(exc.value), str(exc.value)


def test_tables_report_mean_and_spread_over_seeds():
    metrics = {"r": {"fid": 10.0, "fid_se": 0.5}, "r_seed1": {"fid": 12.0, "fid_se": 0.6},
               "r_seed2": {"fid": 14.0, "fid_se": 0.4}, "one": {"fid": 20.0, "fid_se": 0.7}}
    table = {"columns": ["fid"], "rows": [{"label": "three", "run": "r", "paper": {"fid": 9.6}},
                                          {"label": "single", "run": "one"}, {"label": "quoted", "paper": {"fid": 5.0}}]}
    seeds = {"r": ["r", "r_seed1", "r_seed2"]}
    rows = table_rows(table, metrics.__getitem__, lambda run: seeds.get(run, [run]), {"r": "x"}.get)
    three, single, quoted = rows
    assert three["n_seeds"] == 3 and three["fid"] == 12.0 and three["fid_sd_seeds"] == 2.0
    assert three["fid_se"] == pytest.approx(2.0 / 3 ** 0.5) and three["fid_paper"] == 9.6
    assert single["n_seeds"] == 1 and single["fid"] == 20.0 and single["fid_se"] == 0.7 and single["fid_sd_seeds"] == ""
    assert quoted["n_seeds"] == "" and quoted["fid"] == ""
    md = to_markdown("T", ["fid"], rows)
    assert "| three | 12.0 ± 2.0 | 9.6 | measured, x, 3 seeds |" in md and "| single | 20.00 ± 0.70 |" in md
    assert "standard deviation over the training seeds" in md and "half-sampling" in md
    diverged = table_rows(table, {**metrics, "r_seed2": {"fid": None, "diverged_iteration": 0}}.__getitem__,
                          lambda run: seeds.get(run, [run]))
    assert diverged[0]["fid"] == "diverged (1 of 3 seeds)"


@pytest.mark.e2e
def test_snakemake_plans_one_training_per_seed(tmp_path):
    for name in ("drl", "workflow"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "Snakefile", tmp_path / "Snakefile")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(_with_seeds([0, 3, 4])))
    out = run(["snakemake", "-n", "-p", "--forceall", "results/demo/table1.csv"], tmp_path).stdout
    trained = set(re.findall(r"drl train --run (\S+)", out))
    assert {"digits_t6_k30", "digits_t6_k30_seed3", "digits_t6_k30_seed4"} <= trained, out
