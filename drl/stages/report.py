"""Stages ``figure`` and ``table``, and ``drl compare`` (is a change of metrics beyond its errors?)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from drl import paths
from drl.config import ParamsError, run_config, seed_runs
from drl.data.points import DataError
from drl.io import savefig, write_text
from drl.model import sample_shape
from drl.stages.common import long_run_chains, prepared, require, samples, trained_model


def figure(params: dict, args) -> None:
    from drl.report.figures import comparison_figure, interpolation_figure, progressive_figure, sample_grid_figure

    if args.figure not in params.get("figures", {}):
        raise ParamsError(f"figure {args.figure!r} is not defined under figures in {args.params}")
    fig_cfg = params["figures"][args.figure]
    if fig_cfg["kind"] == "seeds":
        savefig(paths.figure_file(fig_cfg["group"], args.figure), _seeds_figure(params, fig_cfg["runs"]))
        return
    if fig_cfg["kind"] in ("hmc", "long_run"):
        r = fig_cfg["runs"][0]
        fig = _long_run_figure(fig_cfg["kind"], r, run_config(params, r), fig_cfg.get("n", 64))
        savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)
        return
    loaded = []
    for r in fig_cfg["runs"]:
        cfg = run_config(params, r)
        ebm, _, fast = (None, None, None) if fig_cfg["kind"] == "samples" else trained_model(cfg, r)
        if fig_cfg["kind"] == "interpolation":
            loaded.append((r, cfg, ebm, fast))
            continue
        loaded.append((r, cfg, ebm, samples(cfg, r)))
    if fig_cfg["kind"] == "interpolation":
        fig = interpolation_figure([row for _, cfg, ebm, fast in loaded for row in _interpolations(cfg, ebm, fast, fig_cfg)])
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
        data = prepared(loaded[0][1]["dataset"], "test")
        fig = comparison_figure(data, [(r, ebm, lv[-1]) for r, _, ebm, lv in loaded], extent)
    savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)


def _interpolations(cfg: dict, ebm, fast, fig_cfg: dict) -> list[np.ndarray]:
    """One row per pair of seeds: slerp of the initial and every Langevin noise (Sec. 4.1, Fig. 5),
    sampled with the run's evaluation sampler settings."""
    from drl import perf
    from drl.data.pixels import to_uint8
    from drl.interpolate import interpolate_seeds

    s, seed = cfg["sample"], fig_cfg.get("seed", 0)
    shape = sample_shape(cfg["energy"]["net"])
    with perf.execution(fast):
        return [to_uint8(interpolate_seeds(ebm, shape, s["K"], (seed + 2 * i, seed + 2 * i + 1),
                                           fig_cfg.get("points", 8), s["noise_scale"]))
                for i in range(fig_cfg.get("rows", 4))]


def _seeds_figure(params: dict, runs: list[str]):
    """FID of every seed of each run, and of its long-run chains of each length."""
    from drl.report.figures import seeds_figure
    from drl.report.tables import load_metrics

    rows = []
    for run in runs:
        cfg = run_config(params, run)
        ms = [load_metrics(require(paths.metrics_file(cfg["group"], r), f"drl evaluate --run {r}"))
              for r in seed_runs(params, run)]
        rows.append((run, [m.get("fid") for m in ms], [m.get("fid_real_reference") for m in ms]))
        for k in cfg.get("long_run", {}).get("steps_per_level", []):
            lr = [m.get("long_run", {}).get(str(k), {}) for m in ms]
            rows.append((f"{run}, long run {k}/level", [m.get("fid") for m in lr], [m.get("fid_real_reference") for m in lr]))
    return seeds_figure(rows)


def _long_run_figure(kind: str, run: str, cfg: dict, n: int):
    """Fig. 6 (``hmc``) or Fig. 7 (``long_run``) from the run's long_run.npz."""
    from drl.evaluate.long_run import combine
    from drl.report.figures import hmc_figure, sample_grid_figure

    chains = long_run_chains(cfg, run)
    ks = [int(k) for k in chains["steps_per_level"]]
    T = len(chains["step_size"])
    if kind == "long_run":
        return sample_grid_figure([(f"{run}: {k * T} steps ({k} per time step)", chains[f"samples_{k}"]) for k in ks], n)
    band = tuple(cfg["long_run"]["adapt"].get("target", (0.6, 0.9)))
    return hmc_figure(chains["step_size"], chains["adapt_acceptance"],
                      {k: (chains[f"acceptance_{k}"], combine(chains, k)["curve"]) for k in ks}, band)


def table(params: dict, args) -> None:
    from drl.report.tables import claim_rows, claims_markdown, load_metrics, table_rows, to_csv, to_markdown

    if args.table not in params.get("tables", {}):
        raise ParamsError(f"table {args.table!r} is not defined under tables in {args.params}")
    table = params["tables"][args.table]

    def metrics_of_run(run):
        group = params["runs"][run]["group"]
        return load_metrics(require(paths.metrics_file(group, run), f"drl evaluate --run {run}"))

    rows = table_rows(table, metrics_of_run, lambda run: seed_runs(params, run),
                      lambda run: params["runs"][run]["evaluate"].get("fidelity", {}).get("extractor", ""))
    write_text(table["output"], to_csv(rows))
    md = to_markdown(table["title"], table["columns"], rows)
    if "claims" in table:   # the paper's pairwise claims, tested on these rows, as a second table
        md += "\n" + claims_markdown(claim_rows(table["claims"], rows))
    write_text(paths.table_markdown(table["output"]), md)
    print(f"wrote {table['output']} ({len(rows)} rows)")


def compare(params: dict, args) -> None:
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


def _read_version(path: str, rev: str | None) -> str | None:
    """A file's text in the working tree, or at git revision ``rev``; None where it does not exist."""
    import subprocess

    if rev is None:
        return Path(path).read_text() if Path(path).exists() else None
    done = subprocess.run(["git", "show", f"{rev}:{Path(path).as_posix()}"], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else None
