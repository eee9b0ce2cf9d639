"""The package's shape: no import circles, imports at the top of modules, one module per concept."""

import ast
import pathlib

from conftest import REPO

# Source folder: the package it installs as (tasks/ ships inside t5pod, see setup.cfg).
PACKAGES = {"t5pod": "t5pod", "tasks": "t5pod.tasks"}
# Modules that may import inside functions, each for start-up time (the reason is beside each import).
LAZY_IMPORTS_ALLOWED = {
    "t5pod.cli": "commands import JAX and TensorFlow only when they run",
    "t5pod.data.c4_cleaning": "the streaming cleaner runs without TensorFlow",
    "t5pod.data.demo_corpus": "pydoc_data is absent from some Python builds",
    "t5pod.models": "the model runs without TensorFlow (scripts/study_gpu_run.py); only seqio's converter needs it",
    "t5pod.tasks.glue": "TensorFlow Datasets is imported only for TFDS reads",
}


def _modules() -> dict[str, pathlib.Path]:
    modules = {}
    for folder, package in PACKAGES.items():
        for path in sorted((REPO / folder).rglob("*.py")):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            name = ".".join([package, *(parts[:-1] if parts[-1] == "__init__" else parts)])
            modules[name] = path
    return modules


def _imports(path: pathlib.Path, name: str, modules) -> tuple[set[str], list[int]]:
    """(project modules imported anywhere in the file, line numbers of imports inside functions)."""
    tree = ast.parse(path.read_text())
    imported, nested = set(), []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or node.level):
            base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
            module = ".".join(p for p in (base, node.module) if p)
            names = [module] + [f"{module}.{alias.name}" for alias in node.names]
        else:
            continue
        imported |= {n for n in names if n in modules}
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        nested += [n.lineno for n in ast.walk(function) if isinstance(n, (ast.Import, ast.ImportFrom))]
    return imported, sorted(set(nested))


def _graph():
    modules = _modules()
    graph, nested = {}, {}
    for name, path in modules.items():
        imported, lines = _imports(path, name, modules)
        # Importing a.b.c runs a and a.b first; a package's own __init__ does not count as a cycle.
        graph[name] = {m for m in imported if m != name and not name.startswith(m + ".")}
        nested[name] = lines
    return graph, nested


def _find_cycle(graph) -> list[str] | None:
    state = {}

    def visit(node, path):
        state[node] = "open"
        for child in sorted(graph.get(node, ())):
            if state.get(child) == "open":
                return path[path.index(child) :] + [child] if child in path else [node, child]
            if child not in state:
                cycle = visit(child, path + [child])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_no_import_circles():
    graph, _ = _graph()
    assert len(graph) > 30 and "t5pod.models" in graph["t5pod.trainer"]
    assert "t5pod.tasks.glue" in graph["t5pod.tasks.transfer"]  # a relative import (from . import glue)
    assert _find_cycle(graph) is None, " -> ".join(_find_cycle(graph))


def test_cycle_finder_finds_a_planted_circle():
    graph, _ = _graph()
    graph = {**graph, "t5pod.configs": graph["t5pod.configs"] | {"t5pod.trainer"}}
    cycle = _find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and "t5pod.trainer" in cycle


def test_imports_are_at_the_top_of_modules():
    _, nested = _graph()
    offenders = {name: lines for name, lines in nested.items() if lines and name not in LAZY_IMPORTS_ALLOWED}
    assert offenders == {}


def test_configs_and_the_gin_layer_import_no_driver():
    graph, _ = _graph()
    assert not graph["t5pod.configs"]
    assert not graph["t5pod.ginconf"] & {"t5pod.trainer", "t5pod.inference", "t5pod.cli"}
    # Only models.py knows which module implements which architecture.
    knows_decoder_only = {name for name, deps in graph.items() if "t5pod.decoder_only" in deps}
    assert knows_decoder_only == {"t5pod.models"}


def test_the_code_map_names_every_module():
    code_map = (REPO / "docs" / "code-map.md").read_text()
    missing = [
        str(path.relative_to(REPO))
        for path in sorted((REPO / "t5pod").rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py") and f"`{path.relative_to(REPO)}`" not in code_map
    ]
    assert missing == []
