"""drl/evaluate/{fidelity,classifier}.py: FID and IS against closed forms, the digits classifier as
a feature extractor, and the Inception path with a local weights file and no network."""
from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

from drl.evaluate import fidelity
from drl.evaluate.classifier import load_classifier, save_classifier, to_input, train_classifier
from drl.evaluate.fidelity import (INCEPTION_WEIGHTS_URL, WEIGHTS_PARAM, EvaluationError, extract_features, fid_is,
                                   frechet_distance, inception_score, load_reference_statistics,
                                   real_reference_images, reference_statistics, resolve_extractor,
                                   save_reference_statistics)


# ---------------------------------------------------------------- FID closed forms
def test_frechet_distance_diagonal_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    s1, s2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = ((mu1 - mu2) ** 2).sum() + (s1 + s2 - 2 * np.sqrt(s1 * s2)).sum()
    got = frechet_distance({"mu": mu1, "sigma": np.diag(s1)}, {"mu": mu2, "sigma": np.diag(s2)})
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_scaled_full_covariance():
    # S2 = c^2 S1: Tr(S1 + S2 - 2 (S1 S2)^(1/2)) = (1 - c)^2 Tr(S1), any SPD S1
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 5))
    s1, c, mu = a @ a.T + 0.1 * np.eye(5), 1.7, rng.normal(size=5)
    got = frechet_distance({"mu": mu, "sigma": s1}, {"mu": mu + 0.5, "sigma": c**2 * s1})
    assert got == pytest.approx(5 * 0.25 + (1 - c) ** 2 * np.trace(s1), rel=1e-8)
    assert frechet_distance({"mu": mu, "sigma": s1}, {"mu": mu, "sigma": s1}) == pytest.approx(0, abs=1e-8)


# ---------------------------------------------------------------- IS closed forms
def one_hot_logits(classes: np.ndarray, k: int, a: float) -> torch.Tensor:
    """Logit a on each example's class, 0 elsewhere."""
    return torch.as_tensor(a * np.eye(k)[classes])


@pytest.mark.parametrize("k", [2, 7, 10])
def test_is_confident_uniform_classes_is_k(k):
    logits = one_hot_logits(np.arange(40 * k) % k, k, a=60.0)
    mean, std = inception_score(logits, splits=1)
    assert mean == pytest.approx(k, rel=1e-9)
    assert std == 0


def test_is_soft_predictions_closed_form():
    # p(y|x) = p_c on the example's class, (1 - p_c)/(k - 1) elsewhere; p(y) uniform:
    # E KL(p(y|x) || p(y)) = log k - H(p(y|x))  =>  IS = k exp(-H)
    k, a = 10, 2.0
    pc = np.exp(a) / (np.exp(a) + k - 1)
    h = -(pc * np.log(pc) + (1 - pc) * np.log((1 - pc) / (k - 1)))
    mean, _ = inception_score(one_hot_logits(np.arange(30 * k) % k, k, a), splits=1)
    assert mean == pytest.approx(k * np.exp(-h), rel=1e-9)


def test_is_identical_predictions_is_one_in_every_split():
    mean, std = inception_score(one_hot_logits(np.full(100, 3), 10, a=2.0), splits=10)
    assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(EvaluationError, match="splits"):
        inception_score(torch.zeros(5, 3), splits=10)


# ---------------------------------------------------------------- digits classifier as extractor
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    d = load_digits()
    images = np.round(d.images * (255 / 16)).astype(np.uint8)[..., None]  # (N, 8, 8, 1)
    x_tr, x_te, y_tr, y_te = train_test_split(images, d.target, test_size=0.2, random_state=0, stratify=d.target)
    model, info = train_classifier(x_tr, y_tr, {"epochs": 10, "seed": 0}, test_images=x_te, test_labels=y_te)
    path = tmp_path_factory.mktemp("clf") / "classifier.pt"
    save_classifier(path, model, info)
    return {"train": x_tr, "test": x_te, "model": model, "info": info, "cfg": {"kind": "classifier", "weights": str(path)}}


def test_classifier_reaches_95_percent_and_reloads(digits):
    info = digits["info"]
    assert info["test_accuracy"] >= 0.95, info
    reloaded = load_classifier(digits["cfg"]["weights"])
    x = to_input(torch.from_numpy(digits["test"][:16].transpose(0, 3, 1, 2).copy()))
    torch.testing.assert_close(reloaded(x)[1], digits["model"](x)[1])


