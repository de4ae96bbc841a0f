"""Shared test setup: a marker per folder, and a private ``FLWR_HOME`` for every test.

``tests/unit`` tests functions and classes alone, ``tests/app`` runs the real ServerApp
and ClientApp in this process (over :mod:`testing.inprocess_grid`), and
``tests/integration`` starts real Flower processes (``flwr run``, SuperLink,
SuperNodes) or benchmark subprocesses. Each test gets its marker from its folder, so
``pytest -m "unit or app"`` is the fast tier.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from fl_app.config import NODE_STATE_ENV
from privacy.he import write_key_pair

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


@dataclass(frozen=True)
class KeyFiles:
    """An HE key pair where simulated nodes and the server look by default."""

    secret: Path
    public: Path


@pytest.fixture
def he_keys(flwr_home: Path, node_state: Path) -> KeyFiles:
    """Create the HE key pair (``fl-he keygen``'s defaults): the secret with the nodes."""
    keys = KeyFiles(node_state / "he" / "secret.ctx", flwr_home / "he" / "public.ctx")
    write_key_pair(keys.secret, keys.public)
    return keys
