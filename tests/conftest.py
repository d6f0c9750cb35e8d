"""Shared fixtures (small models, images and artifacts the tests build themselves, no downloads) and the
one rule for the `torch` marker.

THE TORCH MARKER. This file imports no torch: the torch-free tests run where torch is not installed
(`pip install -e ".[cpu,serve,dev]"`, then `python -m pytest -q -m "not torch"`, as .ci/run does). A test
carries `torch` when the code it reaches imports a torch-side package (torch, torchvision, timm, open_clip,
safetensors.torch): `pytest_collection_modifyitems` below decides it for every test from the source, with
tests/torch_imports.py (which says exactly what it follows: imports in the test, in its fixtures, in the rest
of its module, and on through first-party files). Nobody writes the marker by hand, and no list of modules
is kept: a hand-kept list or a `pytestmark` per module drifts silently the day a test gains an import and
nobody updates it, while a rule read from the imports moves with them, so a new test module gets the marker
right by default. Where torch is missing and the marker expression deselects torch tests, the modules whose
import itself needs torch are not collected (importing them would fail); with any other expression they are
collected and fail to import, loudly. (`-m "not torch"` replaces pyproject's default `-m "not slow and not
gpu"`; every slow and gpu test reaches torch today, so it runs none of them.)

SHARED EXPORTS. `tiny_export(**options)` exports `tiny_model` through the gate once per session for each set
of ExportOptions, whichever modules ask (`calib_folder(count)` likewise writes a calibration folder once):
a test that needs a gated tiny artifact asks it instead of exporting in a fixture of its own.
"""

from __future__ import annotations

import importlib.util
import json
from contextlib import contextmanager
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression
from torch_imports import needs_torch, read_test_module

TORCH_INSTALLED = importlib.util.find_spec("torch") is not None


def _deselects_torch(config: pytest.Config) -> bool:
    """Whether the -m expression leaves out a test marked `torch` (pytest's own evaluator: one grammar)."""
    expression = config.getoption("markexpr")
    return bool(expression) and not Expression.compile(expression).evaluate(lambda name, **_: name == "torch")


class _NotImported(pytest.Module):
    """A test module whose import needs torch, where torch is missing and -m deselects torch tests."""

    def collect(self):
        return []


def pytest_pycollect_makemodule(module_path: Path, parent: pytest.Collector) -> pytest.Module | None:
    """Also for a module named on the command line (pytest_ignore_collect is not asked about those)."""
    if TORCH_INSTALLED or not read_test_module(module_path).module or not _deselects_torch(parent.config):
        return None
    return _NotImported.from_parent(parent, path=module_path)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if isinstance(item, pytest.Function) and needs_torch(item.path, item.originalname, item.fixturenames):
            item.add_marker(pytest.mark.torch)


@pytest.fixture(autouse=True, scope="session")
def self_check_cache(tmp_path_factory):
    """Passed self-checks are cached per machine; tests keep theirs out of the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("MASKCLIP_CACHE_DIR", str(tmp_path_factory.mktemp("self-check-cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_model():
    """A randomly initialised `tiny` MaskCLIP in eval mode (seeded: the same weights every run)."""
    import torch

    from maskclip_core.model import build_model

    torch.manual_seed(0)
    return build_model("tiny").eval()


@contextmanager
def _torch_on_one_thread():
    """Two shared cores: torch's thread pool spinning against other processes costs 100x here."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def one_torch_thread():
    with _torch_on_one_thread():
        yield


@pytest.fixture(scope="session")
def tiny_source(tiny_model):
    """`tiny_model` as the exporter's source."""
    from maskclip_core.checkpoint import weights_digest
    from maskclip_export.exporter import ModelSource

    return ModelSource(tiny_model, "random init (tiny)", weights_digest(tiny_model))


@pytest.fixture(scope="session")
def calib_folder(tmp_path_factory):
    """`calib_folder(count)` -> a folder of the export gate's first `count` verification images as PNG files
    (a calibration folder for int8 exports), written once per count."""
    from PIL import Image

    from maskclip_export.verify import default_verification_images

    folders: dict[int, Path] = {}

    def folder(count: int) -> Path:
        if count not in folders:
            folders[count] = tmp_path_factory.mktemp(f"calib-{count}")
            for name, image in default_verification_images()[:count]:
                Image.fromarray(image).save(folders[count] / f"{name}.png")
        return folders[count]

    return folder


@pytest.fixture(scope="session")
def calib_dir(calib_folder):
    return calib_folder(6)


@pytest.fixture(scope="session")
def tiny_export(tiny_source, tmp_path_factory):
    """`tiny_export(**ExportOptions fields but out)` -> (folder, manifest as written): the tiny model exported
    through the gate ONCE per session for each set of options, whichever modules ask. Never change the
    folder: copy it first (shutil.copytree) to alter it."""
    from maskclip_export.exporter import ExportOptions, export_artifact
    from maskclip_runtime.contract.manifest import MANIFEST_NAME

    root = tmp_path_factory.mktemp("tiny-artifacts")
    exported: dict[str, tuple[Path, dict]] = {}

    def export(**options) -> tuple[Path, dict]:
        key = repr(sorted(options.items()))
        if key not in exported:
            out = root / f"artifact-{len(exported)}"
            with _torch_on_one_thread():
                export_artifact(tiny_source, ExportOptions(out=out, **options), progress=False)
            exported[key] = out, json.loads((out / MANIFEST_NAME).read_text())
        return exported[key]

    return export


@pytest.fixture(scope="session")
def standin_split(tmp_path_factory):
    """A split stand-in artifact (tests/standin_artifact.py): what maskclip-run's tests run."""
    from standin_artifact import build_standin_artifact

    return build_standin_artifact(tmp_path_factory.mktemp("standin-split"), "split")


@pytest.fixture(scope="session")
def sample_photo_dir(tmp_path_factory):
    """The sample photos as JPEG files in one folder."""
    from standin_artifact import sample_photos

    folder = tmp_path_factory.mktemp("photos")
    for name, image in sample_photos().items():
        image.save(folder / f"{name}.jpg", quality=92)
    return folder
