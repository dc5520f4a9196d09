"""The stage entry points: validation and missing inputs give one clear error (exit 2) naming the
file and the command that makes it, before any work, and write nothing."""
import shutil
from pathlib import Path

import pytest

from drl.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def project(tmp_path, monkeypatch):
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_validate_reports_ok(project, capsys):
    assert main(["validate"]) == 0
    assert "params.yaml: OK" in capsys.readouterr().out


@pytest.mark.parametrize("argv,missing,producer", [
    (["train", "--run", "toy_checkerboard_drl"], "data/prepared/checkerboard/train.npy",
     "drl prepare --dataset checkerboard"),
    (["sample", "--run", "toy_checkerboard_drl"], "results/demo/runs/toy_checkerboard_drl/model.pt",
     "drl train --run toy_checkerboard_drl"),
    (["evaluate", "--run", "toy_checkerboard_shortrun"], "results/demo/runs/toy_checkerboard_shortrun/model.pt",
     "drl train --run toy_checkerboard_shortrun"),
    (["figure", "--figure", "fig3_checkerboard"], "results/demo/runs/toy_checkerboard_drl/model.pt",
     "drl train --run toy_checkerboard_drl"),
])
def test_missing_input_names_the_file_and_its_producer(project, capsys, argv, missing, producer):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert missing in err and producer in err
    assert not (project / "results").exists() or not any((project / "results").rglob("*.*"))


def test_unknown_run_and_bad_params_exit_2(project, capsys):
    assert main(["train", "--run", "nope"]) == 2
    assert "toy_checkerboard_drl" in capsys.readouterr().err  # lists the defined runs
    (project / "params.yaml").write_text((project / "params.yaml").read_text().replace("      K: 30", "      K: -3"))
    assert main(["validate"]) == 2
    assert "sampler.K" in capsys.readouterr().err


@pytest.mark.parametrize("path,words", [
    ("data/raw/cifar-10-python.tar.gz", ["cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar.html"]),
    ("data/raw/lsun/church_outdoor_train_lmdb", ["church_outdoor_train_lmdb", "github.com/fyu/lsun"]),
    ("data/weights/weights-inception-2015-12-05-6726825d.pth", ["extractors.inception.weights", "torch-fidelity/releases"]),
])
def test_missing_raw_input_says_where_to_get_it(project, capsys, path, words):
    assert main(["missing-input", "--path", path]) == 2
    err = capsys.readouterr().err
    assert all(w in err for w in words), err


def test_quadrature_metrics_without_a_closed_form_density(project):
    """Two spirals have no closed-form density: evaluate reports the test log-likelihood, no KL."""
    import numpy as np
    import torch

    from drl.stages.evaluate import _quadrature_metrics
    from drl.config import load_params
    from drl.train import build_model

    params = load_params("params.yaml")
    cfg = params["runs"]["toy_two_spirals_drl"]
    cfg = {**cfg, "evaluate": {"quadrature": {"extent": 4.0, "grid": 32}}}
    (project / "data/prepared/two_spirals").mkdir(parents=True)
    np.save(project / "data/prepared/two_spirals/test.npy", np.zeros((5, 2), np.float32))
    torch.manual_seed(0)
    m = _quadrature_metrics(params, cfg, build_model(cfg).eval())
    assert set(m) == {"test_ll_nats", "log_z_quadrature"} and np.isfinite(m["test_ll_nats"])
