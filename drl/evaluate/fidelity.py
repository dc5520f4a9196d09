"""FID and Inception Score of uint8 image samples, with torch-fidelity doing the feature extraction
and the metric arithmetic, so the numbers are torch-fidelity's.

FID (Heusel et al. 2017): the Frechet distance between Gaussians fitted to extractor features of
the data and of the samples, ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)).
IS (Salimans et al. 2016): exp(E_x KL(p(y|x) || p(y))) from the extractor's class logits, averaged
over ``splits`` disjoint chunks (mean and std over chunks).

The data side is reduced once per dataset split to (mu, sigma) by ``reference_statistics`` and
saved as .npz; ``fid_is`` scores samples against it.  Extractor config dicts:

    {"kind": "inception", "weights": "<dir>/weights-inception-2015-12-05-6726825d.pth"}
        torch-fidelity's ``inception-v3-compat`` (the TF Inception of the standard FID code):
        pool3 (2048-d) for FID, unbiased logits for IS; any image size (resized to 299).
    {"kind": "classifier", "weights": "drl/evaluate/extractors/digits_classifier.pt"}
        a ``drl.evaluate.classifier.SmallCNN`` checkpoint: penultimate layer for FID, logits for IS.

Either may carry ``"sha256"``: the file is then checked before use, so that an FID is only ever
computed with the instrument the config names (a retrained classifier is another instrument).

Uncertainty: ``fid_is`` also gives standard errors over sample sets (``bootstrap``: half-sampling,
the FID and IS of random halves of the samples' features, the reference statistics fixed).  They
measure how much the metric moves with the finite sample set alone, not with training (for that,
train several seeds).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_isc import KEY_METRIC_ISC_MEAN, KEY_METRIC_ISC_STD, isc_features_to_metric
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from drl.data.raw import file_sha256
from drl.evaluate.classifier import CLASSIFIER_EXTRACTOR, ClassifierExtractor
from drl.evaluate.errors import EvaluationError
from drl.io import load_checkpoint, np_savez

INCEPTION_WEIGHTS_URL = URL_INCEPTION_V3
INCEPTION_WEIGHTS_FILE = URL_INCEPTION_V3.rsplit("/", 1)[1]  # weights-inception-2015-12-05-6726825d.pth
INCEPTION_WEIGHTS_DEFAULT = f"data/weights/{INCEPTION_WEIGHTS_FILE}"
WEIGHTS_PARAM = "extractors.inception.weights"  # the params.yaml key that names the Inception file
# What ``fid_is`` reports per sample set (with the bootstrap's fields when it ran).
FIDELITY_FIELDS = ("fid", "fid_se", "fid_ci_low", "fid_ci_high", "is_mean", "is_mean_se", "is_mean_ci_low",
                   "is_mean_ci_high", "is_std", "n_samples", "n_bootstrap")


@dataclass(frozen=True)
class Extractor:
    """A resolved extractor config: torch-fidelity registry name, checkpoint file, the channel count it
    takes, and the feature names read for FID and IS."""
    kind: str
    name: str
    path: Path
    channels: int
    fid_feature: str
    is_feature: str

    def describe(self) -> dict:
        """What produced a set of statistics; ``identity`` of it must match between data and samples."""
        return {"kind": self.kind, "name": self.name, "file": self.path.name, "sha256": file_sha256(self.path),
                "fid_feature": self.fid_feature, "is_feature": self.is_feature}


def identity(description: dict) -> dict:
    """The parts of an extractor description that decide the features (not where the file lies)."""
    return {k: description[k] for k in ("kind", "sha256", "fid_feature")}


def missing_inception_message(path) -> str:
    return (f"Inception weights not found at '{path}'. FID/IS with kind 'inception' need torch-fidelity's "
            f"converted TF Inception file {INCEPTION_WEIGHTS_FILE}: `drl fetch --name inception_weights` "
            f"downloads and verifies it (both workflows run that job), or download {INCEPTION_WEIGHTS_URL} "
            f"yourself and put it at that path (default {INCEPTION_WEIGHTS_DEFAULT}), or point params.yaml "
            f"'{WEIGHTS_PARAM}' at where it is.")


def check_sha256(path: Path, expected: str | None, key: str = "sha256", restore: str = "") -> None:
    """Raise EvaluationError when ``path``'s sha256 is not ``expected`` (no check when None);
    ``restore``: how to get the right file back."""
    if expected is None:
        return
    actual = file_sha256(path)
    if actual != expected.lower():
        raise EvaluationError(
            f"{path}: sha256 {actual} differs from the {expected} that params.yaml '{key}' names. This file is "
            f"another measuring instrument: FID/IS computed with it are not comparable with the committed ones. "
            f"{restore}If you changed the file on purpose, set '{key}' to {actual}")


def resolve_extractor(cfg: dict, key: str = "extractors.<name>") -> Extractor:
    """Validate an extractor config dict (see module docstring); files, and their sha256 where the config
    gives one, are checked before any compute.  ``key``: the config's place in params.yaml, for messages."""
    kind = cfg.get("kind")
    if kind not in ("inception", "classifier"):
        raise EvaluationError(f"unknown extractor kind {kind!r}: expected 'inception' or 'classifier'")
    path = Path(cfg["weights"])
    if kind == "inception":
        if not path.is_file():
            raise EvaluationError(missing_inception_message(path))
        check_sha256(path, cfg.get("sha256"), f"{key}.sha256", f"Download it again ({INCEPTION_WEIGHTS_URL}). ")
        return Extractor(kind, "inception-v3-compat", path, 3, "2048", "logits_unbiased")
    if not path.is_file():
        name = key.removeprefix("extractors.")
        raise EvaluationError(f"classifier weights not found at '{path}' ({key}.weights): a shipped classifier is "
                              f"restored with `git checkout -- {path}`; another is trained once, on purpose, by "
                              f"`drl extractor --extractor {name}` on its prepared labelled dataset, after which "
                              f"{key}.sha256 names the hash it prints")
    check_sha256(path, cfg.get("sha256"), f"{key}.sha256", f"Restore the shipped file (`git checkout -- {path}`). ")
    channels = load_checkpoint(path)["args"]["in_channels"]
    return Extractor(kind, CLASSIFIER_EXTRACTOR, path, channels, *(
        ClassifierExtractor.get_default_feature_layer_for_metric(m) for m in ("fid", "isc")))


