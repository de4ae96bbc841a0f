"""Benchmark: distributed DP under encryption against central DP, HE alone and no privacy.

Client-level DP at the same ε, two ways: ``dp = "central"`` (the server clips and
noises plaintext updates) and ``dp = "distributed"`` (each sampled client clips and
adds its share of the noise, the server sums ciphertexts). Their accuracies should be
equal within the noise; distributed DP's cost is compared with HE alone (same
encryption, no DP). Many clients of the Synthetic(α, β) data (the FedProx paper's),
through the real ServerApp and ClientApps in process (transport is not what is
measured). Test accuracy, for every setting, of the final model on the held-out
(validation) samples of every client's device, which no client trains on (as in the
paper: each device has its own labelling function, so unseen devices are no test); the
encrypted models are decrypted with the clients' key and scored the same way.

    python bench/distributed_dp.py            # 500 clients, q = 0.1, 20 rounds, 3 seeds
    python bench/distributed_dp.py --tiny     # 8 clients, 2 rounds, 1 seed (the test)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from fl_app.config import NODE_STATE_ENV, parse_run_config  # noqa: E402
from fl_app.data import Split, synthetic_client_data  # noqa: E402
from fl_app.he.keys import default_public_context, default_secret_context  # noqa: E402
from fl_app.he.server import ENCRYPTED_MODEL_FILE  # noqa: E402
from fl_app.server_app import initial_model  # noqa: E402
from fl_app.task import evaluate  # noqa: E402
from privacy import he  # noqa: E402
from testing.inprocess_grid import run_server_app_in_process  # noqa: E402
from tools.he_cli import decrypt_model  # noqa: E402

SETTINGS: dict[str, dict[str, Any]] = {
    "none": {},
    "he": {"he": True},
    "central-dp": {"dp": "central"},
    "distributed-dp": {"he": True, "dp": "distributed"},
}
ALPHA = BETA = 0.0
VAL_FRACTION = 0.1


def write_test_file(path: Path, seed: int, clients: int) -> Split:
    """Write the union of the clients' validation samples as the server's test file."""
    parts = [synthetic_client_data(seed, d, ALPHA, BETA, VAL_FRACTION).val for d in range(clients)]
    test = Split(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    np.savez(path, x=test.x, y=test.y)
    return test


def test_accuracy(run_dir: Path, overrides: dict[str, Any], test: Split) -> float:
    """Decrypt an encrypted final model with the clients' key and score it on ``test``."""
    plain = run_dir / "model-decrypted.pt"
    decrypt_model(run_dir / ENCRYPTED_MODEL_FILE, default_secret_context(), plain)
    model = initial_model(parse_run_config(overrides))
    model.load_state_dict(torch.load(plain), strict=True)
    return evaluate(model, test)[1]


