"""Benchmark: the cost and the utility of sample-level DP (DP-SGD) on digits.

1. **Time** of one local epoch on one client's data: the product's non-private
   training against DP-SGD with each way of computing per-sample gradients
   (``grad_sample_mode``: ``fused`` and ``vmap`` from ``privacy.dp``, Opacus' ``hooks``,
   ``ghost``, ``functorch``, ``ew``), same model, batch size and data, in one
   process; the variants interleaved, median of several epochs, ratio to the
   non-private median measured alongside. ``make_private`` (once per round; the
   accountant's ε is cached) is timed separately. Also: how many physical steps
   (``max_physical_batch_size`` 64) a logical Poisson batch takes.
2. **Accuracy before/after**: the real ServerApp and ClientApps (in-process grid,
   ``dp = "local"`` with the default DP settings, hence the MLP) at ε = 1, 3, 8 with
   10 clients, with Opacus' ``hooks`` (the previous default) and ``fused`` (the
   default now), *paired*: per repeat both runs get the same node secret and the
   same session nonces, so the same Poisson batches and the same noise.
3. **Accuracy** table as before: non-private, ``dp = "local"`` with 3 clients, the
   CNN under DP (default mode).

    python bench/dp.py            # full (about 15 min on 2 shared cores)
    python bench/dp.py --tiny     # seconds; used by the tests
    python bench/dp.py --profile  # only: torch.profiler op tables, plain vs DP epochs

Writes ``bench/results/dp.json`` with the 1-minute load average before and after.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from opacus.data_loader import DPDataLoader
from rich.console import Console
from rich.table import Table
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import privacy.dp  # noqa: E402
import privacy.session  # noqa: E402
from fl_app.config import NODE_STATE_ENV, RunConfig  # noqa: E402
from fl_app.data import DATASETS, embedded_client_data  # noqa: E402
from fl_app.dp.local import SECRET_FILE  # noqa: E402
from fl_app.model import build_model  # noqa: E402
from fl_app.task import to_tensors, train  # noqa: E402
from privacy.dp import PrivacyBudget, make_private, train_private  # noqa: E402
from privacy.secrets import NONCE_BYTES  # noqa: E402
from privacy.session import MAX_PHYSICAL_BATCH  # noqa: E402
from testing.inprocess_grid import run_server_app_in_process  # noqa: E402

MODES = ("fused", "vmap", "hooks", "ghost", "functorch", "ew")
"""Every ``grad_sample_mode`` timed; the first is the default."""
BEFORE, AFTER = "hooks", privacy.dp.DEFAULT_GRAD_SAMPLE_MODE
"""The mode used before issue 18 and the default now."""


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


def _clocks() -> tuple[float, float]:
    """Return (wall, this thread's CPU) seconds.

    CPU time leaves out the time other processes on this shared machine held the core.
    """
    return time.perf_counter(), time.thread_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clocks()
    return wall - start[0], cpu - start[1]


def _dp_epoch(
    model_kind: str, data: Any, config: RunConfig, mode: str, seed: int
) -> tuple[float, tuple[float, float]]:
    """Return make_private seconds and (wall, CPU) seconds of one DP-SGD epoch in ``mode``."""
    spec = DATASETS[config.dataset]
    torch.manual_seed(seed)
    model = build_model(model_kind, spec.input_shape, spec.num_classes)
    x, y = to_tensors(data)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum
    )
    budget = PrivacyBudget(target_epsilon=0.0, delta=1e-5, noise_multiplier=1.0)
    started = time.perf_counter()
    training = make_private(
        model, optimizer, loader, budget, grad_sample_mode=mode, noise_seed=seed
    )
    prepared = time.perf_counter()
    start = _clocks()
    train_private(training, 1, MAX_PHYSICAL_BATCH)
    spent = _since(start)
    training.close()
    return prepared - started, spent


def _plain_epoch(model_kind: str, data: Any, config: RunConfig, seed: int) -> tuple[float, float]:
    """Return (wall, CPU) seconds of one non-private epoch (the product's ``train``)."""
    spec = DATASETS[config.dataset]
    torch.manual_seed(seed)
    model = build_model(model_kind, spec.input_shape, spec.num_classes)
    start = _clocks()
    train(
        model,
        data,
        epochs=1,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        seed=seed,
    )
    return _since(start)


def physical_steps(data: Any, config: RunConfig, epochs: int = 200) -> dict[str, float]:
    """Poisson batch sizes of the default settings, and physical steps per logical step."""
    x, y = to_tensors(data)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(0),
    )
    sampler = DPDataLoader.from_data_loader(loader).batch_sampler
    sizes = [len(indices) for _ in range(epochs) for indices in sampler]  # type: ignore[union-attr]
    physical = [max(1, -(-size // MAX_PHYSICAL_BATCH)) for size in sizes]
    return {
        "expected_batch": len(y) / len(loader),
        "mean_batch": statistics.mean(sizes),
        "largest_batch": max(sizes),
        "empty_fraction": sizes.count(0) / len(sizes),
        "physical_steps_per_logical_step": statistics.mean(physical),
    }


def epoch_seconds(model_kind: str, num_clients: int, repeats: int) -> dict[str, Any]:
    """Median seconds per local epoch: non-private and each DP-SGD mode, interleaved.

    Wall-clock and thread CPU time are both kept; the ratios of each are to the
    non-private epochs measured in the same passes.
    """
    torch.set_num_threads(1)
    config = RunConfig(model=model_kind)
    data = client_data(config, num_clients).train
    names = ("non-private", *MODES)
    wall: dict[str, list[float]] = {name: [] for name in names}
    cpu: dict[str, list[float]] = {name: [] for name in names}
    setup: dict[str, list[float]] = {m: [] for m in MODES}
    for repeat in range(repeats + 1):  # the first pass warms up and is not counted
        order = MODES[repeat % len(MODES) :] + MODES[: repeat % len(MODES)]
        plain = _plain_epoch(model_kind, data, config, repeat)
        measured = {mode: _dp_epoch(model_kind, data, config, mode, repeat) for mode in order}
        if repeat:
            wall["non-private"].append(plain[0])
            cpu["non-private"].append(plain[1])
            for mode, (prepare, (seconds, cpu_seconds)) in measured.items():
                setup[mode].append(prepare)
                wall[mode].append(seconds)
                cpu[mode].append(cpu_seconds)
    medians = {name: statistics.median(values) for name, values in wall.items()}
    cpu_medians = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        "model": model_kind,
        "clients": num_clients,
        "train_examples": len(data),
        "repeats": repeats,
        "seconds_per_epoch": medians,
        "cpu_seconds_per_epoch": cpu_medians,
        "make_private_seconds": {m: statistics.median(v) for m, v in setup.items()},
        "ratio": {m: medians[m] / medians["non-private"] for m in MODES},
        "cpu_ratio": {m: cpu_medians[m] / cpu_medians["non-private"] for m in MODES},
        "physical_batches": physical_steps(data, config),
    }


@contextlib.contextmanager
def paired_randomness(node_state: Path, repeat: int) -> Iterator[None]:
    """Give every run of ``repeat`` the same node secret and the same session nonces.

    Benchmark only: it makes two runs draw the same Poisson batches and the same
    noise, so that a difference in accuracy between two ``grad_sample_mode`` values
    is the implementation's, not the noise's. The product never does this.
    """
    node_state.mkdir(parents=True)
    secret = node_state / SECRET_FILE
    secret.write_bytes(hashlib.sha256(f"bench-secret-{repeat}".encode()).digest())
    secret.chmod(0o600)
    counter = iter(range(1 << 30))

    def nonce() -> bytes:
        digest = hashlib.sha256(f"bench-nonce-{repeat}-{next(counter)}".encode()).digest()
        return digest[:NONCE_BYTES]

    original = privacy.session.new_nonce
    privacy.session.new_nonce = nonce
    try:
        yield
    finally:
        privacy.session.new_nonce = original


@contextlib.contextmanager
def default_mode(mode: str) -> Iterator[None]:
    """Make ``mode`` the ``grad_sample_mode`` the ClientApp's sessions use."""
    original = privacy.dp.DEFAULT_GRAD_SAMPLE_MODE
    privacy.dp.DEFAULT_GRAD_SAMPLE_MODE = mode
    try:
        yield
    finally:
        privacy.dp.DEFAULT_GRAD_SAMPLE_MODE = original


def accuracy_run(
    overrides: dict[str, Any],
    num_clients: int,
    rounds: int,
    mode: str | None = None,
    repeat: int | None = None,
) -> dict[str, Any]:
    """Run the real ServerApp in-process; return final accuracy, ε, δ and time.

    ``mode`` sets the DP-SGD ``grad_sample_mode`` (default: the product's);
    ``repeat`` pins the node secret and nonces (:func:`paired_randomness`).
    """
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FLWR_HOME"] = str(Path(tmp) / "flwr-home")
        node_state = Path(tmp) / "node-state"
        os.environ[NODE_STATE_ENV] = str(node_state)  # fresh data holders
        paired = (
            paired_randomness(node_state, repeat)
            if repeat is not None
            else contextlib.nullcontext()
        )
        with paired, default_mode(mode or privacy.dp.DEFAULT_GRAD_SAMPLE_MODE):
            started = time.perf_counter()
            results = run_server_app_in_process(
                Path(tmp) / "out",
                {"num-server-rounds": rounds, **overrides},
                num_nodes=num_clients,
            )
            seconds = time.perf_counter() - started
    first = results["rounds"][0]["train"]
    return {
        "settings": overrides,
        "clients": num_clients,
        "mode": (mode or privacy.dp.DEFAULT_GRAD_SAMPLE_MODE) if overrides.get("dp") else None,
        "repeat": repeat,
        "rounds": len(results["rounds"]),
        "status": results["status"],
        "final_accuracy": results["final"]["accuracy"],
        "best_accuracy": max(r["server"]["accuracy"] for r in results["rounds"]),
        "epsilon": results["final"]["epsilon"],
        "delta": results["final"]["delta"],
        "noise_multiplier": first.get("dp-noise-multiplier"),
        "seconds": round(seconds, 1),
    }


def before_after(cases: list[tuple[float, int]], rounds: int, repeats: int) -> list[dict[str, Any]]:
    """Paired accuracy runs: ``BEFORE`` and ``AFTER`` mode, same randomness per repeat."""
    rows = []
    for epsilon, clients in cases:
        overrides = {"dp": "local", "dp-target-epsilon": epsilon}
        runs: dict[str, list[dict[str, Any]]] = {BEFORE: [], AFTER: []}
        for repeat in range(repeats):
            for mode in (BEFORE, AFTER):
                runs[mode].append(accuracy_run(overrides, clients, rounds, mode, repeat))
        rows.append(
            {
                "epsilon_target": epsilon,
                "clients": clients,
                "runs": runs,
                "final_accuracy": {m: [r["final_accuracy"] for r in v] for m, v in runs.items()},
                "epsilon": {m: [r["epsilon"] for r in v] for m, v in runs.items()},
                "max_abs_accuracy_difference": max(
                    abs(a["final_accuracy"] - b["final_accuracy"])
                    for a, b in zip(runs[BEFORE], runs[AFTER], strict=True)
                ),
                "seconds": {m: sum(r["seconds"] for r in v) for m, v in runs.items()},
            }
        )
    return rows


def profile(model_kind: str, num_clients: int, epochs: int, console: Console) -> None:
    """Print torch.profiler's op table for plain, ``fused`` and ``hooks`` epochs."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(1)
    config = RunConfig(model=model_kind)
    data = client_data(config, num_clients).train
    runs = {
        "non-private": lambda seed: _plain_epoch(model_kind, data, config, seed),
        **{
            m: (lambda seed, m=m: _dp_epoch(model_kind, data, config, m, seed))
            for m in ("fused", "hooks")
        },
    }
    for name, run in runs.items():
        for seed in range(3):
            run(seed)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            for seed in range(epochs):
                run(seed)
        console.print(f"[bold]{name}[/bold]: {model_kind}, {num_clients} clients, {epochs} epochs")
        console.print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=20))


def _mean(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f}" + (
        f" ± {statistics.stdev(values):.3f}" if len(values) > 1 else ""
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="one short run of each part")
    parser.add_argument("--profile", action="store_true", help="only print op profiles")
    parser.add_argument("--rounds", type=int, default=RunConfig().num_server_rounds)
    parser.add_argument("--repeats", type=int, default=25, help="timed epochs per variant")
    parser.add_argument("--accuracy-repeats", type=int, default=3, help="paired run pairs")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "dp.json")
    args = parser.parse_args()
    logging.getLogger("flwr").setLevel(logging.WARNING)
    console = Console(width=140)
    if args.profile:
        for kind in ("mlp", "cnn"):
            profile(kind, 10, 20, console)
        return
    load_before = os.getloadavg()[0]
    if args.tiny:
        timing_cases, repeats = [("mlp", 10)], 1
        paired_cases, paired_repeats, rounds = [(8.0, 3)], 1, 2
        accuracy_cases: list[tuple[dict[str, Any], int]] = []
    else:
        timing_cases = [("mlp", 10), ("mlp", 3), ("cnn", 10), ("cnn", 3)]
        repeats = args.repeats
        paired_cases = [(eps, 10) for eps in (1.0, 3.0, 8.0)]
        paired_repeats, rounds = args.accuracy_repeats, args.rounds
        accuracy_cases = [({}, 10), ({}, 3)]
        accuracy_cases += [({"dp": "local", "dp-target-epsilon": e}, 3) for e in (1.0, 3.0, 8.0)]
        accuracy_cases += [
            ({"dp": "local", "dp-target-epsilon": eps, "model": "cnn"}, 10) for eps in (3.0, 8.0)
        ]
    timing = []
    for kind, clients in timing_cases:
        console.print(f"timing: {kind}, {clients} clients, {repeats} repeats")
        timing.append(epoch_seconds(kind, clients, repeats))
    load_after_timing = os.getloadavg()[0]
    console.print(f"accuracy before/after: {BEFORE} vs {AFTER}, {paired_repeats} paired repeats")
    paired = before_after(paired_cases, rounds, paired_repeats)
    accuracy = []
    for overrides, clients in accuracy_cases:
        console.print(f"accuracy run: {overrides or 'non-private'} with {clients} clients")
        accuracy.append(accuracy_run(overrides, clients, rounds))

    table = Table(title="Local epoch time: DP-SGD vs non-private (median, same process)")
    for column in ("model", "clients", "examples", "non-private ms"):
        table.add_column(column)
    for mode in MODES:
        table.add_column(f"{mode} ×" + (" (default)" if mode == AFTER else ""), no_wrap=True)
    table.add_column(f"{AFTER} × CPU time", no_wrap=True)
    for row in timing:
        table.add_row(
            row["model"],
            str(row["clients"]),
            str(row["train_examples"]),
            f"{row['seconds_per_epoch']['non-private'] * 1e3:.2f}",
            *(f"{row['ratio'][m]:.2f}" for m in MODES),
            f"{row['cpu_ratio'][AFTER]:.2f}",
        )
    console.print(table)
    batches = timing[0]["physical_batches"]
    console.print(
        f"Poisson batches ({timing[0]['model']}, {timing[0]['clients']} clients): expected "
        f"{batches['expected_batch']:.1f}, largest {batches['largest_batch']}, "
        f"{batches['physical_steps_per_logical_step']:.3f} physical steps per logical step"
    )
    table = Table(title=f"Accuracy before/after at the same ε ({rounds} rounds, paired runs)")
    for column in ("target ε", "clients", "ε reached", f"{BEFORE} acc", f"{AFTER} acc", "max |Δ|"):
        table.add_column(column)
    for row in paired:
        table.add_row(
            f"{row['epsilon_target']:g}",
            str(row["clients"]),
            f"{statistics.mean(row['epsilon'][AFTER]):.3f}",
            _mean(row["final_accuracy"][BEFORE]),
            _mean(row["final_accuracy"][AFTER]),
            f"{row['max_abs_accuracy_difference']:.4f}",
        )
    console.print(table)
    if accuracy:
        table = Table(title=f"Test accuracy on digits after {rounds} rounds (server test set)")
        for column in ("setting", "clients", "ε", "δ", "σ", "final acc", "best acc", "s"):
            table.add_column(column)
        for row in accuracy:
            settings = row["settings"]
            label = (
                "non-private" if not settings else f"dp=local ε≤{settings['dp-target-epsilon']:g}"
            )
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
        "load_average_1min_before": load_before,
        "load_average_1min_after_timing": load_after_timing,
        "default_grad_sample_mode": AFTER,
        "defaults": {
            k: v
            for k, v in RunConfig().to_dict().items()
            if k.startswith("dp")
            or k in ("batch-size", "learning-rate", "momentum", "local-epochs", "model")
        },
        "timing": timing,
        "accuracy_before_after": paired,
        "accuracy": accuracy,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    console.print(
        f"load average (1 min): {load_before:.2f} before, {load_after_timing:.2f} after the "
        f"timing, {report['load_average_1min']:.2f} at the end; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
