"""Run results: ``results.json``, ``metrics.csv``, ``model.pt`` and a plot, per run directory.

A results directory is created fresh for every run and never reused: an existing
directory is refused, so nothing a user produced is overwritten. Files are written
atomically (temporary file, then rename) after every round, so a crash leaves the
last complete round on disk.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from privacy.files import atomic_write_bytes

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.csv"
MODEL_FILE = "model.pt"
PLOT_FILE = "accuracy_loss.png"

CSV_COLUMNS = (
    "round",
    "seconds",
    "bytes_up",
    "bytes_down",
    "num_clients",
    "num_failures",
    "train_loss",
    "train_accuracy",
    "evaluate_loss",
    "evaluate_accuracy",
    "server_loss",
    "server_accuracy",
)


def create_run_directory(output_dir: str, base: Path) -> Path:
    """Create the run's results directory and return its absolute path.

    Parameters
    ----------
    output_dir : str
        The ``output-dir`` run-config value; ``""`` means ``outputs/<UTC timestamp>``.
        A relative path is taken relative to ``base``.
    base : Path
        Directory that relative paths start from.

    Raises
    ------
    FileExistsError
        If an explicitly named directory already exists (it is never reused).
    """
    if output_dir:
        target = (base / Path(output_dir).expanduser()).resolve()
        try:
            target.mkdir(parents=True, exist_ok=False)
        except FileExistsError:
            raise FileExistsError(
                f"output-dir '{target}' already exists; results are never overwritten. "
                "Choose a new output-dir or leave it empty for outputs/<UTC timestamp>."
            ) from None
        return target
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    root = (base / "outputs").resolve()
    root.mkdir(parents=True, exist_ok=True)
    for suffix in ("", *(f"-{i}" for i in range(1, 1000))):
        target = root / f"{stamp}{suffix}"
        try:
            target.mkdir()
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"could not create a new results directory under {root}")


class RunResults:
    """The results of one run, kept in memory and mirrored to its directory.

    Parameters
    ----------
    directory : Path
        A fresh directory from :func:`create_run_directory`.
    header : dict[str, Any]
        Fields written at the top of ``results.json`` (config, strategy, ...).
    """

    def __init__(self, directory: Path, header: dict[str, Any]) -> None:
        self.directory = directory
        self.data: dict[str, Any] = {
            **header,
            "status": "running",
            "initial": {},
            "rounds": [],
            "final": {},
        }

    @property
    def rounds(self) -> list[dict[str, Any]]:
        """The per-round records, in order."""
        return self.data["rounds"]

    def entry(self, server_round: int) -> dict[str, Any]:
        """Return the record of a round (0 is the initial model)."""
        if server_round == 0:
            return self.data["initial"]
        return self.rounds[server_round - 1]

    def add_round(self, record: dict[str, Any]) -> None:
        """Append a round record and save."""
        self.rounds.append(record)
        self.save()

    def finish(self, status: str, final: dict[str, Any]) -> None:
        """Record how the run ended and save."""
        self.data["status"] = status
        self.data["final"] = final
        self.save()

    def save(self) -> None:
        """Write ``results.json`` and ``metrics.csv`` atomically."""
        atomic_write_bytes(
            self.directory / RESULTS_FILE,
            (json.dumps(self.data, indent=2, sort_keys=False) + "\n").encode(),
        )
        atomic_write_bytes(self.directory / METRICS_FILE, self._csv().encode())

    def _csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for record in self.rounds:
            writer.writerow(
                {
                    "round": record["round"],
                    "seconds": record["seconds"],
                    "bytes_up": record["bytes_up"],
                    "bytes_down": record["bytes_down"],
                    "num_clients": record["num_clients"],
                    "num_failures": len(record["failures"]),
                    "train_loss": record["train"].get("train-loss", ""),
                    "train_accuracy": record["train"].get("train-accuracy", ""),
                    "evaluate_loss": record["evaluate"].get("loss", ""),
                    "evaluate_accuracy": record["evaluate"].get("accuracy", ""),
                    "server_loss": record["server"].get("loss", ""),
                    "server_accuracy": record["server"].get("accuracy", ""),
                }
            )
        return buffer.getvalue()

    def save_model(self, state_dict: dict[str, torch.Tensor]) -> Path:
        """Write the final global model as a plain torch ``state_dict``."""
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        path = self.directory / MODEL_FILE
        atomic_write_bytes(path, buffer.getvalue())
        return path

    def save_plot(self) -> Path:
        """Plot accuracy and loss per round (server test set and federated evaluation)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        entries = [(0, self.data["initial"])] + [(r["round"], r) for r in self.rounds]
        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        for source, label in (("server", "server test set"), ("evaluate", "federated validation")):
            points = [(r, e[source]) for r, e in entries if e.get(source)]
            if points:
                rounds = [r for r, _ in points]
                ax_acc.plot(rounds, [m["accuracy"] for _, m in points], marker="o", label=label)
                ax_loss.plot(rounds, [m["loss"] for _, m in points], marker="o", label=label)
        for axis, title in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            axis.set_xlabel("round")
            axis.set_title(title)
            axis.grid(alpha=0.3)
            axis.legend()
        fig.suptitle(f"{self.data['config']['strategy']} on {self.data['config']['dataset']}")
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        path = self.directory / PLOT_FILE
        atomic_write_bytes(path, buffer.getvalue())
        return path
