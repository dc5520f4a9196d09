"""Data-parallel training over several processes launched by torchrun.

torchrun gives every process RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT.  Without
them (plain ``python`` or ``drl train``) there is one process and every helper here is a no-op.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from drl.config import ParamsError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes checkpoints, logs and the final model."""
        return self.rank == 0


def world() -> World:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))


def local_batch(batch_size: int, w: World, key: str = "train.batch_size") -> int:
    """Each rank's share of the global batch."""
    if batch_size % w.size:
        raise ParamsError(f"{key}: the global batch of {batch_size} does not split evenly over the world size "
                          f"of {w.size} processes; use a multiple of {w.size}")
    return batch_size // w.size


def rank_seed(seed: int, w: World) -> int:
    """Seed of a rank's generator: ``seed`` itself in a single process (runs are unchanged), otherwise
    a hash of (seed, rank), so data, levels and Langevin noise differ between ranks."""
    if w.size == 1:
        return seed
    return int(np.random.SeedSequence([seed, w.rank]).generate_state(1, np.uint64)[0])


@contextmanager
def process_group(device: str, w: World):
    """Join torchrun's process group (NCCL with one GPU per local rank on CUDA, gloo on CPU) and
    yield this rank's device; leave it on exit if this call joined it."""
    if w.size == 1:
        yield device
        return
    if device.startswith("cuda"):
        if w.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"local rank {w.local_rank} has no GPU ({torch.cuda.device_count()} visible); "
                               "start at most one process per GPU")
        device = f"cuda:{w.local_rank}"
        torch.cuda.set_device(device)
    if dist.is_initialized():
        yield device
        return
    dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        yield device
    finally:
        dist.destroy_process_group()


def replicate(module: torch.nn.Module, device: str, w: World) -> torch.nn.Module:
    """``module`` under DistributedDataParallel (gradients averaged over ranks in backward, buffers
    such as spectral-norm vectors broadcast from rank 0 at each forward); itself for one process.

    ``static_graph``: the same parameters take part in every iteration, and those that never get a
    gradient (e.g. the head's bias under DSM, whose loss sees only grad_y f) are left without one,
    as in a single process."""
    if w.size == 1:
        return module
    ids = [torch.device(device).index] if device.startswith("cuda") else None
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=ids, static_graph=True)


def mean(x: torch.Tensor, w: World) -> torch.Tensor:
    """Mean of ``x`` over ranks."""
    if w.size > 1:
        x = x.clone()
        dist.all_reduce(x)
        x /= w.size
    return x


def maximum(x: torch.Tensor, w: World) -> torch.Tensor:
    """Elementwise maximum of ``x`` over ranks."""
    if w.size > 1:
        x = x.clone()
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def gather(obj, w: World) -> list:
    """Every rank's ``obj``, in rank order."""
    if w.size == 1:
        return [obj]
    out = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def barrier(w: World) -> None:
    if w.size > 1:
        dist.barrier()
