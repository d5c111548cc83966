"""The suite's own set-up: no test package may answer an import of a real package.

pytest puts the folder above the top test package on sys.path. Were `tests/kernels` a
top-level package, `import kernels` (transformers probes for the PyPI package of that name)
would find it; as one package `tests`, its sub-packages are `tests.kernels` and the like.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
PYPI_NAMES = ("kernels", "models", "train", "interop", "graph", "passes", "bench")
"""Test sub-packages whose names are also packages on PyPI."""


def test_every_test_folder_is_part_of_the_tests_package() -> None:
    folders = {path.parent for path in TESTS.rglob("*.py") if "__pycache__" not in path.parts}
    missing = sorted(str(f.relative_to(TESTS.parent)) for f in folders
                     if not (f / "__init__.py").exists())
    assert not missing, f"add an __init__.py to {missing} (else it is a top-level package)"


@pytest.mark.parametrize("name", PYPI_NAMES)
def test_a_real_package_name_is_not_answered_from_tests(name: str) -> None:
    found = importlib.util.find_spec(name)
    if found is not None:
        origin = Path(found.origin or next(iter(found.submodule_search_locations or [""])))
        assert TESTS not in origin.resolve().parents, f"`import {name}` finds {origin}"


def test_transformers_and_its_kernels_integration_import() -> None:
    """transformers imports the PyPI `kernels` package when it is installed (the lock has it)."""
    hub_kernels = importlib.import_module("transformers.integrations.hub_kernels")
    kernels = importlib.import_module("kernels")
    assert TESTS not in Path(kernels.__file__).resolve().parents
    assert hasattr(kernels, "CUDAProperties")
    assert hub_kernels.is_kernels_available()
