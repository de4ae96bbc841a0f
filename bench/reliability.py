"""Benchmark: accuracy under dropped clients and under sign-flipping attackers.

For fedavg, fedmedian, fedtrimmedavg and krum on digits with 10 clients and 20 rounds:
a clean run; 20 % of the clients dropping out at random each round (they never
answer; the round goes on after ``round-timeout``); and 2 of 10 clients sending their
update sign-flipped and scaled x10 (``w_global - 10 (w_local - w_global)``). Runs the
real ServerApp and ClientApp in-process; the faults are injected by a reply hook, not
by any run-config flag.

    python bench/reliability.py            # full: 10 clients x 20 rounds
    python bench/reliability.py --tiny     # 4 clients x 2 rounds, 2 strategies (for the tests)

Writes ``bench/results/reliability.json`` and ``reliability.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from testing.faults import dropout_hook, sign_flip_hook  # noqa: E402
from testing.inprocess_grid import ReplyHook, run_server_app_in_process  # noqa: E402

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
TINY_STRATEGIES = ("fedavg", "fedmedian")
SCENARIOS = ("clean", "drop-20%", "2-sign-flip-x10")


def run_case(strategy: str, scenario: str, clients: int, rounds: int, workdir: Path) -> dict:
    """Run one strategy under one scenario; return its accuracy and timing."""
    hooks: dict[str, ReplyHook | None] = {
        "clean": None,
        "drop-20%": dropout_hook(0.2, seed=11),
        "2-sign-flip-x10": sign_flip_hook(min(2, clients // 4), 10.0),
    }
    overrides: dict[str, object] = {
        "strategy": strategy,
        "num-server-rounds": rounds,
        "round-timeout": 0.3,
        "min-train-nodes": 2,
    }
    if strategy == "krum":
        # assume as many attackers as the attack scenario has; Krum needs f + 3 updates
        overrides["num-malicious"] = min(2, clients // 4)
        overrides["min-train-nodes"] = overrides["num-malicious"] + 3
    started = time.perf_counter()
    results = run_server_app_in_process(
        workdir / f"{strategy}-{scenario}", overrides, num_nodes=clients, reply_hook=hooks[scenario]
    )
    return {
        "strategy": strategy,
        "scenario": scenario,
        "final_accuracy": results["final"]["accuracy"],
        "status": results["status"],
        "rounds_completed": results["final"]["rounds_completed"],
        "failures": sum(len(r["failures"]) for r in results["rounds"]),
        "seconds": time.perf_counter() - started,
    }


def markdown(report: dict) -> str:
    """Return the report's accuracy table as markdown."""
    lines = [
        "| strategy | " + " | ".join(SCENARIOS) + " |",
        "|---|" + "---|" * len(SCENARIOS),
    ]
    for strategy in dict.fromkeys(c["strategy"] for c in report["cases"]):
        row = {c["scenario"]: c for c in report["cases"] if c["strategy"] == strategy}
        cells = []
        for scenario in SCENARIOS:
            case = row[scenario]
            stopped = "" if case["status"] == "completed" else f" ({case['status']})"
            cells.append(f"{case['final_accuracy']:.4f}{stopped}")
        lines.append(f"| `{strategy}` | " + " | ".join(cells) + " |")
    load = report["load_average_1min"]
    return (
        f"Digits, {report['clients']} clients, accuracy after {report['rounds']} rounds; "
        f"1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at "
        "the end.\n\n" + "\n".join(lines) + "\n"
    )


def main() -> None:
    """Run every strategy under every scenario, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tiny", action="store_true", help="4 clients x 2 rounds, fedavg and fedmedian"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "reliability.json")
    args = parser.parse_args()
    clients, rounds = (4, 2) if args.tiny else (10, 20)
    strategies = TINY_STRATEGIES if args.tiny else STRATEGIES
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench-reliability-") as tmp:
        cases = [
            run_case(strategy, scenario, clients, rounds, Path(tmp))
            for strategy in strategies
            for scenario in SCENARIOS
        ]
    table = Table(title=f"Accuracy after {rounds} rounds, digits, {clients} clients")
    table.add_column("strategy")
    for scenario in SCENARIOS:
        table.add_column(scenario, justify="right")
    for strategy in strategies:
        row = {c["scenario"]: c for c in cases if c["strategy"] == strategy}
        table.add_row(strategy, *(f"{row[s]['final_accuracy']:.4f}" for s in SCENARIOS))
    Console(width=200).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "clients": clients,
        "rounds": rounds,
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "cases": cases,
    }
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
