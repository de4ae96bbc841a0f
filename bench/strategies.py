"""Benchmark: every aggregation strategy on digits, IID, Dirichlet(0.1) and under attack.

Each strategy with its default hyper-parameters trains the same CNN on digits with
10 clients for 20 rounds in three settings: IID partitions; Dirichlet(0.1) label
skew; and IID with 2 of the 10 clients sending their update sign-flipped and scaled
x10 (``w_global - 10 (w_local - w_global)``; for FedSGD ``-10 * gradient``).
Krum and Multi-Krum assume ``num-malicious = 2`` in every setting. For each run:
final server test accuracy, the first round reaching 95 % test accuracy, and wall
seconds. Runs the real ServerApp and ClientApp in-process (no transport); the
attack is injected by a reply hook (``testing/faults.py``), not by any run-config key.

Then the comparison of the FedAvg paper (McMahan et al., 2017): rounds to a target
test accuracy for FedAvg (2 local epochs) and FedSGD (one full-batch gradient step per
round), same data (IID), same model (the MLP, which FedSGD trains steadily).

    python bench/strategies.py            # full: 10 clients x 20 rounds (~10 min)
    python bench/strategies.py --tiny     # 4 clients x 2 rounds (used by the tests)

Writes ``bench/results/strategies.json`` and ``strategies.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from strategies import STRATEGIES  # noqa: E402
from testing.faults import sign_flip_hook  # noqa: E402
from testing.inprocess_grid import ReplyHook, run_server_app_in_process  # noqa: E402

TARGET = 0.95
SCENARIOS: dict[str, dict[str, Any]] = {
    "iid": {"partitioner": "iid"},
    "dirichlet-0.1": {"partitioner": "dirichlet", "dirichlet-alpha": 0.1},
    "iid-2-sign-flip-x10": {"partitioner": "iid"},
}
ATTACKED = "iid-2-sign-flip-x10"


def strategy_overrides(strategy: str, clients: int) -> dict[str, Any]:
    """Return the run-config keys a strategy needs here beyond its defaults."""
    if strategy in ("krum", "multikrum"):
        malicious = min(2, clients // 4)
        return {"num-malicious": malicious, "min-train-nodes": malicious + 3}
    return {}


def rounds_to_target(results: dict[str, Any], target: float) -> int | None:
    """Return the first round whose server test accuracy reaches ``target`` (None: never)."""
    for record in results["rounds"]:
        if record["server"] and record["server"]["accuracy"] >= target:
            return int(record["round"])
    return None


def run_case(
    strategy: str, scenario: str, clients: int, rounds: int, workdir: Path
) -> dict[str, Any]:
    """Run one strategy in one scenario; return its accuracy, rounds to target, seconds."""
    hook: ReplyHook | None = (
        sign_flip_hook(min(2, clients // 4), 10.0) if scenario == ATTACKED else None
    )
    overrides = {
        "strategy": strategy,
        "num-server-rounds": rounds,
        "round-timeout": 30.0,
        **SCENARIOS[scenario],
        **strategy_overrides(strategy, clients),
    }
    started = time.perf_counter()
    results = run_server_app_in_process(
        workdir / f"{strategy}-{scenario}", overrides, num_nodes=clients, reply_hook=hook
    )
    return {
        "strategy": strategy,
        "scenario": scenario,
        "settings": results["strategy"],
        "final_accuracy": results["final"]["accuracy"],
        "rounds_to_target": rounds_to_target(results, TARGET),
        "status": results["status"],
        "seconds": round(time.perf_counter() - started, 2),
    }


def rounds_to_accuracy(
    strategy: str, clients: int, rounds: int, target: float, workdir: Path
) -> int | None:
    """Return the rounds a strategy needs to reach ``target`` test accuracy (the MLP, IID)."""
    overrides = {
        "strategy": strategy,
        "model": "mlp",
        "num-server-rounds": rounds,
        "target-accuracy": target,
    }
    results = run_server_app_in_process(
        workdir / f"{strategy}-to-{target}", overrides, num_nodes=clients
    )
    return rounds_to_target(results, target)


def fedavg_vs_fedsgd(clients: int, rounds: int, target: float, workdir: Path) -> dict[str, Any]:
    """Return both strategies' rounds to ``target`` and FedAvg's speed-up in rounds."""
    needed = {
        s: rounds_to_accuracy(s, clients, rounds, target, workdir) for s in ("fedavg", "fedsgd")
    }
    ratio = needed["fedsgd"] / needed["fedavg"] if needed["fedavg"] and needed["fedsgd"] else None
    return {
        "model": "mlp",
        "target": target,
        "max_rounds": rounds,
        "rounds": needed,
        "speedup": ratio,
    }


def _cell(case: dict[str, Any]) -> tuple[str, str, str]:
    reached = case["rounds_to_target"]
    stopped = "" if case["status"] == "completed" else " †"
    return (
        f"{case['final_accuracy']:.4f}{stopped}",
        "—" if reached is None else str(reached),
        f"{case['seconds']:.1f}",
    )


def markdown(report: dict[str, Any]) -> str:
    """Return the report's table as markdown."""
    header = ["strategy"]
    for scenario in SCENARIOS:
        header += [f"{scenario} acc", "rounds to 95 %", "s (× fedavg)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    cases = report["cases"]
    for strategy in report["strategies"]:
        row = [f"`{strategy}`"]
        for scenario in SCENARIOS:
            case = cases[f"{strategy}/{scenario}"]
            accuracy, reached, seconds = _cell(case)
            reference = cases.get(f"fedavg/{scenario}")
            if reference:
                seconds += f" ({case['seconds'] / reference['seconds']:.1f}×)"
            row += [accuracy, reached, seconds]
        lines.append("| " + " | ".join(row) + " |")
    load = report["load_average_1min"]
    paper = report["fedavg_vs_fedsgd"]
    needed = {s: paper["rounds"][s] or f"> {paper['max_rounds']}" for s in paper["rounds"]}
    speedup = f"{paper['speedup']:.1f}x" if paper["speedup"] else "—"
    return (
        f"Digits, {report['clients']} clients, {report['rounds']} rounds, default "
        f"hyper-parameters; 1-minute load average {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end.\n\n"
        + "\n".join(lines)
        + "\n\n† stopped early: the model diverged, so the clients' next updates were not"
        " finite and were rejected, leaving fewer than min-train-nodes valid updates.\n\n"
        f"FedAvg against FedSGD (the FedAvg paper's comparison): rounds to "
        f"{paper['target']:.0%} test accuracy with the MLP, IID: FedAvg {needed['fedavg']}, "
        f"FedSGD {needed['fedsgd']} (FedAvg needs {speedup} fewer rounds).\n"
    )


def main() -> None:
    """Run every strategy in every scenario; print the table; write JSON and markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="4 clients x 2 rounds, 1 epoch")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "strategies.json")
    parser.add_argument("--strategies", nargs="*", default=list(STRATEGIES), choices=STRATEGIES)
    args = parser.parse_args()
    clients, rounds = (4, 2) if args.tiny else (10, 20)
    load_before = os.getloadavg()[0]
    cases = {}
    with tempfile.TemporaryDirectory(prefix="bench-strategies-") as tmp:
        for strategy in args.strategies:
            for scenario in SCENARIOS:
                case = run_case(strategy, scenario, clients, rounds, Path(tmp))
                cases[f"{strategy}/{scenario}"] = case
                print(json.dumps(case), flush=True)
        paper = fedavg_vs_fedsgd(
            clients, 5 if args.tiny else 100, 0.5 if args.tiny else 0.9, Path(tmp)
        )
        print(json.dumps(paper), flush=True)
    report = {
        "clients": clients,
        "rounds": rounds,
        "target_accuracy": TARGET,
        "fedavg_vs_fedsgd": paper,
        "strategies": args.strategies,
        "scenarios": list(SCENARIOS),
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "cases": cases,
    }
    table = Table(title=f"Strategies on digits, {clients} clients, {rounds} rounds")
    table.add_column("strategy")
    for scenario in SCENARIOS:
        table.add_column(f"{scenario} acc", justify="right")
        table.add_column("rounds to 95 %", justify="right")
        table.add_column("s", justify="right")
    for strategy in args.strategies:
        cells = [c for s in SCENARIOS for c in _cell(cases[f"{strategy}/{s}"])]
        table.add_row(strategy, *cells)
    Console(width=200).print(table)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))


if __name__ == "__main__":
    main()
