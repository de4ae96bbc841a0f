"""Where the HE key files live, and loading them for clients and for the server.

The clients' secret context belongs to the data holders: node-config
``he-secret-context``, by default ``<state-dir>/he/secret.ctx`` (simulated nodes:
``$FL_NODE_STATE_DIR/he/secret.ctx``), a directory the server is never pointed at.
The server reads only the public context: run-config ``he-public-context``, by
default ``$FLWR_HOME/he/public.ctx``. Nothing creates keys implicitly: ``fl-he keygen``
writes both files (to these defaults unless told otherwise), and a run with
``he = true`` checks them before round 1, on the server and on every node.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from fl_app.config import DEFAULT_NODE_STATE_DIR, NODE_STATE_ENV, NodeConfig
from privacy.he import HEError, HEKey, load_key

SECRET_FILE = "secret.ctx"
PUBLIC_FILE = "public.ctx"
KEY_DIR = "he"
KEYGEN_HINT = "create the key files with 'fl-he keygen' (docs/homomorphic-encryption.md)"


def default_public_context() -> Path:
    """Return ``$FLWR_HOME/he/public.ctx`` (``~/.flwr`` without ``FLWR_HOME``)."""
    return Path(os.environ.get("FLWR_HOME") or "~/.flwr").expanduser() / KEY_DIR / PUBLIC_FILE


def default_secret_context() -> Path:
    """Return the simulated nodes' secret context: ``$FL_NODE_STATE_DIR/he/secret.ctx``."""
    state = os.environ.get(NODE_STATE_ENV) or DEFAULT_NODE_STATE_DIR
    return Path(state).expanduser() / KEY_DIR / SECRET_FILE


def public_context_path(configured: str) -> Path:
    """Return the server's public context path (``''`` = the default)."""
    return Path(configured).expanduser() if configured else default_public_context()


def secret_context_path(node: NodeConfig) -> Path:
    """Return a node's secret context path: ``he-secret-context`` or its state directory's."""
    return node.path("he_secret_context") or Path(node.state_dir) / KEY_DIR / SECRET_FILE


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
        raise HEError(f"there is no {kind} HE context at '{path}'; {KEYGEN_HINT}")
    return _load(path, path.stat().st_mtime_ns, secret)


def client_secret_context(node: NodeConfig) -> HEKey:
    """Load this node's secret context (never created here).

    Raises
    ------
    HEError
        If there is none, or the file is not a secret context.
    """
    return load_context_file(secret_context_path(node), secret=True)
