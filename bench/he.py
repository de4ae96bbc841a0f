"""Benchmark: the cost of homomorphic encryption (CKKS, TenSEAL) per update and per round.

For our default model (digits CNN, 38k parameters) and a ~1M-parameter MLP:
encrypt / serialise / sum / decrypt seconds and bytes per client update against
float32 plaintext (``privacy.he`` directly). Round time: the default model through
the real ServerApp and ClientApps (in-process grid), plaintext against ``he = true``;
the 1M model as a modelled round (each client trains one local epoch of the 1M MLP
on its digits partition, then sends float32 or encrypts; the server averages or
sums; clients decrypt), timed in one process.

    python bench/he.py            # 10 clients, 5 rounds
    python bench/he.py --tiny     # 2 clients, 2 rounds (used by the tests)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from statistics import mean

import numpy as np
import tenseal as ts
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fl_app.config import NODE_STATE_ENV, RunConfig  # noqa: E402
from fl_app.data import embedded_client_data  # noqa: E402
from fl_app.he.keys import default_public_context, default_secret_context  # noqa: E402
from fl_app.model import MLP, build_model  # noqa: E402
from fl_app.task import train  # noqa: E402
from privacy import he  # noqa: E402
from strategies.core import weighted_average  # noqa: E402
from testing.inprocess_grid import run_server_app_in_process  # noqa: E402

HIDDEN_1M = 13_333  # MLP(64 -> 13,333 -> 10): 1,000,008 parameters


def _arrays(model: torch.nn.Module) -> list[np.ndarray]:
    return [v.detach().numpy().copy() for v in model.state_dict().values()]


def _timed(function, *args):
    started = time.perf_counter()
    value = function(*args)
    return value, time.perf_counter() - started


def update_costs(key: he.HEKey, arrays: list[np.ndarray], clients: int) -> dict:
    """Seconds per step and bytes of one client update, and of the server's sum."""
    params = he.DEFAULT_PARAMETERS
    flat = params.snap(np.concatenate([a.ravel().astype(np.float64) for a in arrays]) * 100.0)
    chunks = [flat[i : i + params.slots].tolist() for i in range(0, flat.size, params.slots)]
    vectors, encrypt_s = _timed(lambda: [ts.ckks_vector(key.context, c) for c in chunks])
    blobs, serialise_s = _timed(lambda: [v.serialize() for v in vectors])
    specs = he.array_specs(arrays)
    public = he.load_key(he.serialize_key(key, secret=False), secret=False)
    total, sum_s = _timed(lambda: he.sum_ciphertexts(public, [blobs] * clients, flat.size))
    _, decrypt_s = _timed(he.decrypt_arrays, key, total, specs, 100.0 * clients)
    plain = 4 * flat.size
    ciphertext = sum(len(b) for b in blobs)
    return {
        "parameters": int(flat.size),
        "ciphertexts": len(blobs),
        "encrypt_s": encrypt_s,
        "serialise_s": serialise_s,
        "sum_s_per_client": sum_s / clients,
        "decrypt_s": decrypt_s,
        "bytes_plain_float32": plain,
        "bytes_encrypted": ciphertext,
        "bytes_ratio": ciphertext / plain,
    }


def app_rounds(clients: int, rounds: int, workdir: Path) -> dict:
    """Mean round seconds of the real app, plaintext vs HE (round 1 excluded: warm-up)."""
    os.environ["FLWR_HOME"] = str(workdir / "flwr-home")
    os.environ[NODE_STATE_ENV] = str(workdir / "node-state")
    he.write_key_pair(default_secret_context(), default_public_context())
    report = {}
    for name, overrides in (("plain", {}), ("he", {"he": True})):
        results = run_server_app_in_process(
            workdir / name, {"num-server-rounds": rounds, **overrides}, num_nodes=clients
        )
        seconds = [r["seconds"] for r in results["rounds"]]
        report[name] = {
            "round_seconds": seconds,
            "steady_seconds_per_round": mean(seconds[1:]) if len(seconds) > 1 else seconds[0],
            "bytes_up_per_round": mean(r["bytes_up"] for r in results["rounds"]),
            "final_accuracy": results["final"]["accuracy"],
        }
    report["round_time_ratio"] = (
        report["he"]["steady_seconds_per_round"] / report["plain"]["steady_seconds_per_round"]
    )
    report["bytes_up_ratio"] = (
        report["he"]["bytes_up_per_round"] / report["plain"]["bytes_up_per_round"]
    )
    return report


