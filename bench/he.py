"""Benchmark: the cost of homomorphic encryption (CKKS, TenSEAL), per update and per round.

Two models: our default (digits CNN, 38,282 parameters) and a 1M-parameter MLP
(64 -> 13,333 -> 10, 999,985 parameters, registered here as model ``mlp-1m``).

* Per client update (``privacy.he`` directly): encrypt (weight, snap, pack, encrypt,
  serialise), the server's load-and-add per client and its serialisation of the sum,
  decrypt; bytes up (a fresh, seeded update) and down (the sum) against float32.
* Per round, for both models: the real ServerApp and ClientApps over the in-process
  grid (``testing.inprocess_grid``), plaintext against ``he = true``, side by side in
  this one process (full mode: plain, HE, HE, plain, so that a drift in the machine's
  load cancels), the first round of each run left out (warm-up). Where an HE round's
  time goes (encryption, decryption, the server's sum, the bytes-on-the-wire
  accounting, training) is timed by wrapping those functions.

Two round ratios, HE over plaintext: ``time x`` (mean seconds of the timed rounds,
the issue's figure) and ``CPU x`` (this process's CPU seconds per round: everything
runs in it, in one thread, so this is the work done, and it moves much less than
seconds when other processes load the machine). The 1-minute load average is
printed and recorded with every figure: the ratios are what to compare across runs,
not the seconds.

    python bench/he.py            # 10 clients; 5 rounds (default model), 3 (1M model)
    python bench/he.py --tiny     # 3 clients, 2 rounds each (the test; HE needs >= 3)
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import logging
import os
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from statistics import mean

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fl_app.config import NODE_STATE_ENV  # noqa: E402
from fl_app.he.keys import default_public_context, default_secret_context  # noqa: E402
from fl_app.model import MLP, MODELS, build_model, register_model  # noqa: E402
from privacy import he  # noqa: E402
from testing.inprocess_grid import run_server_app_in_process  # noqa: E402

HIDDEN_1M = 13_333  # MLP(64 -> 13,333 -> 10): 999,985 parameters
MODEL_1M = "mlp-1m"
MODELS_BENCHED = {"default": "auto", "1m": MODEL_1M}
TINY = False

if MODEL_1M not in MODELS:

    @register_model(MODEL_1M)
    def _mlp_1m(input_shape: tuple[int, ...], num_classes: int) -> torch.nn.Module:
        return MLP(int(np.prod(input_shape)), num_classes, hidden=HIDDEN_1M)


SECTIONS = {
    # label: (module, attribute[, class]) timed while an app round runs
    "client: training": ("fl_app.client_app", "_plain_training"),
    "client: evaluation": ("fl_app.client_app", "_evaluation"),
    "client: model load": ("fl_app.client_app", "_model_from"),
    "client: decrypt": ("fl_app.he.records", "decrypt_arrays"),
    "client: encrypt": ("fl_app.he.records", "encrypt_arrays"),
    "server: load + add": ("privacy.he", "add", "EncryptedSum"),
    "server: serialise sum": ("privacy.he", "ciphertexts", "EncryptedSum"),
    "server: wire accounting": ("fl_app.server.loop", "wire_bytes"),
}


ROUND = "whole round"
"""Label of the round itself among the sections."""


def load_average() -> float:
    """Return the 1-minute load average."""
    return round(os.getloadavg()[0], 2)


@contextlib.contextmanager
def timed_sections() -> Iterator[list[dict[str, dict[str, float]]]]:
    """Time the functions of :data:`SECTIONS` per training round while the block runs.

    Yields the list that receives, for every round the server's loop trains,
    ``{"wall": {section: seconds}, "cpu": {section: CPU seconds}}``, the round itself
    included (:data:`ROUND`). CPU time is this process's (the in-process grid runs
    everything in it, one thread): the work done, much less disturbed than seconds
    by other processes on a loaded machine.
    """
    wall: dict[str, float] = defaultdict(float)
    cpu: dict[str, float] = defaultdict(float)
    per_round: list[dict[str, dict[str, float]]] = []

    def timing(function, label):
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started, cpu_started = time.perf_counter(), time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                wall[label] += time.perf_counter() - started
                cpu[label] += time.process_time() - cpu_started

        return timed

    loop = importlib.import_module("fl_app.server.loop").TrainingLoop
    train_round = loop._train_round

    def timed_round(self, *args, **kwargs):
        before = {"wall": dict(wall), "cpu": dict(cpu)}
        try:
            return timing(train_round, ROUND)(self, *args, **kwargs)
        finally:
            per_round.append(
                {
                    kind: {k: v - before[kind].get(k, 0.0) for k, v in now.items()}
                    for kind, now in (("wall", wall), ("cpu", cpu))
                }
            )

    patched = [(loop, "_train_round", train_round)]
    loop._train_round = timed_round
    for label, (module_name, attribute, *owner) in SECTIONS.items():
        module = importlib.import_module(module_name)
        target = getattr(module, owner[0]) if owner else module
        original = getattr(target, attribute)
        setattr(target, attribute, timing(original, label))
        patched.append((target, attribute, original))
    try:
        yield per_round
    finally:
        for target, attribute, original in patched:
            setattr(target, attribute, original)


def _best(function, repeats: int = 3):
    """Return (value, least seconds) of ``repeats`` calls: the least is the least disturbed."""
    best, value = float("inf"), None
    for _ in range(repeats):
        started = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - started)
    return value, best


def update_costs(key: he.HEKey, public: he.HEKey, model: str, clients: int) -> dict:
    """Seconds and bytes of one client update, the server's sum and a client's decryption."""
    arrays = [
        v.detach().numpy().copy() for v in build_model(model, (1, 8, 8), 10).state_dict().values()
    ]
    specs = he.array_specs(arrays)
    values = he.num_values(specs)
    repeats = 1 if TINY else (3 if values < 100_000 else 2)
    weight = 123.0  # a client's example count
    update, encrypt_s = _best(lambda: he.encrypt_arrays(key, arrays, weight), repeats)
    updates = [update] + [he.encrypt_arrays(key, arrays, weight) for _ in range(clients - 1)]

    def server_sum() -> he.EncryptedSum:
        total = he.EncryptedSum(public, values)
        for each in updates:
            total.add(each)
        return total

    total, sum_s = _best(server_sum, repeats)
    summed, serialise_s = _best(total.ciphertexts, repeats)
    _, decrypt_s = _best(
        lambda: he.decrypt_arrays(key, summed, specs, weight * clients, count=clients), repeats
    )
    count = len(update)
    plain = 4 * values
    up, down = sum(len(c) for c in update), sum(len(c) for c in summed)
    return {
        "parameters": values,
        "values_per_ciphertext": he.DEFAULT_PARAMETERS.data_values,
        "ciphertexts": count,
        "encrypt_s": encrypt_s,
        "encrypt_ms_per_ciphertext": 1e3 * encrypt_s / count,
        "sum_s_per_client": sum_s / clients,
        "sum_ms_per_ciphertext_per_client": 1e3 * sum_s / clients / count,
        "serialise_sum_s": serialise_s,
        "decrypt_s": decrypt_s,
        "decrypt_ms_per_ciphertext": 1e3 * decrypt_s / count,
        "bytes_plain_float32": plain,
        "bytes_encrypted": up,
        "bytes_encrypted_sum": down,
        "bytes_per_ciphertext_up": up / count,
        "bytes_per_ciphertext_down": down / count,
        "bytes_ratio": up / plain,
        "bytes_ratio_down": down / plain,
        "load_average": load_average(),
    }


def _one_run(workdir: Path, name: str, overrides: dict, clients: int) -> dict:
    with timed_sections() as sections:
        results = run_server_app_in_process(workdir / name, overrides, num_nodes=clients)
    rounds = results["rounds"]
    first = 1 if len(rounds) > 1 else 0  # round 1 is warm-up (data, first calls)
    steady, timed = rounds[first:], sections[first : len(rounds)]
    return {
        "round_seconds": [r["seconds"] for r in rounds],
        "steady_seconds": [r["seconds"] for r in steady],
        "steady_cpu_seconds": [each["cpu"][ROUND] for each in timed],
        "bytes_up_per_round": mean(r["bytes_up"] for r in steady),
        "bytes_down_per_round": mean(r["bytes_down"] for r in steady),
        "final_accuracy": rounds[-1]["evaluate"]["accuracy"],
        **{
            f"sections_{kind}_s_per_round": {
                label: mean(each[kind].get(label, 0.0) for each in timed)
                for label in sorted({label for each in timed for label in each[kind]})
            }
            for kind in ("wall", "cpu")
        },
        "load_average": load_average(),
    }


def app_rounds(model: str, clients: int, rounds: int, workdir: Path, passes: int) -> dict:
    """Round seconds of the real app, plaintext vs HE, side by side (first rounds left out).

    ``passes = 2`` runs plain, HE, HE, plain so that a drift in load cancels out.
    """
    order = ["plain", "he", "he", "plain"][: 2 * passes]
    runs: dict[str, list[dict]] = {"plain": [], "he": []}
    for index, name in enumerate(order):
        overrides = {
            "num-server-rounds": rounds,
            "model": model,
            **({"he": True} if name == "he" else {}),
        }
        runs[name].append(_one_run(workdir, f"{model}-{name}-{index}", overrides, clients))
    report: dict = {}
    for name, done in runs.items():
        steady = [s for run in done for s in run["steady_seconds"]]
        cpu = [s for run in done for s in run["steady_cpu_seconds"]]
        sections: dict[str, dict[str, float]] = {
            "wall": defaultdict(float),
            "cpu": defaultdict(float),
        }
        for run in done:
            for kind, values in sections.items():
                for label, value in run[f"sections_{kind}_s_per_round"].items():
                    values[label] += value / len(done)
        report[name] = {
            "runs": done,
            "steady_seconds_per_round": mean(steady),
            "cpu_seconds_per_round": mean(cpu),
            "bytes_up_per_round": mean(run["bytes_up_per_round"] for run in done),
            "bytes_down_per_round": mean(run["bytes_down_per_round"] for run in done),
            "final_accuracy": done[0]["final_accuracy"],
            "sections_wall_s_per_round": dict(sections["wall"]),
            "sections_cpu_s_per_round": dict(sections["cpu"]),
        }
    plain, encrypted = report["plain"], report["he"]
    report["round_time_ratio"] = (
        encrypted["steady_seconds_per_round"] / plain["steady_seconds_per_round"]
    )
    report["round_cpu_ratio"] = encrypted["cpu_seconds_per_round"] / plain["cpu_seconds_per_round"]
    report["bytes_up_ratio"] = encrypted["bytes_up_per_round"] / plain["bytes_up_per_round"]
    report["bytes_down_ratio"] = encrypted["bytes_down_per_round"] / plain["bytes_down_per_round"]
    report["accuracy_difference"] = abs(encrypted["final_accuracy"] - plain["final_accuracy"])
    return report


def _print(report: dict) -> None:
    console = Console(width=140)
    clients = report["clients"]
    table = Table(title=f"HE cost per client update ({clients} clients summed)")
    columns = (
        "model",
        "params",
        "values/ct",
        "cts",
        "encrypt ms",
        "ms/ct",
        "server add ms/client",
        "sum serialise ms",
        "decrypt ms",
        "ms/ct ",
        "KB float32",
        "KB up",
        "KB down",
        "up x",
        "down x",
    )
    for column in columns:
        table.add_column(column, justify="right")
    for name, row in report["update"].items():
        table.add_row(
            name,
            f"{row['parameters']:,}",
            f"{row['values_per_ciphertext']:,}",
            str(row["ciphertexts"]),
            f"{1e3 * row['encrypt_s']:.1f}",
            f"{row['encrypt_ms_per_ciphertext']:.2f}",
            f"{1e3 * row['sum_s_per_client']:.1f}",
            f"{1e3 * row['serialise_sum_s']:.1f}",
            f"{1e3 * row['decrypt_s']:.1f}",
            f"{row['decrypt_ms_per_ciphertext']:.2f}",
            f"{row['bytes_plain_float32'] / 1024:,.0f}",
            f"{row['bytes_encrypted'] / 1024:,.0f}",
            f"{row['bytes_encrypted_sum'] / 1024:,.0f}",
            f"{row['bytes_ratio']:.2f}",
            f"{row['bytes_ratio_down']:.2f}",
        )
    console.print(table)
    rounds = Table(title="Round time, plaintext vs HE (real app, in-process grid, same process)")
    for column in (
        "model",
        "plain s/round",
        "HE s/round",
        "time x",
        "CPU x",
        "bytes up x",
        "bytes down x",
        "accuracy plain / HE",
        "load avg",
    ):
        rounds.add_column(column, justify="right")
    for name in MODELS_BENCHED:
        app = report["app"][name]
        loads = [run["load_average"] for side in ("plain", "he") for run in app[side]["runs"]]
        rounds.add_row(
            name,
            f"{app['plain']['steady_seconds_per_round']:.3f}",
            f"{app['he']['steady_seconds_per_round']:.3f}",
            f"[bold]{app['round_time_ratio']:.2f}[/bold]",
            f"{app['round_cpu_ratio']:.2f}",
            f"{app['bytes_up_ratio']:.2f}",
            f"{app['bytes_down_ratio']:.2f}",
            f"{app['plain']['final_accuracy']:.4f} / {app['he']['final_accuracy']:.4f}",
            f"{min(loads):.1f}-{max(loads):.1f}",
        )
    console.print(rounds)
    breakdown = Table(
        title="Where a round goes: CPU seconds per round by section (mean of the timed rounds)"
    )
    breakdown.add_column("section")
    for name in MODELS_BENCHED:
        breakdown.add_column(f"{name} plain", justify="right")
        breakdown.add_column(f"{name} HE", justify="right")
    labels = sorted(
        {
            label
            for app in report["app"].values()
            for side in ("plain", "he")
            for label in app[side]["sections_cpu_s_per_round"]
            if label != ROUND
        }
    )
    for label in [*labels, ROUND, "whole round, seconds (wall)"]:
        cells = []
        for name in MODELS_BENCHED:
            for side in ("plain", "he"):
                app = report["app"][name][side]
                value = (
                    app["steady_seconds_per_round"]
                    if label.endswith("(wall)")
                    else app["sections_cpu_s_per_round"].get(label)
                )
                cells.append("" if value is None else f"{value:.3f}")
        breakdown.add_row(label, *cells)
    console.print(breakdown)
    console.print(
        f"load average (1 min): {report['load_average_1min_before']:.2f} before, "
        f"{report['load_average_1min_after']:.2f} after; "
        f"[bold]HE/plain round: default {report['app']['default']['round_time_ratio']:.2f}x "
        f"(CPU {report['app']['default']['round_cpu_ratio']:.2f}x), "
        f"1M {report['app']['1m']['round_time_ratio']:.2f}x "
        f"(CPU {report['app']['1m']['round_cpu_ratio']:.2f}x); bytes up "
        f"{report['app']['default']['bytes_up_ratio']:.2f}x[/bold]"
    )


def main() -> None:
    """Run the benchmark, print the tables, write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="3 clients x 2 rounds, one pass")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the default model")
    parser.add_argument("--rounds-1m", type=int, default=3, help="rounds of the 1M model")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "he.json")
    args = parser.parse_args()
    global TINY
    TINY = args.tiny
    if args.tiny:
        clients, rounds, rounds_1m, passes = 3, 2, 2, 1
    else:
        clients, rounds, rounds_1m, passes = args.clients, args.rounds, args.rounds_1m, 2
    torch.set_num_threads(1)
    logging.getLogger("flwr").setLevel(logging.WARNING)
    key = he.generate_key()
    public = he.load_key(he.serialize_key(key, secret=False), secret=False)
    report: dict = {
        "clients": clients,
        "rounds": rounds,
        "rounds_1m": rounds_1m,
        "passes": passes,
        "parameters": {
            **he.DEFAULT_PARAMETERS.__dict__,
            "encoding": he.ENCODING,
            "values_per_ciphertext": he.DEFAULT_PARAMETERS.data_values,
        },
        "load_average_1min_before": load_average(),
        "update": {
            name: update_costs(key, public, model, clients)
            for name, model in MODELS_BENCHED.items()
        },
        "app": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        os.environ["FLWR_HOME"] = str(workdir / "flwr-home")
        os.environ[NODE_STATE_ENV] = str(workdir / "node-state")
        he.write_key_pair(default_secret_context(), default_public_context())
        for name, model in MODELS_BENCHED.items():
            count = rounds if name == "default" else rounds_1m
            report["app"][name] = app_rounds(model, clients, count, workdir, passes)
    report["load_average_1min_after"] = load_average()
    # the figures the issue tracks, side by side with the load they were measured under
    report["summary"] = {
        "round_time_ratio_default": report["app"]["default"]["round_time_ratio"],
        "round_time_ratio_1m": report["app"]["1m"]["round_time_ratio"],
        "round_cpu_ratio_default": report["app"]["default"]["round_cpu_ratio"],
        "round_cpu_ratio_1m": report["app"]["1m"]["round_cpu_ratio"],
        "bytes_up_ratio": report["app"]["default"]["bytes_up_ratio"],
        "bytes_up_ratio_update": report["update"]["default"]["bytes_ratio"],
        "load_average_1min": [
            report["load_average_1min_before"],
            report["load_average_1min_after"],
        ],
    }
    _print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
