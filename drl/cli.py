"""`drl <stage>`: thin stage entry points.  Each loads its params section, calls library code and
writes its outputs atomically, with the resolved configuration beside them."""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np

from drl import paths
from drl.config import LONG_RUN_METRICS, ParamsError, load_params, metrics_of, run_config, seed_runs
from drl.data.points import DataError
from drl.io import Busy, exclusive, np_save, np_savez, savefig, write_json, write_text


def cmd_prepare(params: dict, args) -> None:
    from drl.data.prepare import prepare

    if args.dataset not in params["datasets"]:
        raise ParamsError(f"dataset {args.dataset!r} is not defined under datasets in {args.params}")
    m = prepare(params["datasets"][args.dataset], paths.prepared_dir(args.dataset), workers=args.workers or _cpus())
    classes = f", {len(m['classes'])} classes" if m.get("classes") else ""
    print(f"prepared {args.dataset}: train {m['train']['shape']}, test {m['test']['shape']}{classes}")


def _cpus() -> int:
    """The CPUs this process may run on (a SLURM allocation or taskset limits them), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def _require(path: Path, producer: str) -> Path:
    """An input of this stage, or a clear error naming it and the command that makes it."""
    if not Path(path).exists():
        raise DataError(f"{path} not found; run `{producer}` (or the workflow) first")
    return Path(path)


def _prepared(dataset: str, split: str, mmap: bool = False) -> np.ndarray:
    """A prepared split, optionally memory-mapped (prepared LSUN bedroom 128 is ~150 GB)."""
    return np.load(_require(paths.prepared_dir(dataset) / f"{split}.npy", f"drl prepare --dataset {dataset}"),
                   mmap_mode="r" if mmap else None)


def _model(cfg: dict, run: str, device: str = "cpu"):
    """The run's trained EBM (EMA weights) on ``device``, with its ``perf`` switches applied."""
    from drl import perf
    from drl.train import load_model

    ebm, ckpt = load_model(_require(paths.run_dir(cfg["group"], run) / "model.pt", f"drl train --run {run}"))
    return perf.configure(ebm.to(device), cfg.get("perf"), device), ckpt


def cmd_train(params: dict, args) -> None:
    from drl import distributed
    from drl.train import DivergenceError, record_divergence, train

    cfg = run_config(params, args.run)
    w = distributed.world()  # several processes under torchrun, one otherwise
    distributed.local_batch(cfg["train"]["batch_size"], w, f"runs.{args.run}.train.batch_size")
    data = _prepared(cfg["dataset"], "train", mmap=True)
    out = paths.run_dir(cfg["group"], args.run)
    t0 = time.time()
    diverged = None
    try:
        with exclusive(out, f"drl train --run {args.run}") if w.main else nullcontext():
            train(cfg, data, out, device=_device(args))
    except DivergenceError as exc:  # every rank raises it at the same iteration
        # the stage completes with the last good weights marked diverged: the run's metrics and the
        # tables then say "diverged" while the other runs of a sweep go on
        if w.main:
            diverged = record_divergence(cfg, out, exc)
            print(f"drl train: warning: {exc}. model.pt holds the weights of iteration "
                  f"{diverged['last_good_iteration']}, marked diverged; its metrics will record the divergence. "
                  f"After changing params.yaml, delete {out / 'state.pt'} and rerun.", file=sys.stderr)
    if w.main:
        from drl.provenance import machine

        write_json(out / "config.json", {"run": args.run, "config": cfg, "train_seconds": time.time() - t0,
                                         "processes": w.size, "diverged": diverged, "machine": machine(_device(args))})


def _device(args) -> str:
    import torch

    if args.device != "auto":
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def sample_shape(net: dict) -> tuple:
    """One example's shape in model space, from the network's stored arguments."""
    if net["kind"] == "mlp":
        return tuple(net.get("in_shape", [net.get("dim", 2)]))
    return (net.get("in_channels", 3), net["resolution"], net["resolution"])


