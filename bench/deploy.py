"""Benchmark: seconds per round in a real deployment against the same run in simulation.

The deployment is a SuperLink and two SuperNodes on 127.0.0.1 with TLS and node
authentication, each SuperNode reading its demo partition from its own file
(:mod:`deploy`). The simulation is the same run config on a private local
SuperLink with two simulated SuperNodes. Both train on the same data with the
same seeds, so their final accuracies must be equal.

Flower's own floor is measured on the same processes, in the same run of this
benchmark: the trivial app of ``bench/floor_app`` (a ClientApp that replies at once,
polled every 50 ms like ours) with nothing heavy imported, and importing torch. Our
round is then compared with ``floor with torch + training``, the training time
being the simulation's steady round time (the same clients, data and seeds).

Also measured: the start-up of one ClientApp process (Python, Flower, torch and
the app imported), which a deployed SuperNode pays for every message, since
Flower 1.41 runs each message in a new ``flwr-clientapp`` process.

    python bench/deploy.py              # 2 SuperNodes x 10 rounds
    python bench/deploy.py --tiny       # 2 SuperNodes x 1 round (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from deploy.federation import Federation  # noqa: E402
from deploy.nodes import default_names, prepare_supernodes  # noqa: E402
from deploy.tls import ensure_tls  # noqa: E402
from fl_app.config import RunConfig  # noqa: E402
from tools.app_source import AppSource  # noqa: E402
from tools.flwr_run import RunOutcome  # noqa: E402
from tools.local_superlink import LocalSuperLink  # noqa: E402

NUM_NODES = 2


def round_stats(outcome: RunOutcome, wall_seconds: float) -> dict[str, Any]:
    """Summarise a finished run: wall time, seconds per round, final accuracy."""
    rounds = [r["seconds"] for r in outcome.results["rounds"]]
    steady = rounds[1:] or rounds
    return {
        "wall_seconds": wall_seconds,
        "serverapp_seconds": outcome.results["final"]["seconds_total"],
        "round_seconds": rounds,
        "first_round_seconds": rounds[0],
        "seconds_per_round": statistics.mean(rounds),
        "steady_seconds_per_round": statistics.mean(steady),
        "final_accuracy": outcome.results["final"]["accuracy"],
    }


FLOOR_APP = ROOT / "bench" / "floor_app"


def floor_stats(outcome: RunOutcome) -> dict[str, Any]:
    """Summarise a run of the trivial app: seconds per round, the first excluded."""
    rounds = [r["seconds"] for r in outcome.results["rounds"]]
    return {"round_seconds": rounds, "steady_seconds_per_round": statistics.mean(rounds[1:])}


def deployed(config: RunConfig, workdir: Path) -> dict[str, Any]:
    """Run Flower's floor and ``config`` on one SuperLink and two SuperNodes (TLS, node auth).

    Returns
    -------
    dict[str, Any]
        Our run's statistics, plus ``floor`` (the trivial app) and ``floor_torch``
        (the trivial app importing torch), each over ``max(rounds, 1) + 1`` rounds (the
        first is left out of the steady time).
    """
    directory = workdir / "deployment"
    tls = ensure_tls(directory)
    specs = prepare_supernodes(directory, default_names(NUM_NODES), config)
    floor_rounds = max(config.num_server_rounds, 1) + 1
    started = time.perf_counter()
    with Federation(directory, tls) as federation:
        federation.start(specs)
        startup = time.perf_counter() - started
        floors = {
            name: floor_stats(
                federation.run(
                    AppSource.from_directory(FLOOR_APP),
                    {
                        "num-server-rounds": floor_rounds,
                        "num-nodes": NUM_NODES,
                        "import-torch": torch,
                        "output-dir": str(workdir / f"{name}-results"),
                    },
                )
            )
            for name, torch in (("floor", False), ("floor_torch", True))
        }
        run_started = time.perf_counter()
        outcome = federation.run(
            AppSource.from_directory(ROOT),
            {**config.to_dict(), "output-dir": str(workdir / "deployed-results")},
        )
        wall = time.perf_counter() - run_started
    return {"startup_seconds": startup, **round_stats(outcome, wall), **floors}


def simulated(config: RunConfig, workdir: Path) -> dict[str, Any]:
    """Run ``config`` in simulation with two simulated SuperNodes."""
    started = time.perf_counter()
    with LocalSuperLink(workdir / "flwr-home", cwd=workdir) as link:
        startup = time.perf_counter() - started
        run_started = time.perf_counter()
        outcome = link.run(
            AppSource.from_directory(ROOT),
            {**config.to_dict(), "output-dir": str(workdir / "simulated-results")},
            num_supernodes=NUM_NODES,
        )
        wall = time.perf_counter() - run_started
    return {"startup_seconds": startup, **round_stats(outcome, wall)}


def clientapp_startup_seconds(repeats: int = 3) -> float:
    """Return the median wall time to start Python and import what a ClientApp process loads."""
    imports = "import flwr.supernode.runtime.run_clientapp, fl_app.client_app"
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", imports], cwd=ROOT, check=True)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    """Run both sides, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--tiny", action="store_true", help="1 round")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "deploy.json")
    args = parser.parse_args()
    rounds = 1 if args.tiny else args.rounds
    config = RunConfig(num_server_rounds=rounds)
    load_before = os.getloadavg()[0]
    startup = clientapp_startup_seconds(1 if args.tiny else 3)
    with tempfile.TemporaryDirectory(prefix="bench-deploy-") as tmp:
        deployment = deployed(config, Path(tmp))
        simulation = simulated(config, Path(tmp))
    training = simulation["steady_seconds_per_round"]
    goal = deployment["floor_torch"]["steady_seconds_per_round"] + training + 0.5
    report = {
        "nodes": NUM_NODES,
        "rounds": rounds,
        "deployment": deployment,
        "simulation": simulation,
        "clientapp_process_startup_seconds": startup,
        "flower_floor_seconds": deployment["floor"]["steady_seconds_per_round"],
        "flower_floor_with_torch_seconds": deployment["floor_torch"]["steady_seconds_per_round"],
        "goal_seconds_per_round": goal,
        "goal_met": deployment["steady_seconds_per_round"] <= goal,
        "ratio_steady_per_round": deployment["steady_seconds_per_round"]
        / simulation["steady_seconds_per_round"],
        "same_accuracy": abs(deployment["final_accuracy"] - simulation["final_accuracy"]) < 1e-6,
        "load_average_1min": {"before": load_before, "after": os.getloadavg()[0]},
    }
    table = Table(title=f"FedAvg on digits, {NUM_NODES} SuperNodes x {rounds} rounds")
    for column in ("run", "start s", "run wall s", "s / round", "steady s / round", "accuracy"):
        table.add_column(column, justify="right")
    for name, side in (
        ("deployment (TLS, node auth)", deployment),
        ("simulation", simulation),
    ):
        table.add_row(
            name,
            f"{side['startup_seconds']:.1f}",
            f"{side['wall_seconds']:.1f}",
            f"{side['seconds_per_round']:.2f}",
            f"{side['steady_seconds_per_round']:.2f}",
            f"{side['final_accuracy']:.4f}",
        )
    console = Console()
    console.print(table)
    console.print(
        f"Flower's floor per round (trivial ClientApp): {report['flower_floor_seconds']:.2f} s; "
        f"importing torch: {report['flower_floor_with_torch_seconds']:.2f} s; goal for ours "
        f"(floor with torch + training {training:.2f} s + 0.5 s): {goal:.2f} s; ours "
        f"{deployment['steady_seconds_per_round']:.2f} s (met: {report['goal_met']})."
    )
    console.print(
        f"Deployed rounds: {', '.join(f'{s:.2f}' for s in deployment['round_seconds'])} s. "
        f"One ClientApp process start-up: {startup:.2f} s (paid per message). "
        f"Same accuracy: {report['same_accuracy']}. "
        f"1-min load average {load_before:.1f} -> {report['load_average_1min']['after']:.1f} "
        f"on {os.cpu_count()} CPUs."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
