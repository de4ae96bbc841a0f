"""The plots of ``fl-compare``'s report: accuracy per round, privacy against utility, cost."""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from privacy.files import atomic_write_bytes
from tools.compare_report import SettingRow

MARKERS = "os^vDP*X"
STYLES = ("-", "--", ":", "-.")


def _save(fig: Any, path: Path) -> None:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def _mean_curve(curves: Sequence[Sequence[float | None]]) -> list[float]:
    usable = [c for c in curves if c and all(v is not None for v in c)]
    length = min((len(c) for c in usable), default=0)
    return [statistics.fmean(float(c[i]) for c in usable) for i in range(length)]


def accuracy_per_round(rows: Sequence[SettingRow], path: Path) -> None:
    """Plot each setting's mean accuracy after each round, labelled with where it was measured."""
    fig, axis = plt.subplots(figsize=(9, 5))
    for index, row in enumerate(rows):
        mean = _mean_curve(row.curves)
        if mean:
            axis.plot(
                range(1, len(mean) + 1),
                mean,
                marker=MARKERS[index % len(MARKERS)],
                linestyle=STYLES[index % len(STYLES)],
                label=f"{row.setting} ({row.curve_source})",
            )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set(xlabel="round", ylabel="accuracy", title="Accuracy after each round", ylim=(0, 1))
    axis.grid(alpha=0.3)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    _save(fig, path)


def privacy_utility(rows: Sequence[SettingRow], path: Path) -> None:
    """Plot test accuracy against ε; settings without DP as horizontal lines."""
    fig, axis = plt.subplots(figsize=(7, 4.8))
    private = sorted(
        (r for r in rows if r.values["epsilon"] is not None and r.values["test_accuracy"]),
        key=lambda r: r.values["epsilon"] or 0.0,
    )
    for index, row in enumerate(private):
        axis.errorbar(
            [row.values["epsilon"]],
            [row.values["test_accuracy"]],
            yerr=[row.values["test_accuracy_std"] or 0.0],
            marker=MARKERS[index % len(MARKERS)],
            capsize=3,
            linestyle="none",
            label=row.setting,
        )
    for row in rows:
        accuracy = row.values["test_accuracy"]
        if row.values["epsilon"] is None and accuracy is not None:
            axis.axhline(accuracy, linestyle="--", alpha=0.5, color="gray")
            axis.annotate(
                f"{row.setting} (no DP)",
                (0, accuracy),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=8,
                color="gray",
            )
    axis.set(
        xlabel="epsilon",
        ylabel="test accuracy",
        title="Privacy against utility",
        ylim=(0, 1.05),
    )
    axis.grid(alpha=0.3)
    if private:
        axis.legend(loc="lower right", fontsize=8)
    _save(fig, path)


def cost_per_round(rows: Sequence[SettingRow], path: Path) -> None:
    """Plot seconds and MB per round for each setting."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    names = [row.setting for row in rows]
    positions = list(range(len(rows)))
    left.bar(positions, [row.values["seconds_per_round"] or 0.0 for row in rows])
    left.set(ylabel="seconds per round", title="Time per round")
    width = 0.4
    for offset, key, label in (
        (-width / 2, "mb_up_per_round", "up"),
        (width / 2, "mb_down_per_round", "down"),
    ):
        right.bar(
            [p + offset for p in positions],
            [row.values[key] or 0.0 for row in rows],
            width,
            label=label,
        )
    right.set(ylabel="MB per round", title="Traffic per round")
    right.legend()
    for axis in (left, right):
        axis.set_xticks(positions, names, rotation=30, ha="right")
    _save(fig, path)


def plot_report(rows: Sequence[SettingRow], out: Path) -> None:
    """Write the report's three plots into ``out``."""
    accuracy_per_round(rows, out / "accuracy_per_round.png")
    privacy_utility(rows, out / "privacy_utility.png")
    cost_per_round(rows, out / "cost_per_round.png")
