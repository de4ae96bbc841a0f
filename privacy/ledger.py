"""A persistent privacy ledger: what one participant has spent under one ledger ID.

One JSON file per (ledger ID, participant). It holds the accountant's history (what
ε is computed from), the calibrated plan (so that a new process need not recalibrate)
and one entry per training session. Writes are atomic (temporary file, fsync, rename);
a write that would *shrink* the recorded history is refused, and an unreadable file
is reported, never replaced: spent privacy budget is never forgotten.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from privacy.files import atomic_write_bytes

FORMAT_VERSION = 1
_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class LedgerError(RuntimeError):
    """A ledger file is unreadable, belongs to something else, or would lose history."""


@dataclass
class LedgerRecord:
    """The content of one ledger: a participant's spending under one ledger ID."""

    ledger_id: str
    participant: str
    mechanism: str
    delta: float
    target_epsilon: float
    history: list[list[float]] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)
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
                raise ValueError("unsupported format_version")
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise LedgerError(f"privacy ledger {origin} is unreadable ({err})") from err

    def total_steps(self) -> int:
        """Return the DP-SGD steps recorded in the history."""
        return sum(int(entry[2]) for entry in self.history)

    def extends(self, other: LedgerRecord) -> bool:
        """Return True if this record keeps all of ``other``'s sessions (same or more)."""
        return (
            self.ledger_id == other.ledger_id
            and self.participant == other.participant
            and self.sessions[: len(other.sessions)] == other.sessions
            and self.total_steps() >= other.total_steps()
        )


def check_name(name: str, what: str) -> str:
    """Return ``name`` if it is safe as a file name part, else raise ValueError."""
    if not _SAFE_NAME.match(name):
        raise ValueError(
            f"{what} {name!r} is invalid: use 1-128 letters, digits, '_', '-', '.', "
            "starting with a letter or digit"
        )
    return name


def ledger_path(directory: Path, ledger_id: str, participant: str) -> Path:
    """Return ``<directory>/<ledger_id>/<participant>.json`` (names checked)."""
    return (
        directory
        / check_name(ledger_id, "ledger id")
        / f"{check_name(participant, 'participant')}.json"
    )


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
    """Write ``record`` to ``path`` atomically, refusing to lose recorded sessions.

    Raises
    ------
    LedgerError
        If the file on disk holds sessions or steps that ``record`` does not keep
        (another process spent budget meanwhile, or the record is stale).
    """
    existing = read_ledger(path)
    if existing is not None and not record.extends(existing):
        raise LedgerError(
            f"refusing to overwrite privacy ledger '{path}': it records "
            f"{len(existing.sessions)} sessions / {existing.total_steps()} steps that the new "
            f"state ({len(record.sessions)} sessions / {record.total_steps()} steps) does not keep"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, record.to_json().encode(), mode=0o600)
