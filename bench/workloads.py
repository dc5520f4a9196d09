"""The DRL workloads through the library's own code paths, their FLOPs counted by FlopCounterMode on the
same paths (matrix products and convolutions with their gradients, 2 a multiply-add: model FLOPs):
``train`` (``drl.train.train`` itself, Algorithm 1, on synthetic data; s/iter from its log),
``sample`` (Algorithm 2, ``drl.sample.progressive_levels``), ``hmc`` (``drl.hmc.long_run_levels``),
``ais`` (``drl.evaluate.ais.estimate_log_z_ais``) and FID/IS ``features`` (torch-fidelity, random weights).
Variants: ``as_given`` (params.yaml), ``plain`` (perf switches off, spectral norm per_call),
``optimised`` (all on, CUDA graphs on CUDA only, ``energy.sn_power_iteration: per_iteration``), on CUDA
``no_graphs`` (optimised less CUDA graphs); each only where it differs from as_given.
"""
from __future__ import annotations

import copy
import csv
import statistics
import tempfile
from contextlib import nullcontext
from functools import partial
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY, register_feature_extractor
from torch_fidelity.utils import create_feature_extractor, get_featuresdict_from_dataset

from bench.ceiling import median_time
from drl import perf
from drl.evaluate.ais import estimate_log_z_ais
from drl.evaluate.classifier import SmallCNN, save_classifier
from drl.evaluate.fidelity import Extractor, ImageArray, resolve_extractor
from drl.hmc import long_run_levels
from drl.model import sample_shape
from drl.sample import progressive_levels
from drl.train import build_model, train

# Variants: overrides of run-config sections.  energy.sn_power_iteration changes the function trained
# (and compile with spectral norm needs per_iteration); the perf switches change only the speed.
PERF_OFF = {"perf": {"channels_last": False, "compile": False, "cuda_graphs": False}, "energy": {"sn_power_iteration": "per_call"}}
PERF_ON = {"perf": {"channels_last": True, "compile": True, "cuda_graphs": True}, "energy": {"sn_power_iteration": "per_iteration"}}
EAGER = {"perf": {"compile": False, "cuda_graphs": False}}   # for FlopCounterMode, which sees into neither


def on_device(ebm: nn.Module, cfg: dict, device: str, precision: str = "fp32"):
    """(``ebm`` on ``device`` with the run's perf section applied, a factory of the context its work
    runs in: the perf switches and ``precision``).  The bench's one contact with drl.perf."""
    ebm = ebm.to(device)
    return ebm, partial(perf.execution, perf.configure(ebm, cfg.get("perf"), device), precision, device)


def apply(cfg: dict, overrides: dict | None) -> dict:
    """A copy of ``cfg`` with ``overrides`` ({section: {key: value}}) merged into its sections."""
    cfg = copy.deepcopy(cfg)
    for section, values in (overrides or {}).items():
        cfg[section] = {**(cfg.get(section) or {}), **values}
    return cfg


def settings(cfg: dict, cuda: bool) -> dict:
    """The settings a variant sets, as the library runs them (defaults: PERF_OFF; CUDA graphs on CUDA only)."""
    out = {k: (cfg.get(s) or {}).get(k, v) for s in PERF_OFF for k, v in PERF_OFF[s].items()}
    return {**out, "cuda_graphs": out["cuda_graphs"] and cuda}


def variants(device: str, cfg: dict | None = None) -> dict[str, dict | None]:
    """{variant: section overrides (None: as given)}; with ``cfg``, only those that change its settings."""
    cuda = device.startswith("cuda")
    on = apply(PERF_ON, {"perf": {"cuda_graphs": cuda}})
    chosen = {"plain": PERF_OFF, "optimised": on} | ({"no_graphs": apply(on, {"perf": {"cuda_graphs": False}})} if cuda else {})
    return {"as_given": None} | {k: v for k, v in chosen.items() if cfg is None or settings(apply(cfg, v), cuda) != settings(cfg, cuda)}


