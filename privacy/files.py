"""Writing secret files safely: complete or absent, owner-only, never replacing one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data``; raise ``FileExistsError`` if it already exists.

    The bytes go to a temporary file in the same directory first (mode ``mode``,
    owner-only by default), which is then hard-linked to ``path``: the link fails
    if ``path`` exists, so concurrent writers cannot replace each other's file and
    readers never see a partial one. Missing parent directories are created with
    mode 0o700.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
