"""`drl <stage>`: thin stage entry points.  Each loads its params section, calls library code and
writes its outputs atomically, with the resolved configuration beside them."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from drl import paths
from drl.config import ParamsError, load_params, run_config
from drl.data.points import DataError
from drl.io import np_save, savefig, write_json


def cmd_prepare(params: dict, args) -> None:
    from drl.data.prepare import prepare

    if args.dataset not in params["datasets"]:
        raise ParamsError(f"dataset {args.dataset!r} is not defined under datasets in {args.params}")
    m = prepare(params["datasets"][args.dataset], paths.prepared_dir(args.dataset))
    print(f"prepared {args.dataset}: train {m['train']['shape']}, test {m['test']['shape']}")


def _require(path: Path, producer: str) -> Path:
    """An input of this stage, or a clear error naming it and the command that makes it."""
    if not Path(path).exists():
        raise DataError(f"{path} not found; run `{producer}` (or the workflow) first")
    return Path(path)


def _prepared(dataset: str, split: str) -> np.ndarray:
    return np.load(_require(paths.prepared_dir(dataset) / f"{split}.npy", f"drl prepare --dataset {dataset}"))


def _model(group: str, run: str):
    from drl.train import load_model

    return load_model(_require(paths.run_dir(group, run) / "model.pt", f"drl train --run {run}"))


def cmd_train(params: dict, args) -> None:
    from drl.train import train

    cfg = run_config(params, args.run)
    data = _prepared(cfg["dataset"], "train")
    out = paths.run_dir(cfg["group"], args.run)
    t0 = time.time()
    train(cfg, data, out, device=_device(args))
    write_json(out / "config.json", {"run": args.run, "config": cfg, "train_seconds": time.time() - t0})


def _device(args) -> str:
    import torch

    if args.device != "auto":
        return args.device
    return "cuda" if torch.cuda.is_available() else "cpu"


def cmd_sample(params: dict, args) -> None:
    import torch

    from drl.sample import progressive_sample

    cfg = run_config(params, args.run)
    s = cfg["sample"]
    ebm, _ = _model(cfg["group"], args.run)
    gen = torch.Generator().manual_seed(s["seed"])
    dim = cfg["energy"]["net"].get("dim", 2)
    levels = progressive_sample(ebm, s["n"], (dim,), s["K"], s["noise_scale"], gen)
    np_save(paths.samples_file(cfg["group"], args.run), torch.stack(levels).numpy())


def cmd_evaluate(params: dict, args) -> None:
    from drl.data.toy2d import get_toy
    from drl.evaluate.quadrature import LevelDensity, kl_data_model

    cfg = run_config(params, args.run)
    ds = params["datasets"][cfg["dataset"]]
    ebm, ckpt = _model(cfg["group"], args.run)
    test = _prepared(cfg["dataset"], "test")
    e = cfg["evaluate"]
    dens = LevelDensity(ebm, 0, e["extent"], e["grid"])
    metrics = {"test_ll_nats": float(dens.log_prob(test).mean()), "log_z_level0_quadrature": dens.log_z,
               "iterations": ckpt["iteration"]}
    toy = get_toy(ds["toy"]) if ds["source"] == "toy" else None
    log_p_data = toy.log_density(dens.x_grid) if toy else None
    if log_p_data is not None:  # the data density is known in closed form
        metrics["kl_nats"] = kl_data_model(log_p_data, dens.log_g_grid, dens.cell)
        metrics["data_entropy_nats"] = float(-toy.log_density(test).mean())
    write_json(paths.metrics_file(cfg["group"], args.run), {"run": args.run, **metrics})
    print(f"{args.run}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))


def cmd_figure(params: dict, args) -> None:
    from drl.report.figures import comparison_figure, progressive_figure

    if args.figure not in params.get("figures", {}):
        raise ParamsError(f"figure {args.figure!r} is not defined under figures in {args.params}")
    fig_cfg = params["figures"][args.figure]
    loaded = []
    for r in fig_cfg["runs"]:
        cfg = run_config(params, r)
        ebm, _ = _model(cfg["group"], r)
        samples = np.load(_require(paths.samples_file(cfg["group"], r), f"drl sample --run {r}"))
        loaded.append((r, cfg, ebm, samples))
    extent = loaded[0][1]["evaluate"]["extent"]
    if fig_cfg["kind"] == "progressive":
        _, _, ebm, levels = loaded[0]
        fig = progressive_figure(ebm, levels, extent)
    else:
        data = _prepared(loaded[0][1]["dataset"], "test")
        fig = comparison_figure(data, [(r, ebm, lv[-1]) for r, _, ebm, lv in loaded], extent)
    savefig(paths.figure_file(fig_cfg["group"], args.figure), fig)


def cmd_dvc_yaml(params: dict, args) -> None:
    from drl.workflow import dvc_yaml_text

    text = dvc_yaml_text(params)
    target = Path(args.output)
    if args.check:
        if not target.exists() or target.read_text() != text:
            raise SystemExit(f"{target} is out of date with {args.params}; run `drl dvc-yaml` to regenerate it")
        print(f"{target} is up to date")
        return
    from drl.io import write_text

    write_text(target, text)
    print(f"wrote {target}")


def cmd_validate(params: dict, args) -> None:
    print(f"{args.params}: OK ({len(params['datasets'])} datasets, {len(params['runs'])} runs)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="drl", description=__doc__)
    p.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    sub = p.add_subparsers(dest="stage", required=True)
    sp = sub.add_parser("prepare", help="raw data -> data/prepared/<dataset>/")
    sp.add_argument("--dataset", required=True)
    for name, fn in (("train", cmd_train), ("sample", cmd_sample), ("evaluate", cmd_evaluate)):
        sp = sub.add_parser(name)
        sp.add_argument("--run", required=True)
        sp.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
        sp.set_defaults(fn=fn)
    sp = sub.add_parser("figure", help="render one entry of `figures`")
    sp.add_argument("--figure", required=True)
    sp = sub.add_parser("dvc-yaml", help="generate dvc.yaml from params.yaml (the Snakemake DAG's twin)")
    sp.add_argument("--output", default="dvc.yaml")
    sp.add_argument("--check", action="store_true", help="fail if the file is out of date")
    sub.add_parser("validate", help="validate params.yaml and exit")
    args = p.parse_args(argv)
    fns = {"prepare": cmd_prepare, "figure": cmd_figure, "dvc-yaml": cmd_dvc_yaml, "validate": cmd_validate}
    fn = getattr(args, "fn", None) or fns[args.stage]
    try:
        fn(load_params(args.params), args)
    except (ParamsError, DataError) as exc:
        print(f"drl {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
