"""The plots of ``fl-compare``'s report: accuracy, privacy against utility, cost, the audit.

With a privacy audit: ``privacy_audit.png`` (claimed ε against the measured attack
success: membership-inference AUC and the empirical ε lower bound) and
``reconstruction.png`` (each setting's reconstruction of a small client's examples
from its update, under the real ones).
"""

from __future__ import annotations

import io
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from privacy.files import atomic_write_bytes
from tools.compare_report import REFUSED_SHORT, SettingRow, audited

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


def privacy_audit(rows: Sequence[SettingRow], path: Path) -> None:
    """Plot claimed ε against what the attacks measured, one marker per setting.

    Left: LiRA membership AUC with the bootstrap interval (0.5 = chance). Right: the
    empirical ε lower bound against the claim (it must stay under the diagonal).
    Settings without DP sit at the right edge, "no DP".
    """
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    claimed = [r.values.get("epsilon") for r in rows]
    finite = [e for e in claimed if e is not None]
    edge = max(finite, default=1.0) * 1.35 + 0.5
    places = [edge if e is None else e for e in claimed]
    for index, row in enumerate(rows):
        same = [i for i, p in enumerate(places) if abs(p - places[index]) < edge * 0.02]
        x = places[index] + (same.index(index) - (len(same) - 1) / 2) * edge * 0.015
        marker = MARKERS[index % len(MARKERS)]
        color = f"C{index % 10}"
        auc = row.values.get("mia_auc")
        if auc is not None:
            low = row.values.get("mia_auc_low")
            high = row.values.get("mia_auc_high")
            yerr = [[auc - low], [high - auc]] if low is not None and high is not None else None
            left.errorbar(
                [x],
                [auc],
                yerr=yerr,
                marker=marker,
                color=color,
                capsize=3,
                linestyle="none",
                label=row.setting,
            )
        bound = row.values.get("epsilon_lower_bound")
        if bound is not None and row.values.get("epsilon") is not None:
            right.errorbar(
                [x],
                [bound],
                yerr=[row.values.get("epsilon_lower_bound_std") or 0.0],
                marker=marker,
                color=color,
                capsize=3,
                linestyle="none",
                label=row.setting,
            )
    left.axhline(0.5, color="gray", linestyle="--", alpha=0.6)
    left.annotate("chance", (0.01, 0.5), xycoords=("axes fraction", "data"), fontsize=8)
    left.set(
        xlabel="claimed epsilon (no DP at the right edge)",
        ylabel="membership-inference AUC (LiRA)",
        title="Membership inference on the published model",
        ylim=(0.3, 1.0),
    )
    top = max(finite, default=1.0) * 1.25
    right.plot([0, top], [0, top], color="gray", linestyle="--", alpha=0.6)
    right.annotate("lower bound = claim", (top * 0.55, top * 0.6), fontsize=8, color="gray")
    right.set(
        xlabel="claimed epsilon",
        ylabel="empirical epsilon lower bound (canaries, 95 %)",
        title="Canary audit: lower bound under the claim",
        xlim=(0, top),
        ylim=(-0.02 * top, top),
    )
    for axis in (left, right):
        axis.grid(alpha=0.3)
        ticks = [t for t in axis.get_xticks() if 0 <= t < edge * 0.9]
        if axis is left:
            axis.set_xticks([*ticks, edge], [f"{t:g}" for t in ticks] + ["no DP"])
            axis.set_xlim(-0.2, edge * 1.08)
        handles, _ = axis.get_legend_handles_labels()
        if handles:
            axis.legend(fontsize=8, loc="upper left" if axis is right else "upper right")
    _save(fig, path)


def reconstruction_overview(rows: Sequence[SettingRow], path: Path) -> None:
    """Plot each setting's reconstruction from a client's update under the real examples."""
    entries: list[tuple[str, np.ndarray | None, np.ndarray | None, str]] = []
    for row in rows:
        if not row.audits:
            continue
        notes = [a["reconstruction_note"] for a in row.audits if a.get("reconstruction_note")]
        note = notes[0] if notes else ""
        real = rec = None
        images_file = path.parent / row.reconstruction_images
        if row.reconstruction_images and images_file.is_file():
            with np.load(images_file) as images:
                real = images["real"]
                rec = images["reconstruction"] if "reconstruction" in images.files else None
        psnr = row.audits[0].get("reconstruction_psnr")
        label = f"{row.setting}\n{psnr:.1f} dB" if psnr is not None else row.setting
        reason = REFUSED_SHORT if "ciphertexts" in note else (note or "not measured")
        entries.append((label, real, rec, reason))
    if not entries:
        return
    width = max((len(real) for _, real, _, _ in entries if real is not None), default=1)
    fig, axes = plt.subplots(
        2, len(entries), figsize=(1.5 * len(entries) * width + 0.5, 3.4), squeeze=False
    )
    for column, (label, real, rec, reason) in enumerate(entries):
        for row_index, images in enumerate((real, rec)):
            axis = axes[row_index][column]
            axis.set_xticks([])
            axis.set_yticks([])
            if images is None:
                axis.text(
                    0.5,
                    0.5,
                    "—" if row_index == 0 else reason,
                    ha="center",
                    va="center",
                    fontsize=7,
                    wrap=True,
                    transform=axis.transAxes,
                )
                continue
            strip = np.concatenate([im.reshape(im.shape[-2:]) for im in images], axis=1)
            axis.imshow(strip, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes[0][column].set_title(label, fontsize=8)
    axes[0][0].set_ylabel("real")
    axes[1][0].set_ylabel("reconstructed")
    fig.suptitle("The server's reconstruction from one client's update (round 1, one step)")
    _save(fig, path)


def plot_report(rows: Sequence[SettingRow], out: Path) -> None:
    """Write the report's plots into ``out`` (two more when the sweep was audited)."""
    accuracy_per_round(rows, out / "accuracy_per_round.png")
    privacy_utility(rows, out / "privacy_utility.png")
    cost_per_round(rows, out / "cost_per_round.png")
    if audited(rows):
        privacy_audit(rows, out / "privacy_audit.png")
        reconstruction_overview(rows, out / "reconstruction.png")
