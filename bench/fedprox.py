"""Benchmark: FedAvg against FedProx on Synthetic(0,0), (0.5,0.5) and (1,1).

The synthetic experiment of the FedProx paper (Li et al., "Federated Optimization in
Heterogeneous Networks", MLSys 2020, Figure 2; the flags of ``run_fedavg.sh`` and
``run_fedprox.sh`` in github.com/litian96/FedProx): 30 devices, 10 sampled uniformly
per round (``fraction-train`` 1/3), multinomial logistic regression (``model =
"logreg"``), 20 local epochs of plain SGD (momentum 0) with batch size 10 and learning
rate 0.01, updates averaged by example counts; FedProx with μ = 1, FedAvg = μ 0. No
stragglers (the paper's 0 % curves): every sampled device runs all 20 epochs.

Runs the app's round loop (:class:`fl_app.server.loop.TrainingLoop`) with the
product's strategies and ClientApp over the in-process grid. After each round a
bench-side server evaluation scores the global model on the union of all 30 devices'
held-out splits (test loss and accuracy) and on the union of their training splits
(training loss: the quantity the paper plots). Device ``k`` is simulated partition
``k`` (:mod:`fl_app.synthetic`), each split 90 / 10 into train / held-out.

    python bench/fedprox.py                # 3 settings x 2 methods x 100 rounds
    python bench/fedprox.py --jobs 2       # the same, two cases at a time
    python bench/fedprox.py --rounds 200   # the paper's length
    python bench/fedprox.py --only-cost    # re-measure the local training cost only
    python bench/fedprox.py --tiny         # Synthetic(1,1), 2 rounds, 2 epochs (the tests)

Also measured: one device's local training with μ = 0 and μ = 1, interleaved
(:func:`local_training_cost`), since per-case seconds on a shared machine mean little.

Writes ``bench/results/fedprox.json`` and ``fedprox.md`` (or ``--out``) and the plot
``docs/img/fedprox-synthetic.png`` (``--tiny``: next to ``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import math
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from flwr.app import ArrayRecord, ConfigRecord  # noqa: E402

from fl_app.client_app import app as product_client_app  # noqa: E402
from fl_app.config import RunConfig, parse_run_config  # noqa: E402
from fl_app.data import Split, embedded_shape, synthetic_client_data  # noqa: E402
from fl_app.model import build_model  # noqa: E402
from fl_app.server.factory import build_base_strategy  # noqa: E402
from fl_app.server.loop import LoopSettings, ServerEvaluate, TrainingLoop  # noqa: E402
from fl_app.server.results import ResultsWriter, RunRecord  # noqa: E402
from fl_app.server_app import initial_model  # noqa: E402
from fl_app.task import evaluate, train  # noqa: E402
from testing.inprocess_grid import InProcessGrid  # noqa: E402

NUM_DEVICES = 30
SAMPLED_PER_ROUND = 10
PAPER = {
    "devices": NUM_DEVICES,
    "clients_per_round": SAMPLED_PER_ROUND,
    "model": "multinomial logistic regression (mclr)",
    "local_epochs": 20,
    "batch_size": 10,
    "learning_rate": 0.01,
    "momentum": 0.0,
    "mu": 1.0,
    "rounds": 200,
    "stragglers": 0.0,
    "source": "github.com/litian96/FedProx run_fedprox.sh / run_fedavg.sh, plot_fig2.py",
}
SETTINGS: dict[str, tuple[float, float]] = {
    "synthetic-0-0": (0.0, 0.0),
    "synthetic-0.5-0.5": (0.5, 0.5),
    "synthetic-1-1": (1.0, 1.0),
}
TINY_SETTINGS = ("synthetic-1-1",)
METHODS: dict[str, dict[str, Any]] = {
    "fedavg": {"strategy": "fedavg", "proximal_mu": 0.0},
    "fedprox": {"strategy": "fedprox", "proximal_mu": PAPER["mu"]},
}
LOSS_INCREASE = 0.05
"""A round whose training loss exceeds the previous round's by more than this (relative)
counts as an increase: the paper's 'unstable' curves are the ones with many."""