def modelled_round_1m(key: he.HEKey, clients: int) -> dict:
    """One round with the 1M MLP: local training plus plaintext or encrypted exchange."""
    config = RunConfig()
    torch.manual_seed(0)
    model = MLP(64, 10, hidden=HIDDEN_1M)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    train_s, plain_s, he_s, updates, blobs = 0.0, 0.0, 0.0, [], []
    for pid in range(clients):
        data = embedded_client_data(
            "digits", config.test_fraction, config.val_fraction, "iid", clients, pid, 0, 0.5, 2
        )
        model.load_state_dict(start)
        _, seconds = _timed(
            lambda split=data.train, seed=pid: train(
                model, split, epochs=1, batch_size=16, learning_rate=0.05, momentum=0.9, seed=seed
            )
        )
        train_s += seconds
        arrays = _arrays(model)
        buffer = io.BytesIO()
        _, seconds = _timed(np.savez, buffer, *arrays)
        plain_s += seconds
        updates.append(arrays)
        ciphertexts, seconds = _timed(he.encrypt_arrays, key, arrays, float(len(data.train)))
        he_s += seconds
        blobs.append(ciphertexts)
    specs = he.array_specs(updates[0])
    _, seconds = _timed(weighted_average, updates, [1.0] * clients)
    plain_s += seconds
    total, seconds = _timed(he.sum_ciphertexts, key, blobs, he.num_values(specs))
    he_s += seconds
    _, seconds = _timed(he.decrypt_arrays, key, total, specs, 1.0)
    he_s += seconds * clients
    plain_round, he_round = train_s + plain_s, train_s + he_s
    return {
        "train_s": train_s,
        "plain_round_s": plain_round,
        "he_round_s": he_round,
        "round_time_ratio": he_round / plain_round,
    }


def main() -> None:
    """Run the benchmark, print the tables, write the JSON report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="2 clients x 2 rounds")
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "he.json")
    args = parser.parse_args()
    clients, rounds = (2, 2) if args.tiny else (args.clients, args.rounds)
    torch.set_num_threads(1)
    key = he.generate_key()
    default = _arrays(build_model("auto", (1, 8, 8), 10))
    one_million = _arrays(MLP(64, 10, hidden=HIDDEN_1M))
    report = {
        "clients": clients,
        "rounds": rounds,
        "parameters": he.DEFAULT_PARAMETERS.__dict__,
        "load_average_1min_before": os.getloadavg()[0],
        "update": {
            "default": update_costs(key, default, clients),
            "1m": update_costs(key, one_million, clients),
        },
    }
    with tempfile.TemporaryDirectory() as workdir:
        report["round_default_app"] = app_rounds(clients, rounds, Path(workdir))
    report["round_1m_modelled"] = modelled_round_1m(key, clients)
    report["load_average_1min_after"] = os.getloadavg()[0]

    console = Console()
    table = Table(title=f"HE cost per client update ({clients} clients summed)")
    for column in (
        "model",
        "params",
        "cts",
        "encrypt s",
        "serialise s",
        "sum s/client",
        "decrypt s",
        "KB plain",
        "KB HE",
        "bytes x",
    ):
        table.add_column(column, justify="right")
    for name, row in report["update"].items():
        table.add_row(
            name,
            str(row["parameters"]),
            str(row["ciphertexts"]),
            f"{row['encrypt_s']:.3f}",
            f"{row['serialise_s']:.3f}",
            f"{row['sum_s_per_client']:.3f}",
            f"{row['decrypt_s']:.3f}",
            f"{row['bytes_plain_float32'] / 1024:.0f}",
            f"{row['bytes_encrypted'] / 1024:.0f}",
            f"{row['bytes_ratio']:.2f}",
        )
    console.print(table)
    app, modelled = report["round_default_app"], report["round_1m_modelled"]
    rounds_table = Table(title="Round time, plaintext vs HE")
    for column in ("model", "plain s/round", "HE s/round", "time x", "bytes up x"):
        rounds_table.add_column(column, justify="right")
    rounds_table.add_row(
        "default (app, in-process)",
        f"{app['plain']['steady_seconds_per_round']:.3f}",
        f"{app['he']['steady_seconds_per_round']:.3f}",
        f"{app['round_time_ratio']:.2f}",
        f"{app['bytes_up_ratio']:.2f}",
    )
    rounds_table.add_row(
        "1M MLP (modelled round)",
        f"{modelled['plain_round_s']:.3f}",
        f"{modelled['he_round_s']:.3f}",
        f"{modelled['round_time_ratio']:.2f}",
        f"{report['update']['1m']['bytes_ratio']:.2f}",
    )
    console.print(rounds_table)
    console.print(
        f"load average (1 min): {report['load_average_1min_before']:.2f} before, "
        f"{report['load_average_1min_after']:.2f} after"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
