"""Stages ``evaluate`` (a run's metrics, each with its standard error, and their provenance) and
``refstats`` (FID reference statistics), and the explicit retraining of a classifier extractor."""
from __future__ import annotations

import math

import numpy as np

from drl import paths
from drl.config import LONG_RUN_METRICS, REAL_REFERENCE_METRICS, ParamsError, metrics_of, run_config
from drl.data.points import DataError
from drl.io import write_json
from drl.stages.common import device, long_run_chains, prepared, require, samples, trained_model


def evaluate(params: dict, args) -> None:
    """The run's metrics JSON holds numbers only (null: none); what describes them (the extractor, the
    FID reference, the log Z method and curve, a divergence's record) goes to its provenance file."""
    cfg = run_config(params, args.run)
    dev = device(args.device)
    ebm, ckpt, fast = trained_model(cfg, args.run, dev)
    metrics, details = {"iterations": ckpt["iteration"]}, {}
    if ckpt.get("diverged"):  # the divergence instead of numbers (tables show "diverged")
        nothing = dict.fromkeys(metrics_of(cfg["evaluate"]))
        long_run = {"long_run": {str(k): dict.fromkeys(LONG_RUN_METRICS)
                                 for k in cfg["long_run"]["steps_per_level"]}} if "long_run" in cfg else {}
        write_json(paths.metrics_file(cfg["group"], args.run),
                   {**metrics, **nothing, **long_run, "diverged_iteration": ckpt["diverged"]["iteration"]})
        _write_provenance(cfg, args.run, dev, {"diverged": ckpt["diverged"]})
        print(f"{args.run}: diverged at iteration {ckpt['diverged']['iteration']}; metrics record the divergence")
        return
    if "quadrature" in cfg["evaluate"]:
        metrics.update(_quadrature_metrics(params, cfg, ebm))
    if "fidelity" in cfg["evaluate"]:
        metrics.update(_fidelity_metrics(params, cfg, samples(cfg, args.run), dev, details))
    if "long_run" in cfg:
        metrics.update(_long_run_metrics(params, cfg, args.run, dev, details))
    if "partition" in cfg["evaluate"]:
        from drl import perf

        with perf.execution(fast, device=dev):   # the run's perf switches around the AIS / progressive chains
            metrics.update(_partition_metrics(cfg, ebm, dev, details))
    write_json(paths.metrics_file(cfg["group"], args.run), metrics)
    _write_provenance(cfg, args.run, dev, details)
    print(f"{args.run}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))


def _quadrature_metrics(params: dict, cfg: dict, ebm) -> dict:
    from drl.data.toy2d import get_toy
    from drl.evaluate.quadrature import LevelDensity, kl_data_model

    ds = params["datasets"][cfg["dataset"]]
    test = prepared(cfg["dataset"], "test")
    e = cfg["evaluate"]["quadrature"]
    dens = LevelDensity(ebm, 0, e["extent"], e["grid"])
    metrics = {"test_ll_nats": float(dens.log_prob(test).mean()), "log_z_quadrature": dens.log_z}
    toy = get_toy(ds["toy"]) if ds["source"] == "toy" else None
    log_p_data = toy.log_density(dens.x_grid) if toy else None
    if log_p_data is not None:  # the data density is known in closed form
        metrics["kl_nats"] = kl_data_model(log_p_data, dens.log_g_grid, dens.cell)
        metrics["data_entropy_nats"] = float(-toy.log_density(test).mean())
    return metrics


def _fidelity_metrics(params: dict, cfg: dict, images: np.ndarray, device: str, details: dict) -> dict:
    """FID/IS of uint8 images against the run's reference statistics, with the run's extractor, and
    their standard errors over sample sets (``bootstrap`` half-samples); the extractor and the
    reference go to ``details``."""
    from drl.evaluate.fidelity import REAL_REFERENCE_SEED, fid_is, load_reference_statistics, real_reference_images

    e = cfg["evaluate"]["fidelity"]
    split = e.get("reference_split", "train")
    ref = require(paths.refstats_file(cfg["dataset"], split, e["extractor"]),
                   f"drl refstats --dataset {cfg['dataset']} --split {split} --extractor {e['extractor']}")
    stats = load_reference_statistics(ref)
    real = real_reference_images(prepared(cfg["dataset"], split), len(images))   # checked before any compute
    score = lambda x: fid_is(x, stats, params["extractors"][e["extractor"]], e.get("is_splits", 10),  # noqa: E731
                             e.get("batch_size", 64), device, e.get("bootstrap", 200), key=f"extractors.{e['extractor']}")
    out, real_out = score(images), score(real)
    desc = out.pop("extractor")
    details.update(extractor={**desc, "name": e["extractor"], "feature_extractor": desc["name"]},
                   reference=f"{cfg['dataset']}/{split}",
                   real_reference=f"{len(real)} images of {cfg['dataset']}/{split} drawn uniformly without replacement "
                                  f"by numpy default_rng({REAL_REFERENCE_SEED}), scored like the samples")
    return {**out, **{name: real_out[m] for m, name in REAL_REFERENCE_METRICS.items()}}



def _long_run_metrics(params: dict, cfg: dict, run: str, device: str, details: dict) -> dict:
    """Per chain length k: FID/IS of its x_0, its log Z_0 estimate (eq. 36) and mean HMC acceptance."""
    from drl.evaluate.long_run import combine

    chains = long_run_chains(cfg, run)
    out = {}
    for k in chains["steps_per_level"]:
        est = combine(chains, int(k))
        acc = chains[f"acceptance_{k}"]
        out[str(k)] = {**_fidelity_metrics(params, cfg, chains[f"samples_{k}"], device, details),
                       "log_z_ais": est["log_z0"], "log_z_ais_se": est["se"],
                       "acceptance_mean": None if np.isnan(acc).all() else float(np.nanmean(acc))}
    return {"long_run": out}


def _partition_metrics(cfg: dict, ebm, device: str, details: dict) -> dict:
    """log Z_0 and the normalised test log-density; bits/dim for 8-bit images.  ``transitions``:
    "progressive" (App. A.4, eqs. 33-36, along the run's progressive samples) or "ais_hmc" (Neal's
    2001 annealed importance sampling with HMC on each level's marginal), recorded in ``details`` as
    log_z_ais_method with the estimate's curve (and for ais_hmc each level's step size and acceptance,
    and its bridges when it has any)."""
    import torch

    from drl.data.pixels import is_image_array, to_model_space
    from drl.evaluate.ais import estimate_log_z_ais
    from drl.evaluate.likelihood import bits_per_dim, mean_log_likelihood_se, test_log_likelihood
    from drl.evaluate.log_z_bound import log_z_lower_bound
    from drl.evaluate.partition import estimate_log_z

    e = cfg["evaluate"]["partition"]
    ebm.to(device)
    raw = prepared(cfg["dataset"], "test")
    test = to_model_space(raw)
    gen = torch.Generator(device=device).manual_seed(e["seed"])
    method = e.get("transitions", "progressive")
    if method == "ais_hmc":
        est = estimate_log_z_ais(ebm, e["n_samples"], test.shape[1:], e["hmc_steps"], e.get("n_leapfrog", 2),
                                 e.get("step_size"), e.get("jitter", 0.2), gen, e.get("batch_size", 1000),
                                 e.get("adapt_chains", 1000), bridges=e.get("bridges", 0))
    else:
        est = estimate_log_z(ebm, e["n_samples"], test.shape[1:], e["K"], gen, e.get("batch_size", 1000),
                             e.get("noise_scale", 1.0), e.get("space", "x"))
    log_p = test_log_likelihood(ebm, test, est["log_z0"], e.get("batch_size", 1000))
    ll_se = mean_log_likelihood_se(log_p, est["se"])
    out = {"log_z_ais": est["log_z0"], "log_z_ais_se": est["se"], "test_ll_ais_nats": float(log_p.mean()),
           "test_ll_ais_nats_se": ll_se,
           "log_z_ais_min_ess_fraction": min(lv["ess_fraction"] for lv in est["per_level"])}
    details.update(log_z_ais_method=method, log_z_ais_curve=est["curve"])
    if method == "ais_hmc":  # per level t = 0..T-1; level 0 has no transitions (no acceptance) unless bridged
        details.update(log_z_ais_hmc_step_size=est["step_size"],
                       log_z_ais_hmc_acceptance=[None if np.isnan(a) else a for a in est["acceptance"]])
        if e.get("bridges"):  # J_t per level t: J_t - 1 geometric bridges below level t + 1
            details.update(log_z_ais_bridges=est["bridges"])
    # A certified lower bound on log Z_0 (holds with probability 0.99 whatever f is): an estimate below it
    # has missed mass its chains never visited, and every test log-density gets an upper bound.
    bound = log_z_lower_bound(ebm, test.shape[1:], generator=gen, batch_size=e.get("batch_size", 1000))
    out["log_z_lower_bound"] = bound["log_z_lower_bound"]
    details.update(log_z_lower_bound={k: bound[k] for k in ("delta", "radii", "n", "log_z_hat", "max_f")})
    if is_image_array(raw):
        dim = int(np.prod(test.shape[1:]))
        out["test_bpd"] = float(bits_per_dim(log_p, dim).mean())
        out["test_bpd_se"] = None if ll_se is None else ll_se / (dim * math.log(2.0))   # bpd is affine in log p
        log_p_upper = log_p + est["log_z0"] - bound["log_z_lower_bound"]
        out["test_bpd_lower_bound"] = float(bits_per_dim(log_p_upper, dim).mean())
    return out


def _write_provenance(cfg: dict, run: str, device: str, details: dict) -> None:
    """Beside the metrics: the machine this evaluation ran on, the one that trained the model (from
    its config.json), and ``details`` (the extractor with its file's sha256, the reference, ...)."""
    import json

    from drl.provenance import machine

    trained = paths.run_dir(cfg["group"], run) / "config.json"
    write_json(paths.provenance_file(cfg["group"], run),
               {"run": run, "evaluated_on": machine(device),
                "trained_on": json.loads(trained.read_text()).get("machine") if trained.exists() else None, **details})


def refstats(params: dict, args) -> None:
    from drl.evaluate.fidelity import reference_statistics, save_reference_statistics

    if args.extractor not in params.get("extractors", {}):
        raise ParamsError(f"extractor {args.extractor!r} is not defined under extractors in {args.params}")
    stats = reference_statistics(prepared(args.dataset, args.split), params["extractors"][args.extractor],
                                 device=device(args.device), key=f"extractors.{args.extractor}")
    save_reference_statistics(paths.refstats_file(args.dataset, args.split, args.extractor), stats)
    print(f"reference statistics of {args.dataset}/{args.split} ({stats['n']} images, {args.extractor})")


def extractor(params: dict, args) -> None:
    """Train a classifier extractor and write it to its ``weights`` file.  Not a workflow stage: the
    file is a measuring instrument, shipped and checked by sha256, and retraining it (which gives other
    weights on another CPU) is an action taken on purpose, after which params.yaml names the new hash."""
    from drl.data.raw import file_sha256
    from drl.evaluate.classifier import save_classifier, train_classifier

    ex = params.get("extractors", {}).get(args.extractor)
    if ex is None or ex["kind"] != "classifier":
        raise ParamsError(f"extractors.{args.extractor} is not a classifier defined in {args.params}")
    (train, train_y), (test, test_y) = _labelled(ex["dataset"], "train"), _labelled(ex["dataset"], "test")
    if len(np.unique(train_y)) < 2:
        raise DataError(f"dataset {ex['dataset']!r}: its train split has one class; "
                        "a classifier extractor needs at least 2")
    model, info = train_classifier(train, train_y, ex, test_images=test, test_labels=test_y)
    # wall time is printed, not stored: the checkpoint's sha256 identifies the extractor in metrics
    save_classifier(ex["weights"], model, {k: v for k, v in info.items() if k != "seconds"})
    sha = file_sha256(ex["weights"])
    print(f"{args.extractor}: test accuracy {info['test_accuracy']:.4f} ({info['seconds']:.1f} s); wrote {ex['weights']}\n"
          f"sha256 {sha}" + ("" if ex.get("sha256") == sha else
                             f"\nset extractors.{args.extractor}.sha256 in {args.params} to it: FID/IS computed with "
                             f"this file are not comparable with those of the previous one"))


def _labelled(dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.load(require(paths.prepared_dir(dataset) / "labels.npz", f"drl prepare --dataset {dataset}"))
    if labels[split].size == 0:
        import json

        manifest = paths.prepared_dir(dataset) / "manifest.json"   # image folders say why they have none
        why = json.loads(manifest.read_text()).get("source", {}).get("labels") if manifest.exists() else None
        raise DataError(f"dataset {dataset!r} has no class labels{f' ({why})' if isinstance(why, str) else ''}; "
                        "a classifier extractor needs a labelled dataset")
    return prepared(dataset, split), labels[split]