def run_setting(
    name: str, clients: int, rounds: int, fraction: float, epsilon: float, seed: int, work: Path
) -> dict[str, Any]:
    """Run one setting with one seed; return accuracy, ε, time and bytes."""
    test_file = work / f"test-{seed}.npz"
    test = write_test_file(test_file, seed, clients)
    overrides = {
        "dataset": "synthetic",
        "synthetic-alpha": ALPHA,
        "synthetic-beta": BETA,
        "server-test-path": str(test_file),
        "num-server-rounds": rounds,
        "fraction-train": fraction,
        "seed": seed,
        "local-epochs": 1,
        "val-fraction": VAL_FRACTION,
        "dp-target-epsilon": epsilon,
        **SETTINGS[name],
    }
    started = time.perf_counter()
    run_dir = work / f"{name}-{seed}"
    results = run_server_app_in_process(run_dir, overrides, num_nodes=clients)
    wall = time.perf_counter() - started
    rounds_done = results["rounds"]
    encrypted = (run_dir / ENCRYPTED_MODEL_FILE).exists()
    return {
        "status": results["status"],
        "accuracy": (
            test_accuracy(run_dir, overrides, test) if encrypted else results["final"]["accuracy"]
        ),
        "epsilon": results["final"]["epsilon"],
        "collusion_epsilon": max(
            (r["train"].get("dp-collusion-epsilon", 0.0) for r in rounds_done), default=None
        )
        or None,
        "seconds_per_round": statistics.mean(r["seconds"] for r in rounds_done),
        "bytes_up_per_round": statistics.mean(r["bytes_up"] for r in rounds_done),
        "clients_per_round": statistics.mean(r["num_clients"] for r in rounds_done),
        "wall_seconds": wall,
    }


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over seeds of each number."""
    summary: dict[str, Any] = {"runs": runs}
    for key in ("accuracy", "seconds_per_round", "bytes_up_per_round", "clients_per_round"):
        values = [r[key] for r in runs if r[key] is not None]
        summary[key] = statistics.mean(values)
        summary[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    summary["epsilon"] = max((r["epsilon"] for r in runs if r["epsilon"] is not None), default=None)
    collusion = [r["collusion_epsilon"] for r in runs if r["collusion_epsilon"]]
    summary["collusion_epsilon"] = max(collusion) if collusion else None
    return summary


def main() -> None:
    """Run every setting and seed, print the table, write the JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--fraction", type=float, default=0.1)
    parser.add_argument("--epsilon", type=float, default=8.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tiny", action="store_true", help="8 clients, 2 rounds, 1 seed")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "results" / "distributed_dp.json"
    )
    args = parser.parse_args()
    if args.tiny:
        args.clients, args.rounds, args.fraction, args.seeds = 8, 2, 0.9, 1
    load_before = os.getloadavg()[0]
    report: dict[str, Any] = {
        "clients": args.clients,
        "rounds": args.rounds,
        "fraction_train": args.fraction,
        "target_epsilon": args.epsilon,
        "seeds": args.seeds,
        "data": f"Synthetic({ALPHA}, {BETA}), test on every client device's held-out samples",
        "settings": {},
    }
    with tempfile.TemporaryDirectory(prefix="bench-distributed-dp-") as tmp:
        work = Path(tmp)
        os.environ["FLWR_HOME"] = str(work / "flwr-home")
        os.environ[NODE_STATE_ENV] = str(work / "node-state")
        he.write_key_pair(default_secret_context(), default_public_context())
        for name in SETTINGS:
            runs = [
                run_setting(
                    name, args.clients, args.rounds, args.fraction, args.epsilon, seed, work
                )
                for seed in range(args.seeds)
            ]
            report["settings"][name] = summarise(runs)
            Console().print(f"{name}: accuracy {report['settings'][name]['accuracy']:.4f}")
    he_alone, distributed = report["settings"]["he"], report["settings"]["distributed-dp"]
    report["distributed_vs_he_time"] = (
        distributed["seconds_per_round"] / he_alone["seconds_per_round"]
    )
    report["distributed_vs_he_bytes"] = (
        distributed["bytes_up_per_round"] / he_alone["bytes_up_per_round"]
    )
    report["load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0]}
    table = Table(
        title=f"{args.clients} clients, q = {args.fraction}, {args.rounds} rounds, "
        f"target ε = {args.epsilon:g}, {args.seeds} seed(s)"
    )
    for column in ("setting", "accuracy", "ε", "ε server+1 client", "s / round", "MB up / round"):
        table.add_column(column, justify="right")
    for name, row in report["settings"].items():
        table.add_row(
            name,
            f"{row['accuracy']:.4f} ± {row['accuracy_std']:.4f}",
            "—" if row["epsilon"] is None else f"{row['epsilon']:.2f}",
            "—" if row["collusion_epsilon"] is None else f"{row['collusion_epsilon']:.1f}",
            f"{row['seconds_per_round']:.2f}",
            f"{row['bytes_up_per_round'] / 1e6:.2f}",
        )
    console = Console(width=120)
    console.print(table)
    console.print(
        f"Distributed DP against HE alone: {report['distributed_vs_he_time']:.2f}x the time, "
        f"{report['distributed_vs_he_bytes']:.2f}x the bytes. 1-min load average "
        f"{load_before:.1f} -> {report['load_average_1min']['after']:.1f} on {os.cpu_count()} CPUs."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