def label(setting: str) -> str:
    """Return ``'Synthetic(0.5,0.5)'`` for ``'synthetic-0.5-0.5'``."""
    alpha, beta = SETTINGS[setting]
    return f"Synthetic({alpha:g},{beta:g})"


def run_config(setting: str, method: str, rounds: int, epochs: int, seed: int) -> RunConfig:
    """Return the validated run config of one setting and method (the paper's flags)."""
    alpha, beta = SETTINGS[setting]
    values = {
        "dataset": "synthetic",
        "synthetic-alpha": alpha,
        "synthetic-beta": beta,
        "model": "logreg",
        "num-server-rounds": rounds,
        "local-epochs": epochs,
        "batch-size": PAPER["batch_size"],
        "learning-rate": PAPER["learning_rate"],
        "momentum": PAPER["momentum"],
        "fraction-train": SAMPLED_PER_ROUND / NUM_DEVICES,
        "min-train-nodes": 2,
        "val-fraction": 0.1,
        "seed": seed,
        "strategy": METHODS[method]["strategy"],
        "proximal-mu": METHODS[method]["proximal_mu"],
    }
    return parse_run_config({**RunConfig().to_dict(), **values})


def union(splits: list[Split]) -> Split:
    """Return the concatenation of several splits."""
    return Split(np.concatenate([s.x for s in splits]), np.concatenate([s.y for s in splits]))


def device_splits(config: RunConfig, devices: int) -> tuple[Split, Split]:
    """Return the union of the devices' training splits and of their held-out splits.

    The same function and arguments the ClientApp uses (:func:`synthetic_client_data`),
    so these are exactly the clients' splits.
    """
    data = [
        synthetic_client_data(
            config.seed, k, config.synthetic_alpha, config.synthetic_beta, config.val_fraction
        )
        for k in range(devices)
    ]
    return union([d.train for d in data]), union([d.val for d in data])


def union_evaluate(config: RunConfig, train: Split, test: Split) -> ServerEvaluate:
    """Return a ServerEvaluate: test loss / accuracy and training loss / accuracy of the union."""
    shape = embedded_shape(config.dataset)
    model = build_model(config.model, shape.input_shape, shape.num_classes)

    def server_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        test_loss, test_accuracy = evaluate(model, test)
        train_loss, train_accuracy = evaluate(model, train)
        return {
            "loss": test_loss,
            "accuracy": test_accuracy,
            "num-examples": len(test),
            "train-loss": train_loss,
            "train-accuracy": train_accuracy,
            "train-num-examples": len(train),
        }

    return server_evaluate


def loss_increases(losses: list[float], threshold: float = LOSS_INCREASE) -> int:
    """Count rounds whose loss exceeds the previous round's by more than ``threshold``."""
    return sum(1 for a, b in itertools.pairwise(losses) if b > a * (1 + threshold))


