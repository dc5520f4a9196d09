"""Load and validate params.yaml: every problem is reported at once, naming the key, before any
data is touched."""
from __future__ import annotations

import functools
import re
from pathlib import Path

import jsonschema
import yaml

SCHEMA_PATH = Path(__file__).parent / "schema" / "params.schema.yaml"


class ParamsError(ValueError):
    """params.yaml is unreadable or invalid; the message lists every problem found."""


def _key(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


# The real-data reference written beside a run's FID/IS (drl/evaluate/fidelity.py): its metric -> the key.
REAL_REFERENCE_METRICS = {"fid": "fid_real_reference", "fid_se": "fid_real_reference_se",
                          "is_mean": "is_mean_real_reference", "is_mean_se": "is_mean_real_reference_se"}
# What each evaluate subsection measures (the keys of the run's metrics JSON that tables may cite).
EVALUATION_METRICS = {
    "quadrature": ("kl_nats", "test_ll_nats", "log_z_quadrature"),
    "fidelity": ("fid", "fid_se", "is_mean", "is_mean_se", "is_std", *REAL_REFERENCE_METRICS.values()),
    "partition": ("log_z_ais", "log_z_ais_se", "test_ll_ais_nats", "test_ll_ais_nats_se", "test_bpd", "test_bpd_se",
                  "log_z_lower_bound", "test_bpd_lower_bound"),
}
# Per chain length of a run's long_run section: metrics["long_run"]["<steps per level>"] (table rows
# read them with ``select: long_run.<steps per level>``).
LONG_RUN_METRICS = (*EVALUATION_METRICS["fidelity"], "log_z_ais", "log_z_ais_se", "acceptance_mean")




@functools.cache
def reserved_groups() -> frozenset[str]:
    """The workflow's rule names, read from its rule files: a group of the same name would clash with
    the group's target rule."""
    root = Path(__file__).resolve().parent.parent
    files = [root / "Snakefile", *sorted((root / "workflow" / "rules").glob("*.smk"))]
    return frozenset(name for f in files if f.is_file() for name in re.findall(r"^rule (\w+):", f.read_text(), re.M))


def metrics_of(evaluate: dict) -> set[str]:
    return {m for section in evaluate for m in EVALUATION_METRICS.get(section, ())}


def _semantic_errors(params: dict) -> list[str]:
    errors = []
    datasets = params.get("datasets", {})
    for name, ds in datasets.items():
        if ds.get("source") == "toy" and "toy" not in ds:
            errors.append(f"datasets.{name}.toy: required when source is 'toy' (e.g. checkerboard)")
        if ds.get("source") == "points" and "path" not in ds:
            errors.append(f"datasets.{name}.path: required when source is 'points' (a .npy or .csv of 2-D points)")
    runs = params.get("runs", {})
    for name, run in runs.items():
        where = f"runs.{name}"
        if run.get("dataset") not in datasets:
            errors.append(f"{where}.dataset: {run.get('dataset')!r} is not defined under datasets "
                          f"(defined: {sorted(datasets)})")
        d, s, o = run.get("diffusion", {}), run.get("sampler", {}), run.get("objective", {})
        T = d.get("T", 1)
        if d.get("schedule") == "released" and not 2 <= T <= 501:
            errors.append(f"{where}.diffusion.T: the released schedule needs 2 <= T <= 501, got {T}")
        if d.get("schedule") == "linear_sigma2" and d.get("sigma2_min", 0) > d.get("sigma2_max", 1):
            errors.append(f"{where}.diffusion.sigma2_min: must not exceed sigma2_max")
        conditional_top = d.get("top_level") == "conditional"
        if s.get("K") == 0 and not conditional_top:
            errors.append(f"{where}.sampler.K: K = 0 (normal approximation) needs diffusion.top_level: conditional")
        if o.get("name") == "dsm" and not conditional_top:
            errors.append(f"{where}.objective.name: dsm needs diffusion.top_level: conditional")
        if "long_run" in run and not conditional_top:
            errors.append(f"{where}.long_run: long-run chains start each level from the normal approximation, "
                          "which needs diffusion.top_level: conditional")
        if "long_run" in run and "fidelity" not in run.get("evaluate", {}):
            errors.append(f"{where}.long_run: needs evaluate.fidelity (its extractor scores every chain length)")
        e, net = run.get("energy", {}), run.get("energy", {}).get("net", {})
        if (run.get("perf") or {}).get("compile") and net.get("spectral_norm", net.get("kind") == "wrn") \
                and e.get("sn_power_iteration", "per_call") != "per_iteration":
            errors.append(f"{where}.perf.compile: the compiled chain score takes the spectral-norm weights fixed "
                          "through a chain; set energy.sn_power_iteration: per_iteration (or compile: false)")
        if s.get("step_size") == "released" and d.get("schedule") != "released" and not d.get("sigma0", 0) > 0:
            errors.append(f"{where}.sampler.step_size: 'released' needs a lightly noised level 0 "
                          "(diffusion.sigma0 > 0 or schedule: released)")
    for where, item in [*(("runs", r) for r in runs.items()), *(("figures", f) for f in params.get("figures", {}).items()),
                        *(("tables", t) for t in params.get("tables", {}).items())]:
        if item[1].get("group") in reserved_groups():
            errors.append(f"{where}.{item[0]}.group: {item[1]['group']!r} is the name of a workflow rule; "
                          f"choose another (reserved: {sorted(reserved_groups())})")
    extractors = params.get("extractors", {})
    for name, ex in extractors.items():
        for need in {"inception": ("weights",), "classifier": ("weights", "dataset")}.get(ex.get("kind"), ()):
            if need not in ex:
                errors.append(f"extractors.{name}.{need}: required when kind is {ex['kind']!r}")
        if ex.get("kind") == "classifier" and ex.get("dataset") not in (None, *datasets):
            errors.append(f"extractors.{name}.dataset: {ex['dataset']!r} is not defined under datasets")
    for name, run in runs.items():
        gpus = run.get("resources", {}).get("gpu", 0)
        if gpus > 1 and run.get("train", {}).get("batch_size", 0) % gpus:
            errors.append(f"runs.{name}.train.batch_size: {run['train']['batch_size']} is not divisible by "
                          f"resources.gpu = {gpus} (one training process per GPU)")
        ev = run.get("evaluate", {})
        two_d = datasets.get(run.get("dataset"), {}).get("source") in ("toy", "points")
        if "quadrature" in ev and run.get("dataset") in datasets and not two_d:
            errors.append(f"runs.{name}.evaluate.quadrature: grid quadrature is for 2-D data only")
        fid = ev.get("fidelity", {})
        boot, splits = fid.get("bootstrap", 200), fid.get("is_splits", 10)
        if boot == 1:
            errors.append(f"runs.{name}.evaluate.fidelity.bootstrap: 1 half-sample gives no spread; use 0 (none) or >= 2")
        for section in ("sample", "long_run") if fid and boot >= 2 else ():
            n = run.get(section, {}).get("n")
            if n is not None and n < max(4, 2 * splits):
                errors.append(f"runs.{name}.{section}.n: {n} samples are too few for the FID/IS standard errors, which "
                              f"score halves of them with is_splits {splits}: use at least {max(4, 2 * splits)}, "
                              f"or set runs.{name}.evaluate.fidelity.bootstrap: 0")
        if "fidelity" in ev and ev["fidelity"].get("extractor") not in extractors:
            errors.append(f"runs.{name}.evaluate.fidelity.extractor: {ev['fidelity'].get('extractor')!r} is not "
                          f"defined under extractors (defined: {sorted(extractors)})")
    outputs = {}
    for name, table in params.get("tables", {}).items():
        if table.get("output") in outputs:
            errors.append(f"tables.{name}.output: {table['output']} is also written by tables.{outputs[table['output']]}")
        outputs[table.get("output")] = name
        for i, row in enumerate(table.get("rows", [])):
            if "run" not in row:
                continue
            if row["run"] not in runs:
                errors.append(f"tables.{name}.rows[{i}].run: {row['run']!r} is not defined under runs")
                continue
            produced = metrics_of(runs[row["run"]].get("evaluate", {}))
            if "select" in row:
                steps = int(row["select"].split(".")[1])
                if steps not in runs[row["run"]].get("long_run", {}).get("steps_per_level", []):
                    errors.append(f"tables.{name}.rows[{i}].select: run {row['run']!r} has no long_run chains with "
                                  f"{steps} steps per level (see its long_run.steps_per_level)")
                    continue
                produced = set(LONG_RUN_METRICS)
            missing = [c for c in table.get("columns", []) if c not in produced]
            if missing:
                errors.append(f"tables.{name}.rows[{i}]: run {row['run']!r} does not measure {missing}; its "
                              f"evaluate section yields {sorted(produced)}")
        labels = {row.get("label") for row in table.get("rows", [])}
        for i, c in enumerate(table.get("claims", [])):
            unknown = [r for r in c["rows"] if r not in labels]
            if unknown:
                errors.append(f"tables.{name}.claims[{i}].rows: {unknown} are not labels of this table's rows")
            if c.get("metric", "fid") not in table["columns"]:
                errors.append(f"tables.{name}.claims[{i}].metric: {c.get('metric', 'fid')!r} is not one of its columns")
    for name, fig in params.get("figures", {}).items():
        for r in fig.get("runs", []):
            if r not in runs:
                errors.append(f"figures.{name}.runs: {r!r} is not defined under runs")
        two_d = [datasets[runs[r]["dataset"]].get("source") in ("toy", "points")
                 for r in fig.get("runs", []) if runs.get(r, {}).get("dataset") in datasets]
        if fig.get("kind") in ("samples", "interpolation") and any(two_d):
            errors.append(f"figures.{name}.kind: {fig['kind']!r} figures are for image runs; use progressive for 2-D")
        if fig.get("kind") in ("progressive", "comparison") and not all(two_d):
            errors.append(f"figures.{name}.kind: {fig['kind']!r} figures are for 2-D runs; use samples for images")
        if fig.get("kind") in ("hmc", "long_run") and any("long_run" not in runs.get(r, {"long_run": 1})
                                                          for r in fig.get("runs", [])):
            errors.append(f"figures.{name}.kind: {fig['kind']!r} figures show a run's long_run chains; "
                          "every run listed needs a long_run section")
        if fig.get("kind") in ("hmc", "long_run") and len(fig.get("runs", [])) != 1:
            errors.append(f"figures.{name}.runs: a {fig['kind']!r} figure shows one run")
        if fig.get("kind") == "comparison" and len(fig.get("runs", [])) < 2:
            errors.append(f"figures.{name}.runs: a comparison figure needs at least two runs")
    return errors


@functools.cache
def _validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(yaml.safe_load(SCHEMA_PATH.read_text()))


def _message(error: jsonschema.ValidationError) -> str:
    """The schema's own ``errorMessage`` where it gives one (a refusal that jsonschema can only word as
    "should not be valid under ..."), else jsonschema's."""
    own = error.schema.get("errorMessage") if isinstance(error.schema, dict) else None
    return " ".join(own.split()) if own else error.message


def validate(params: dict, source: str = "params.yaml") -> dict:
    """Check ``params`` against the schema and the rules above, then expand training seeds in place
    (``expand_seeds``); returns it."""
    runs = params.get("runs")
    if isinstance(runs, dict):   # the copies expand_seeds added (when validated again, e.g. by Snakemake)
        written = {k: v for k, v in runs.items() if not _is_seed_copy(runs, k)}
        as_written = {**params, "runs": written}   # are not params.yaml's: the schema does not see them
    else:
        as_written = params
    errors = [f"{_key(e.absolute_path)}: {_message(e)}" for e in _validator().iter_errors(as_written)]
    errors += [f"runs.{name}.perf.sn_power_iteration: now runs.{name}.energy.sn_power_iteration (it changes the "
               "function trained, so it is part of the model's definition); move it there"
               for name, run in (written.items() if isinstance(runs, dict) else ())
               if isinstance(run, dict) and isinstance(run.get("perf"), dict) and "sn_power_iteration" in run["perf"]]
    if not errors:
        errors = _semantic_errors(as_written) + _seed_errors(params)
    if errors:
        raise ParamsError(f"{source} has {len(errors)} problem(s):\n  - " + "\n  - ".join(sorted(errors)))
    return expand_seeds(params)


# A run with ``seeds: [s0, s1, ...]`` is trained once per seed: the run itself with train.seed = s0,
# and one more run per further seed, named ``<run>_seed<s>``, identical but for train.seed.  The
# copies exist in the loaded params only (the workflow expands them; nobody copies runs by hand);
# each records the run it comes from under SEED_OF, whose params.yaml keys its stages track.
SEED_OF = "seed_of"


def seed_run_name(run: str, seed: int) -> str:
    return f"{run}_seed{seed}"


def seed_runs(params: dict, run: str) -> list[str]:
    """The runs that train ``run``'s configuration, one per seed (``[run]`` without ``seeds``)."""
    seeds = params["runs"][run].get("seeds")
    return [run] + [seed_run_name(run, s) for s in seeds[1:]] if seeds else [run]


def source_run(params: dict, run: str) -> str:
    """The params.yaml run a (possibly expanded) run comes from."""
    return params["runs"][run].get(SEED_OF, run)


def _is_seed_copy(runs: dict, name: str) -> bool:
    """Whether runs[name] is a copy that ``expand_seeds`` made (a hand-written ``seed_of`` is not)."""
    run = runs[name]
    if not isinstance(run, dict) or SEED_OF not in run:
        return False
    base, seed = runs.get(run[SEED_OF]), run.get("train", {}).get("seed")
    return (isinstance(base, dict) and seed in (base.get("seeds") or [])[1:] and name == seed_run_name(run[SEED_OF], seed)
            and {k: v for k, v in run.items() if k not in ("train", SEED_OF)} ==
            {k: v for k, v in base.items() if k not in ("train", "seeds")})


def _seed_errors(params: dict) -> list[str]:
    errors, runs = [], params.get("runs", {})
    for name, run in runs.items():
        if _is_seed_copy(runs, name):
            continue
        seeds = run.get("seeds")
        if not seeds:
            continue
        if seeds[0] != run["train"]["seed"]:
            errors.append(f"runs.{name}.seeds: the first seed ({seeds[0]}) must be the run's own train.seed "
                          f"({run['train']['seed']}): the run itself is the first of its seeds")
        for s in seeds[1:]:
            copy_name = seed_run_name(name, s)
            if copy_name in runs and runs[copy_name].get(SEED_OF) != name:
                errors.append(f"runs.{name}.seeds: seed {s} would train run {copy_name!r}, which params.yaml "
                              f"defines itself; rename that run")
    return errors


def expand_seeds(params: dict) -> dict:
    """Add the per-seed copies of every run with ``seeds`` to ``params["runs"]`` (in place; again a no-op)."""
    runs = params.get("runs", {})
    for name, run in list(runs.items()):
        for s in (run.get("seeds") or [])[1:] if not _is_seed_copy(runs, name) else ():
            copy = {k: v for k, v in run.items() if k != "seeds"}
            runs[seed_run_name(name, s)] = {**copy, "train": {**run["train"], "seed": s}, SEED_OF: name}
    return params


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path} not found; run from the project root or pass --params PATH")
    try:
        params = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"{path} is not valid YAML (UTF-8 text): {exc}") from exc
    if not isinstance(params, dict):
        raise ParamsError(f"{path} must be a mapping with 'datasets' and 'runs'")
    return validate(params, str(path))


def run_config(params: dict, run: str) -> dict:
    """A run's section, the per-seed copies of runs with ``seeds`` included."""
    if run not in params["runs"]:
        raise ParamsError(f"run {run!r} is not defined under runs in params.yaml (defined: {sorted(params['runs'])})")
    return params["runs"][run]
