"""The report of ``fl-compare``: one row per setting (Markdown, CSV, JSON, terminal, plots).

Every number is a mean over the setting's seeds with its standard deviation. The CSV
has one ASCII column per number (``test_accuracy``, ``test_accuracy_std``, ...) and
empty cells where a number does not exist, so that it reads back as numbers.
"""

from __future__ import annotations

import csv
import io
import json
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fl_app.server.results import RunRecord
from privacy.files import atomic_write_bytes

REPORT_FILES = ("comparison.md", "comparison.csv", "comparison.json")


@dataclass(frozen=True)
class Measure:
    """One number of the report: how it is named, computed and shown."""

    key: str
    """ASCII name (CSV and JSON column)."""
    label: str
    """Heading of the Markdown and terminal tables."""
    digits: int
    of_run: Callable[[RunRecord, float | None], float | None]
    """The number of one run, given its test accuracy."""


def _steady(record: RunRecord) -> list[Any]:
    """Return rounds 2 onwards (round 1 includes the start-up of Flower and Ray)."""
    return record.rounds[1:] or record.rounds


def _per_round(record: RunRecord, value: Callable[[Any], float]) -> float | None:
    rounds = _steady(record)
    return sum(value(r) for r in rounds) / len(rounds) if rounds else None


def _federated(record: RunRecord) -> float | None:
    last = record.rounds[-1].evaluate if record.rounds else {}
    return last.get("accuracy")


MEASURES: tuple[Measure, ...] = (
    Measure("test_accuracy", "test accuracy", 4, lambda r, test: test),
    Measure("federated_accuracy", "federated accuracy", 4, lambda r, test: _federated(r)),
    Measure("epsilon", "epsilon", 2, lambda r, test: r.final.epsilon if r.final else None),
    Measure(
        "seconds_per_round",
        "s / round",
        2,
        lambda r, test: _per_round(r, lambda x: x.seconds),
    ),
    Measure(
        "mb_up_per_round",
        "MB up / round",
        3,
        lambda r, test: _per_round(r, lambda x: x.bytes_up / 1e6),
    ),
    Measure(
        "mb_down_per_round",
        "MB down / round",
        3,
        lambda r, test: _per_round(r, lambda x: x.bytes_down / 1e6),
    ),
    Measure("rounds", "rounds", 0, lambda r, test: float(len(r.rounds))),
)

LEGEND = (
    "test accuracy: the final model on the server's held-out test set (under homomorphic "
    "encryption fl-compare decrypts it with the simulated data holders' key, which the "
    "server cannot do). federated accuracy: the clients' evaluation of the final model "
    "on their validation data; clients under local DP do not report it. epsilon: the "
    "largest any client reached (local DP, per example) or the client-level epsilon "
    "(central DP). s / round and MB / round: rounds 2 onwards, training only. "
    "Mean ± standard deviation over the seeds; — where a number does not exist."
)


@dataclass
class SettingRow:
    """One setting's numbers over its seeds."""

    setting: str
    seeds: int
    values: dict[str, float | None] = field(default_factory=dict)
    """Each measure's mean (``key``) and standard deviation (``key_std``)."""
    delta: float | None = None
    statuses: list[str] = field(default_factory=list)
    curves: list[list[float | None]] = field(default_factory=list)
    """Per seed: the accuracy after each round (server test set, or federated)."""
    curve_source: str = ""


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def _curve(record: RunRecord) -> tuple[list[float | None], str]:
    if any(r.server for r in record.rounds):
        return [r.server.get("accuracy") for r in record.rounds], "server test set"
    return [r.evaluate.get("accuracy") for r in record.rounds], "federated validation"


def summarize(setting: str, runs: Sequence[tuple[RunRecord, float | None]]) -> SettingRow:
    """Reduce one setting's runs (each with its test accuracy) to a row."""
    row = SettingRow(setting, len(runs))
    for measure in MEASURES:
        mean, std = _mean_std([measure.of_run(record, test) for record, test in runs])
        row.values[measure.key], row.values[f"{measure.key}_std"] = mean, std
    deltas = [r.final.delta for r, _ in runs if r.final and r.final.delta is not None]
    row.delta = max(deltas, default=None)
    row.statuses = [r.status for r, _ in runs]
    for record, _ in runs:
        curve, row.curve_source = _curve(record)
        row.curves.append(curve)
    return row


def _cell(row: SettingRow, measure: Measure) -> str:
    mean, std = row.values[measure.key], row.values[f"{measure.key}_std"]
    if mean is None:
        return "—"
    text = f"{mean:.{measure.digits}f}"
    return text + (f" ± {std:.{measure.digits}f}" if std else "")


def _delta(row: SettingRow) -> str:
    return "—" if row.delta is None else f"{row.delta:.1e}"


HEADERS = ["setting", *(m.label for m in MEASURES), "delta"]


def text_rows(rows: Sequence[SettingRow]) -> list[list[str]]:
    """Return the rows as the strings the Markdown and terminal tables show."""
    return [[r.setting, *(_cell(r, m) for m in MEASURES), _delta(r)] for r in rows]


def csv_text(rows: Sequence[SettingRow]) -> str:
    """Return the report as CSV: ASCII headers, numbers, empty cells for missing values."""
    keys = [key for m in MEASURES for key in (m.key, f"{m.key}_std")]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "seeds", *keys, "delta"])
    for row in rows:
        numbers = [row.values[k] for k in keys] + [row.delta]
        writer.writerow([row.setting, row.seeds, *("" if v is None else v for v in numbers)])
    return buffer.getvalue()


def write_report(rows: Sequence[SettingRow], title: str, sweep: dict[str, Any], out: Path) -> None:
    """Write comparison.md, comparison.csv, comparison.json and the plots into ``out``."""
    markdown = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    markdown += ["| " + " | ".join(cells) + " |" for cells in text_rows(rows)]
    text = f"# Privacy settings compared\n\n{title}\n\n{LEGEND}\n\n" + "\n".join(markdown) + "\n"
    atomic_write_bytes(out / "comparison.md", text.encode())
    atomic_write_bytes(out / "comparison.csv", csv_text(rows).encode())
    payload = {"sweep": sweep, "rows": [asdict(r) for r in rows]}
    atomic_write_bytes(out / "comparison.json", (json.dumps(payload, indent=2) + "\n").encode())
    from tools.compare_plots import plot_report  # matplotlib only when writing

    plot_report(rows, out)


def print_table(rows: Sequence[SettingRow], console: Console) -> None:
    """Print the table; on a terminal too narrow for it, one block per setting."""
    table = Table(title="Privacy settings compared")
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "setting" else "right", no_wrap=True)
    cells = text_rows(rows)
    for row in cells:
        table.add_row(*row)
    columns = list(zip(HEADERS, *cells, strict=True))
    needed = sum(max(len(c) for c in column) for column in columns) + 3 * len(columns) + 1
    if needed <= console.width:
        console.print(table)
    else:
        for row in cells:
            console.print(f"[bold]{row[0]}[/bold]", highlight=False)
            for header, value in zip(HEADERS[1:], row[1:], strict=True):
                console.print(f"  {header}: {value}", highlight=False)
    console.print(LEGEND, highlight=False)
