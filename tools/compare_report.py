"""The report of ``fl-compare``: one row per setting (Markdown, CSV, JSON, terminal, plots).

Every number is a mean over the setting's seeds with its standard deviation. The CSV
has one ASCII column per number (``test_accuracy``, ``test_accuracy_std``, ...) and
empty cells where a number does not exist, so that it reads back as numbers.

When the sweep was audited (:mod:`tools.audit.run`), each row also carries the
privacy audit's numbers (:data:`AUDIT_MEASURES`): membership inference on the
published model, reconstruction from one client's update, and the empirical ε lower
bound, with a second Markdown table of their details and the reasons behind each "—".
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
from rich.text import Text

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
    "on their validation data; clients under local or distributed DP do not report it. "
    "epsilon: the largest any client reached (local DP, per example) or the client-level "
    "epsilon of the published model (central and distributed DP). s / round and MB / "
    "round: rounds 2 onwards, training only. "
    "Mean ± standard deviation over the seeds; — where a number does not exist."
)


@dataclass(frozen=True)
class AuditMeasure:
    """One number of the privacy audit: its key in an audit summary, label and digits."""

    key: str
    label: str
    digits: int
    main: bool
    """Shown in the main table (else in the audit details table only)."""


AUDIT_MEASURES: tuple[AuditMeasure, ...] = (
    AuditMeasure("mia_auc", "MIA AUC", 2, True),
    AuditMeasure("mia_tpr_at_1pct_fpr", "TPR@1%FPR", 3, True),
    AuditMeasure("reconstruction_psnr", "recon. PSNR dB", 1, True),
    AuditMeasure("epsilon_lower_bound", "eps lower bound", 2, True),
    AuditMeasure("audit_seconds", "audit s", 1, True),
    AuditMeasure("loss_attack_auc", "loss-attack AUC", 2, False),
    AuditMeasure("mia_tpr_at_0_1pct_fpr", "TPR@0.1%FPR", 3, False),
    AuditMeasure("reconstruction_ssim", "recon. SSIM", 2, False),
)
"""The audit's numbers per setting: mean and standard deviation over the seeds."""

AUDIT_LEGEND = (
    "Privacy audit (tools/audit; docs/comparison.md#privacy-audit). MIA AUC: online LiRA "
    "(Carlini et al. 2022, shadow models trained centrally) on the published model, "
    "members = clients' training examples, non-members = their validation examples; "
    "adversary: anyone with model.pt (under HE: a holder of the secret key). [low, high]: "
    "the 95 % bootstrap intervals of all seeds together; 0.5 = no better than a guess. "
    "TPR@1%FPR: members found at 1 % false positives (few non-members: 1 % is one or two "
    "examples). recon. PSNR: the server's reconstruction (Geiping et al. 2020) of a small "
    "client's examples from its reply to one round, against the real ones (above ~20 dB "
    "the digit is recognisable, below ~10 dB it is noise). eps lower bound: an empirical "
    "lower bound on epsilon from canaries (Steinke, Nasr & Jagielski 2023) at 95 % "
    "confidence, which must stay at or below the claimed epsilon. Small silos give noisy "
    "attack numbers: read the intervals, not the second digit."
)

REFUSED_SHORT = "ciphertexts only"


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
    audits: list[dict[str, Any]] = field(default_factory=list)
    """Per seed: the audit summary (:func:`tools.audit.run.summarize_audit`); empty if none."""
    reconstruction_images: str = ""
    """The first seed's reconstruction images (``.npz``, relative to the report), if any."""


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def _curve(record: RunRecord) -> tuple[list[float | None], str]:
    if any(r.server for r in record.rounds):
        return [r.server.get("accuracy") for r in record.rounds], "server test set"
    return [r.evaluate.get("accuracy") for r in record.rounds], "federated validation"


def summarize(
    setting: str,
    runs: Sequence[tuple[RunRecord, float | None]],
    audits: Sequence[dict[str, Any]] = (),
) -> SettingRow:
    """Reduce one setting's runs (each with its test accuracy and audit summary) to a row."""
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
    row.audits = [dict(a) for a in audits]
    if row.audits:
        for measure in AUDIT_MEASURES:
            mean, std = _mean_std([a.get(measure.key) for a in row.audits])
            row.values[measure.key], row.values[f"{measure.key}_std"] = mean, std
        lows = [a["mia_auc_low"] for a in row.audits if a.get("mia_auc_low") is not None]
        highs = [a["mia_auc_high"] for a in row.audits if a.get("mia_auc_high") is not None]
        row.values["mia_auc_low"] = min(lows, default=None)
        row.values["mia_auc_high"] = max(highs, default=None)
    return row


