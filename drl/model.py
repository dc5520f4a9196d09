"""The EBM of a run: built from its ``diffusion``, ``energy`` and ``sampler`` sections, or rebuilt
from a checkpoint alone, so that sampling and evaluation need neither the trainer nor any flag."""
from __future__ import annotations

from drl.diffusion import make_schedule
from drl.energy import ConditionalEBM
from drl.io import load_checkpoint
from drl.nets import build_net

MODEL_KEYS = ("diffusion", "energy", "sampler")  # the sections a checkpoint stores as model_cfg


def build_model(model_cfg: dict) -> ConditionalEBM:
    """The EBM from a run's ``diffusion``, ``energy`` and ``sampler`` sections (stored in checkpoints)."""
    sched = make_schedule(model_cfg["diffusion"])
    energy, sampler = model_cfg["energy"], model_cfg["sampler"]
    return ConditionalEBM(build_net(energy["net"]), sched, sampler["step_size"], sampler["b"],
                          energy["parameterisation"], energy.get("base", "none"),
                          energy.get("sn_power_iteration", "per_call"))


def load_model(path, ema: bool = True) -> tuple[ConditionalEBM, dict]:
    """Rebuild the EBM from a checkpoint alone, as data (drl/io.py load_checkpoint), in eval mode."""
    ckpt = load_checkpoint(path)
    ebm = build_model(ckpt["model_cfg"])
    ebm.load_state_dict(ckpt["ema" if ema else "model"])
    ebm.eval()
    return ebm, ckpt


def sample_shape(net: dict) -> tuple:
    """One example's shape in model space, from the network's stored arguments."""
    if net["kind"] == "mlp":
        return tuple(net.get("in_shape", [net.get("dim", 2)]))
    return (net.get("in_channels", 3), net["resolution"], net["resolution"])
