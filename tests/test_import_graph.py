"""The package's import graph has no cycle.

Module-level imports must be acyclic: a cycle there makes the result depend on which module
is imported first (a half-initialised module raises ImportError or AttributeError). Imports
inside functions run later, when every module is loaded, and are how heavy libraries stay out
of the CLI's start-up, so the rule for the whole package leaves them out, as it does imports
under ``if TYPE_CHECKING:`` (never run). The search driver and the space/recipe pair are held
to more: no cycle through them even counting the imports inside functions (each such cycle
was two modules that were really one). The graph is read from the source with :mod:`ast`, so
the test imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "automl"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.Module, in_functions: bool):
    """Import statements that run: at module level (not in functions or methods), and with
    ``in_functions`` those inside functions too; never those under ``if TYPE_CHECKING:``."""
    pending: list[ast.AST] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            pending += node.orelse
        elif in_functions or not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                   ast.Lambda)):
            pending += [child for child in ast.iter_child_nodes(node)
                        if isinstance(child, ast.stmt | ast.excepthandler)]


def import_graph(in_functions: bool = False) -> dict[str, set[str]]:
    """Module -> the package's modules it imports at module level (``in_functions``: or
    inside a function)."""
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = set()
        for node in _imports(ast.parse(path.read_text(), str(path)), in_functions):
            if isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:
                    anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 \
                        else package
                    base = f"{anchor}.{base}" if base else anchor
                # `from automl import search` imports the module automl.search
                candidates = [base] + [f"{base}.{alias.name}" for alias in node.names]
            targets |= {c for c in candidates if c in files and c != name}
        graph[name] = targets
    return graph


def find_cycle(graph: dict[str, set[str]], start: str | None = None) -> list[str] | None:
    """One cycle as a path of modules (first == last), or None; with ``start``, one through
    that module."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    if start is not None:
        return _cycle_through(graph, start)
    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def _cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A shortest path from ``start`` back to itself (breadth first), or None."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph.get(node, ())):
                if target == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else \
                        [start, start]
                if target not in came_from:
                    came_from[target] = node
                    following.append(target)
        frontier = following
    return None


def test_module_level_imports_of_the_package_have_no_cycle():
    graph = import_graph()
    assert {"automl.search", "automl.workers", "automl.trial_loop"} <= graph.keys()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


DRIVER = ("automl.search", "automl.search_context", "automl.search_settings",
          "automl.search_algorithms", "automl.study_lifecycle", "automl.trial_loop",
          "automl.workers", "automl.space", "automl.recipe")


@pytest.mark.parametrize("module", DRIVER)
def test_no_cycle_runs_through_the_driver_even_counting_imports_in_functions(module):
    graph = import_graph(in_functions=True)
    cycle = find_cycle(graph, start=module)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("importer, imported", [
    ("automl.search", "automl.workers"),  # the entry orchestrates the workers ...
    ("automl.workers", "automl.search_context"),  # ... which never import the entry back
    ("automl.space", "automl.recipe"),  # the parser builds recipes; a recipe is a value
])
def test_the_graph_sees_the_imports_it_must_judge(importer, imported):
    assert imported in import_graph()[importer]


def test_imports_inside_functions_are_seen_only_when_asked_for():
    # automl.workers imports the trial loop inside the worker process's function
    assert "automl.trial_loop" not in import_graph()["automl.workers"]
    assert "automl.trial_loop" in import_graph(in_functions=True)["automl.workers"]


def test_a_cycle_is_found_and_named():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert find_cycle(graph, start="b") == ["b", "c", "a", "b"]
    assert find_cycle(graph, start="d") is None  # d reaches a cycle but is on none
