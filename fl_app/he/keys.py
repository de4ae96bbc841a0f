"""Where the HE key files live, and loading them for clients and for the server.

Clients read the secret context from node-config ``he-secret-context``; the server
reads the public context from run-config ``he-public-context``. Both default to
``$FLWR_HOME/he/`` (``~/.flwr/he/`` when ``FLWR_HOME`` is unset): ``secret.ctx`` and
``public.ctx``. When a client finds neither file at the default path it generates
the key pair there once (simulation: nothing to prepare); explicit paths must exist.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from fl_app.config import NodeConfig
from privacy.he import HEError, HEKey, ensure_key_pair, load_key

SECRET_FILE = "secret.ctx"
PUBLIC_FILE = "public.ctx"


def default_key_dir() -> Path:
    """Return ``$FLWR_HOME/he`` (``~/.flwr/he`` without ``FLWR_HOME``)."""
    return Path(os.environ.get("FLWR_HOME") or "~/.flwr").expanduser() / "he"


def public_context_path(configured: str) -> Path:
    """Return the server's public context path (``''`` = the default)."""
    return Path(configured).expanduser() if configured else default_key_dir() / PUBLIC_FILE


@lru_cache(maxsize=4)
def _load(path: Path, mtime_ns: int, secret: bool) -> HEKey:
    del mtime_ns
    return load_key(path.read_bytes(), secret=secret, source=str(path))


def load_context_file(path: Path, *, secret: bool) -> HEKey:
    """Load a context file (cached until the file changes).

    Raises
    ------
    HEError
        If the file is missing or holds the wrong kind of context.
    """
    if not path.is_file():
        kind = "secret" if secret else "public"
        raise HEError(
            f"{kind} HE context '{path}' does not exist; create the key files with "
            "'fl-he keygen --secret SECRET --public PUBLIC'"
        )
    return _load(path, path.stat().st_mtime_ns, secret)


def client_secret_context(node: NodeConfig) -> HEKey:
    """Load this client's secret context (node-config ``he-secret-context``).

    Without that key the default path is used, and the key pair is generated there
    if neither file exists yet (safe when several clients start at once).

    Raises
    ------
    HEError
        If a configured path is not a readable secret context.
    """
    configured = node.path("he_secret_context")
    if configured is not None:
        return load_context_file(configured, secret=True)
    directory = default_key_dir()
    secret_path, public_path = directory / SECRET_FILE, directory / PUBLIC_FILE
    if not (secret_path.is_file() and public_path.is_file()):
        ensure_key_pair(secret_path, public_path)
    return load_context_file(secret_path, secret=True)