def cmd_sample(params: dict, args) -> None:
    import torch
    from tqdm import tqdm

    from drl.data.pixels import to_uint8
    from drl.sample import progressive_sample, sample_generators

    cfg = run_config(params, args.run)
    s = cfg["sample"]
    device = _device(args)
    ebm, _ = _model(cfg, args.run, device)
    shape = sample_shape(cfg["energy"]["net"])
    per_sample = s.get("seeding", "per_sample") == "per_sample"
    gen = None if per_sample else torch.Generator(device=device).manual_seed(s["seed"])
    batch = s.get("batch_size", s["n"])
    parts = []
    for start in tqdm(range(0, s["n"], batch), desc="sample", mininterval=2.0):
        stop = min(start + batch, s["n"])
        levels = progressive_sample(ebm, stop - start, shape, s["K"], s["noise_scale"],
                                    sample_generators(s["seed"], range(start, stop)) if per_sample else gen, device,
                                    keep_levels=len(shape) == 1)
        # 2-D: every level (x_T .. x_0) for the progressive figure; images: x_0 as uint8 (N, H, W, C)
        parts.append(torch.stack(levels).cpu().numpy() if len(shape) == 1 else to_uint8(levels[-1]))
    samples = np.concatenate(parts, axis=1 if len(shape) == 1 else 0)
    np_save(paths.samples_file(cfg["group"], args.run), samples)
    savefig(paths.sample_grid_file(cfg["group"], args.run), _samples_figure(args.run, samples))


def _samples_figure(run: str, samples: np.ndarray):
    """samples.png: a grid of the first 64 images, or a scatter plot of 2-D samples x_0."""
    from drl.report.figures import plt, sample_grid_figure

    if samples.ndim == 4:
        return sample_grid_figure([(run, samples)], 64)
    fig, ax = plt.subplots(figsize=(4, 4))
    ax.scatter(samples[-1, :, 0], samples[-1, :, 1], s=2, alpha=0.5, linewidths=0)
    ax.set_aspect("equal")
    ax.set_title(f"{run}: samples x_0")
    return fig


def cmd_extractor(params: dict, args) -> None:
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
    labels = np.load(_require(paths.prepared_dir(dataset) / "labels.npz", f"drl prepare --dataset {dataset}"))
    if labels[split].size == 0:
        import json

        manifest = paths.prepared_dir(dataset) / "manifest.json"   # image folders say why they have none
        why = json.loads(manifest.read_text()).get("source", {}).get("labels") if manifest.exists() else None
        raise DataError(f"dataset {dataset!r} has no class labels{f' ({why})' if isinstance(why, str) else ''}; "
                        "a classifier extractor needs a labelled dataset")
    return _prepared(dataset, split), labels[split]


def cmd_refstats(params: dict, args) -> None:
    from drl.evaluate.fidelity import reference_statistics, save_reference_statistics

    if args.extractor not in params.get("extractors", {}):
        raise ParamsError(f"extractor {args.extractor!r} is not defined under extractors in {args.params}")
    stats = reference_statistics(_prepared(args.dataset, args.split), params["extractors"][args.extractor],
                                 device=_device(args), key=f"extractors.{args.extractor}")
    save_reference_statistics(paths.refstats_file(args.dataset, args.split, args.extractor), stats)
    print(f"reference statistics of {args.dataset}/{args.split} ({stats['n']} images, {args.extractor})")


def _quadrature_metrics(params: dict, cfg: dict, ebm) -> dict:
    from drl.data.toy2d import get_toy
    from drl.evaluate.quadrature import LevelDensity, kl_data_model

    ds = params["datasets"][cfg["dataset"]]
    test = _prepared(cfg["dataset"], "test")
    e = cfg["evaluate"]["quadrature"]
    dens = LevelDensity(ebm, 0, e["extent"], e["grid"])
    metrics = {"test_ll_nats": float(dens.log_prob(test).mean()), "log_z_quadrature": dens.log_z}
    toy = get_toy(ds["toy"]) if ds["source"] == "toy" else None
    log_p_data = toy.log_density(dens.x_grid) if toy else None
    if log_p_data is not None:  # the data density is known in closed form
        metrics["kl_nats"] = kl_data_model(log_p_data, dens.log_g_grid, dens.cell)
        metrics["data_entropy_nats"] = float(-toy.log_density(test).mean())
    return metrics


