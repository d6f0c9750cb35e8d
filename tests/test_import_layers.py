"""The runtime's modules import without cycles and downward only: kernel <- contract <- backends <- detect <-
present / serve / commands. Every import counts, at module level, inside functions and under TYPE_CHECKING
(a cycle there is still two modules that cannot be read, changed or tested apart). No torch."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "runtime"
PACKAGE = "maskclip_runtime"
# Lower layers never import higher ones. The package root is a facade (lazy re-exports and __version__).
LAYERS = {"errors": 0, "kernel": 1, "contract": 2, "backends": 3, "detect": 4, "present": 5, "pipeline": 6, "scale": 7}


def _modules() -> dict[str, Path]:
    modules = {}
    for path in RUNTIME.rglob("*.py"):
        parts = list(path.relative_to(RUNTIME).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join([PACKAGE, *parts])] = path
    return modules


MODULES = _modules()


def imports_of(name: str) -> set[str]:
    """The runtime modules `name` imports anywhere in its source (relative imports resolved)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join([*base, *([node.module] if node.module else [])])
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in MODULES else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
    return {module for module in found if module in MODULES and module not in (name, PACKAGE)}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_walk_finds_a_cycle_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_in_the_runtime():
    graph = {name: imports_of(name) for name in MODULES if name != PACKAGE}
    assert "maskclip_runtime.contract.manifest" in graph["maskclip_runtime.contract.artifact"]  # the walk works
    assert cycles(graph) == []


def _layer(name: str) -> int | None:
    part = name.split(".")[1] if "." in name else None
    return LAYERS.get(part)


def test_layers_import_downward_only():
    upward = [
        (name, imported)
        for name in MODULES
        if _layer(name) is not None
        for imported in imports_of(name)
        if _layer(imported) is None or _layer(imported) > _layer(name)
    ]
    assert upward == []


@pytest.mark.parametrize("name", sorted(name for name in MODULES if not name.endswith(".__main__")))
def test_every_module_imports(name):
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:  # an optional extra (serve, triton) not installed here
        if exc.name.partition(".")[0] in {"fastapi", "uvicorn", "pytriton", "multipart", "prometheus_client"}:
            pytest.skip(f"{exc.name} is not installed")
        raise


def test_exception_messages_go_through_message_of():
    """The first line of an exception's text, or its class name when it has none: errors.message_of, not
    copies of it (a copy without the empty-message guard raises IndexError on `raise X()`)."""
    root = RUNTIME.parent
    copies = [
        path.relative_to(root).as_posix()
        for folder in ("runtime", "export", "benchmarks", "maskclip_core")
        for path in (root / folder).rglob("*.py")
        if "splitlines()[0]" in path.read_text(encoding="utf-8") and path != RUNTIME / "errors.py"
    ]
    assert copies == []
