"""Files a deployment creates once: keys, certificates, data. They are never overwritten."""

from __future__ import annotations

from pathlib import Path

from privacy.files import atomic_write_bytes


class DeployError(RuntimeError):
    """A deployment step cannot go on; the message says what to do."""


def write_new_file(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Create ``path`` with ``data``; refuse if it exists.

    Written atomically (:func:`privacy.files.atomic_write_bytes`): readers never
    see a partial file, and an existing file (a key, a certificate) is never
    replaced.

    Parameters
    ----------
    path : Path
        The file to create; its directory is created if needed.
    data : bytes
        The content.
    mode : int
        Permissions of the new file (0o600 for private keys).

    Raises
    ------
    DeployError
        If ``path`` exists.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_write_bytes(path, data, mode, overwrite=False)
    except FileExistsError as err:
        raise DeployError(f"{path} exists; it is never overwritten") from err


def existing_files(paths: list[Path]) -> bool:
    """Return True if all ``paths`` exist, False if none does.

    Raises
    ------
    DeployError
        If only some exist: a half-made set (say a private key without its
        certificate) is not guessed at, and not overwritten either.
    """
    present = [p for p in paths if p.exists()]
    if present and len(present) < len(paths):
        missing = [str(p) for p in paths if not p.exists()]
        raise DeployError(
            f"found {', '.join(map(str, present))} but not {', '.join(missing)}; "
            "move the incomplete set away (nothing is overwritten) or complete it"
        )
    return bool(present)
