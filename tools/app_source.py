"""Where the Flower app's files are, in a source checkout or an installed wheel.

``flwr run`` needs a directory with the app's ``pyproject.toml`` and the files its
``fab-include`` selects. In a checkout (or an editable install) that is the project
root. In an installed wheel the packages sit in ``site-packages`` and the
``pyproject.toml`` is shipped inside this package as ``app-pyproject.toml``.
:func:`stage_app` copies exactly those files into a fresh directory, which is also
what makes ``flwr run`` fast (it walks every file under the app directory first).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tomllib
from dataclasses import dataclass
from pathlib import Path

import fl_app

PACKAGED_PYPROJECT = "app-pyproject.toml"


@dataclass(frozen=True)
class AppSource:
    """An app's ``pyproject.toml`` and the directory its ``fab-include`` patterns start from."""

    pyproject: Path
    root: Path

    @classmethod
    def from_directory(cls, directory: Path) -> AppSource:
        """Return the app of a project directory (holding ``pyproject.toml``)."""
        directory = directory.resolve()
        return cls(directory / "pyproject.toml", directory)

    @classmethod
    def installed(cls) -> AppSource:
        """Return the app this interpreter imports ``fl_app`` from (checkout or wheel)."""
        root = Path(fl_app.__file__).resolve().parent.parent
        packaged = Path(__file__).resolve().parent / PACKAGED_PYPROJECT
        return cls(packaged if packaged.is_file() else root / "pyproject.toml", root)

    def files(self) -> list[Path]:
        """Return the files ``fab-include`` selects, sorted."""
        patterns = tomllib.loads(self.pyproject.read_text())["tool"]["flwr"]["app"]["fab-include"]
        return sorted({p for pattern in patterns for p in self.root.glob(pattern) if p.is_file()})


def stage_app(source: AppSource, staging_root: Path) -> Path:
    """Copy the app's FAB files and ``pyproject.toml`` to a fresh directory; return it.

    The directory is named by the content's hash, so an unchanged app is staged once.
    """
    files = source.files()
    digest = hashlib.sha256(source.pyproject.read_bytes())
    for path in files:
        digest.update(str(path.relative_to(source.root)).encode() + b"\0" + path.read_bytes())
    target = staging_root / f"app-{digest.hexdigest()[:16]}"
    if not target.is_dir():
        partial = staging_root / f".{target.name}.{os.getpid()}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        for path in files:
            destination = partial / path.relative_to(source.root)
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, destination)
        shutil.copy2(source.pyproject, partial / "pyproject.toml")
        partial.rename(target)
    return target