def run_case(
    setting: str,
    method: str,
    rounds: int,
    epochs: int,
    seed: int,
    workdir: Path,
    verbose: bool = False,
) -> dict[str, Any]:
    """Run one method on one setting; return its curves and summary."""
    if not verbose:
        logging.getLogger("flwr").setLevel(logging.WARNING)
    torch.set_num_threads(1)
    config = run_config(setting, method, rounds, epochs, seed)
    train, test = device_splits(config, NUM_DEVICES)
    directory = workdir / f"{setting}-{method}"
    directory.mkdir(parents=True)
    results = ResultsWriter(directory, RunRecord(config.to_dict(), {}, {}, {}))
    grid = InProcessGrid(product_client_app, NUM_DEVICES, config.to_dict())
    shape = embedded_shape(config.dataset)
    loop = TrainingLoop(
        grid,
        build_base_strategy(config),
        LoopSettings(rounds, config.round_timeout, 0.0, final_evaluation=False),
        results,
        union_evaluate(config, train, test),
    )
    started = time.perf_counter()
    _arrays, status = loop.run(
        ArrayRecord(initial_model(config, shape).state_dict()), ConfigRecord(shape.to_config())
    )
    seconds = time.perf_counter() - started
    record = results.record
    server = [record.initial.server, *(r.server for r in record.rounds)]
    train_loss = [m["train-loss"] for m in server]
    test_accuracy = [m["accuracy"] for m in server]
    after_round_1 = train_loss[1:]
    return {
        "setting": setting,
        "method": method,
        "alpha": config.synthetic_alpha,
        "beta": config.synthetic_beta,
        "proximal_mu": METHODS[method]["proximal_mu"],
        "status": str(status),
        "rounds": len(record.rounds),
        "seconds": round(seconds, 2),
        "seconds_per_round": round(seconds / max(1, len(record.rounds)), 4),
        "clients_per_round": [r.num_clients for r in record.rounds],
        "train_examples": len(train),
        "test_examples": len(test),
        "curves": {
            "round": list(range(len(server))),
            "train_loss": train_loss,
            "train_accuracy": [m["train-accuracy"] for m in server],
            "test_loss": [m["loss"] for m in server],
            "test_accuracy": test_accuracy,
        },
        "final_train_loss": train_loss[-1],
        "final_test_accuracy": test_accuracy[-1],
        "min_train_loss": min(train_loss),
        "best_test_accuracy": max(test_accuracy),
        "loss_increases": loss_increases(after_round_1),
        "last10_train_loss_std": statistics.pstdev(train_loss[-10:]),
        "finite": all(math.isfinite(v) for v in train_loss + test_accuracy),
    }


def local_training_cost(epochs: int, repeats: int, seed: int) -> dict[str, Any]:
    """Time one device's local training with μ = 0 and μ = 1, interleaved; return the medians.

    The device is the one of the 30 whose training split is closest to 300 examples, on
    Synthetic(1,1); the same function the ClientApp calls (:func:`fl_app.task.train`).
    """
    torch.set_num_threads(1)
    config = run_config("synthetic-1-1", "fedprox", 1, epochs, seed)
    data = [
        synthetic_client_data(seed, k, config.synthetic_alpha, config.synthetic_beta, 0.1)
        for k in range(NUM_DEVICES)
    ]
    device = min(range(NUM_DEVICES), key=lambda k: abs(len(data[k].train) - 300))
    shape = embedded_shape(config.dataset)
    times: dict[float, list[float]] = {0.0: [], 1.0: []}
    steps = 0
    for repeat in range(repeats + 1):  # the first (warm-up) repeat is not counted
        for mu in times:
            model = build_model("logreg", shape.input_shape, shape.num_classes)
            started = time.perf_counter()
            result = train(
                model,
                data[device].train,
                epochs=epochs,
                batch_size=PAPER["batch_size"],
                learning_rate=PAPER["learning_rate"],
                momentum=PAPER["momentum"],
                seed=seed,
                proximal_mu=mu,
            )
            if repeat:
                times[mu].append(time.perf_counter() - started)
            steps = result.steps
    fedavg, fedprox = statistics.median(times[0.0]), statistics.median(times[1.0])
    return {
        "device": device,
        "train_examples": len(data[device].train),
        "epochs": epochs,
        "steps": steps,
        "repeats": repeats,
        "fedavg_seconds": fedavg,
        "fedprox_seconds": fedprox,
        "fedavg_us_per_step": 1e6 * fedavg / steps,
        "fedprox_us_per_step": 1e6 * fedprox / steps,
        "fedprox_over_fedavg": fedprox / fedavg,
        "load_average_1min": os.getloadavg()[0],
    }


def checkpoints(rounds: int) -> list[int]:
    """Return the rounds shown in the table: 1, and every fifth of the run."""
    marks = {1, rounds, *(round(rounds * f / 5) for f in range(1, 5))}
    return sorted(m for m in marks if 1 <= m <= rounds)


