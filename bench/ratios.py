"""Benchmark: the cost-of-privacy and overhead ratios in one table, from one command.

Runs the four benchmarks behind the figures, each in its own process, one after the
other (``bench/dp.py``, ``bench/he.py``, ``bench/deploy.py``, ``bench/overhead.py``),
then prints one table and writes ``ratios.json`` next to their reports. Each figure is
a ratio of two sides measured in the same benchmark run.

With ``--baseline DIR`` (a checkout of an earlier commit, e.g. made with
``git worktree add /tmp/before <commit>``) the same four benchmarks of that checkout run
first, in the same invocation, and fill the table's "before" column.

    python bench/ratios.py                            # full mode: the numbers of the docs
    python bench/ratios.py --baseline /tmp/before     # and the earlier commit beside them
    python bench/ratios.py --tiny --out DIR           # tiny mode (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
BENCHMARKS = ("dp", "he", "deploy", "overhead")
Report = dict[str, dict[str, Any]]


def _get(report: dict[str, Any], *path: str | int) -> Any:
    """Return ``report[path[0]][path[1]]...``, or None where a key is missing."""
    value: Any = report
    for key in path:
        try:
            value = value[key]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _dp_ratio(reports: Report) -> float | None:
    """DP-SGD epoch / plain epoch, default MLP, 10 clients, the default per-sample mode."""
    mode = _get(reports, "dp", "default_grad_sample_mode") or "hooks"
    return _get(reports, "dp", "timing", 0, "ratio", mode)


def _he_round(reports: Report) -> float | None:
    return _get(reports, "he", "summary", "round_time_ratio_default") or _get(
        reports, "he", "round_default_app", "round_time_ratio"
    )


def _he_round_1m(reports: Report) -> float | None:
    return _get(reports, "he", "summary", "round_time_ratio_1m") or _get(
        reports, "he", "round_1m_modelled", "round_time_ratio"
    )


def _he_bytes(reports: Report) -> float | None:
    return _get(reports, "he", "summary", "bytes_up_ratio") or _get(
        reports, "he", "round_default_app", "bytes_up_ratio"
    )


def _deployed_round(reports: Report) -> float | None:
    return _get(reports, "deploy", "deployment", "steady_seconds_per_round")


def _overhead(reports: Report) -> float | None:
    return _get(reports, "overhead", "ratio_wall")


@dataclass(frozen=True)
class Figure:
    """One row of the table: how to read it from the reports, and its goal."""

    name: str
    unit: str
    read: Callable[[Report], float | None]
    goal: Callable[[Report], float]


FIGURES = (
    Figure("DP-SGD local epoch / plain epoch (MLP, 10 clients)", "x", _dp_ratio, lambda r: 1.5),
    Figure("HE round / plain round (default model, 38 k)", "x", _he_round, lambda r: 1.2),
    Figure("HE round / plain round (1 M parameters)", "x", _he_round_1m, lambda r: 3.0),
    Figure("HE bytes up / float32 bytes up", "x", _he_bytes, lambda r: 8.0),
    Figure(
        "deployed round, 2 SuperNodes on loopback",
        "s",
        _deployed_round,
        lambda r: _get(r, "deploy", "goal_seconds_per_round") or float("nan"),
    ),
    Figure("flwr run wall / plain PyTorch loop", "x", _overhead, lambda r: 2.0),
)


def run_benchmarks(checkout: Path, out: Path, tiny: bool, console: Console) -> Report:
    """Run the four benchmarks of ``checkout``, writing ``out/<name>.json``; return them."""
    out.mkdir(parents=True, exist_ok=True)
    reports: Report = {}
    for index, name in enumerate(BENCHMARKS):
        path = out / f"{name}.json"
        started = time.perf_counter()
        console.print(f"[{index + 1}/{len(BENCHMARKS)}] {checkout.name}: bench/{name}.py")
        command = [sys.executable, str(checkout / "bench" / f"{name}.py"), "--out", str(path)]
        subprocess.run([*command, *(["--tiny"] if tiny else [])], cwd=checkout, check=True)
        reports[name] = json.loads(path.read_text())
        console.print(f"    done in {time.perf_counter() - started:.0f} s")
    return reports


def rows(after: Report, before: Report | None) -> list[dict[str, Any]]:
    """Return the table's rows: each figure before (if measured), after, goal, met."""
    table = []
    for figure in FIGURES:
        value, goal = figure.read(after), figure.goal(after)
        table.append(
            {
                "figure": figure.name,
                "unit": figure.unit,
                "before": figure.read(before) if before is not None else None,
                "after": value,
                "goal": goal,
                "met": value is not None and value <= goal,
            }
        )
    return table


def _cell(value: float | None, unit: str) -> str:
    return "—" if value is None else f"{value:.2f} {unit}".replace(" x", "×")


def print_table(console: Console, table_rows: list[dict[str, Any]], title: str) -> None:
    """Print the figures as one table."""
    table = Table(title=title)
    for column in ("figure", "before", "now", "goal", "met"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    for row in table_rows:
        table.add_row(
            row["figure"],
            _cell(row["before"], row["unit"]),
            _cell(row["after"], row["unit"]),
            "≤ " + _cell(row["goal"], row["unit"]),
            "yes" if row["met"] else "no",
        )
    console.print(table)


def main() -> None:
    """Run the benchmarks (and the baseline's), print the table, write ``ratios.json``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="every benchmark in its tiny mode")
    parser.add_argument("--baseline", type=Path, help="a checkout of an earlier commit")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    console = Console()
    if args.baseline is not None and not (args.baseline / "bench" / "dp.py").is_file():
        sys.exit(f"error: --baseline {args.baseline} is not a checkout of this project")
    load_start = os.getloadavg()[0]
    before = (
        run_benchmarks(args.baseline.resolve(), args.out / "baseline", args.tiny, console)
        if args.baseline is not None
        else None
    )
    after = run_benchmarks(ROOT, args.out, args.tiny, console)
    table_rows = rows(after, before)
    mode = "tiny mode" if args.tiny else "full mode"
    print_table(console, table_rows, f"Privacy and overhead ratios ({mode})")
    report = {
        "tiny": args.tiny,
        "baseline": str(args.baseline) if args.baseline else None,
        "rows": table_rows,
        "load_average_1min": {"start": load_start, "end": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
    }
    console.print(
        f"1-min load average {load_start:.1f} -> {report['load_average_1min']['end']:.1f} "
        f"on {os.cpu_count()} CPUs; wrote {args.out / 'ratios.json'}"
    )
    (args.out / "ratios.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