# Sizes at one scale: train (B, K), sample (n, levels, K), hmc (n, k, levels), ais (n,); K None: the run's.
def _s(train=None, sample=None, reps=3, warmup=1, **evals) -> dict:
    return {"train": train, "sample": sample, "reps": reps, "warmup": warmup, **evals}


def _w(run: str, goal: float, quick: dict, cpu: dict, cuda: dict, **net) -> dict:   # goal: CPU training MFU
    return {"run": run, "goal": goal, "net": net, "quick": quick, "cpu": cpu, "cuda": cuda}


def _cifar(n_blocks: int, run: str = "cifar10_t6_k30") -> dict:
    return _w(run, 0.90, _s((1, 1), (1, 1, 1), 1), _s((2, None), (1, 1, None)), _s((256, None), (1000, 1, None), warmup=2),
              n_blocks=n_blocks)


WORKLOADS = {
    "cifar10_n2": _cifar(2), "cifar10_n5": _cifar(5, "cifar10_t6_k30_n5"), "cifar10_n8": _cifar(8),
    # the paper network's CPU goal is stated at N = 2, batch 16, K = 30
    "cifar10_n2_b16": _w("cifar10_t6_k30", 0.90, _s((16, 1), reps=1), _s((16, None)), _s((16, None), warmup=2), n_blocks=2),
    "toy_mlp": _w("toy_checkerboard_drl", 0.75, _s((32, 2), (64, 6, 2), 2, ais=(64,)),
                  _s((256, None), (1000, 6, None), 5, 2, ais=(2000,)), _s((256, None), (10000, 6, None), 5, 3, ais=(10000,))),
    "digits_wrn": _w("digits_t6_k30", 0.75, _s((8, 2), (8, 6, 2), 2), _s((64, None), (100, 6, None)),
                     _s((64, None), (500, 6, None), 5, 3)),
    "digits_mlp": _w("digits_t1k", 0.75, _s((16, None), (16, 5, None), 2, hmc=(16, 3, 2)),
                     _s((128, None), (500, 50, None), 5, 2, hmc=(250, 10, 5)),
                     _s((128, None), (500, 200, None), 5, 3, hmc=(250, 10, 50))),
}
EXTRACTORS = {"fid_inception": {"quick": (2, 2), "cpu": (16, 16), "cuda": (2000, 500)},   # (images, batch)
              "fid_classifier": {"quick": (64, 64), "cpu": (2000, 64), "cuda": (10000, 500)}}


def run_config(params: dict, name: str) -> dict:
    cfg = copy.deepcopy(params["runs"][WORKLOADS[name]["run"]])
    cfg["energy"]["net"].update(WORKLOADS[name]["net"])
    return cfg


def synthetic_data(cfg: dict, n: int, seed: int = 0) -> np.ndarray:
    """Training data of the run's shape (uint8 images N, H, W, C or float32 points); values do not matter."""
    rng, shape = np.random.default_rng(seed), sample_shape(cfg["energy"]["net"])
    if len(shape) == 1:
        return rng.standard_normal((n, shape[0])).astype(np.float32)
    return rng.integers(0, 256, (n, shape[1], shape[2], shape[0]), dtype=np.uint8)


def scaled(cfg: dict, B: int, K: int, iterations: int) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["sampler"]["K"] = K
    cfg["train"].update(batch_size=B, iterations=iterations, log_every=1, checkpoint_every=iterations,
                        warmup=min(cfg["train"]["warmup"], iterations))
    return cfg


def iteration_seconds(log_csv: Path) -> list[float]:
    with open(log_csv, newline="") as fh:
        stamps = [float(r["seconds"]) for r in csv.DictReader(fh)]
    return [b - a for a, b in zip([0.0] + stamps, stamps)]


