"""The package's import graph, read from the source with ``ast``: no cycles, and the
layers import in one direction only (core <- _napari <- _widgets).

Every import counts: module level, inside functions, and under ``TYPE_CHECKING``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import napari_samscope

PACKAGE = Path(napari_samscope.__file__).resolve().parent
NAME = PACKAGE.name


def _modules() -> dict[str, tuple[Path, bool]]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts = parts[:-1]
        found[".".join(parts)] = (path, is_package)
    return found


def import_graph() -> dict[str, set[str]]:
    """``module -> modules of this package it imports`` (a ``from X import Y`` that
    names a submodule ``X.Y`` counts as importing ``X.Y``)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, (path, is_package) in modules.items():
        base = name.split(".") if is_package else name.split(".")[:-1]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                deps.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    target = ".".join(anchor + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    sub = f"{target}.{alias.name}"
                    deps.add(sub if sub in modules else target)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_the_graph_sees_function_level_and_type_checking_imports() -> None:
    graph = import_graph()
    # core.predict.sam_api imports segment-everything inside a method only
    assert f"{NAME}.core.everything.generator" in graph[f"{NAME}.core.predict.sam_api"]
    assert f"{NAME}.core.weights.spec" in graph[f"{NAME}.core.weights.download"]  # TYPE_CHECKING


def test_find_cycles_reports_a_cycle() -> None:
    assert find_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycles() -> None:
    assert find_cycles(import_graph()) == []


def test_layers_import_in_one_direction() -> None:
    graph = import_graph()
    core, adapters, widgets = f"{NAME}.core", f"{NAME}._napari", f"{NAME}._widgets"
    for module, deps in graph.items():
        if module.startswith(core):
            upward = sorted(d for d in deps if not d.startswith(core) and d != NAME)
            assert not upward, f"{module} (core) imports {upward}"
        if module.startswith(adapters):
            upward = sorted(d for d in deps if d.startswith((widgets, f"{NAME}.cli")))
            assert not upward, f"{module} (napari adapters) imports {upward}"


def test_no_module_is_much_over_400_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE)): n
        for path, _ in _modules().values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 450
    }
    assert not long, f"modules past the size guideline: {long}"