def test_fid_test_split_small_noise_large(digits, tmp_path):
    cfg = digits["cfg"]
    ref = reference_statistics(digits["train"], cfg)
    assert ref["n"] == len(digits["train"]) and ref["mu"].shape == (128,) and ref["sigma"].shape == (128, 128)
    save_reference_statistics(tmp_path / "ref.npz", ref)
    ref = load_reference_statistics(tmp_path / "ref.npz")

    real = fid_is(digits["test"], ref, cfg)
    noise = np.random.default_rng(0).integers(0, 256, size=digits["test"].shape, dtype=np.uint8)
    fake = fid_is(noise, ref, cfg)
    assert real["n_samples"] == len(digits["test"]) and real["extractor"] == ref["extractor"]
    assert fake["fid"] > 20 * real["fid"], (real, fake)
    assert real["is_mean"] > 7 > fake["is_mean"], (real, fake)
    assert real["is_std"] > 0


def test_real_reference_images_are_a_fixed_draw_without_replacement():
    split = np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1)
    drawn = real_reference_images(split, 20)
    assert len(np.unique(drawn)) == 20 and np.array_equal(drawn, real_reference_images(split, 20))
    assert not np.array_equal(drawn, real_reference_images(split, 20, seed=1))
    assert np.array_equal(real_reference_images(split, 50), split)   # the whole split, in order
    with pytest.raises(EvaluationError, match="needs 51 images of the reference split, which holds 50"):
        real_reference_images(split, 51)


def test_fid_refuses_stats_from_another_extractor(digits):
    ref = reference_statistics(digits["test"][:50], digits["cfg"])
    ref["extractor"]["sha256"] = "0" * 64
    with pytest.raises(EvaluationError, match="reference statistics come from"):
        fid_is(digits["test"][:20], ref, digits["cfg"], is_splits=2)


# ---------------------------------------------------------------- Inception from a local file
@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("torch_fidelity.feature_extractor_inceptionv3.load_state_dict_from_url", refuse)


@pytest.fixture
def inception_weights(tmp_path, monkeypatch):
    """A 'weights file': the randomly initialised state dict of torch-fidelity's Inception class."""
    empty = tmp_path / "empty.pth"
    torch.save({}, empty)
    with monkeypatch.context() as m:  # build the class without loading any weights
        m.setattr(FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None)
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    path = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    return path


def test_inception_loads_local_weights_without_network(inception_weights, no_network):
    ex = resolve_extractor({"kind": "inception", "weights": str(inception_weights)})
    gray = np.random.default_rng(0).integers(0, 256, size=(2, 32, 32, 1), dtype=np.uint8)
    feats = extract_features(np.repeat(gray, 3, axis=3), ex, ["2048", "logits_unbiased"])
    assert feats["2048"].shape == (2, 2048) and feats["logits_unbiased"].shape == (2, 1008)
    assert torch.isfinite(feats["2048"]).all()
    # grayscale is repeated to RGB
    torch.testing.assert_close(extract_features(gray, ex, ["2048"])["2048"], feats["2048"])


def test_missing_inception_weights_error_before_compute(tmp_path, monkeypatch):
    def no_compute(*args, **kwargs):
        raise AssertionError("feature extraction started")
    monkeypatch.setattr(fidelity, "create_feature_extractor", no_compute)
    missing = tmp_path / "nowhere" / "weights-inception-2015-12-05-6726825d.pth"
    cfg = {"kind": "inception", "weights": str(missing)}
    images = np.zeros((4, 32, 32, 3), np.uint8)
    for call in (lambda: reference_statistics(images, cfg), lambda: fid_is(images, {}, cfg, is_splits=2)):
        with pytest.raises(EvaluationError) as err:
            call()
        msg = str(err.value)
        assert str(missing) in msg and INCEPTION_WEIGHTS_URL in msg and WEIGHTS_PARAM in msg


def test_bad_extractor_configs(tmp_path, digits):
    with pytest.raises(EvaluationError, match="channels"):
        extract_features(np.zeros((2, 8, 8, 3), np.uint8), resolve_extractor(digits["cfg"]), ["features"])
    with pytest.raises(EvaluationError, match="uint8"):
        extract_features(np.zeros((2, 8, 8, 1), np.float32), resolve_extractor(digits["cfg"]), ["features"])
    with pytest.raises(EvaluationError, match="classifier weights not found"):
        resolve_extractor({"kind": "classifier", "weights": str(tmp_path / "none.pt")})
    with pytest.raises(EvaluationError, match="unknown extractor kind"):
        resolve_extractor({"kind": "vgg"})
