"""FID/IS feature extraction throughput, through torch-fidelity as drl/evaluate/fidelity.py runs it.

The real Inception weights (pt_inception-2015-12-05) cannot be downloaded here, so ``fid_inception``
measures torch-fidelity's own ``FeatureExtractorInceptionV3`` -- the same architecture and forward
(TF1-compatible bilinear resize to 299 x 299, then Inception-v3) -- with random weights:
He-normal convolutions, so activations neither vanish into denormals nor blow up and the arithmetic
runs at the speed the trained weights would.  ``fid_classifier`` is the demo's extractor
(``drl/evaluate/classifier.py``) with random weights.  The extractor is built once, then timed on
``extract_features``'s loop (``get_featuresdict_from_dataset`` over ``ImageArray``), since building it
is a one-off cost of a 50k-image evaluation.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from bench import flops
from bench.timing import median_time
from drl.evaluate.classifier import SmallCNN, save_classifier
from drl.evaluate.fidelity import Extractor, ImageArray, resolve_extractor

RANDOM_INCEPTION = "bench-inception-v3-random-weights"


class RandomWeightsInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 feature extractor keeping a random initialisation instead of
    loading the converted TF weights (the file it is given holds an empty dict)."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        torch.manual_seed(0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        return None


if RANDOM_INCEPTION not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor(RANDOM_INCEPTION, RandomWeightsInceptionV3)


def extractor(kind: str, folder: Path) -> tuple[Extractor, tuple]:
    """(the resolved extractor, one image's (H, W, C)) for ``fid_inception`` or ``fid_classifier``."""
    if kind == "fid_inception":
        path = folder / "empty_state_dict.pt"
        torch.save({}, path)
        return Extractor("inception", RANDOM_INCEPTION, path, 3, "2048", "logits_unbiased"), (32, 32, 3)
    if kind == "fid_classifier":
        torch.manual_seed(0)
        path = folder / "classifier.pt"
        save_classifier(path, SmallCNN(1, 10, 32, 128), {"note": "random weights (benchmark)"})
        return resolve_extractor({"kind": "classifier", "weights": str(path)}), (8, 8, 1)
    raise ValueError(f"unknown extractor workload {kind!r}")


def measure_features(kind: str, n: int, batch: int, device: str, warmup: int, reps: int) -> dict:
    cuda = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as d:
        ex, (h, w, c) = extractor(kind, Path(d))
        feats = [ex.fid_feature, ex.is_feature]
        model = create_feature_extractor(ex.name, feats, cuda=cuda, verbose=False,
                                         feature_extractor_weights_path=str(ex.path))
    images = np.random.default_rng(0).integers(0, 256, (n, h, w, c), dtype=np.uint8)
    data = ImageArray(images, ex.channels)

    def run():
        return get_featuresdict_from_dataset(data, model, batch, cuda, save_cpu_ram=True, verbose=False)

    t = median_time(run, device, warmup, reps)
    counted, _ = flops.count(run)
    one = flops.module_forward_flops(model, data[0][None].to(device))
    out = {"extractor": ex.name, "n": n, "batch": batch, "image": [h, w, c], "flops": counted,
           "counted_by": "FlopCounterMode", "flops_analytic": n * one,
           "formula": f"n x F_img, n={n}, F_img={one:.4g} (one image, counted)", "timing": t,
           "seconds": t["seconds"], "flops_per_s": counted / t["seconds"], "images_per_s": n / t["seconds"]}
    return out
