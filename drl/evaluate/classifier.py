"""A small CNN classifier trained on the dataset itself, used as the FID/IS feature extractor where
Inception is out of reach (embedded data such as scikit-learn's 8x8 digits, CPU-only runs).

FID (Heusel et al. 2017) reads its penultimate layer (``features``), IS (Salimans et al. 2016) its
class logits (``logits``).  The checkpoint stores the constructor arguments, so it loads alone;
``ClassifierExtractor`` wraps it for torch-fidelity under the name ``CLASSIFIER_EXTRACTOR``.
"""
from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch_fidelity import FeatureExtractorBase, register_feature_extractor
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

from drl.io import load_checkpoint, torch_save

CLASSIFIER_EXTRACTOR = "drl-classifier"
CLASSIFIER_DEFAULTS = {"epochs": 15, "lr": 1e-3, "batch_size": 64, "seed": 0, "width": 32, "feature_dim": 128}


class SmallCNN(nn.Module):
    """conv3x3(w) - conv3x3(2w) - maxpool2 - conv3x3(2w) - avgpool to 4x4 - dense(feature_dim) - dense(classes),
    ReLU after each hidden layer.  The adaptive pool makes any input size valid (8x8 digits: identity)."""

    def __init__(self, in_channels: int, n_classes: int, width: int, feature_dim: int):
        super().__init__()
        self.args = {"in_channels": in_channels, "n_classes": n_classes, "width": width, "feature_dim": feature_dim}
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten())
        self.feature = nn.Sequential(nn.Linear(2 * width * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, n_classes)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(penultimate features, logits) for float images in [-1, 1], NCHW."""
        h = self.feature(self.conv(x))
        return h, self.head(h)


def to_input(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW in [0, 255] -> float NCHW in [-1, 1]."""
    return images_uint8.float() / 127.5 - 1.0


def _nchw(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, C) array -> uint8 NCHW tensor."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


@torch.no_grad()
def accuracy(model: SmallCNN, images: np.ndarray, labels: np.ndarray, batch_size: int = 512) -> float:
    """Fraction of uint8 (N, H, W, C) images whose arg-max logit equals the label."""
    model.eval()
    x, y = _nchw(images), torch.as_tensor(labels, dtype=torch.long)
    hits = sum(int((model(to_input(x[i:i + batch_size]))[1].argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, len(x), batch_size))
    return hits / len(x)


def train_classifier(images: np.ndarray, labels: np.ndarray, cfg: dict, *, test_images: np.ndarray,
                     test_labels: np.ndarray) -> tuple[SmallCNN, dict]:
    """Train ``SmallCNN`` with Adam and cross-entropy on uint8 (N, H, W, C) images and integer labels.

    ``cfg`` keys (defaults in ``CLASSIFIER_DEFAULTS``): epochs, lr, batch_size, seed, width,
    feature_dim.  Returns the model (eval mode) and info with train/test accuracy and wall time.
    """
    cfg = {**CLASSIFIER_DEFAULTS, **cfg}
    x, y = _nchw(images), torch.as_tensor(labels, dtype=torch.long)
    start = time.perf_counter()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        model = SmallCNN(x.shape[1], int(y.max()) + 1, cfg["width"], cfg["feature_dim"])
        opt = torch.optim.Adam(model.parameters(), lr=cfg["lr"])
        for _ in range(cfg["epochs"]):
            model.train()
            for idx in torch.randperm(len(x)).split(cfg["batch_size"]):
                loss = F.cross_entropy(model(to_input(x[idx]))[1], y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
    model.eval().requires_grad_(False)
    info = {"config": cfg, "n_train": len(x), "n_test": len(test_labels), "final_loss": loss.item(),
            "train_accuracy": accuracy(model, images, labels),
            "test_accuracy": accuracy(model, test_images, test_labels),
            "seconds": time.perf_counter() - start}
    return model, info


def save_classifier(path, model: SmallCNN, info: dict) -> None:
    """Atomic checkpoint holding the constructor args, the weights and the training info."""
    torch_save(path, {"args": model.args, "state_dict": model.state_dict(), "info": info})


def load_classifier(path) -> SmallCNN:
    """Rebuild the classifier from its checkpoint alone (eval mode, no gradients)."""
    ckpt = load_checkpoint(path)
    model = SmallCNN(**ckpt["args"])
    model.load_state_dict(ckpt["state_dict"])
    return model.eval().requires_grad_(False)


class ClassifierExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over a ``SmallCNN`` checkpoint, given as torch-fidelity's
    ``feature_extractor_weights_path``.  Input: uint8 NCHW with the classifier's channel count."""

    def __init__(self, name, features_list, feature_extractor_weights_path=None, **kwargs):
        super().__init__(name, features_list)
        if feature_extractor_weights_path is None:
            raise ValueError(f"{CLASSIFIER_EXTRACTOR} needs feature_extractor_weights_path (a classifier checkpoint)")
        self.model = load_classifier(feature_extractor_weights_path)

    def forward(self, x):
        if x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected uint8 NCHW images, got {x.dtype} {tuple(x.shape)}")
        out = dict(zip(("features", "logits"), self.model(to_input(x))))
        return tuple(out[name] for name in self.features_list)

    @staticmethod
    def get_provided_features_list():
        return "features", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "features", "kid": "features", "prc": "features"}[metric]

    @staticmethod
    def can_be_compiled():
        return False


if CLASSIFIER_EXTRACTOR not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(CLASSIFIER_EXTRACTOR, ClassifierExtractor)
