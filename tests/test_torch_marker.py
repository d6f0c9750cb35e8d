"""The `torch` marker's rule (tests/torch_imports.py, applied by conftest.py): what it reads from a test module,
and, against the interpreter itself, that the test modules it calls torch-free import with torch blocked."""

import subprocess
import sys
import textwrap

from torch_imports import TESTS, TORCH_SIDE, ModuleVerdict, needs_torch, read_test_module


def _module(tmp_path, source: str, name: str = "test_sample"):
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    return path


def test_imports_mark_the_test_the_fixture_or_the_module_they_are_in(tmp_path):
    path = _module(
        tmp_path,
        """
        import pytest
        from maskclip_runtime.kernel.atomic import write_text_atomic

        @pytest.fixture
        def model():
            from maskclip_core.model import build_model
            return build_model("tiny")

        def test_free():
            assert write_text_atomic

        def test_lazy():
            import torch

        def test_program():
            command = ["python", "-c", "from maskclip_export.cli import main; main()"]

        def test_optional():
            try:
                import maskclip_export.tensorrt
            except ImportError:
                pass

        class TestGroup:
            def test_in_class(self):
                from maskclip_export.onnx_export import export_graphs
        """,
    )
    verdict = read_test_module(path)
    assert not verdict.module
    assert verdict.fixtures == {"model": True}
    expected = {"test_free": False, "test_lazy": True, "test_program": True, "test_optional": False}
    assert verdict.tests == expected | {"test_in_class": True}
    assert needs_torch(path, "test_free", ["model"]) and not needs_torch(path, "test_free", [])
    assert needs_torch(path, "test_free", ["one_torch_thread"])  # conftest's fixture imports torch


def test_fixtures_and_tests_take_the_imports_of_the_module_functions_they_call(tmp_path):
    path = _module(
        tmp_path,
        """
        import pytest

        def _threads():
            import torch

        def _twice():
            return _threads(), _threads()

        @pytest.fixture
        def calls_through_two():
            _twice()

        def test_calls():
            _threads()
        """,
    )
    verdict = read_test_module(path)
    assert verdict.fixtures == {"calls_through_two": True} and verdict.tests == {"test_calls": True}


def test_shell_programs_and_broken_files_are_read_as_importing_nothing(tmp_path):
    shell = _module(tmp_path, 'def test_shell():\n    command = ["sh", "-c", "echo import torch"]\n', "test_shell")
    assert read_test_module(shell).tests == {"test_shell": False}
    broken = _module(tmp_path, "import torch\ndef test_broken(:\n", "test_broken")
    assert read_test_module(broken) == ModuleVerdict(False, {}, {})  # pytest reports it when importing it


def test_module_level_reaches_mark_every_test(tmp_path):
    for number, top in enumerate(
        (
            'torch = __import__("pytest").importorskip("torch")',
            "def helper():\n    import torchvision",
            "from maskclip_bench import gpu_check",  # imports torch lazily, two files down
        )
    ):
        path = _module(tmp_path, f"{top}\n\ndef test_anything():\n    pass\n", f"test_{number}")
        assert read_test_module(path).module, top


def test_modules_called_torch_free_import_with_torch_blocked():
    free = [p.stem for p in sorted(TESTS.glob("test_*.py")) if not read_test_module(p).module]
    assert len(free) >= 15
    blocker = textwrap.dedent(
        f"""
        import sys

        class NoTorch:
            def find_spec(self, name, path=None, target=None):
                if any(name == root or name.startswith(root + ".") for root in {TORCH_SIDE!r}):
                    raise ImportError(f"{{name}} is blocked")

        sys.meta_path.insert(0, NoTorch())
        sys.path.insert(0, {str(TESTS)!r})
        """
    )
    # A module that skips itself where an optional extra is missing (pytest.importorskip) counts as importing.
    program = blocker + textwrap.dedent(
        f"""
        import importlib
        from _pytest.outcomes import Skipped

        for module in {free!r}:
            try:
                importlib.import_module(module)
            except Skipped:
                pass
        """
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
