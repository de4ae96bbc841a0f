"""``fl-compare``: run privacy settings side by side and write a report a person can read.

Each setting is a set of run-config overrides run through ``flwr run`` on a private
local SuperLink (the code path users run). Results land in one directory:
``comparison.md`` / ``.csv`` / ``.json``, PNG plots, and every run's own results under
``runs/<setting>/seed-<n>/``. Re-running with the same ``--out`` skips finished runs;
an interrupted run is resumed from its checkpoint.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.server.checkpoint import CHECKPOINT_FILE
from fl_app.server.results import RESULTS_FILE, RunStatus
from privacy.files import atomic_write_bytes
from tools.app_source import AppSource
from tools.flwr_run import RunHandle, SimulationError
from tools.local_superlink import LocalSuperLink

SETTINGS: dict[str, dict[str, Any]] = {
    "none": {},
    "dp-local-eps1": {"dp": "local", "dp-target-epsilon": 1.0},
    "dp-local-eps3": {"dp": "local", "dp-target-epsilon": 3.0},
    "dp-local-eps8": {"dp": "local", "dp-target-epsilon": 8.0},
    "dp-central": {"dp": "central"},
    "he": {"he": True},
    "he+dp-local-eps8": {"he": True, "dp": "local", "dp-target-epsilon": 8.0},
}
DEFAULT_SETTINGS = tuple(SETTINGS)


class CompareError(ValueError):
    """The sweep is misconfigured; nothing has run."""


@dataclass(frozen=True)
class Sweep:
    """What to run: settings x seeds on one base configuration."""

    settings: tuple[str, ...]
    seeds: tuple[int, ...]
    base: dict[str, Any]
    clients: int
    out: Path

    def run_dir(self, setting: str, seed: int) -> Path:
        """Return the results directory of one run."""
        return self.out / "runs" / setting / f"seed-{seed}"

    def run_config(self, setting: str, seed: int) -> dict[str, Any]:
        """Return the run-config overrides of one run."""
        return {**self.base, **SETTINGS[setting], "seed": seed}


@dataclass
class SettingSummary:
    """One setting's numbers, over its seeds."""

    setting: str
    runs: list[dict[str, Any]] = field(default_factory=list)


def parse_settings(raw: str) -> tuple[str, ...]:
    """Parse ``--settings a,b``; unknown names fail listing the valid ones."""
    names = tuple(name.strip() for name in raw.split(",") if name.strip())
    unknown = [name for name in names if name not in SETTINGS]
    if unknown or not names:
        raise CompareError(
            f"unknown setting(s) {', '.join(repr(n) for n in unknown) or '(none given)'}; "
            f"valid: {', '.join(SETTINGS)}"
        )
    return names


def build_sweep(args: argparse.Namespace) -> Sweep:
    """Validate the command line and every run's config before anything runs."""
    settings = parse_settings(args.settings)
    if args.seeds < 1 or args.rounds < 1 or args.clients < 2:
        raise CompareError("--seeds and --rounds must be >= 1 and --clients >= 2")
    base = {"num-server-rounds": args.rounds, "strategy": args.strategy, "dataset": args.dataset}
    sweep = Sweep(settings, tuple(range(args.seeds)), base, args.clients, args.out.resolve())
    for setting in settings:
        try:
            parse_run_config({**RunConfig().to_dict(), **sweep.run_config(setting, 0)})
        except ConfigError as err:
            raise CompareError(f"setting '{setting}': {err}") from err
    return sweep


