"""A labelled image folder (train/<class>/, test/<class>/) through every `drl` stage a user runs: prepare
(labels and class names), `drl extractor` (a classifier of the user's own, pinned by the sha256 it
prints), reference statistics, training a tiny EBM, sampling, and FID/IS with that extractor."""
from __future__ import annotations

import json
import math
import re

import numpy as np
import yaml

from drl.cli import main
from drl.data.raw import file_sha256
from image_fixtures import write_images
from test_tables import numbers_only

CLASSES = ["checks", "columns", "rows"]   # sorted: the labels 0, 1, 2


def pattern(cls: str, rng) -> np.ndarray:
    """8x8 RGB: rows, columns or a checkerboard of bright and dark, in a random tint, with noise."""
    i, j = np.indices((8, 8))
    on = {"rows": i % 2, "columns": j % 2, "checks": (i + j) % 2}[cls]
    tint = rng.uniform(0.5, 1.0, 3)
    img = 40 + 180 * on[..., None] * tint + rng.normal(0, 12, (8, 8, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def params(weights_sha256: str | None) -> dict:
    clf = {"kind": "classifier", "dataset": "mine", "weights": "extractors/mine_classifier.pt",
           "width": 8, "epochs": 6, "batch_size": 16, "lr": 3.0e-3, "seed": 0}
    return {
        "datasets": {"mine": {"source": "image_folder", "path": "data/raw/mine", "resolution": 8, "seed": 0}},
        "extractors": {"mine_classifier": clf | ({"sha256": weights_sha256} if weights_sha256 else {})},
        "runs": {"mine_t6": {
            "group": "mine", "dataset": "mine",
            "diffusion": {"schedule": "released", "T": 6, "top_level": "marginal"},
            "energy": {"parameterisation": "net_over_s2",
                       "net": {"kind": "wrn", "resolution": 8, "in_channels": 3, "ch": 8, "ch_mult": [1, 2],
                               "n_blocks": 1, "temb_dim": 16, "head": "temb", "spectral_norm": True}},
            "sampler": {"K": 2, "step_size": "released", "b": 0.0141421356, "noise_scale": 1.0},
            "objective": {"name": "recovery_likelihood", "loss_weights": "released"},
            "train": {"iterations": 4, "batch_size": 8, "lr": 1.0e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1.0e-7,
                      "warmup": 1, "ema": 0.9, "seed": 0, "checkpoint_every": 2, "log_every": 1,
                      "max_abs_energy": 1.0e+6, "hflip": True},
            "sample": {"n": 24, "K": 2, "noise_scale": 1.0, "seed": 1},
            "evaluate": {"fidelity": {"extractor": "mine_classifier", "is_splits": 2, "bootstrap": 10}}}}}


def test_labelled_folder_trains_its_own_extractor_and_scores_a_model(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    write_images(tmp_path / "data/raw/mine", {f"{split}/{c}/{k:02d}.png": pattern(c, rng)
                                              for split, n in (("train", 40), ("test", 12))
                                              for c in CLASSES for k in range(n)})
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(None)))
    monkeypatch.chdir(tmp_path)

    assert main(["prepare", "--dataset", "mine"]) == 0
    assert "3 classes" in capsys.readouterr().out
    manifest = json.loads((tmp_path / "data/prepared/mine/manifest.json").read_text())
    labels = np.load(tmp_path / "data/prepared/mine/labels.npz")
    assert manifest["classes"] == CLASSES and manifest["labels"] == {"train": 120, "test": 36}
    assert labels["train"].tolist() == [y for y in range(3) for _ in range(40)]
    assert labels["test"].tolist() == [y for y in range(3) for _ in range(12)]

    assert main(["extractor", "--extractor", "mine_classifier"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy ([0-9.]+)", out).group(1))
    sha = re.search(r"sha256 ([0-9a-f]{64})", out).group(1)
    assert accuracy > 0.8, out   # chance is 1/3
    assert sha == file_sha256("extractors/mine_classifier.pt") and "set extractors.mine_classifier.sha256" in out
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params(sha)))   # the user pins the new instrument

    for argv in (["refstats", "--dataset", "mine", "--split", "train", "--extractor", "mine_classifier"],
                 ["train", "--run", "mine_t6"], ["sample", "--run", "mine_t6"], ["evaluate", "--run", "mine_t6"]):
        assert main([*argv, "--device", "cpu"]) == 0, capsys.readouterr().err
    assert np.load("results/mine/runs/mine_t6/samples.npy").shape == (24, 8, 8, 3)
    metrics = json.loads((tmp_path / "results/mine/metrics/mine_t6.json").read_text())
    prov = json.loads((tmp_path / "results/mine/provenance/mine_t6.json").read_text())
    assert numbers_only(metrics) and metrics["iterations"] == 4 and prov["extractor"]["name"] == "mine_classifier"
    assert all(isinstance(metrics[k], float) and math.isfinite(metrics[k]) for k in ("fid", "is_mean", "is_std"))
    assert metrics["fid"] > 0 and 1 <= metrics["is_mean"] <= 3   # IS lies in [1, number of classes]
    assert prov["extractor"]["sha256"] == sha and prov["extractor"]["kind"] == "classifier"
    assert prov["reference"] == "mine/train"
    # the real-data reference: 24 (the sample count) of the 120 training images, scored the same way
    assert "24 images of mine/train" in prov["real_reference"]
    assert 0 < metrics["fid_real_reference"] < metrics["fid"] and metrics["fid_real_reference_se"] > 0
