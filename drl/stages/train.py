"""Stage ``train``: one run's training, its divergence recorded rather than raised, and config.json."""
from __future__ import annotations

import sys
import time
from contextlib import nullcontext

from drl import paths
from drl.config import run_config
from drl.io import exclusive, write_json
from drl.stages.common import device, prepared


def train(params: dict, args) -> None:
    from drl import distributed
    from drl.train import DivergenceError, record_divergence
    from drl.train import train as fit

    cfg = run_config(params, args.run)
    w = distributed.world()  # several processes under torchrun, one otherwise
    distributed.local_batch(cfg["train"]["batch_size"], w, f"runs.{args.run}.train.batch_size")
    data = prepared(cfg["dataset"], "train", mmap=True)
    out = paths.run_dir(cfg["group"], args.run)
    t0 = time.time()
    diverged = None
    try:
        with exclusive(out, f"drl train --run {args.run}") if w.main else nullcontext():
            fit(cfg, data, out, device=device(args.device))
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
                                         "processes": w.size, "diverged": diverged, "machine": machine(device(args.device))})
