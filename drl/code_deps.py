"""The code a stage runs, derived from its imports rather than listed by hand.

A stage is a ``drl <stage>`` command, whose function in drl/stages/ imports what it needs, much of it
inside its body.  Its code is that function, the functions of the same module it calls, and every
drl module those import, followed through each module's imports (module-level and inside
functions) to closure, with the packages' ``__init__.py`` files that importing runs.  Only the one
function is followed, not its whole module: a module holding several stages would otherwise make
each depend on the others' code.  drl/cli.py, which parses the arguments and calls the function,
computes nothing and is not followed."""
from __future__ import annotations

import ast
from functools import lru_cache
from pathlib import Path

PACKAGE = "drl"
ROOT = Path(__file__).resolve().parent.parent  # the project root, where drl/ lives


def _file(module: str) -> Path | None:
    """drl.a.b -> drl/a/b.py or drl/a/b/__init__.py (None for a name that is not a drl module)."""
    base = ROOT / Path(*module.split("."))
    return next((p for p in (base.with_suffix(".py"), base / "__init__.py") if p.is_file()), None)


def _imports(nodes: list[ast.AST], module: str) -> set[str]:
    """The drl modules that ``import`` / ``from ... import`` statements anywhere inside ``nodes`` name
    (``from drl import perf`` names drl.perf; relative imports resolve against ``module``)."""
    out = set()
    for node in (n for top in nodes for n in ast.walk(top)):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.split(".")[0] == PACKAGE}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".")[: -node.level]
                base = ".".join(parts + ([base] if base else []))
            if base.split(".")[0] == PACKAGE:
                out.add(base)
                out |= {f"{base}.{a.name}" for a in node.names if _file(f"{base}.{a.name}")}
    return {m for m in out if _file(m)}


@lru_cache(maxsize=None)
def _module_closure(module: str) -> frozenset[str]:
    seen, todo = set(), [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts)) if _file(".".join(parts[:i]))]  # packages run
        todo += _imports([ast.parse(_file(m).read_text())], m)
    return frozenset(seen)


def function_code(module: str, function: str) -> list[str]:
    """The files (relative to the project root, sorted) that ``module.function`` runs: the module, the
    module-level functions it calls there, and the closure of every drl module any of them imports.
    Computed once per process (as ``_module_closure``): the DAG asks it for each of its ~2000 stages,
    and re-parsing every module each time cost each Snakemake start ~9 s of CPU."""
    return list(_function_code(module, function))


@lru_cache(maxsize=None)
def _function_code(module: str, function: str) -> tuple[str, ...]:
    tree = ast.parse(_file(module).read_text())
    functions = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}
    if function not in functions:
        raise KeyError(f"{module} has no function {function!r}")
    body, todo = {}, [function]
    while todo:  # the function and, transitively, the same-module functions it names
        name = todo.pop()
        if name not in body:
            body[name] = functions[name]
            todo += [n.id for n in ast.walk(functions[name]) if isinstance(n, ast.Name) and n.id in functions]
    top_level = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    parents = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
    modules = {module, *filter(_file, parents)}.union(
        *(_module_closure(m) for m in _imports(top_level + list(body.values()), module)))
    return tuple(sorted(str(_file(m).relative_to(ROOT)) for m in modules))
