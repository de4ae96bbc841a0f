"""Benchmark: the cost and the utility of sample-level DP (Opacus DP-SGD) on digits.

1. **Time** of one local epoch on one client's data: the product's non-private
   training against DP-SGD with per-sample gradients from hooks and from ghost
   clipping (``grad_sample_mode``), same model, batch size and data; median of
   several epochs (the modes interleaved), ratios to non-private. ``make_private``
   (once per round; the accountant's ε is cached) is timed separately.
2. **Accuracy**: the real ServerApp and ClientApps (in-process grid, ``dp = "local"``
   with the default DP settings, hence ``model = "auto"`` = the MLP) at ε = 1, 3, 8
   with 3 and 10 clients, next to the non-private run (CNN); plus the CNN under DP.

    python bench/dp.py            # full (about 15 min on 2 shared cores)
    python bench/dp.py --tiny     # seconds; used by the tests

Writes ``bench/results/dp.json`` with the 1-minute load average.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fl_app.config import NODE_STATE_ENV, RunConfig  # noqa: E402
from fl_app.data import DATASETS, embedded_client_data  # noqa: E402
from fl_app.model import build_model  # noqa: E402
from fl_app.task import to_tensors, train  # noqa: E402
from privacy.dp import PrivacyBudget, make_private, train_private  # noqa: E402
from testing.inprocess_grid import run_server_app_in_process  # noqa: E402


def client_data(config: RunConfig, num_clients: int) -> Any:
    return embedded_client_data(
        config.dataset,
        config.test_fraction,
        config.val_fraction,
        config.partitioner,
        num_clients,
        0,
        config.seed,
        config.dirichlet_alpha,
        config.labels_per_client,
    )


def epoch_seconds(model_kind: str, num_clients: int, repeats: int) -> dict[str, Any]:
    """Median seconds per local epoch: non-private, DP-SGD with hooks, with ghost clipping."""
    torch.set_num_threads(1)
    config = RunConfig(model=model_kind)
    data = client_data(config, num_clients).train
    spec = DATASETS[config.dataset]
    timings: dict[str, list[float]] = {"non-private": [], "hooks": [], "ghost": []}
    setup: dict[str, list[float]] = {"hooks": [], "ghost": []}
    for repeat in range(repeats + 1):  # the first pass warms up and is not counted
        torch.manual_seed(repeat)
        model = build_model(model_kind, spec.input_shape, spec.num_classes)
        started = time.perf_counter()
        train(
            model,
            data,
            epochs=1,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            seed=repeat,
        )
        if repeat:
            timings["non-private"].append(time.perf_counter() - started)
        for mode in ("hooks", "ghost"):
            torch.manual_seed(repeat)
            model = build_model(model_kind, spec.input_shape, spec.num_classes)
            x, y = to_tensors(data)
            loader = DataLoader(
                TensorDataset(x, y),
                batch_size=config.batch_size,
                generator=torch.Generator().manual_seed(repeat),
            )
            optimizer = torch.optim.SGD(
                model.parameters(), lr=config.learning_rate, momentum=config.momentum
            )
            budget = PrivacyBudget(target_epsilon=0.0, delta=1e-5, noise_multiplier=1.0)
            started = time.perf_counter()
            training = make_private(
                model, optimizer, loader, budget, grad_sample_mode=mode, noise_seed=repeat
            )
            prepared = time.perf_counter()
            train_private(training, 1)
            training.close()
            if repeat:
                setup[mode].append(prepared - started)
                timings[mode].append(time.perf_counter() - prepared)
    medians = {name: statistics.median(values) for name, values in timings.items()}
    return {
        "model": model_kind,
        "clients": num_clients,
        "train_examples": len(data),
        "seconds_per_epoch": medians,
        "make_private_seconds": {m: statistics.median(v) for m, v in setup.items()},
        "ratio": {m: medians[m] / medians["non-private"] for m in ("hooks", "ghost")},
    }


def accuracy_run(overrides: dict[str, Any], num_clients: int, rounds: int) -> dict[str, Any]:
    """Run the real ServerApp in-process; return final accuracy, ε, δ and time."""
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLWR_HOME"] = str(Path(tmp) / "flwr-home")
        os.environ[NODE_STATE_ENV] = str(Path(tmp) / "node-state")  # fresh data holders
        started = time.perf_counter()
        results = run_server_app_in_process(
            Path(tmp) / "out",
            {"num-server-rounds": rounds, **overrides},
            num_nodes=num_clients,
        )
    first = results["rounds"][0]["train"]
    return {
        "settings": overrides,
        "clients": num_clients,
        "rounds": len(results["rounds"]),
        "status": results["status"],
        "final_accuracy": results["final"]["accuracy"],
        "best_accuracy": max(r["server"]["accuracy"] for r in results["rounds"]),
        "epsilon": results["final"]["epsilon"],
        "delta": results["final"]["delta"],
        "noise_multiplier": first.get("dp-noise-multiplier"),
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="one short run of each part")
    parser.add_argument("--rounds", type=int, default=RunConfig().num_server_rounds)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dp.json")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    console = Console()
    if args.tiny:
        timing_cases, repeats = [("mlp", 10)], 1
        accuracy_cases = [({"dp": "local", "dp-target-epsilon": 8.0}, 3)]
        rounds = 2
    else:
        timing_cases, repeats = [("mlp", 10), ("mlp", 3), ("cnn", 10), ("cnn", 3)], 7
        accuracy_cases = [({}, 10), ({}, 3)]
        accuracy_cases += [
            ({"dp": "local", "dp-target-epsilon": eps}, clients)
            for clients in (10, 3)
            for eps in (1.0, 3.0, 8.0)
        ]
        accuracy_cases += [
            ({"dp": "local", "dp-target-epsilon": eps, "model": "cnn"}, 10) for eps in (3.0, 8.0)
        ]
        rounds = args.rounds
    timing = [epoch_seconds(kind, clients, repeats) for kind, clients in timing_cases]
    accuracy = []
    for overrides, clients in accuracy_cases:
        console.print(f"accuracy run: {overrides or 'non-private'} with {clients} clients")
        accuracy.append(accuracy_run(overrides, clients, rounds))

    table = Table(title="Local epoch time: DP-SGD vs non-private (median)")
    for column in ("model", "clients", "examples", "non-private s", "hooks s", "ghost s"):
        table.add_column(column)
    table.add_column("hooks ×")
    table.add_column("ghost ×")
    for row in timing:
        s = row["seconds_per_epoch"]
        table.add_row(
            row["model"],
            str(row["clients"]),
            str(row["train_examples"]),
            f"{s['non-private']:.4f}",
            f"{s['hooks']:.4f}",
            f"{s['ghost']:.4f}",
            f"{row['ratio']['hooks']:.2f}",
            f"{row['ratio']['ghost']:.2f}",
        )
    console.print(table)
    table = Table(title=f"Test accuracy on digits after {rounds} rounds (server test set)")
    for column in ("setting", "clients", "ε", "δ", "σ", "final acc", "best acc", "s"):
        table.add_column(column)
    for row in accuracy:
        settings = row["settings"]
        label = "non-private" if not settings else f"dp=local ε≤{settings['dp-target-epsilon']:g}"
        if "model" in settings:
            label += f" {settings['model']}"
        table.add_row(
            label,
            str(row["clients"]),
            "–" if row["epsilon"] is None else f"{row['epsilon']:.2f}",
            "–" if row["delta"] is None else f"{row['delta']:.0e}",
            "–" if row["noise_multiplier"] is None else f"{row['noise_multiplier']:.3f}",
            f"{row['final_accuracy']:.4f}",
            f"{row['best_accuracy']:.4f}",
            f"{row['seconds']:.0f}",
        )
    console.print(table)
    report = {
        "tiny": args.tiny,
        "rounds": rounds,
        "load_average_1min": os.getloadavg()[0],
        "defaults": {
            k: v
            for k, v in RunConfig().to_dict().items()
            if k.startswith("dp")
            or k in ("batch-size", "learning-rate", "momentum", "local-epochs", "model")
        },
        "timing": timing,
        "accuracy": accuracy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(f"load average (1 min): {report['load_average_1min']:.2f}; wrote {args.out}")


if __name__ == "__main__":
    main()