def count(fn, *args, **kwargs) -> int:
    """FLOPs FlopCounterMode counts while ``fn`` runs."""
    counter = FlopCounterMode(display=False)
    # the total only: the per-module tracker's hooks break torch.autograd.grad on a fresh leaf (every score call)
    counter.mod_tracker = type("GlobalOnly", (nullcontext,), {"parents": ("Global",)})()
    with counter:
        fn(*args, **kwargs)
    return int(counter.get_total_flops())


def count_train_flops(cfg: dict, data: np.ndarray, device: str) -> int:
    """FLOPs of one training iteration (``drl.train.train`` for one iteration less the model build), in
    eager mode; for K > 2 counted at K = 1 and 2 and extended linearly (each Langevin step costs the same)."""
    cfg = apply(cfg, EAGER)

    def once(k: int) -> int:
        c = scaled(cfg, cfg["train"]["batch_size"], k, 1)
        with tempfile.TemporaryDirectory() as d:
            return count(train, c, data, d, device=device, progress=False) - count(build_model, c)

    K = cfg["sampler"]["K"]
    return once(K) if K <= 2 else once(1) + (K - 1) * (once(2) - once(1))


def _rate(out: dict, flops: int, seconds: float, images: float | None) -> dict:
    return {**out, "flops": flops, "seconds": seconds, "flops_per_s": flops / seconds,
            "images_per_s": None if images is None else images / seconds}


def measure_train(cfg: dict, B: int, K: int | None, device: str, warmup: int, reps: int) -> dict:
    K = cfg["sampler"]["K"] if K is None else K
    cfg = scaled(cfg, B, K, warmup + reps)
    data = synthetic_data(cfg, max(256, 4 * B))
    with tempfile.TemporaryDirectory() as d:
        train(cfg, data, d, device=device, progress=False)
        per_iter = iteration_seconds(Path(d) / "train_log.csv")
    return _rate({"B": B, "K": K, "warmup_seconds": per_iter[:warmup]}, count_train_flops(cfg, data, device),
                 statistics.median(per_iter[warmup:]), B)


def _timed(cfg: dict, device: str, warmup: int, reps: int, chunk, precision: str = "fp32") -> tuple[int, float]:
    """(counted FLOPs, median seconds) of ``chunk(ebm)`` on the run's EBM in eval mode, as ``drl sample`` uses
    it; FLOPs counted on an eager copy (compile and CUDA graphs off), the same weights."""
    def model(c: dict):
        torch.manual_seed(c["train"]["seed"])
        return on_device(build_model(c).eval(), c, device, precision)

    ebm, run = model(cfg)

    def timed():
        with run():
            chunk(ebm)

    seconds = median_time(timed, device, warmup, reps)["seconds"]
    ebm, run = model(apply(cfg, EAGER))
    with run():
        return count(chunk, ebm), seconds


def measure_sample(cfg: dict, n: int, levels: int, K: int | None, device: str, warmup: int, reps: int,
                   precision: str = "fp32") -> dict:
    """``levels`` levels of Algorithm 2 for n chains; images/s (whole T-level chains) at the run's K only."""
    s, T, shape = cfg["sample"], cfg["diffusion"]["T"], sample_shape(cfg["energy"]["net"])
    K_run, levels = s["K"] if K is None else K, min(levels, T)
    flops, sec = _timed(cfg, device, warmup, reps, lambda ebm: list(islice(progressive_levels(
        ebm, torch.randn((n, *shape), device=device), K_run, s["noise_scale"]), levels + 1)), precision)
    return _rate({"n": n, "levels": levels, "T": T, "K": K_run, "precision": precision, "projected": levels < T},
                 flops, sec, n * levels / T if K_run == s["K"] else None)


def measure_hmc(cfg: dict, n: int, k: int, levels: int, device: str, warmup: int, reps: int, L: int = 2) -> dict:
    """``levels`` levels of the long-run chains, k steps each; images/s: whole T-level chains."""
    T, shape = cfg["diffusion"]["T"], sample_shape(cfg["energy"]["net"])
    flops, sec = _timed(cfg, device, warmup, reps, lambda ebm: list(islice(long_run_levels(
        ebm, n, shape, k, [1e-3] * T, L, device=device, progress=False), levels + 1)))
    return _rate({"n": n, "k": k, "L": L, "levels": levels, "T": T}, flops, sec, n * levels / T)


