"""The layout's rules that import-linter and ruff do not check themselves: no import cycle between any two modules,
and no underscore name imported from another module. `make test` runs `lint-imports` (layers, stage independence)
and `ruff` before the tests."""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [*sorted((ROOT / "src" / "lref").rglob("*.py")), *sorted((ROOT / "benchmarks").rglob("*.py")),
           *sorted((ROOT / "tests").glob("*.py"))]


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components of a directed graph (iterative, so deep graphs cannot overflow)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def test_strongly_connected_finds_a_cycle_and_only_it():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert sorted(len(c) for c in strongly_connected(graph)) == [1, 3]


def import_graph() -> dict[str, set[str]]:
    graph = grimp.build_graph("lref", exclude_type_checking_imports=True)
    modules = graph.modules
    # a package's __init__ importing its own submodules is how packages re-export; it is not a cycle of concerns
    return {m: {i for i in graph.find_modules_directly_imported_by(m)
                if i in modules and not (m == i.rsplit(".", 1)[0])} for m in modules}


def test_no_module_import_cycle():
    cycles = [c for c in strongly_connected(import_graph()) if len(c) > 1]
    assert not cycles, "import cycles between modules: " + "; ".join(" <-> ".join(c) for c in cycles)


def private_imports(path: Path, root: Path = ROOT) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module != "__future__":
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: from {node.module} import {alias.name}")
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_underscore_name_is_imported_from_another_module(path):
    assert private_imports(path) == []


def test_the_private_import_check_can_fail(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("from lref.pipeline import _hidden, public\nfrom .x import __version__\n")
    assert private_imports(sample, tmp_path) == ["sample.py:1: from lref.pipeline import _hidden"]