def _load_finished(run_dir: Path) -> dict[str, Any] | None:
    try:
        results = json.loads((run_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return results if RunStatus(results.get("status", "running")).finished else None


def _prepare_run_dir(run_dir: Path) -> str:
    """Move an interrupted run aside (never deleting it); return a checkpoint to resume."""
    if not run_dir.exists():
        run_dir.parent.mkdir(parents=True, exist_ok=True)
        return ""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = run_dir.with_name(f"{run_dir.name}.interrupted-{stamp}")
    run_dir.rename(aside)
    return str(aside) if (aside / CHECKPOINT_FILE).is_file() else ""


def _watch(handle: RunHandle, progress: Progress, task: Any, label: str, rounds: int) -> None:
    """Update the progress line with the run's current round until it ends."""
    while handle.process.poll() is None:
        state = handle.progress()
        done = len(state["rounds"]) if state else 0
        progress.update(task, description=f"{label} round {done}/{rounds}")
        time.sleep(0.5)


def _start_link(sweep: Sweep, setting: str, links: dict[str, LocalSuperLink]) -> LocalSuperLink:
    """Start the SuperLink of one setting, stopping the previous setting's.

    Each setting's simulated data holders keep their state (secrets, privacy ledgers)
    in ``<out>/node-state/<setting>``: settings never share a budget, and a resumed
    sweep continues the same budgets.
    """
    for link in links.values():
        link.stop()
    links.clear()
    link = LocalSuperLink(
        sweep.out / "flwr-home", cwd=sweep.out, node_state=sweep.out / "node-state" / setting
    )
    link.start()
    links[setting] = link
    return link


def run_sweep(sweep: Sweep, console: Console) -> list[SettingSummary]:
    """Run every (setting, seed) not finished yet; return all results by setting."""
    jobs = [(s, seed) for s in sweep.settings for seed in sweep.seeds]
    rounds = int(sweep.base["num-server-rounds"])
    summaries = {s: SettingSummary(s) for s in sweep.settings}
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} runs"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("starting", total=len(jobs))
        links: dict[str, LocalSuperLink] = {}
        try:
            for index, (setting, seed) in enumerate(jobs, start=1):
                label = f"[{index}/{len(jobs)}] {setting} seed {seed}"
                run_dir = sweep.run_dir(setting, seed)
                finished = _load_finished(run_dir)
                if finished is None:
                    link = links.get(setting) or _start_link(sweep, setting, links)
                    resume_from = _prepare_run_dir(run_dir)
                    overrides = {**sweep.run_config(setting, seed), "output-dir": str(run_dir)}
                    if resume_from:
                        overrides["resume-from"] = resume_from
                    handle = link.start_run(
                        AppSource.installed(), overrides, num_supernodes=sweep.clients
                    )
                    _watch(handle, progress, task, label, rounds)
                    finished = handle.wait(timeout=3600).results
                else:
                    console.log(f"{label}: already finished, skipped")
                summaries[setting].runs.append(finished)
                progress.advance(task)
        finally:
            for link in links.values():
                link.stop()
    return list(summaries.values())


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None]:
    present = [v for v in values if v is not None]
    if not present:
        return None, None
    return statistics.fmean(present), statistics.stdev(present) if len(present) > 1 else 0.0


def _accuracy_curve(results: dict[str, Any], source: str) -> list[float | None]:
    """Per-round accuracy from ``evaluate`` (federated) or ``server`` (test set)."""
    return [(record.get(source) or {}).get("accuracy") for record in results["rounds"]]


def summarize(summary: SettingSummary) -> dict[str, Any]:
    """Reduce one setting's runs to the table's numbers (mean and std over seeds).

    Accuracies are the federated evaluation (clients' validation data, weighted by
    examples), which every setting records, so settings compare like for like; the
    server's test-set accuracy is added where the server can read the model (not
    under homomorphic encryption).
    """
    finals, bests, tests, epsilons, deltas, seconds, up, down, rounds = ([] for _ in range(9))
    for results in summary.runs:
        curve = _accuracy_curve(results, "evaluate")
        present = [a for a in curve if a is not None]
        finals.append(curve[-1] if curve else None)
        bests.append(max(present) if present else None)
        tests.append(_accuracy_curve(results, "server")[-1] if results["rounds"] else None)
        epsilons.append(results["final"].get("epsilon"))
        deltas.append(results["final"].get("delta"))
        n = max(len(results["rounds"]), 1)
        steady = results["rounds"][1:] or results["rounds"]
        seconds.append(sum(r["seconds"] for r in steady) / max(len(steady), 1))
        up.append(sum(r["bytes_up"] for r in results["rounds"]) / n / 1e6)
        down.append(sum(r["bytes_down"] for r in results["rounds"]) / n / 1e6)
        rounds.append(len(results["rounds"]))
    row: dict[str, Any] = {"setting": summary.setting, "seeds": len(summary.runs)}
    for name, values in (
        ("final_accuracy", finals),
        ("best_accuracy", bests),
        ("test_accuracy", tests),
        ("epsilon", epsilons),
        ("seconds_per_round", seconds),
        ("mb_up_per_round", up),
        ("mb_down_per_round", down),
        ("rounds", rounds),
    ):
        row[name], row[f"{name}_std"] = _mean_std(values)
    row["delta"] = max((d for d in deltas if d is not None), default=None)
    row["curves"] = [_accuracy_curve(r, "evaluate") for r in summary.runs]
    return row


