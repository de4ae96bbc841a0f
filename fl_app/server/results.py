"""Run results: typed records and their one writer.

A run's results directory holds ``results.json`` (a :class:`RunRecord`),
``metrics.csv``, ``model.pt`` and a plot. The directory is created fresh for every
run and never reused: an existing directory is refused, so nothing a user produced is
overwritten. Files are written atomically (temporary file, then rename) after every
round, so a crash leaves the last complete round on disk. Only :class:`ResultsWriter`
changes a record.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch

from privacy.files import atomic_write_bytes

RESULTS_FILE = "results.json"
METRICS_FILE = "metrics.csv"
MODEL_FILE = "model.pt"
PLOT_FILE = "accuracy_loss.png"
TIMESTAMP_FORMAT = "%Y%m%dT%H%M%SZ"
"""UTC time stamp of default output folders (``outputs/<stamp>``)."""

Metrics = dict[str, Any]


class RunStatus(StrEnum):
    """How a run ended (``running`` while it has not)."""

    RUNNING = "running"
    COMPLETED = "completed"
    TARGET_REACHED = "target-reached"
    STOPPED_TOO_FEW_UPDATES = "stopped-too-few-updates"
    BUDGET_EXHAUSTED = "budget-exhausted"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        """Tell whether the run has ended."""
        return self is not RunStatus.RUNNING


class AccuracySource(StrEnum):
    """Where a reported accuracy was measured."""

    SERVER_TEST_SET = "server-test-set"
    FEDERATED_VALIDATION = "federated-validation"
    NONE = "none"
    """Nobody could measure it (encrypted model, clients under local DP report nothing)."""


@dataclass
class RoundRecord:
    """One round: cost, participation, aggregated metrics and failures.

    ``evaluate`` is the clients' evaluation of the round's *resulting* model (reported
    with the next round's train replies, or by the final evaluation); ``server`` is
    the server's evaluation of it on its test set (empty when it cannot read it).
    """

    round: int
    seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    num_clients: int = 0
    attempts: int = 1
    aggregated: bool = True
    train: Metrics = field(default_factory=dict)
    evaluate: Metrics = field(default_factory=dict)
    server: Metrics = field(default_factory=dict)
    clients: list[Metrics] = field(default_factory=list)
    failures: list[Metrics] = field(default_factory=list)


@dataclass
class InitialRecord:
    """The initial model's evaluations (round 0)."""

    server: Metrics = field(default_factory=dict)
    evaluate: Metrics = field(default_factory=dict)


@dataclass
class FinalEvaluationRecord:
    """The cost of the final federated evaluation (its metrics are the last round's)."""

    seconds: float = 0.0
    bytes_up: int = 0
    bytes_down: int = 0
    num_clients: int = 0
    failures: list[Metrics] = field(default_factory=list)


@dataclass
class FinalRecord:
    """How the run ended and what it reached."""

    accuracy: float | None
    loss: float | None
    accuracy_source: str
    rounds_completed: int
    status: str
    seconds_total: float
    dp: str
    epsilon: float | None
    delta: float | None
    privacy: str = ""
    """What ``epsilon`` covers and what it does not (docs/differential-privacy.md)."""


@dataclass
class RunRecord:
    """Everything ``results.json`` holds."""

    config: dict[str, Any]
    strategy: dict[str, Any]
    model: dict[str, Any]
    environment: dict[str, Any]
    status: str = RunStatus.RUNNING.value
    initial: InitialRecord = field(default_factory=InitialRecord)
    rounds: list[RoundRecord] = field(default_factory=list)
    final_evaluation: FinalEvaluationRecord | None = None
    final: FinalRecord | None = None
    resumed_from: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON-ready form (the ``results.json`` schema)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunRecord:
        """Read what :meth:`to_dict` wrote."""
        values = {f.name: data[f.name] for f in fields(cls) if f.name in data}
        values["initial"] = InitialRecord(**data.get("initial", {}))
        values["rounds"] = [RoundRecord(**r) for r in data.get("rounds", [])]
        if data.get("final_evaluation"):
            values["final_evaluation"] = FinalEvaluationRecord(**data["final_evaluation"])
        if data.get("final"):
            values["final"] = FinalRecord(**data["final"])
        return cls(**values)

    def evaluations(self, source: str) -> list[tuple[int, Metrics]]:
        """Return ``(round, metrics)`` of one evaluation (``server`` or ``evaluate``)."""
        entries = [(0, self.initial), *((r.round, r) for r in self.rounds)]
        return [(n, getattr(e, source)) for n, e in entries if getattr(e, source)]

    def largest(self, metric: str) -> float | None:
        """Return the largest value of a metric any reply or round reported (None if none).

        Every client's reply counts, aggregated or not.
        """
        values = [
            entry[metric] for r in self.rounds for entry in (r.train, *r.clients) if metric in entry
        ]
        return max(values) if values else None


def load_results(directory: Path) -> RunRecord:
    """Read a results directory's ``results.json``."""
    return RunRecord.from_dict(json.loads((directory / RESULTS_FILE).read_text()))


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
    root = (base / "outputs").resolve()
    root.mkdir(parents=True, exist_ok=True)
    for _ in range(1000):
        target = unused_timestamped(root)
        try:
            target.mkdir()
        except FileExistsError:
            continue
        return target
    raise FileExistsError(f"could not create a new results directory under {root}")


def unused_timestamped(root: Path) -> Path:
    """Return ``root/<UTC timestamp>`` (with ``-1``, ``-2``, ... if taken): not yet there."""
    stamp = datetime.now(UTC).strftime(TIMESTAMP_FORMAT)
    candidate, suffix = root / stamp, 0
    while candidate.exists():
        suffix += 1
        candidate = root / f"{stamp}-{suffix}"
    return candidate


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


def run_title(config: dict[str, Any]) -> str:
    """Return a run's one-line description: strategy, data, privacy setting."""
    privacy = []
    if config.get("dp") == "local":
        privacy.append(f"local DP (target epsilon {config.get('dp-target-epsilon')})")
    elif config.get("dp") == "central":
        privacy.append("client-level DP")
    if config.get("he"):
        privacy.append("homomorphic encryption")
    return f"{config['strategy']} on {config['dataset']}, " + (
        " + ".join(privacy) if privacy else "no privacy add-on"
    )


class ResultsWriter:
    """The one writer of a run's results: keeps the :class:`RunRecord`, mirrors it to disk.

    Parameters
    ----------
    directory : Path
        A fresh directory from :func:`create_run_directory`.
    record : RunRecord
        The record to keep (a new one, or a resumed run's history).
    """

    def __init__(self, directory: Path, record: RunRecord) -> None:
        self.directory = directory
        self.record = record

    def set_evaluation(self, server_round: int, source: str, metrics: Metrics) -> None:
        """Set the ``server`` or ``evaluate`` metrics of a round (0: the initial model)."""
        entry = self.record.initial if server_round == 0 else self.record.rounds[server_round - 1]
        setattr(entry, source, dict(metrics))

    def add_round(self, record: RoundRecord) -> None:
        """Append a round record and save."""
        self.record.rounds.append(record)
        self.save()

    def add_final_evaluation(
        self, server_round: int, metrics: Metrics, cost: FinalEvaluationRecord
    ) -> None:
        """Record the final federated evaluation of round ``server_round``'s model and save.

        Its metrics are that round's ``evaluate``; its cost is kept apart, so that a
        round's bytes and seconds are those of training only.
        """
        self.record.rounds[server_round - 1].evaluate = dict(metrics)
        self.record.final_evaluation = cost
        self.save()

    def finish(self, final: FinalRecord) -> None:
        """Record how the run ended and save."""
        self.record.status = final.status
        self.record.final = final
        self.save()

    def save(self) -> None:
        """Write ``results.json`` and ``metrics.csv`` atomically."""
        atomic_write_bytes(
            self.directory / RESULTS_FILE,
            (json.dumps(self.record.to_dict(), indent=2) + "\n").encode(),
        )
        atomic_write_bytes(self.directory / METRICS_FILE, self._csv().encode())

    def _csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        for r in self.record.rounds:
            writer.writerow(
                {
                    "round": r.round,
                    "seconds": r.seconds,
                    "bytes_up": r.bytes_up,
                    "bytes_down": r.bytes_down,
                    "num_clients": r.num_clients,
                    "num_failures": len(r.failures),
                    "train_loss": r.train.get("train-loss", ""),
                    "train_accuracy": r.train.get("train-accuracy", ""),
                    "evaluate_loss": r.evaluate.get("loss", ""),
                    "evaluate_accuracy": r.evaluate.get("accuracy", ""),
                    "server_loss": r.server.get("loss", ""),
                    "server_accuracy": r.server.get("accuracy", ""),
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
        from matplotlib.ticker import MaxNLocator

        fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
        for source, label in (("server", "server test set"), ("evaluate", "federated validation")):
            points = self.record.evaluations(source)
            if points:
                rounds = [r for r, _ in points]
                ax_acc.plot(rounds, [m["accuracy"] for _, m in points], marker="o", label=label)
                ax_loss.plot(rounds, [m["loss"] for _, m in points], marker="o", label=label)
        for axis, title in ((ax_acc, "accuracy"), (ax_loss, "loss")):
            axis.xaxis.set_major_locator(MaxNLocator(integer=True))
            axis.set_xlabel("round")
            axis.set_title(title)
            axis.grid(alpha=0.3)
            axis.legend()
        fig.suptitle(run_title(self.record.config))
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=100)
        plt.close(fig)
        path = self.directory / PLOT_FILE
        atomic_write_bytes(path, buffer.getvalue())
        return path
