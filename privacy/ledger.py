"""A persistent privacy ledger: what one data holder has spent on one dataset.

One JSON file per dataset, named by the dataset's fingerprint (a hash of its
content), in the data holder's own state directory: nothing a server sends (a run
ID, a partition ID) selects or resets it. It holds the accountant's history (the
``(noise_multiplier, sample_rate, steps)`` entries ε is computed from, whatever
accountant and δ a later run asks for), the calibrated noise of each plan (so a new
process need not recalibrate) and one entry per training session.

A session is charged *before* it trains (:mod:`privacy.session`), under an exclusive
lock held until the session has been recorded (:func:`locked_ledger`), so two
processes never spend the same budget twice and a crash during training never
un-spends it. Writes are atomic (temporary file, fsync, rename, mode 0600); a write
that would shrink the recorded history is refused, and an unreadable file is
reported, never replaced.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from privacy.files import atomic_write_bytes

FORMAT_VERSION = 2
_FINGERPRINT = re.compile(r"^[0-9a-f]{32}$")


class LedgerError(RuntimeError):
    """A ledger file is unreadable, belongs to something else, or would lose history."""


def data_fingerprint(arrays: Sequence[np.ndarray]) -> str:
    """Return the fingerprint of a dataset: SHA-256 of its arrays' dtypes, shapes and bytes."""
    digest = hashlib.sha256(b"fl-privacy-dataset/1")
    for array in arrays:
        contiguous = np.ascontiguousarray(array)
        digest.update(f"{contiguous.dtype.str}{contiguous.shape}".encode())
        digest.update(contiguous.tobytes())
    return digest.hexdigest()[:32]


@dataclass
class LedgerRecord:
    """The content of one ledger: a data holder's spending on one dataset."""

    fingerprint: str
    history: list[list[float]] = field(default_factory=list)
    plans: dict[str, dict[str, Any]] = field(default_factory=dict)
    sessions: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> str:
        """Return the record as JSON text."""
        return json.dumps({"format_version": FORMAT_VERSION, **self.__dict__}, indent=1)

    @classmethod
    def from_json(cls, text: str, origin: str) -> LedgerRecord:
        """Parse :meth:`to_json` output; ``origin`` names the source in errors."""
        try:
            data = json.loads(text)
            if data.pop("format_version") != FORMAT_VERSION:
                raise ValueError(f"format_version is not {FORMAT_VERSION}")
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise LedgerError(f"privacy ledger {origin} is unreadable ({err})") from err

    def total_steps(self) -> int:
        """Return the DP steps recorded in the history."""
        return sum(int(entry[2]) for entry in self.history)

    def extends(self, other: LedgerRecord) -> bool:
        """Return True if this record keeps all of ``other``'s sessions and steps."""
        return (
            self.fingerprint == other.fingerprint
            and self.sessions[: len(other.sessions)] == other.sessions
            and self.history[: len(other.history)] == other.history
        )


def ledger_path(directory: Path, fingerprint: str) -> Path:
    """Return ``<directory>/<fingerprint>.json`` (the fingerprint checked)."""
    if not _FINGERPRINT.match(fingerprint):
        raise ValueError(f"ledger fingerprint {fingerprint!r} is not 32 hexadecimal digits")
    return directory / f"{fingerprint}.json"


def read_ledger(path: Path) -> LedgerRecord | None:
    """Return the ledger at ``path``, or None if there is none yet.

    Raises
    ------
    LedgerError
        If the file exists but cannot be read or parsed.
    """
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise LedgerError(f"privacy ledger '{path}' cannot be read ({err})") from err
    return LedgerRecord.from_json(text, f"'{path}'")


def write_ledger(path: Path, record: LedgerRecord) -> None:
    """Write ``record`` to ``path`` atomically (0600), refusing to lose recorded spending.

    Raises
    ------
    LedgerError
        If the file on disk holds sessions or history that ``record`` does not keep.
    """
    existing = read_ledger(path)
    if existing is not None and not record.extends(existing):
        raise LedgerError(
            f"refusing to overwrite privacy ledger '{path}': it records "
            f"{len(existing.sessions)} sessions / {existing.total_steps()} steps that the new "
            f"state ({len(record.sessions)} sessions / {record.total_steps()} steps) does not keep"
        )
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write_bytes(path, record.to_json().encode(), mode=0o600)


@contextlib.contextmanager
def locked_ledger(path: Path) -> Iterator[LedgerRecord]:
    """Hold an exclusive lock on a ledger; yield its record (a new one if none exists).

    Whatever the caller changes is written back when the block ends, also when it
    ends with an exception: a session charged before it failed stays charged.
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    lock = path.with_name(path.name + ".lock")
    with lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        record = read_ledger(path) or LedgerRecord(path.stem)
        try:
            yield record
        finally:
            write_ledger(path, record)
