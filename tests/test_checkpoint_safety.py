"""Checkpoints are loaded as data only: a model.pt or state.pt whose pickle would run code (e.g. one
pulled from a shared DVC remote) is refused by every loader with a clear error, and the code never
runs."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from drl.cli import main
from drl.io import CheckpointError, load_checkpoint
from drl.train import DivergenceError, load_model, record_divergence, train
from test_train import tiny_cfg

ROOT = Path(__file__).resolve().parents[1]
REFUSED = r"refused to load: it contains objects other than tensors, numbers and strings.*retrain.*trusted remote"


class Payload:
    """Unpickles as a call that creates ``marker``: any code could stand in its place."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def write_evil(path: Path, marker: Path, cfg: dict | None = None) -> Path:
    """A checkpoint shaped like the real ones (config, weights) with the payload in its log."""
    cfg = cfg or tiny_cfg()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model_cfg": {k: cfg[k] for k in ("diffusion", "energy", "sampler")}, "cfg": cfg,
                "model": {}, "ema": {}, "iteration": 10, "log": [Payload(marker)]}, path)
    return path


@pytest.fixture
def marker(tmp_path):
    return tmp_path / "PWNED"


def test_the_payload_is_live(tmp_path, marker):
    """Guards the tests below: a full unpickle of the same file does run the payload."""
    torch.load(write_evil(tmp_path / "model.pt", marker), weights_only=False)
    assert marker.exists()


def test_load_checkpoint_refuses_and_names_the_file(tmp_path, marker):
    path = write_evil(tmp_path / "model.pt", marker)
    with pytest.raises(CheckpointError, match=REFUSED) as exc:
        load_checkpoint(path)
    assert str(path) in str(exc.value) and "exec" in str(exc.value)  # torch's line naming the refused object
    assert not marker.exists()


def test_load_model_refuses(tmp_path, marker):
    with pytest.raises(CheckpointError, match=REFUSED):
        load_model(write_evil(tmp_path / "model.pt", marker))
    assert not marker.exists()


def test_resume_refuses_a_malicious_state(tmp_path, marker):
    write_evil(tmp_path / "run" / "state.pt", marker)
    data = np.random.default_rng(0).normal(size=(100, 2)).astype(np.float32)
    with pytest.raises(CheckpointError, match=REFUSED):
        train(tiny_cfg(), data, tmp_path / "run", progress=False)
    assert not marker.exists() and not (tmp_path / "run" / "model.pt").exists()


def test_record_divergence_refuses_a_malicious_state(tmp_path, marker):
    write_evil(tmp_path / "state.pt", marker)
    err = DivergenceError("diverged", {"iteration": 12, "loss": float("nan"), "max_abs_f": 1e9})
    with pytest.raises(CheckpointError, match=REFUSED):
        record_divergence(tiny_cfg(), tmp_path, err)
    assert not marker.exists() and not (tmp_path / "model.pt").exists()


def test_classifier_loaders_refuse(tmp_path, marker):
    from drl.evaluate.classifier import ClassifierExtractor, load_classifier
    from drl.evaluate.fidelity import resolve_extractor

    path = tmp_path / "classifier.pt"
    torch.save({"args": {"in_channels": 1}, "state_dict": {}, "info": Payload(marker)}, path)
    with pytest.raises(CheckpointError, match=REFUSED):
        load_classifier(path)
    with pytest.raises(CheckpointError, match=REFUSED):
        resolve_extractor({"kind": "classifier", "weights": str(path)})  # no sha256 pinned
    with pytest.raises(CheckpointError, match=REFUSED):
        ClassifierExtractor("c", ["features"], feature_extractor_weights_path=str(path))
    assert not marker.exists()


def test_shipped_classifier_loads_as_data():
    from drl.evaluate.classifier import load_classifier

    assert load_classifier(ROOT / "drl/evaluate/extractors/digits_classifier.pt").args["in_channels"] == 1


@pytest.mark.parametrize("argv,file", [
    (["sample", "--run", "toy_checkerboard_drl"], "model.pt"),
    (["evaluate", "--run", "toy_checkerboard_drl"], "model.pt"),
    (["train", "--run", "toy_checkerboard_drl"], "state.pt"),
])
def test_cli_stages_refuse_with_exit_2(tmp_path, monkeypatch, capsys, marker, argv, file):
    from drl import paths
    from drl.config import load_params, run_config

    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "params.yaml", project / "params.yaml")
    monkeypatch.chdir(project)
    cfg = run_config(load_params("params.yaml"), "toy_checkerboard_drl")
    path = write_evil(paths.run_dir(cfg["group"], "toy_checkerboard_drl") / file, marker, cfg)
    paths.prepared_dir("checkerboard").mkdir(parents=True)
    np.save(paths.prepared_dir("checkerboard") / "train.npy", np.zeros((100, 2), np.float32))
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"drl {argv[0]}: error: {path}: refused to load" in err
    assert not marker.exists()