def table_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Return the header and rows of the summary table."""
    marks = checkpoints(report["rounds"])
    header = ["setting", "method"]
    header += [f"loss r{m}" for m in marks] + [f"acc r{m}" for m in marks]
    header += ["min loss", "best acc", f"loss ↑>{LOSS_INCREASE:.0%}", "s"]
    rows = []
    for case in report["cases"]:
        curves = case["curves"]
        row = [label(case["setting"]), case["method"] + (" μ=1" if case["proximal_mu"] else "")]
        row += [f"{curves['train_loss'][m]:.3f}" for m in marks if m < len(curves["train_loss"])]
        row += [
            f"{curves['test_accuracy'][m]:.3f}" for m in marks if m < len(curves["test_accuracy"])
        ]
        row += [
            f"{case['min_train_loss']:.3f}",
            f"{case['best_test_accuracy']:.3f}",
            str(case["loss_increases"]),
            f"{case['seconds']:.0f}",
        ]
        rows.append(row)
    return header, rows


def markdown(report: dict[str, Any]) -> str:
    """Return the report's table as markdown."""
    header, rows = table_rows(report)
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    load = report["load_average_1min"]
    return (
        f"{NUM_DEVICES} devices, {SAMPLED_PER_ROUND} per round, {report['rounds']} rounds, "
        f"{report['local_epochs']} local epochs, batch {PAPER['batch_size']}, "
        f"lr {PAPER['learning_rate']}, no stragglers; training loss on the union of all "
        "devices' training splits and test accuracy on the union of their held-out splits, "
        f"after the given round; 1-minute load average {load['start']:.1f} at the start, "
        f"{load['end']:.1f} at the end ({report['seconds_total']:.0f} s in all, "
        f"{report.get('parallel_jobs', 1)} case(s) at a time).\n\n"
        + "\n".join(lines)
        + "\n"
        + cost_sentence(report.get("local_training_cost"))
    )


def cost_sentence(cost: dict[str, Any] | None) -> str:
    """Return the side-by-side local training cost as one sentence ('' if not measured)."""
    if not cost:
        return ""
    return (
        f"\nLocal training of one device ({cost['train_examples']} examples, {cost['epochs']} "
        f"epochs, {cost['steps']} steps; median of {cost['repeats']} interleaved runs, load "
        f"average {cost['load_average_1min']:.1f}): FedAvg {cost['fedavg_seconds']:.3f} s "
        f"({cost['fedavg_us_per_step']:.0f} µs / step), FedProx {cost['fedprox_seconds']:.3f} s "
        f"({cost['fedprox_us_per_step']:.0f} µs / step): **{cost['fedprox_over_fedavg']:.2f}x**.\n"
    )


