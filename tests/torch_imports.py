"""Which tests need torch, read from the source: the rule that conftest.py applies (its docstring says why).

A test needs torch when code it reaches imports a torch-side package (TORCH_SIDE). Reaching follows every
import statement anywhere in a file (function-local ones too: the CLIs import torch lazily so `--help`
stays torch-free), `pytest.importorskip("x")` and `importlib.import_module("x")` with a literal name, and
the program of a `-c` in a command list (`[python, "-c", "from maskclip_export.cli import main; main()"]`),
but not imports in a `try:` that catches ImportError (optional ones), through first-party files: the
packages of the `maskclip` distribution (editable or installed) and the helper modules in tests/.
A test module is read in three parts: a test function's own body (with the module's functions it names)
marks that test, a fixture's body (likewise) marks the tests that use the fixture, and everything else
(module top, helpers) marks the whole module. The rule over-approximates (a helper that imports torch
marks every test of its module); it never under-approximates what the source says.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from maskclip_bench.code_size import project_packages

TORCH_SIDE = ("torch", "torchvision", "timm", "open_clip", "safetensors.torch")
TESTS = Path(__file__).resolve().parent


def is_torch_side(name: str) -> bool:
    return any(name == root or name.startswith(root + ".") for root in TORCH_SIDE)


_project_packages = cache(project_packages)


def _module_files(base: Path, parts: list[str]) -> list[Path]:
    """The files that importing `parts` below package folder `base` runs: each package's __init__, then the module."""
    files, folder = [base / "__init__.py"], base
    for part in parts:
        folder = folder / part
        if (folder / "__init__.py").is_file():
            files.append(folder / "__init__.py")
        elif folder.with_suffix(".py").is_file():
            files.append(folder.with_suffix(".py"))
            break
        else:
            break
    return [f for f in files if f.is_file()]


@dataclass
class Imports:
    """What a piece of source imports: external module names and first-party files."""

    names: set[str] = field(default_factory=set)
    files: set[Path] = field(default_factory=set)

    def add_absolute(self, name: str) -> None:
        top, *rest = name.split(".")
        if (TESTS / f"{top}.py").is_file():
            self.files.add(TESTS / f"{top}.py")
        elif (base := _project_packages().get(top)) is not None:
            self.files.update(_module_files(base, rest))
        else:
            self.names.add(name)

    def add_relative(self, where: Path, level: int, module: str | None, names: list[str]) -> None:
        base = where.parent
        for _ in range(level - 1):
            base = base.parent
        parts = module.split(".") if module else []
        self.files.update(_module_files(base, parts))
        for name in names:
            self.files.update(_module_files(base, [*parts, name])[1:])