def _fidelity_metrics(params: dict, cfg: dict, images: np.ndarray, device: str) -> dict:
    """FID/IS of uint8 images against the run's reference statistics, with the run's extractor, and
    their standard errors over sample sets (``bootstrap`` half-samples)."""
    from drl.evaluate.fidelity import fid_is, load_reference_statistics

    e = cfg["evaluate"]["fidelity"]
    split = e.get("reference_split", "train")
    ref = _require(paths.refstats_file(cfg["dataset"], split, e["extractor"]),
                   f"drl refstats --dataset {cfg['dataset']} --split {split} --extractor {e['extractor']}")
    out = fid_is(images, load_reference_statistics(ref), params["extractors"][e["extractor"]],
                 e.get("is_splits", 10), e.get("batch_size", 64), device, e.get("bootstrap", 200),
                 key=f"extractors.{e['extractor']}")
    return {**out, "extractor": e["extractor"], "extractor_description": out["extractor"],
            "reference": f"{cfg['dataset']}/{split}"}


def _samples(cfg: dict, run: str) -> np.ndarray:
    return np.load(_require(paths.samples_file(cfg["group"], run), f"drl sample --run {run}"))


def cmd_long_run(params: dict, args) -> None:
    """Section 4.2: adapted HMC step sizes and long-run chains of each length (Figs. 6-7)."""
    from drl.evaluate.long_run import hmc_steps_csv, long_run_chains

    cfg = run_config(params, args.run)
    if "long_run" not in cfg:
        raise ParamsError(f"runs.{args.run}.long_run is not set in {args.params}")
    device = _device(args)
    ebm, _ = _model(cfg, args.run, device)
    chains = long_run_chains(ebm, cfg["long_run"], sample_shape(cfg["energy"]["net"]), device)
    np_savez(paths.long_run_file(cfg["group"], args.run), chains)
    write_text(paths.hmc_steps_file(cfg["group"], args.run), hmc_steps_csv(chains))


def _long_run_chains(cfg: dict, run: str):
    return np.load(_require(paths.long_run_file(cfg["group"], run), f"drl long-run --run {run}"))


def _long_run_metrics(params: dict, cfg: dict, run: str, device: str) -> dict:
    """Per chain length k: FID/IS of its x_0, its log Z_0 estimate (eq. 36) and mean HMC acceptance."""
    from drl.evaluate.fidelity import FIDELITY_FIELDS
    from drl.evaluate.long_run import combine

    chains = _long_run_chains(cfg, run)
    out = {}
    for k in chains["steps_per_level"]:
        fid = _fidelity_metrics(params, cfg, chains[f"samples_{k}"], device)
        est = combine(chains, int(k))
        acc = chains[f"acceptance_{k}"]
        out[str(k)] = {**{m: fid[m] for m in FIDELITY_FIELDS if m in fid},
                       "extractor": fid["extractor"], "log_z_ais": est["log_z0"], "log_z_ais_se": est["se"],
                       "acceptance_mean": None if np.isnan(acc).all() else float(np.nanmean(acc))}
    return {"long_run": out}