class ImageArray(Dataset):
    """uint8 (N, H, W, C) array as torch-fidelity input: uint8 CHW tensors, grayscale repeated to
    ``channels`` when the extractor wants RGB."""

    def __init__(self, images: np.ndarray, channels: int):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise EvaluationError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
        if images.shape[3] not in (1, channels):
            raise EvaluationError(f"images have {images.shape[3]} channels; the extractor takes {channels}")
        self.images, self.channels = images, channels

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        x = torch.from_numpy(np.ascontiguousarray(self.images[i].transpose(2, 0, 1)))
        return x.expand(self.channels, -1, -1).contiguous()


def extract_features(images: np.ndarray, extractor: Extractor, features: list[str], batch_size: int = 64,
                     device: str = "cpu") -> dict[str, torch.Tensor]:
    """torch-fidelity features (name -> (N, D) float tensor) of uint8 (N, H, W, C) images."""
    data, cuda = ImageArray(images, extractor.channels), torch.device(device).type == "cuda"
    model = create_feature_extractor(extractor.name, features, cuda=cuda, verbose=False,
                                     feature_extractor_weights_path=str(extractor.path))
    return get_featuresdict_from_dataset(data, model, batch_size, cuda, save_cpu_ram=True, verbose=False)


def frechet_distance(stats1: dict, stats2: dict) -> float:
    """FID (Heusel et al. 2017) between Gaussians {"mu", "sigma"}, by torch-fidelity's
    ``fid_statistics_to_metric`` (trace of the matrix square root via eigenvalues of S1 S2), in float64."""
    return fid_statistics_to_metric(_float64(stats1), _float64(stats2), verbose=False)[KEY_METRIC_FID]


def _float64(stats: dict) -> dict:
    return {"mu": np.asarray(stats["mu"], np.float64), "sigma": np.asarray(stats["sigma"], np.float64)}