def _fmt(mean: float | None, std: float | None, digits: int) -> str:
    if mean is None:
        return "–"
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if std else "")


COLUMNS = (
    ("setting", "setting"),
    ("final accuracy", "final_accuracy", 4),
    ("best accuracy", "best_accuracy", 4),
    ("test accuracy", "test_accuracy", 4),
    ("ε", "epsilon", 2),
    ("s / round", "seconds_per_round", 2),  # rounds >= 2: round 1 includes start-up
    ("MB up / round", "mb_up_per_round", 3),
    ("MB down / round", "mb_down_per_round", 3),
    ("rounds", "rounds", 0),
)


def table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Format the rows as strings, in COLUMNS order plus δ."""
    formatted = []
    for row in rows:
        cells = [row["setting"]]
        for _, key, digits in COLUMNS[1:]:
            cells.append(_fmt(row[key], row[f"{key}_std"], digits))
        cells.append("–" if row["delta"] is None else f"{row['delta']:.1e}")
        formatted.append(cells)
    return formatted


HEADERS = [c[0] for c in COLUMNS] + ["δ"]
LEGEND = (
    "Accuracies: final and best are the federated evaluation (every client's validation "
    "data, weighted by examples), recorded by every setting; test is the server's held-out "
    "test set, which the server cannot evaluate under homomorphic encryption (–). ε: the "
    "largest cumulative ε of any client (local DP) or the client-level ε (central DP). "
    "s / round: rounds 2 onwards (round 1 includes start-up)."
)


def write_report(rows: list[dict[str, Any]], sweep: Sweep) -> None:
    """Write comparison.md, comparison.csv, comparison.json and the plots."""
    cells = table_rows(rows)
    markdown = ["| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    markdown += ["| " + " | ".join(row) + " |" for row in cells]
    seeds = len(sweep.seeds)
    title = (
        f"# Privacy settings compared\n\n{sweep.base['strategy']} on {sweep.base['dataset']}, "
        f"{sweep.clients} clients, {sweep.base['num-server-rounds']} rounds, "
        f"{seeds} seed{'s' if seeds > 1 else ''} (mean ± std).\n\n{LEGEND}\n\n"
    )
    atomic_write_bytes(sweep.out / "comparison.md", (title + "\n".join(markdown) + "\n").encode())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(HEADERS)
    writer.writerows(cells)
    atomic_write_bytes(sweep.out / "comparison.csv", buffer.getvalue().encode())
    payload = {
        "sweep": {**sweep.base, "clients": sweep.clients, "seeds": list(sweep.seeds)},
        "rows": rows,
    }
    atomic_write_bytes(
        sweep.out / "comparison.json", (json.dumps(payload, indent=2) + "\n").encode()
    )
    _plot(rows, sweep.out)


def _plot(rows: list[dict[str, Any]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig: Any, name: str) -> None:
        buffer = io.BytesIO()
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        atomic_write_bytes(out / name, buffer.getvalue())

    fig, axis = plt.subplots(figsize=(9, 5))
    styles = ("-", "--", ":", "-.")
    for index, row in enumerate(rows):
        curves = [c for c in row["curves"] if c]
        length = min(len(c) for c in curves) if curves else 0
        if length:
            mean = [
                statistics.fmean(c[i] for c in curves if c[i] is not None) for i in range(length)
            ]
            axis.plot(
                range(1, length + 1),
                mean,
                marker="os^vDP*"[index % 7],
                linestyle=styles[index % len(styles)],
                markersize=7 - index % 3,
                label=row["setting"],
            )
    axis.set(xlabel="round", ylabel="accuracy (federated evaluation)", title="Accuracy per round")
    axis.grid(alpha=0.3)
    axis.legend(loc="center left", bbox_to_anchor=(1.01, 0.5))
    save(fig, "accuracy_per_round.png")

    fig, axis = plt.subplots(figsize=(7, 4.8))
    private = sorted(
        (r for r in rows if r["epsilon"] is not None and r["final_accuracy"] is not None),
        key=lambda r: r["epsilon"],
    )
    families: dict[bool, list[dict[str, Any]]] = {}
    for row in private:
        families.setdefault(row["setting"].startswith("dp-local"), []).append(row)
    for is_local, members in families.items():
        axis.errorbar(
            [r["epsilon"] for r in members],
            [r["final_accuracy"] for r in members],
            yerr=[r["final_accuracy_std"] or 0 for r in members],
            marker="o",
            capsize=3,
            linestyle="-" if is_local else "none",
            label="local DP (DP-SGD)" if is_local else "other private settings",
        )
    for index, row in enumerate(private):
        axis.annotate(
            row["setting"],
            (row["epsilon"], row["final_accuracy"]),
            textcoords="offset points",
            xytext=(6, -12 if index % 2 else 6),
            fontsize=8,
        )
    baselines: dict[float, list[str]] = {}
    for row in rows:
        if row["epsilon"] is None and row["final_accuracy"] is not None:
            baselines.setdefault(round(row["final_accuracy"], 3), []).append(row["setting"])
    for accuracy, names in baselines.items():
        if names:
            axis.axhline(accuracy, linestyle="--", alpha=0.6, color="gray")
            axis.annotate(
                f"{', '.join(names)} (no DP)",
                (0, accuracy),
                xycoords=("axes fraction", "data"),
                textcoords="offset points",
                xytext=(4, 3),
                fontsize=8,
                color="gray",
            )
    axis.set(
        xlabel="ε (largest cumulative, any client)",
        ylabel="final accuracy (federated evaluation)",
        title="Privacy-utility curve",
        ylim=(0, 1.05),
    )
    axis.grid(alpha=0.3)
    if private:
        axis.legend(loc="lower right")
    save(fig, "privacy_utility.png")

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    names = [row["setting"] for row in rows]
    left.bar(names, [row["seconds_per_round"] or 0 for row in rows])
    left.set(ylabel="seconds per round", title="Time per round")
    width = 0.4
    positions = range(len(rows))
    right.bar(
        [p - width / 2 for p in positions],
        [row["mb_up_per_round"] or 0 for row in rows],
        width,
        label="up",
    )
    right.bar(
        [p + width / 2 for p in positions],
        [row["mb_down_per_round"] or 0 for row in rows],
        width,
        label="down",
    )
    right.set_xticks(list(positions), names)
    right.set(ylabel="MB per round", title="Traffic per round")
    right.legend()
    for axis in (left, right):
        axis.tick_params(axis="x", rotation=30)
    save(fig, "cost_per_round.png")


def print_table(rows: list[dict[str, Any]], console: Console) -> None:
    """Print the comparison table."""
    table = Table(title="Privacy settings compared")
    for header in HEADERS:
        table.add_column(header, justify="left" if header == "setting" else "right")
    for cells in table_rows(rows):
        table.add_row(*cells)
    console.print(table)
    console.print(LEGEND)


def parser() -> argparse.ArgumentParser:
    """Return the command-line parser."""
    p = argparse.ArgumentParser(prog="fl-compare", description=__doc__.splitlines()[0])
    p.add_argument(
        "--settings",
        default=",".join(DEFAULT_SETTINGS),
        help="comma-separated setting names (see --list)",
    )
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--clients", type=int, default=10)
    p.add_argument("--strategy", default="fedavg")
    p.add_argument("--dataset", default="digits")
    p.add_argument(
        "--seeds", type=int, default=3, help="seeds 0..N-1 per setting; mean ± std over them"
    )
    p.add_argument("--out", type=Path, default=Path("comparison"))
    p.add_argument("--list", action="store_true", help="print the setting names and exit")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``fl-compare``."""
    args = parser().parse_args(argv)
    console = Console() if sys.stdout.isatty() else Console(width=160)
    if args.list:
        print("\n".join(SETTINGS))
        return 0
    try:
        sweep = build_sweep(args)
    except CompareError as err:
        console.print(f"[red]error:[/red] {err}")
        return 2
    sweep.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    try:
        rows = [summarize(s) for s in run_sweep(sweep, console)]
    except SimulationError as err:
        console.print(f"[red]a run failed:[/red] {err}")
        return 1
    except KeyboardInterrupt:
        console.print(
            f"[yellow]interrupted:[/yellow] finished runs are kept in {sweep.out}; run the "
            "same command again to resume (finished settings are skipped)"
        )
        return 130
    write_report(rows, sweep)
    print_table(rows, console)
    console.print(f"Sweep took {time.monotonic() - started:.0f} s; report in {sweep.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