def _partition_metrics(cfg: dict, ebm, device: str) -> dict:
    """log Z_0 and the normalised test log-density; bits/dim for 8-bit images.  ``transitions``:
    "progressive" (App. A.4, eqs. 33-36, along the run's progressive samples) or "ais_hmc" (Neal's
    2001 annealed importance sampling with HMC on each level's marginal), recorded as log_z_ais_method."""
    import torch

    from drl.data.pixels import is_image_array, to_model_space
    from drl.evaluate.partition import (bits_per_dim, estimate_log_z, estimate_log_z_ais, mean_log_likelihood_se,
                                        test_log_likelihood)

    e = cfg["evaluate"]["partition"]
    ebm.to(device)
    raw = _prepared(cfg["dataset"], "test")
    test = to_model_space(raw)
    gen = torch.Generator(device=device).manual_seed(e["seed"])
    method = e.get("transitions", "progressive")
    if method == "ais_hmc":
        est = estimate_log_z_ais(ebm, e["n_samples"], test.shape[1:], e["hmc_steps"], e.get("n_leapfrog", 2),
                                 e.get("step_size"), e.get("jitter", 0.2), gen, e.get("batch_size", 1000))
    else:
        est = estimate_log_z(ebm, e["n_samples"], test.shape[1:], e["K"], gen, e.get("batch_size", 1000),
                             e.get("noise_scale", 1.0), e.get("space", "x"))
    log_p = test_log_likelihood(ebm, test, est["log_z0"], e.get("batch_size", 1000))
    ll_se = mean_log_likelihood_se(log_p, est["se"])
    out = {"log_z_ais": est["log_z0"], "log_z_ais_se": est["se"], "test_ll_ais_nats": float(log_p.mean()),
           "test_ll_ais_nats_se": ll_se,
           "log_z_ais_curve": est["curve"], "log_z_ais_min_ess_fraction": min(lv["ess_fraction"] for lv in est["per_level"]),
           "log_z_ais_method": method}
    if method == "ais_hmc":  # per level t = 0..T-1; level 0's transitions are never run (no acceptance)
        out["log_z_ais_hmc_step_size"] = est["step_size"]
        out["log_z_ais_hmc_acceptance"] = [None if np.isnan(a) else a for a in est["acceptance"]]
    if is_image_array(raw):
        dim = int(np.prod(test.shape[1:]))
        out["test_bpd"] = float(bits_per_dim(log_p, dim).mean())
        out["test_bpd_se"] = None if ll_se is None else ll_se / (dim * math.log(2.0))   # bpd is affine in log p
    return out


def _write_provenance(cfg: dict, run: str, device: str, metrics: dict) -> None:
    """Beside the metrics: the machine this evaluation ran on, the one that trained the model (from
    its config.json), and the sha256 of the extractor file the metrics were computed with."""
    import json

    from drl.provenance import machine

    trained = paths.run_dir(cfg["group"], run) / "config.json"
    out = {"run": run, "evaluated_on": machine(device),
           "trained_on": json.loads(trained.read_text()).get("machine") if trained.exists() else None}
    if "extractor_description" in metrics:
        d = metrics["extractor_description"]
        out["extractor"] = {"name": metrics["extractor"], "file": d["file"], "sha256": d["sha256"]}
    write_json(paths.provenance_file(cfg["group"], run), out)


