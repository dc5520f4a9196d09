"""`drl <stage>`: argument parsing and dispatch.  Each command is a function in drl/stages/, imported only
when it runs, so that `drl validate` does not load torch."""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import threading
from contextlib import contextmanager

from drl.config import ParamsError, load_params
from drl.data.points import DataError
from drl.io import Busy

DEVICE = (("--device",), {"default": "auto", "help": "auto (CUDA when present), cpu or cuda"})
RUN = (("--run",), {"required": True})


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


# subcommand: (function, help, arguments)
COMMANDS = {
    "fetch": ("drl.stages.data:fetch", "download one entry of `downloads` and verify its checksum",
              [(("--name",), {"required": True}),
               (("--retries",), {"type": int, "default": 3, "help": "further attempts after a dropped connection"})]),
    "prepare": ("drl.stages.data:prepare", "raw data -> data/prepared/<dataset>/",
                [(("--dataset",), {"required": True}),
                 (("--workers",), {"type": _positive, "help": "processes decoding images (default: one per CPU "
                                   "this process may use); the output is the same for any number"})]),
    "train": ("drl.stages.train:train", "train one run", [RUN, DEVICE]),
    "sample": ("drl.stages.sample:sample", "progressive samples of one run", [RUN, DEVICE]),
    "long-run": ("drl.stages.sample:long_run", "adapted HMC step sizes and long-run chains", [RUN, DEVICE]),
    "evaluate": ("drl.stages.evaluate:evaluate", "one run's metrics and their provenance", [RUN, DEVICE]),
    "refstats": ("drl.stages.evaluate:refstats", "FID reference statistics of one dataset split",
                 [(("--dataset",), {"required": True}), (("--split",), {"choices": ("train", "test"), "required": True}),
                  (("--extractor",), {"required": True}), DEVICE]),
    "extractor": ("drl.stages.evaluate:extractor", "retrain a classifier feature extractor (on purpose: it is "
                  "the instrument of every FID/IS made with it)", [(("--extractor",), {"required": True})]),
    "figure": ("drl.stages.report:figure", "render one entry of `figures`", [(("--figure",), {"required": True})]),
    "table": ("drl.stages.report:table", "render one entry of `tables` (CSV + Markdown)",
              [(("--table",), {"required": True})]),
    "compare": ("drl.stages.report:compare", "is a change of metrics beyond their standard errors? (each file at "
                "--rev, default HEAD, against the working tree; or --pair A B)",
                [(("files",), {"nargs": "+", "help": "metrics JSON files"}),
                 (("--rev",), {"help": "git revision of the old versions (default: HEAD)"}),
                 (("--pair",), {"action": "store_true", "help": "compare the two files given with each other"}),
                 (("--z",), {"type": float, "default": 2.0, "help": "flag changes beyond z standard errors"})]),
    "missing-input": ("drl.stages.data:missing_input", "explain a missing raw dataset or weights file (exit code 2)",
                      [(("--path",), {"required": True})]),
    "pull": ("drl.stages.project:pull", "a group's trained artifacts from the DVC remote, verified by DVC, then "
             "marked up to date for Snakemake", [(("--group",), {"help": "a group of runs (default: all)"}),
                                                (("--remote",), {"help": "DVC remote (default: the default one)"})]),
    "dvc-yaml": ("drl.stages.project:dvc_yaml", "generate the DVC pipeline files from params.yaml",
                 [(("--check",), {"action": "store_true", "help": "fail if a file is out of date"})]),
    "validate": ("drl.stages.project:validate", "validate params.yaml and exit", []),
}


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
    for name, (_, help_, arguments) in COMMANDS.items():
        sp = sub.add_parser(name, help=help_)
        for flags, options in arguments:
            sp.add_argument(*flags, **options)
    args = p.parse_args(argv)
    module, function = COMMANDS[args.stage][0].split(":")
    from drl.evaluate.errors import EvaluationError

    try:
        with _sigterm_unwinds(args.stage):
            getattr(importlib.import_module(module), function)(load_params(args.params), args)
    except (ParamsError, DataError, EvaluationError, Busy) as exc:
        print(f"drl {args.stage}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
