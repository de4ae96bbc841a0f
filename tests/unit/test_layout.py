"""The folder tells the architecture: what may import what, and what ships in the FAB."""

import ast
from pathlib import Path

import pytest

from tests.conftest import APP_DIR
from tools.app_source import AppSource

RUNTIME = ("fl_app", "strategies", "privacy")
OUTSIDE_THE_APP = ("tools", "testing", "bench", "tests", "deploy")


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


def modules(package: str) -> list[Path]:
    return sorted((APP_DIR / package).rglob("*.py"))


@pytest.mark.parametrize("package", RUNTIME)
def test_runtime_code_never_imports_tools_tests_or_harnesses(package):
    for path in modules(package):
        assert not imported_roots(path) & set(OUTSIDE_THE_APP), path


@pytest.mark.parametrize("package", ["strategies", "privacy"])
def test_strategies_and_privacy_never_import_the_app(package):
    for path in modules(package):
        assert "fl_app" not in imported_roots(path), path


def test_privacy_is_flower_free():
    for path in modules("privacy"):
        assert "flwr" not in imported_roots(path), path


def test_the_fab_holds_only_runtime_code():
    files = AppSource.from_directory(APP_DIR).files()
    assert {f.relative_to(APP_DIR).parts[0] for f in files} == set(RUNTIME)
    assert all(f.suffix == ".py" for f in files)
    for package in RUNTIME:
        assert set(modules(package)) <= set(files)