def cmd_evaluate(params: dict, args) -> None:
    cfg = run_config(params, args.run)
    ebm, ckpt = _model(cfg, args.run, _device(args))
    metrics = {"iterations": ckpt["iteration"]}
    if ckpt.get("diverged"):  # the divergence instead of numbers (tables show "diverged")
        nothing = dict.fromkeys(metrics_of(cfg["evaluate"]))
        long_run = {"long_run": {str(k): dict.fromkeys(LONG_RUN_METRICS)
                                 for k in cfg["long_run"]["steps_per_level"]}} if "long_run" in cfg else {}
        write_json(paths.metrics_file(cfg["group"], args.run),
                   {"run": args.run, **metrics, **nothing, **long_run, "diverged": ckpt["diverged"]})
        _write_provenance(cfg, args.run, _device(args), {})
        print(f"{args.run}: diverged at iteration {ckpt['diverged']['iteration']}; metrics record the divergence")
        return
    if "quadrature" in cfg["evaluate"]:
        metrics.update(_quadrature_metrics(params, cfg, ebm))
    if "fidelity" in cfg["evaluate"]:
        metrics.update(_fidelity_metrics(params, cfg, _samples(cfg, args.run), _device(args)))
    if "long_run" in cfg:
        metrics.update(_long_run_metrics(params, cfg, args.run, _device(args)))
    if "partition" in cfg["evaluate"]:
        metrics.update(_partition_metrics(cfg, ebm, _device(args)))
    write_json(paths.metrics_file(cfg["group"], args.run), {"run": args.run, **metrics})
    _write_provenance(cfg, args.run, _device(args), metrics)
    print(f"{args.run}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float))))


def _interpolations(cfg: dict, ebm, fig_cfg: dict) -> list[np.ndarray]:
    """One row per pair of seeds: slerp of the initial and every Langevin noise (Sec. 4.1, Fig. 5),
    sampled with the run's evaluation sampler settings."""
    from drl.data.pixels import to_uint8
    from drl.interpolate import interpolate_seeds

    s, seed = cfg["sample"], fig_cfg.get("seed", 0)
    shape = sample_shape(cfg["energy"]["net"])
    return [to_uint8(interpolate_seeds(ebm, shape, s["K"], (seed + 2 * i, seed + 2 * i + 1), fig_cfg.get("points", 8),
                                       s["noise_scale"]))
            for i in range(fig_cfg.get("rows", 4))]


def _long_run_figure(kind: str, run: str, cfg: dict, n: int):
    """Fig. 6 (``hmc``) or Fig. 7 (``long_run``) from the run's long_run.npz."""
    from drl.evaluate.long_run import combine
    from drl.report.figures import hmc_figure, sample_grid_figure

    chains = _long_run_chains(cfg, run)
    ks = [int(k) for k in chains["steps_per_level"]]
    T = len(chains["step_size"])
    if kind == "long_run":
        return sample_grid_figure([(f"{run}: {k * T} steps ({k} per time step)", chains[f"samples_{k}"]) for k in ks], n)
    band = tuple(cfg["long_run"]["adapt"].get("target", (0.6, 0.9)))
    return hmc_figure(chains["step_size"], chains["adapt_acceptance"],
                      {k: (chains[f"acceptance_{k}"], combine(chains, k)["curve"]) for k in ks}, band)


def cmd_figure(params: dict, args) -> None:
    from drl.report.figures import comparison_figure, interpolation_figure, progressive_figure, sample_grid_figure

    if args.figure not in params.get("figures", {}):
        raise ParamsError(f"figure {args.figure!r} is not defined under figures in {args.params}")
    fig_cfg = params["figures"][args.figure]
    if fig_cfg["kind"] in ("hmc", "long_run"):
        r = fig_cfg["runs"][0]
        fig = _long_run_figure(fig_cfg["kind"], r, run_config(params, r), fig_cfg.get("n", 64))
        savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)
        return
    loaded = []
    for r in fig_cfg["runs"]:
        cfg = run_config(params, r)
        ebm = None if fig_cfg["kind"] == "samples" else _model(cfg, r)[0]
        if fig_cfg["kind"] == "interpolation":
            loaded.append((r, cfg, ebm, None))
            continue
        samples = _samples(cfg, r)
        loaded.append((r, cfg, ebm, samples))
    if fig_cfg["kind"] == "interpolation":
        fig = interpolation_figure([row for _, cfg, ebm, _ in loaded for row in _interpolations(cfg, ebm, fig_cfg)])
        savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)
        return
    if fig_cfg["kind"] == "samples":
        fig = sample_grid_figure([(r, images) for r, _, _, images in loaded], fig_cfg.get("n", 64))
        savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)
        return
    extent = loaded[0][1]["evaluate"]["quadrature"]["extent"]
    if fig_cfg["kind"] == "progressive":
        _, _, ebm, levels = loaded[0]
        fig = progressive_figure(ebm, levels, extent)
    else:
        data = _prepared(loaded[0][1]["dataset"], "test")
        fig = comparison_figure(data, [(r, ebm, lv[-1]) for r, _, ebm, lv in loaded], extent)
    savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)


