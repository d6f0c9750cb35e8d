"""Size as a reviewed number (as tinygrad's sz.py): lines per package, source and tests, and every function
longer than MAX_FUNCTION_LINES.

    python -m maskclip_bench.code_size

`lines` counts every line of the package's .py files, `code` those that are neither blank nor only a
comment. tests/test_code_size.py fails when a long function appears that its short allow-list of today's
offenders does not name, so growth is seen at every stop.
"""

from __future__ import annotations

import ast
import importlib.metadata
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import click

from maskclip_runtime.command import command

MAX_FUNCTION_LINES = 80
DISTRIBUTION = "maskclip"


def project_packages() -> dict[str, Path]:
    """Each top-level package of the maskclip distribution -> its folder, found without importing it."""
    folders = {}
    for top, distributions in importlib.metadata.packages_distributions().items():
        spec = importlib.util.find_spec(top) if DISTRIBUTION in distributions else None
        if spec is not None and spec.submodule_search_locations:
            folders[top] = Path(next(iter(spec.submodule_search_locations)))
    return dict(sorted(folders.items()))


def measured_folders() -> dict[str, Path]:
    """The packages, plus the checkout's tests/: beside this package (an editable install), else in the
    current folder (a checkout with the package installed from it)."""
    candidates = (Path(__file__).resolve().parent.parent / "tests", Path.cwd() / "tests")
    tests = [folder for folder in candidates if (folder / "conftest.py").is_file()]
    return project_packages() | ({"tests": tests[0]} if tests else {})


@dataclass(frozen=True)
class PackageSize:
    name: str  # dotted: maskclip_runtime.backends; tests for the test folder
    files: int
    lines: int
    code: int


@dataclass(frozen=True)
class LongFunction:
    name: str  # module:qualified.name, e.g. maskclip_runtime.cli:main
    lines: int


def _modules(top: str, folder: Path):
    """(dotted module name, path) of every .py file under a package folder."""
    for path in sorted(folder.rglob("*.py")):
        parts = path.relative_to(folder).with_suffix("").parts
        yield ".".join((top, *parts[:-1], *([] if parts[-1] == "__init__" else parts[-1:]))), path


def package_sizes(folders: dict[str, Path]) -> list[PackageSize]:
    """One row per package folder (each subpackage on its own row)."""
    totals: dict[str, list[int]] = {}
    for top, folder in folders.items():
        for _, path in _modules(top, folder):
            package = ".".join((top, *path.relative_to(folder).parent.parts))
            text = path.read_text(encoding="utf-8").splitlines()
            code = sum(1 for line in text if line.strip() and not line.strip().startswith("#"))
            row = totals.setdefault(package, [0, 0, 0])
            row[0], row[1], row[2] = row[0] + 1, row[1] + len(text), row[2] + code
    return [PackageSize(name, *row) for name, row in sorted(totals.items())]


def long_functions(folders: dict[str, Path], limit: int = MAX_FUNCTION_LINES) -> list[LongFunction]:
    """Every function or method (nested ones too) longer than `limit` lines, from `def` to its last line."""
    found = []
    for top, folder in folders.items():
        for module, path in _modules(top, folder):
            found += _long_in(ast.parse(path.read_text(encoding="utf-8")).body, f"{module}:", limit)
    return sorted(found, key=lambda f: (-f.lines, f.name))


def _long_in(body: list[ast.stmt], prefix: str, limit: int) -> list[LongFunction]:
    found = []
    for node in body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            name = prefix + node.name
            length = node.end_lineno - node.lineno + 1
            if not isinstance(node, ast.ClassDef) and length > limit:
                found.append(LongFunction(name, length))
            found += _long_in(node.body, name + ".", limit)
    return found


@command("python -m maskclip_bench.code_size")
def main() -> None:
    """Print lines per package (source and tests) and every function over 80 lines."""
    folders = measured_folders()
    sizes = package_sizes(folders)
    click.echo(f"{'package':<34} {'files':>5} {'lines':>7} {'code':>7}")
    for row in sizes:
        click.echo(f"{row.name:<34} {row.files:>5} {row.lines:>7} {row.code:>7}")
    for label, rows in (
        ("source", [r for r in sizes if r.name.split(".")[0] != "tests"]),
        ("tests", [r for r in sizes if r.name.split(".")[0] == "tests"]),
    ):
        click.echo(f"{'total ' + label:<34} {sum(r.files for r in rows):>5} {sum(r.lines for r in rows):>7} "
                   f"{sum(r.code for r in rows):>7}")  # fmt: skip
    offenders = long_functions(folders)
    click.echo(f"\n{len(offenders)} functions over {MAX_FUNCTION_LINES} lines:")
    for function in offenders:
        click.echo(f"{function.lines:>5}  {function.name}")


if __name__ == "__main__":
    main()
