"""Benchmark: Flower overhead against a plain PyTorch FedAvg loop with no Flower.

Both sides run the same FedAvg training (same partitions, seeds, epochs, model and
per-client evaluations), so their final accuracies must be equal; the plain loop,
in one process, is the physical floor. The Flower side is a real ``flwr run`` on a
private local SuperLink (start-up of the SuperLink is reported separately).

The first simulated round carries the start-up: Ray, its actors, their imports and
our per-client set-up. To tell Ray's part from ours, the trivial app of
``bench/floor_app`` (replies at once after importing torch) runs in the same way on
the same SuperLink: its first round is the start-up we cannot cut.

    python bench/overhead.py              # 10 clients x 20 rounds
    python bench/overhead.py --tiny       # 3 clients x 2 rounds (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fl_app.client_app import training_seed  # noqa: E402
from fl_app.config import RunConfig  # noqa: E402
from fl_app.data import embedded_client_data  # noqa: E402
from fl_app.server_app import initial_model, make_server_evaluate, resolve_task  # noqa: E402
from fl_app.task import evaluate, train  # noqa: E402
from strategies.core import weighted_average  # noqa: E402
from tools.app_source import AppSource  # noqa: E402
from tools.local_superlink import LocalSuperLink  # noqa: E402


def plain_fedavg(config: RunConfig, num_clients: int) -> dict[str, float]:
    """Run FedAvg as a plain loop in this process; return timings and accuracy."""
    torch.set_num_threads(1)
    started = time.perf_counter()
    clients = [
        embedded_client_data(
            config.dataset,
            config.test_fraction,
            config.val_fraction,
            config.partitioner,
            num_clients,
            pid,
            config.seed,
            config.dirichlet_alpha,
            config.labels_per_client,
        )
        for pid in range(num_clients)
    ]
    model = initial_model(config)
    server_evaluate = make_server_evaluate(config, *resolve_task(config))
    keys = list(model.state_dict())
    global_state = {k: v.clone() for k, v in model.state_dict().items()}
    setup_seconds = time.perf_counter() - started
    round_seconds = []
    accuracy = 0.0
    for server_round in range(1, config.num_server_rounds + 1):
        round_started = time.perf_counter()
        updates, weights = [], []
        for pid, data in enumerate(clients):
            model.load_state_dict(global_state)
            evaluate(model, data.val)
            evaluate(model, data.train)  # the clients report both (eval-*, eval-train-*)
            train(
                model,
                data.train,
                epochs=config.local_epochs,
                batch_size=config.batch_size,
                learning_rate=config.learning_rate,
                momentum=config.momentum,
                seed=training_seed(config.seed, server_round, pid),
            )
            evaluate(model, data.val)
            updates.append([model.state_dict()[k].numpy().copy() for k in keys])
            weights.append(len(data.train))
        averaged = weighted_average(updates, weights)
        global_state = {k: torch.from_numpy(a) for k, a in zip(keys, averaged, strict=True)}
        accuracy = server_evaluate(ArrayRecord(global_state))["accuracy"]
        round_seconds.append(time.perf_counter() - round_started)
    return {
        "wall_seconds": time.perf_counter() - started,
        "setup_seconds": setup_seconds,
        "seconds_per_round": sum(round_seconds) / len(round_seconds),
        "final_accuracy": accuracy,
    }


FLOOR_APP = ROOT / "bench" / "floor_app"


def flower_fedavg(config: RunConfig, num_clients: int, workdir: Path) -> dict[str, float]:
    """Run the same training through ``flwr run``; return timings and accuracy.

    Before it, the trivial app (importing torch) runs on the same SuperLink for two
    rounds: ``floor_first_round_seconds`` is the start-up that is not ours.
    """
    started = time.perf_counter()
    with LocalSuperLink(workdir / "flwr-home", cwd=workdir) as link:
        superlink_seconds = time.perf_counter() - started
        floor = link.run(
            AppSource.from_directory(FLOOR_APP),
            {
                "num-server-rounds": 2,
                "num-nodes": num_clients,
                "import-torch": True,
                "output-dir": str(workdir / "floor"),
            },
            num_supernodes=num_clients,
        )
        outcome = link.run(
            AppSource.from_directory(ROOT),
            {**config.to_dict(), "output-dir": str(workdir / "results")},
            num_supernodes=num_clients,
        )
    rounds = outcome.results["rounds"]
    steady = [r["seconds"] for r in rounds[1:]] or [rounds[0]["seconds"]]
    return {
        "wall_seconds": outcome.seconds,
        "superlink_start_seconds": superlink_seconds,
        "serverapp_seconds": outcome.results["final"]["seconds_total"],
        "first_round_seconds": rounds[0]["seconds"],
        "floor_first_round_seconds": floor.results["rounds"][0]["seconds"],
        "floor_round_seconds": floor.results["rounds"][1]["seconds"],
        "seconds_per_round": sum(r["seconds"] for r in rounds) / len(rounds),
        "steady_seconds_per_round": sum(steady) / len(steady),
        "final_accuracy": outcome.results["final"]["accuracy"],
    }


def main() -> None:
    """Run both sides, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--tiny", action="store_true", help="3 clients x 2 rounds")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    args = parser.parse_args()
    clients, rounds = (3, 2) if args.tiny else (args.clients, args.rounds)
    config = RunConfig(num_server_rounds=rounds)

    plain = plain_fedavg(config, clients)
    with tempfile.TemporaryDirectory(prefix="bench-overhead-") as tmp:
        flower = flower_fedavg(config, clients, Path(tmp))
    report = {
        "clients": clients,
        "rounds": rounds,
        "plain": plain,
        "flower": flower,
        "ratio_wall": flower["wall_seconds"] / plain["wall_seconds"],
        "ratio_per_round": flower["seconds_per_round"] / plain["seconds_per_round"],
        "ratio_steady_per_round": flower["steady_seconds_per_round"] / plain["seconds_per_round"],
        "same_accuracy": abs(flower["final_accuracy"] - plain["final_accuracy"]) < 1e-6,
        "our_startup_seconds": flower["first_round_seconds"] - flower["floor_first_round_seconds"],
        "load_average_1min": os.getloadavg()[0],
    }
    table = Table(title=f"FedAvg on digits, {clients} clients x {rounds} rounds")
    for column in ("run", "wall s", "s / round", "ratio (wall)", "final accuracy"):
        table.add_column(column, justify="right")
    table.add_row(
        "plain PyTorch loop",
        f"{plain['wall_seconds']:.1f}",
        f"{plain['seconds_per_round']:.3f}",
        "1.0",
        f"{plain['final_accuracy']:.4f}",
    )
    table.add_row(
        "flwr run (our app)",
        f"{flower['wall_seconds']:.1f}",
        f"{flower['seconds_per_round']:.3f}",
        f"{report['ratio_wall']:.1f}",
        f"{flower['final_accuracy']:.4f}",
    )
    Console().print(table)
    Console().print(
        f"SuperLink start {flower['superlink_start_seconds']:.1f} s (not in wall); "
        f"first round {flower['first_round_seconds']:.1f} s, of which Ray + torch "
        f"start-up (trivial app's first round) {flower['floor_first_round_seconds']:.1f} s; "
        f"steady rounds {flower['steady_seconds_per_round']:.3f} s = "
        f"{report['ratio_steady_per_round']:.1f}x the plain round"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
