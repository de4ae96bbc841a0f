"""Integration fixtures: one private local SuperLink for the whole session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import APP_DIR
from tools.app_source import AppSource
from tools.local_superlink import LocalSuperLink

APP = AppSource.from_directory(APP_DIR)


@pytest.fixture(scope="session")
def superlink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalSuperLink]:
    """One SuperLink on free 127.0.0.1 ports in a temporary FLWR_HOME, stopped at the end."""
    home = tmp_path_factory.mktemp("flwr-home")
    with LocalSuperLink(home, cwd=home) as link:
        yield link