def audited(rows: Sequence[SettingRow]) -> bool:
    """Tell whether the rows carry the privacy audit's numbers."""
    return any(row.audits for row in rows)


def _first_note(row: SettingRow, key: str) -> str:
    return next((a[key] for a in row.audits if a.get(key)), "")


def _audit_cell(row: SettingRow, measure: AuditMeasure) -> str:
    mean, std = row.values.get(measure.key), row.values.get(f"{measure.key}_std")
    if mean is None:
        return "—" + _missing_reason(row, measure.key)
    text = f"{mean:.{measure.digits}f}" + (f" ± {std:.{measure.digits}f}" if std else "")
    if measure.key == "mia_auc" and row.values.get("mia_auc_low") is not None:
        text += f" [{row.values['mia_auc_low']:.2f}, {row.values['mia_auc_high']:.2f}]"
    if measure.key == "epsilon_lower_bound" and any(a.get("canary_violated") for a in row.audits):
        text += " VIOLATED"
    return text


def _missing_reason(row: SettingRow, key: str) -> str:
    """Return a short reason for an audit number that does not exist (after "—")."""
    if key.startswith("reconstruction"):
        note = _first_note(row, "reconstruction_note")
        if "ciphertexts" in note:
            return f" ({REFUSED_SHORT})"
        return " (not measured)" if note else ""
    if key == "epsilon_lower_bound":
        note = _first_note(row, "canary_note")
        if note.startswith("no differential privacy"):
            return " (no DP)"
        return " (not measured)" if note else ""
    if key.startswith(("mia", "loss")):
        return " (not measured)"
    return ""


