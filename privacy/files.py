"""Writing files safely: complete or absent, never a partial file, never a lost one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def atomic_write_bytes(path: Path, data: bytes, mode: int = 0o644, overwrite: bool = True) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename.

    Readers see either the old or the new content, never a partial file. ``mode``
    sets the file's permissions (0o600 for secrets). With ``overwrite=False`` the
    temporary file is hard-linked to ``path`` instead, which raises
    ``FileExistsError`` if ``path`` exists: an existing file is never replaced, and
    concurrent writers cannot replace each other's file.
    """
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(handle, mode)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def write_new_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Create ``path`` with ``data`` (owner-only by default); never replace a file.

    Missing parent directories are created with mode 0o700.

    Raises
    ------
    FileExistsError
        If ``path`` already exists.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, data, mode, overwrite=False)