def imports_in(nodes: list[ast.AST], where: Path) -> Imports:
    """Every import under `nodes` (a file's statements or one function), `where` being the file."""
    found = Imports()
    for node in (inner for top in nodes for inner in _walk_required(top)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.add_absolute(alias.name)
        elif isinstance(node, ast.ImportFrom):
            names = [alias.name for alias in node.names]
            if node.level:
                found.add_relative(where, node.level, node.module, names)
            else:
                found.add_absolute(node.module)
                for name in names:
                    found.add_absolute(f"{node.module}.{name}")
        elif isinstance(node, ast.Call) and _called_name(node) in ("importorskip", "import_module"):
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add_absolute(node.args[0].value)
        elif isinstance(node, ast.List | ast.Tuple):
            for flag, program in zip(node.elts, node.elts[1:], strict=False):
                if _is_text(flag, "-c") and _is_text(program):
                    inner = imports_in(_parse(program.value).body, where)
                    found.names |= inner.names
                    found.files |= inner.files
    return found


def _is_text(node: ast.AST, value: str | None = None) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and value in (None, node.value)


def _walk_required(node: ast.AST):
    """ast.walk, less the bodies of `try:` blocks that catch ImportError (imports the code can do without)."""
    yield node
    optional = isinstance(node, ast.Try) and any(_catches_import_error(h.type) for h in node.handlers)
    for name, value in ast.iter_fields(node):
        if optional and name == "body":
            continue
        for child in value if isinstance(value, list) else [value]:
            if isinstance(child, ast.AST):
                yield from _walk_required(child)


def _catches_import_error(caught: ast.expr | None) -> bool:
    names = caught.elts if isinstance(caught, ast.Tuple) else [caught]
    return any(isinstance(n, ast.Name) and n.id in ("ImportError", "ModuleNotFoundError") for n in names)


def _called_name(call: ast.Call) -> str | None:
    func = call.func
    return func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None


def _parse(source: str) -> ast.Module:
    """The parsed source; nothing where it is not Python (`sh -c` programs; a broken file, which pytest
    reports when it imports it)."""
    try:
        return ast.parse(source)
    except (SyntaxError, ValueError):
        return ast.Module(body=[], type_ignores=[])


@cache
def _parsed(path: Path) -> ast.Module:
    return _parse(path.read_text(encoding="utf-8", errors="replace"))


@cache
def _file_imports(path: Path) -> Imports:
    return imports_in(_parsed(path).body, path)


def reaches_torch(found: Imports) -> bool:
    """Whether these imports, followed through first-party files, import a torch-side package."""
    seen: set[Path] = set()
    pending = [found]
    while pending:
        current = pending.pop()
        if any(is_torch_side(name) for name in current.names):
            return True
        for path in current.files - seen:
            seen.add(path)
            pending.append(_file_imports(path))
    return False


def _fixture_name(function: ast.FunctionDef) -> str | None:
    for decorator in function.decorator_list:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        if (isinstance(target, ast.Attribute) and target.attr == "fixture") or (
            isinstance(target, ast.Name) and target.id == "fixture"
        ):
            return function.name
    return None


@dataclass
class ModuleVerdict:
    """One test module, read in parts: the whole module, each test function, each fixture it defines."""

    module: bool
    tests: dict[str, bool]
    fixtures: dict[str, bool]


@cache
def read_test_module(path: Path) -> ModuleVerdict:
    tree = _parsed(path)
    helpers = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    functions = {}  # test functions and fixtures, top level or in a class
    for node in tree.body:
        members = node.body if isinstance(node, ast.ClassDef) else [node]
        for member in members:
            function = isinstance(member, ast.FunctionDef | ast.AsyncFunctionDef)
            if function and (member.name.startswith("test") or _fixture_name(member)):
                functions[member] = reaches_torch(imports_in(_with_helpers(member, helpers), path))
    rest: list[ast.AST] = []
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            rest.extend(member for member in node.body if member not in functions)
            rest.extend(node.decorator_list)
        elif node not in functions:
            rest.append(node)
    rest.extend(d for f in functions for d in f.decorator_list)  # parametrize values, usefixtures
    fixtures = {f.name: needs for f, needs in functions.items() if _fixture_name(f)}
    tests = {f.name: needs for f, needs in functions.items() if f.name not in fixtures}
    return ModuleVerdict(reaches_torch(imports_in(rest, path)), tests, fixtures)


def _with_helpers(function: ast.AST, helpers: dict[str, ast.AST]) -> list[ast.AST]:
    """A function's body and the bodies of the module's functions it names, and those they name."""
    bodies, pending, seen = [], [function], set()
    while pending:
        current = pending.pop()
        bodies.extend(current.body)
        for node in (inner for statement in current.body for inner in ast.walk(statement)):
            if isinstance(node, ast.Name) and node.id in helpers and node.id not in seen:
                seen.add(node.id)
                pending.append(helpers[node.id])
    return bodies


def needs_torch(path: Path, test_name: str, fixture_names: list[str]) -> bool:
    """Whether the test `test_name` of test module `path`, using `fixture_names` (the closure), needs torch."""
    module = read_test_module(path)
    fixtures = read_test_module(TESTS / "conftest.py").fixtures | module.fixtures
    return module.module or module.tests.get(test_name, False) or any(fixtures.get(n, False) for n in fixture_names)