def audit_details(rows: Sequence[SettingRow]) -> list[str]:
    """Return the Markdown lines of the audit details: every number and every reason."""
    headers = ["setting", *(m.label for m in AUDIT_MEASURES if not m.main), "claimed eps"]
    headers += ["canary guesses (correct / made)", "reasons for —"]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if not row.audits:
            continue
        claimed = row.values.get("epsilon")
        guesses = [
            f"{a['canary_correct']} / {a['canary_guesses']}"
            for a in row.audits
            if a.get("canary_guesses") is not None
        ]
        notes = sorted(
            {
                a.get(key)
                for a in row.audits
                for key in ("mia_note_missing", "reconstruction_note", "canary_note")
                if a.get(key)
            }
        )
        cells = [
            row.setting,
            *(_audit_cell(row, m) for m in AUDIT_MEASURES if not m.main),
            "—" if claimed is None else f"{claimed:.2f}",
            ", ".join(guesses) or "—",
            "; ".join(notes) or "",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _cell(row: SettingRow, measure: Measure) -> str:
    mean, std = row.values[measure.key], row.values[f"{measure.key}_std"]
    if mean is None:
        return "—"
    text = f"{mean:.{measure.digits}f}"
    return text + (f" ± {std:.{measure.digits}f}" if std else "")


def _delta(row: SettingRow) -> str:
    return "—" if row.delta is None else f"{row.delta:.1e}"


HEADERS = ["setting", *(m.label for m in MEASURES), "delta"]
MAIN_AUDIT = tuple(m for m in AUDIT_MEASURES if m.main)


def headers(rows: Sequence[SettingRow]) -> list[str]:
    """Return the main table's headers (with the audit's columns when there is an audit)."""
    return HEADERS + [m.label for m in MAIN_AUDIT] if audited(rows) else list(HEADERS)


def text_rows(rows: Sequence[SettingRow]) -> list[list[str]]:
    """Return the rows as the strings the Markdown and terminal tables show."""
    extra = audited(rows)
    return [
        [
            r.setting,
            *(_cell(r, m) for m in MEASURES),
            _delta(r),
            *((_audit_cell(r, m) for m in MAIN_AUDIT) if extra else ()),
        ]
        for r in rows
    ]


def csv_keys(rows: Sequence[SettingRow]) -> list[str]:
    """Return the CSV's number columns (the audit's when there is an audit)."""
    keys = [key for m in MEASURES for key in (m.key, f"{m.key}_std")] + ["delta"]
    if audited(rows):
        keys += [key for m in AUDIT_MEASURES for key in (m.key, f"{m.key}_std")]
        keys += ["mia_auc_low", "mia_auc_high"]
    return keys


def csv_text(rows: Sequence[SettingRow]) -> str:
    """Return the report as CSV: ASCII headers, numbers, empty cells for missing values."""
    keys = csv_keys(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["setting", "seeds", *keys])
    for row in rows:
        numbers = [row.delta if k == "delta" else row.values.get(k) for k in keys]
        writer.writerow([row.setting, row.seeds, *("" if v is None else v for v in numbers)])
    return buffer.getvalue()


def _timing(sweep: dict[str, Any]) -> str:
    """Return the report's line on time: the runs' and the audit's, kept apart."""
    timing = sweep.get("timing") or {}
    if not timing:
        return ""
    runs_own = timing.get("runs_own_seconds")
    parts = [] if runs_own is None else [f"runs {runs_own:.0f} s"]
    audit_own = timing.get("audit_own_seconds")
    if timing.get("audit_seconds") is None:
        parts.append("privacy audit skipped (--no-audit)")
    elif audit_own is not None:
        parts.append(f"privacy audit {audit_own:.0f} s")
    own = (
        "Time: " + ", ".join(parts) + " (each run's own ServerApp time without Flower's "
        "start-up, and each audit's own time, summed over the sweep; the audit s column is "
        "one run's audit, mean over seeds). "
        if parts
        else ""
    )
    audit = timing.get("audit_seconds")
    audit_wall = "skipped" if audit is None else f"{audit:.0f} s"
    return (
        f"{own}This invocation's wall clock: runs {timing.get('runs_seconds', 0):.0f} s, "
        f"privacy audit {audit_wall} (reused runs and audits take none).\n\n"
    )


def write_report(rows: Sequence[SettingRow], title: str, sweep: dict[str, Any], out: Path) -> None:
    """Write comparison.md, comparison.csv, comparison.json and the plots into ``out``."""
    columns = headers(rows)
    markdown = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    markdown += ["| " + " | ".join(cells) + " |" for cells in text_rows(rows)]
    text = f"# Privacy settings compared\n\n{title}\n\n{LEGEND}\n\n" + _timing(sweep)
    text += "\n".join(markdown) + "\n"
    if audited(rows):
        text += "\n## Privacy audit\n\n" + AUDIT_LEGEND + "\n\n"
        text += "\n".join(audit_details(rows)) + "\n\n"
        text += "![claimed epsilon against measured attack success](privacy_audit.png)\n\n"
        text += "![reconstruction from one client's update](reconstruction.png)\n"
    atomic_write_bytes(out / "comparison.md", text.encode())
    atomic_write_bytes(out / "comparison.csv", csv_text(rows).encode())
    payload = {"sweep": sweep, "rows": [asdict(r) for r in rows]}
    atomic_write_bytes(out / "comparison.json", (json.dumps(payload, indent=2) + "\n").encode())
    from tools.compare_plots import plot_report  # matplotlib only when writing

    plot_report(rows, out)


def print_table(rows: Sequence[SettingRow], console: Console) -> None:
    """Print the table; on a terminal too narrow for it, one block per setting."""
    table = Table(title="Privacy settings compared")
    labels = headers(rows)
    for header in labels:
        table.add_column(header, justify="left" if header == "setting" else "right", no_wrap=True)
    cells = text_rows(rows)
    for row in cells:
        table.add_row(*(Text(cell) for cell in row))
    columns = list(zip(labels, *cells, strict=True))
    needed = sum(max(len(c) for c in column) for column in columns) + 3 * len(columns) + 1
    if needed <= console.width:
        console.print(table)
    else:
        for row in cells:
            console.print(f"[bold]{row[0]}[/bold]", highlight=False)
            for header, value in zip(labels[1:], row[1:], strict=True):
                console.print(f"  {header}: {value}", highlight=False, markup=False)
    console.print(LEGEND, highlight=False)
    if audited(rows):
        console.print(AUDIT_LEGEND, highlight=False, markup=False)