def plot(report: dict[str, Any], path: Path) -> None:
    """Plot training loss (top) and test accuracy (bottom) per round, one column per setting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    settings = list(dict.fromkeys(c["setting"] for c in report["cases"]))
    fig, axes = plt.subplots(
        2, len(settings), figsize=(4.6 * len(settings), 7), squeeze=False, sharex=True
    )
    styles = {
        "fedavg": ("--", "#17becf", "FedAvg (μ=0)"),
        "fedprox": ("-", "#e377c2", "FedProx μ=1"),
    }
    for column, setting in enumerate(settings):
        for case in (c for c in report["cases"] if c["setting"] == setting):
            style, color, name = styles[case["method"]]
            curves = case["curves"]
            for row, key in enumerate(("train_loss", "test_accuracy")):
                axes[row][column].plot(
                    curves["round"], curves[key], style, color=color, linewidth=1.8, label=name
                )
        axes[0][column].set_title(label(setting))
        axes[1][column].set_xlabel("round")
        axes[1][column].set_ylim(0, 1)
        for row in (0, 1):
            axes[row][column].grid(alpha=0.3)
    axes[0][0].set_ylabel("training loss (all devices)")
    axes[1][0].set_ylabel("test accuracy (all devices)")
    axes[0][-1].legend()
    fig.suptitle(
        f"FedAvg vs FedProx, {NUM_DEVICES} devices, {SAMPLED_PER_ROUND} per round, "
        f"E = {report['local_epochs']}, no stragglers"
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    """Run every method on every setting; print the table; write JSON, markdown and a plot."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="Synthetic(1,1), 2 rounds, 2 epochs")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=PAPER["local_epochs"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fedprox.json")
    parser.add_argument("--plot", type=Path, default=None, help="default: docs/img/ (full)")
    parser.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes")
    parser.add_argument(
        "--only-cost",
        action="store_true",
        help="measure only the local training cost and add it to the existing --out report",
    )
    parser.add_argument("--verbose", action="store_true", help="Flower's per-round log lines")
    args = parser.parse_args()
    rounds, epochs = (2, 2) if args.tiny else (args.rounds, args.epochs)
    repeats = 1 if args.tiny else 7
    if args.only_cost:
        report = json.loads(args.out.read_text())
        report["local_training_cost"] = local_training_cost(epochs, repeats, args.seed)
        print(cost_sentence(report["local_training_cost"]).strip())
        args.out.write_text(json.dumps(report, indent=2) + "\n")
        args.out.with_suffix(".md").write_text(markdown(report))
        return
    settings = TINY_SETTINGS if args.tiny else tuple(SETTINGS)
    plot_path = args.plot or (
        args.out.with_suffix(".png")
        if args.tiny
        else ROOT / "docs" / "img" / "fedprox-synthetic.png"
    )
    load_before = os.getloadavg()[0]
    started = time.perf_counter()
    jobs = [(setting, method) for setting in settings for method in METHODS]
    with tempfile.TemporaryDirectory(prefix="bench-fedprox-") as tmp:
        arguments = [(s, m, rounds, epochs, args.seed, Path(tmp), args.verbose) for s, m in jobs]
        if args.jobs > 1:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:
                futures = [pool.submit(run_case, *a) for a in arguments]
                cases = [future.result() for future in futures]
        else:
            cases = [run_case(*a) for a in arguments]
    for case in cases:
        brief = {k: v for k, v in case.items() if k not in ("curves", "clients_per_round")}
        print(json.dumps(brief), flush=True)
    cost = local_training_cost(epochs, repeats, args.seed)
    report = {
        "paper": PAPER,
        "devices": NUM_DEVICES,
        "clients_per_round": SAMPLED_PER_ROUND,
        "rounds": rounds,
        "local_epochs": epochs,
        "batch_size": PAPER["batch_size"],
        "learning_rate": PAPER["learning_rate"],
        "momentum": PAPER["momentum"],
        "seed": args.seed,
        "stragglers": 0.0,
        "settings": list(settings),
        "methods": {m: v["proximal_mu"] for m, v in METHODS.items()},
        "evaluation": "server side, after each round: test = union of all devices' held-out "
        "splits (val-fraction 0.1), training loss = union of all devices' training splits",
        "load_average_1min": {"start": load_before, "end": os.getloadavg()[0]},
        "cpus": os.cpu_count(),
        "seconds_total": round(time.perf_counter() - started, 1),
        "parallel_jobs": args.jobs,
        "plot": str(plot_path),
        "local_training_cost": cost,
        "cases": cases,
    }
    header, rows = table_rows(report)
    table = Table(title=f"FedAvg vs FedProx on Synthetic(α,β), {rounds} rounds, E={epochs}")
    for column in header:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(*row)
    Console(width=220).print(table)
    load = report["load_average_1min"]
    print(
        f"1-min load average {load['start']:.1f} -> {load['end']:.1f} on {os.cpu_count()} CPUs; "
        f"{report['seconds_total']:.0f} s in all"
    )
    print(cost_sentence(cost).strip())
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    plot(report, plot_path)


if __name__ == "__main__":
    main()