def measure_ais(cfg: dict, n: int, device: str, warmup: int, reps: int) -> dict:
    """Neal's AIS with the run's HMC settings and fixed step sizes; images/s: chains annealed per second."""
    p, shape = cfg["evaluate"].get("partition", {}), sample_shape(cfg["energy"]["net"])
    h, L = p.get("hmc_steps", 3), p.get("n_leapfrog", 2)
    flops, sec = _timed(cfg, device, warmup, reps, lambda ebm: estimate_log_z_ais(
        ebm, n, shape, h, L, step_size=1e-3, jitter=p.get("jitter", 0.2), batch_size=n, device=device, progress=False))
    return _rate({"n": n, "hmc_steps": h, "L": L}, flops, sec, n)


class RandomInceptionV3(FeatureExtractorInceptionV3):
    """torch-fidelity's Inception-v3 extractor (same architecture and resize) with He-normal random
    convolutions instead of the TF weights, which cannot be downloaded here: the same arithmetic."""

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        torch.manual_seed(0)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")


if "bench-random-inception" not in FEATURE_EXTRACTORS_REGISTRY:
    register_feature_extractor("bench-random-inception", RandomInceptionV3)


def measure_features(kind: str, n: int, batch: int, device: str, warmup: int, reps: int) -> dict:
    """``extract_features``'s loop over n images: fid_inception (32x32 RGB) or fid_classifier (the
    demo's digits classifier, 8x8), random weights, the extractor built once (untimed)."""
    cuda = torch.device(device).type == "cuda"
    with tempfile.TemporaryDirectory() as d:
        torch.manual_seed(0)
        if kind == "fid_inception":
            torch.save({}, path := Path(d) / "empty.pt")
            ex, hwc = Extractor("inception", "bench-random-inception", path, 3, "2048", "logits_unbiased"), (32, 32, 3)
        else:
            save_classifier(path := Path(d) / "classifier.pt", SmallCNN(1, 10, 32, 128), {"note": "random weights"})
            ex, hwc = resolve_extractor({"kind": "classifier", "weights": str(path)}), (8, 8, 1)
        model = create_feature_extractor(ex.name, [ex.fid_feature, ex.is_feature], cuda=cuda, verbose=False,
                                         feature_extractor_weights_path=str(ex.path))
    data = ImageArray(np.random.default_rng(0).integers(0, 256, (n, *hwc), dtype=np.uint8), ex.channels)
    run = lambda: get_featuresdict_from_dataset(data, model, batch, cuda, save_cpu_ram=True, verbose=False)  # noqa: E731
    return _rate({"n": n, "batch": batch}, count(run), median_time(run, device, warmup, reps)["seconds"], n)


def measure_workload(name: str, cfg: dict | None, scale: str, device: str, log=print) -> dict:
    """Every measurement of one workload at one scale: {"train", "sample", ["hmc"], ["ais"]}, or of an
    extractor (``cfg`` None): {"features"}."""
    torch._dynamo.reset()   # compile as a fresh process would (and stay under dynamo's recompile limit)
    if name in EXTRACTORS:
        log("features", r := measure_features(name, *EXTRACTORS[name][scale], device, 1, 3))
        return {"features": r}
    sc, out = WORKLOADS[name][scale], {}
    fast = any((cfg.get("perf") or {}).get(k) for k in EAGER["perf"])   # compiling and capturing: in the first calls
    for kind, measure in (("train", measure_train), ("sample", measure_sample), ("hmc", measure_hmc), ("ais", measure_ais)):
        if sc.get(kind):
            out[kind] = measure(cfg, *sc[kind], device, sc["warmup"] + 2 * fast, sc["reps"])
            log(kind, out[kind])
    return out