def cmd_table(params: dict, args) -> None:
    from drl.report.tables import load_metrics, table_rows, to_csv, to_markdown

    if args.table not in params.get("tables", {}):
        raise ParamsError(f"table {args.table!r} is not defined under tables in {args.params}")
    table = params["tables"][args.table]

    def metrics_of_run(run):
        group = params["runs"][run]["group"]
        return load_metrics(_require(paths.metrics_file(group, run), f"drl evaluate --run {run}"))

    rows = table_rows(table, metrics_of_run, lambda run: seed_runs(params, run))
    write_text(table["output"], to_csv(rows))
    write_text(paths.table_markdown(table["output"]), to_markdown(table["title"], table["columns"], rows))
    print(f"wrote {table['output']} ({len(rows)} rows)")


def _read_version(path: str, rev: str | None) -> str | None:
    """A file's text in the working tree, or at git revision ``rev``; None where it does not exist."""
    import subprocess

    if rev is None:
        return Path(path).read_text() if Path(path).exists() else None
    done = subprocess.run(["git", "show", f"{rev}:{Path(path).as_posix()}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None


def cmd_compare(params: dict, args) -> None:
    """Each metrics file at ``--rev`` (default HEAD) against the working tree, or (``--pair``) two files."""
    from drl.report.compare import compare, divergence_notes, load, provenance_notes, provenance_path, render

    if args.pair:
        if len(args.files) != 2 or args.rev:
            raise ParamsError("drl compare --pair takes exactly two metrics files and no --rev")
        pairs = [(args.files[0], None, args.files[1], None)]
    else:
        pairs = [(f, args.rev or "HEAD", f, None) for f in args.files]
    for old_path, old_rev, new_path, new_rev in pairs:
        old, new = load(_read_version(old_path, old_rev)), load(_read_version(new_path, new_rev))
        where = f"{old_path}{'@' + old_rev if old_rev else ''} -> {new_path}"
        if old is None or new is None:
            raise DataError(f"{where}: {'the old' if old is None else 'the new'} version does not exist")
        notes = divergence_notes(old, new) + provenance_notes(
            load(_read_version(str(provenance_path(old_path)), old_rev)),
            load(_read_version(str(provenance_path(new_path)), new_rev)))
        print(f"== {where}\n{render(compare(old, new, args.z), notes, args.z)}\n")


def cmd_fetch(params: dict, args) -> None:
    from drl.data.fetch import fetch

    if args.name not in params.get("downloads", {}):
        raise ParamsError(f"{args.name!r} is not defined under downloads in {args.params} "
                          f"(defined: {sorted(params.get('downloads', {}))})")
    print(fetch(args.name, params["downloads"][args.name], retries=args.retries), flush=True)


def cmd_pull(params: dict, args) -> None:
    from drl.share import pull

    pull(params, args.group, args.remote)


def cmd_missing_input(params: dict, args) -> None:
    """Explain a raw dataset file or weights file that the workflow needs but cannot make."""
    from drl.data.prepare import LOADERS, raw_inputs

    for name, ds in params["datasets"].items():
        if args.path in raw_inputs(ds) and not Path(args.path).exists():
            LOADERS[ds["source"]](ds)  # raises DataError naming the file, its format and where to get it
    for name, ex in params.get("extractors", {}).items():
        if ex.get("weights") == args.path:
            from drl.evaluate.fidelity import resolve_extractor

            resolve_extractor(ex, f"extractors.{name}")  # raises EvaluationError saying how to obtain it
    raise DataError(f"{args.path}: not found; params.yaml names it as an input that you provide")


def cmd_dvc_yaml(params: dict, args) -> None:
    from drl.workflow import dvc_files

    files = dvc_files(params)
    stale = [p for p, text in files.items() if not Path(p).exists() or Path(p).read_text() != text]
    if args.check:
        if stale:
            raise SystemExit(f"{', '.join(stale)} out of date with {args.params}; run `drl dvc-yaml` to regenerate")
        print(f"{', '.join(files)} up to date")
        return
    for path in stale:
        write_text(path, files[path])
        print(f"wrote {path}")


def cmd_validate(params: dict, args) -> None:
    print(f"{args.params}: OK ({len(params['datasets'])} datasets, {len(params['runs'])} runs)")


@contextmanager
def _sigterm_unwinds(stage: str):
    """SIGTERM (SLURM pre-emption, ``kill``) raises SystemExit(143) in the stage, which unwinds it: the
    temp file of an output being written is removed (drl/io.py), finished outputs stay, and rerunning
    the same command completes the rest.  Training installs its own handler, which first saves state.pt.
    The previous handler is restored on exit (``main`` also runs inside tests)."""
    def handler(signum, frame):
        print(f"drl {stage}: stopped by {signal.Signals(signum).name}; unfinished outputs were not written, "
              "rerun the same command", file=sys.stderr, flush=True)
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="drl", description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="stage", required=True)
    sp = sub.add_parser("prepare", help="raw data -> data/prepared/<dataset>/")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--workers", type=_positive, help="processes decoding images (default: one per CPU this "
                    "process may use); the output is the same for any number")
    for name, fn in (("train", cmd_train), ("sample", cmd_sample), ("long-run", cmd_long_run),
                     ("evaluate", cmd_evaluate)):
        sp = sub.add_parser(name)
        sp.add_argument("--run", required=True)
        sp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("extractor", help="train a classifier feature extractor (embedded data FID/IS)")
    sp.add_argument("--extractor", required=True)
    sp = sub.add_parser("refstats", help="FID reference statistics of one dataset split")
    sp.add_argument("--dataset", required=True)
    sp.add_argument("--split", choices=("train", "test"), required=True)
    sp.add_argument("--extractor", required=True)
    sp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    sp = sub.add_parser("figure", help="render one entry of `figures`")
    sp.add_argument("--figure", required=True)
    sp = sub.add_parser("dvc-yaml", help="generate the DVC pipeline files from params.yaml (the Snakemake DAG's twin)")
    sp.add_argument("--check", action="store_true", help="fail if the file is out of date")
    sp = sub.add_parser("table", help="render one entry of `tables` (CSV + Markdown)")
    sp.add_argument("--table", required=True)
    sp = sub.add_parser("fetch", help="download one entry of `downloads` and verify its checksum")
    sp.add_argument("--name", required=True)
    sp.add_argument("--retries", type=int, default=3, help="further attempts after a dropped connection (default 3)")
    sp = sub.add_parser("pull", help="a group's trained artifacts from the DVC remote, verified by DVC, then "
                                     "marked up to date for Snakemake")
    sp.add_argument("--group", help="a group of runs (default: every group)")
    sp.add_argument("--remote", help="DVC remote name (default: the default remote)")
    sp = sub.add_parser("missing-input", help="explain a missing raw dataset or weights file (exit code 2)")
    sp.add_argument("--path", required=True)
    sub.add_parser("validate", help="validate params.yaml and exit")
    sp = sub.add_parser("compare", help="is a change of metrics beyond their standard errors? (each file at --rev, "
                                        "default HEAD, against the working tree; or --pair A B)")
    sp.add_argument("files", nargs="+", help="metrics JSON files")
    sp.add_argument("--rev", help="git revision of the old versions (default: HEAD)")
    sp.add_argument("--pair", action="store_true", help="compare the two files given with each other")
    sp.add_argument("--z", type=float, default=2.0, help="a change beyond z standard errors is flagged (default 2)")
    args = p.parse_args(argv)
    fns = {"prepare": cmd_prepare, "figure": cmd_figure, "table": cmd_table, "extractor": cmd_extractor,
           "refstats": cmd_refstats, "missing-input": cmd_missing_input, "fetch": cmd_fetch, "pull": cmd_pull, "dvc-yaml": cmd_dvc_yaml, "validate": cmd_validate,
           "compare": cmd_compare}
    fn = getattr(args, "fn", None) or fns[args.stage]
    from drl.evaluate.errors import EvaluationError

    try:
        with _sigterm_unwinds(args.stage):
            fn(load_params(args.params), args)
    except (ParamsError, DataError, EvaluationError, Busy) as exc:
        print(f"drl {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
