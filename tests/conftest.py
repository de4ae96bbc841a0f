"""Shared fixtures: a private local SuperLink for end-to-end ``flwr run`` tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fl_app.local_simulation import LocalSuperLink

APP_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuperLink]:
    """One SuperLink on free 127.0.0.1 ports in a temporary FLWR_HOME, stopped at the end."""
    home = tmp_path_factory.mktemp("flwr-home")
    with LocalSuperLink(home, cwd=home) as link:
        yield link
