"""Stages ``sample`` (progressive sampling, Algorithm 2) and ``long-run`` (Section 4.2's chains)."""
from __future__ import annotations

import numpy as np

from drl import paths
from drl.config import ParamsError, run_config
from drl.io import np_save, np_savez, savefig, write_text
from drl.model import sample_shape
from drl.stages.common import device, trained_model


def sample(params: dict, args) -> None:
    import torch
    from tqdm import tqdm

    from drl import perf
    from drl.data.pixels import to_uint8
    from drl.noise import from_generator, per_sample, sample_generators
    from drl.report.figures import samples_figure
    from drl.sample import progressive_sample

    cfg = run_config(params, args.run)
    s = cfg["sample"]
    dev = device(args.device)
    ebm, _, fast = trained_model(cfg, args.run, dev)
    shape = sample_shape(cfg["energy"]["net"])
    seeded_per_sample = s.get("seeding", "per_sample") == "per_sample"
    batch_noise = None if seeded_per_sample else from_generator(torch.Generator(device=dev).manual_seed(s["seed"]))
    batch = s.get("batch_size", s["n"])
    parts = []
    for start in tqdm(range(0, s["n"], batch), desc="sample", mininterval=2.0):
        stop = min(start + batch, s["n"])
        randn_like = per_sample(sample_generators(s["seed"], range(start, stop))) if seeded_per_sample else batch_noise
        with perf.execution(fast, device=dev):
            levels = progressive_sample(ebm, stop - start, shape, s["K"], s["noise_scale"], randn_like, dev,
                                        keep_levels=len(shape) == 1)
        # 2-D: every level (x_T .. x_0) for the progressive figure; images: x_0 as uint8 (N, H, W, C)
        parts.append(torch.stack(levels).cpu().numpy() if len(shape) == 1 else to_uint8(levels[-1]))
    samples = np.concatenate(parts, axis=1 if len(shape) == 1 else 0)
    np_save(paths.samples_file(cfg["group"], args.run), samples)
    savefig(paths.sample_grid_file(cfg["group"], args.run), samples_figure(args.run, samples))


def long_run(params: dict, args) -> None:
    """Section 4.2: adapted HMC step sizes and long-run chains of each length (Figs. 6-7)."""
    from drl import perf
    from drl.evaluate.long_run import hmc_steps_csv, long_run_chains

    cfg = run_config(params, args.run)
    if "long_run" not in cfg:
        raise ParamsError(f"runs.{args.run}.long_run is not set in {args.params}")
    dev = device(args.device)
    ebm, _, fast = trained_model(cfg, args.run, dev)
    with perf.execution(fast, device=dev):
        chains = long_run_chains(ebm, cfg["long_run"], sample_shape(cfg["energy"]["net"]), dev)
    np_savez(paths.long_run_file(cfg["group"], args.run), chains)
    write_text(paths.hmc_steps_file(cfg["group"], args.run), hmc_steps_csv(chains))
