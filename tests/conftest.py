"""Shared test setup: a marker per folder, and a private ``FLWR_HOME`` for every test.

``tests/unit`` tests functions and classes alone, ``tests/app`` runs the real ServerApp
and ClientApp in this process (over :mod:`testing.inprocess_grid`), and
``tests/integration`` starts real Flower processes (``flwr run``, SuperLink,
SuperNodes) or benchmark subprocesses. Each test gets its marker from its folder, so
``pytest -m "unit or app"`` is the fast tier.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fl_app.config import NODE_STATE_ENV

APP_DIR = Path(__file__).resolve().parent.parent
TIERS = ("unit", "app", "integration")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test with the tier of its folder."""
    for item in items:
        tier = item.path.parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(autouse=True)
def flwr_home(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point ``FLWR_HOME`` (keys, ledgers, caches) at a directory of the test's own.

    It is not under ``tmp_path``, so a test that watches ``tmp_path`` sees only its files.
    """
    home = tmp_path_factory.mktemp("flwr-home")
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def node_state(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point simulated nodes' state (secrets, privacy ledgers) at a directory of the test's own."""
    state = tmp_path_factory.mktemp("node-state")
    monkeypatch.setenv(NODE_STATE_ENV, str(state))
    return state