def inception_score(logits: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """IS (Salimans et al. 2016): mean and std over ``splits`` chunks of exp(E KL(p(y|x) || p(y))),
    p(y) the chunk's mean prediction; torch-fidelity's ``isc_features_to_metric`` with its default
    shuffle of the samples (seed 2020) before chunking."""
    if not 1 <= splits <= len(logits):
        raise EvaluationError(f"IS needs 1 <= splits <= number of samples, got {splits} and {len(logits)}")
    out = isc_features_to_metric(logits, splits=splits)
    return out[KEY_METRIC_ISC_MEAN], out[KEY_METRIC_ISC_STD]


def reference_statistics(images: np.ndarray, extractor_cfg: dict, batch_size: int = 64,
                         device: str = "cpu", key: str = "extractors.<name>") -> dict:
    """FID statistics of a dataset split: {"mu", "sigma", "n", "extractor" (its description)}.
    ``key``: the extractor's place in params.yaml, for messages."""
    ex = resolve_extractor(extractor_cfg, key)
    feats = extract_features(images, ex, [ex.fid_feature], batch_size, device)[ex.fid_feature]
    return {**fid_features_to_statistics(feats), "n": len(feats), "extractor": ex.describe()}


def save_reference_statistics(path, stats: dict) -> None:
    """Atomic .npz with mu, sigma, n and the extractor description (as JSON)."""
    np_savez(path, {"mu": stats["mu"], "sigma": stats["sigma"], "n": stats["n"], "extractor": json.dumps(stats["extractor"])})


def load_reference_statistics(path) -> dict:
    with np.load(path) as z:
        return {"mu": z["mu"], "sigma": z["sigma"], "n": int(z["n"]), "extractor": json.loads(str(z["extractor"]))}


def bootstrap(fid_features: torch.Tensor, logits: torch.Tensor, ref_stats: dict, n_boot: int, is_splits: int,
              seed: int = 0) -> dict:
    """Standard errors of FID and IS over sample sets, by half-sampling (a subsampling bootstrap:
    random halves of the samples, drawn without replacement by numpy ``default_rng(seed)``; the
    reference statistics fixed).

    For a smooth statistic of m of n draws without replacement, var = sigma^2 (1/m - 1/n), which at
    m = n/2 is sigma^2 / n: the standard deviation of the ``n_boot`` half-sample values estimates the
    standard error at the full n directly.  The ordinary bootstrap (n draws with replacement) does
    not work for FID: its resamples repeat a third of the samples, which inflates FID by about
    tr(Sigma)/n, so in 128 dimensions its percentile interval lay entirely above the FID it was for
    and its spread overstated the true one 1.4x (Gaussian oracle, tests/test_uncertainty.py, where
    half-sampling is within 20 %).

    Returns, for m in (fid, is_mean): ``m_se`` and ``m_ci_low`` / ``m_ci_high``, the normal 95 %
    interval m +- 1.96 se, plus ``n_bootstrap``."""
    if n_boot < 2:
        raise EvaluationError(f"the bootstrap needs at least 2 resamples, got {n_boot}")
    rng, n = np.random.default_rng(seed), len(fid_features)
    if n < 4 or n // 2 < is_splits:
        raise EvaluationError(f"half-sampling needs at least 4 samples and is_splits <= half of them, got {n} "
                              f"samples and is_splits {is_splits}")
    full = {"fid": frechet_distance(fid_features_to_statistics(fid_features), ref_stats),
            "is_mean": inception_score(logits, is_splits)[0]}
    fids, iss = [], []
    for _ in range(n_boot):
        idx = torch.from_numpy(rng.permutation(n)[: n // 2])
        fids.append(frechet_distance(fid_features_to_statistics(fid_features[idx]), ref_stats))
        iss.append(inception_score(logits[idx], is_splits)[0])
    out = {"n_bootstrap": n_boot}
    for name, values in (("fid", fids), ("is_mean", iss)):
        se = float(np.std(values, ddof=1))
        out.update({f"{name}_se": se, f"{name}_ci_low": full[name] - 1.96 * se, f"{name}_ci_high": full[name] + 1.96 * se})
    return out


# The real-data reference: what real images score on the same instrument at the same sample count.
# FID of n images has a bias that falls with n (about tr(Sigma)/n for features of covariance Sigma), so a
# model's FID means little without this floor.  Definition: n images of the reference split itself
# (the split the statistics were computed on), n = the number of samples scored, drawn uniformly
# without replacement by numpy default_rng(seed) (seed 0), scored by ``fid_is`` against the same
# statistics with the same extractor and half-sampling.  Being in the statistics, they score lower
# than unseen real images would: a model that only copied its training images would match it.
REAL_REFERENCE_SEED = 0


def real_reference_images(split_images: np.ndarray, n: int, seed: int = REAL_REFERENCE_SEED) -> np.ndarray:
    """``n`` images of the reference split, drawn uniformly without replacement by default_rng(seed)."""
    if not 1 <= n <= len(split_images):
        raise EvaluationError(f"the real-data reference needs {n} images of the reference split, which holds "
                              f"{len(split_images)}: score at most that many samples, or use the other split")
    return split_images[np.sort(np.random.default_rng(seed).choice(len(split_images), n, replace=False))]


def fid_is(samples: np.ndarray, ref_stats: dict, extractor_cfg: dict, is_splits: int = 10, batch_size: int = 64,
           device: str = "cpu", n_bootstrap: int = 0, seed: int = 0, key: str = "extractors.<name>") -> dict:
    """FID of uint8 (N, H, W, C) samples against ``ref_stats`` and their IS, one extraction pass; with
    ``n_bootstrap`` > 0 also their standard errors and intervals over sample sets (``bootstrap``).

    Raises EvaluationError before any compute when the extractor differs from the one that made
    ``ref_stats``, its file is missing or not the one named, or ``is_splits`` exceeds the sample count.
    """
    ex = resolve_extractor(extractor_cfg, key)
    desc = ex.describe()
    if identity(desc) != identity(ref_stats["extractor"]):
        raise EvaluationError(f"reference statistics come from extractor {ref_stats['extractor']}, "
                              f"samples would use {desc}; rerun the refstats stage")
    if not 1 <= is_splits <= len(samples):
        raise EvaluationError(f"IS needs 1 <= is_splits <= number of samples, got {is_splits} and {len(samples)}")
    feats = extract_features(samples, ex, [ex.fid_feature, ex.is_feature], batch_size, device)
    is_mean, is_std = inception_score(feats[ex.is_feature], is_splits)
    out = {"fid": frechet_distance(fid_features_to_statistics(feats[ex.fid_feature]), ref_stats),
           "is_mean": is_mean, "is_std": is_std, "n_samples": len(samples), "extractor": desc}
    if n_bootstrap:
        out.update(bootstrap(feats[ex.fid_feature], feats[ex.is_feature], ref_stats, n_bootstrap, is_splits, seed))
    return out
