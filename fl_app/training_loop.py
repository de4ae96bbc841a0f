"""The server's round loop: train, aggregate, evaluate, record, stop early.

It drives any ``flwr.serverapp.strategy.Strategy`` through the Grid, like
``Strategy.start`` does, with what a long federated run needs on top: one message
exchange per round (clients evaluate the global model they receive and report it
with their train reply, so no separate evaluate exchange is needed until the end),
a round timeout that leaves silent nodes out, a short poll interval instead of the
HTTP grid's fixed 3 s, bytes on the wire, failures per node, results saved after
every round, and early stopping at ``target-accuracy``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from fl_app.results import RunResults
from strategies.base import EVAL_PREFIX, NUM_EXAMPLES_KEY, BaseStrategy, NodeFailure

ServerEvaluate = Callable[[ArrayRecord], dict[str, float]]

POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class LoopSettings:
    """How long the loop runs, when it stops, and how often a short round is retried."""

    num_rounds: int
    round_timeout: float
    target_accuracy: float
    max_round_retries: int = 0


RoundCallback = Callable[[int, ArrayRecord], None]


def wire_bytes(messages: Iterable[Message]) -> int:
    """Return the bytes the messages' serialized objects take on the wire."""
    total = 0
    for message in messages:
        total += sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())
    return total


def exchange(
    grid: Grid, messages: list[Message], timeout: float
) -> tuple[list[Message], list[int]]:
    """Send messages and collect replies until all arrive or ``timeout`` passes.

    Returns
    -------
    tuple[list[Message], list[int]]
        The replies, and the node IDs that did not reply in time.
    """
    grid.push_messages(messages)
    pending = {m.metadata.message_id: m.metadata.dst_node_id for m in messages}
    replies: list[Message] = []
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            if pending.pop(reply.metadata.reply_to_message_id, None) is not None:
                replies.append(reply)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(POLL_INTERVAL)
    return replies, sorted(pending.values())


def _split_eval_metrics(metrics: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Separate the piggybacked evaluation (``eval-*``) from the train metrics."""
    train = {k: v for k, v in metrics.items() if not k.startswith(EVAL_PREFIX)}
    evaluation = {
        k.removeprefix(EVAL_PREFIX): v for k, v in metrics.items() if k.startswith(EVAL_PREFIX)
    }
    return train, evaluation if "accuracy" in evaluation else {}


class TrainingLoop:
    """Runs a strategy for a number of rounds and records everything in ``results``.

    Parameters
    ----------
    grid : Grid
        Flower's grid to the nodes.
    strategy : BaseStrategy
        The aggregation strategy.
    settings : LoopSettings
        Rounds, timeout and stopping rule.
    results : RunResults
        Where each round is recorded (saved after every round).
    server_evaluate : ServerEvaluate, optional
        Evaluates global arrays on the server's test set; ``None`` when the server
        cannot read the model (homomorphic encryption).
    """

    def __init__(
        self,
        grid: Grid,
        strategy: BaseStrategy,
        settings: LoopSettings,
        results: RunResults,
        server_evaluate: ServerEvaluate | None,
    ) -> None:
        self.grid = grid
        self.strategy = strategy
        self.settings = settings
        self.results = results
        self.server_evaluate = server_evaluate

    def run(
        self,
        initial: ArrayRecord,
        train_config: ConfigRecord,
        start_round: int = 1,
        on_round_end: RoundCallback | None = None,
    ) -> tuple[ArrayRecord, str]:
        """Run the rounds; return the final global arrays and how the run ended.

        Parameters
        ----------
        initial : ArrayRecord
            Global arrays before ``start_round``.
        train_config : ConfigRecord
            Extra config sent with every train message.
        start_round : int
            First round to run (> 1 when resuming; earlier rounds are in ``results``).
        on_round_end : callable, optional
            Called with ``(round, global arrays)`` after each completed round
            (checkpointing).

        Returns
        -------
        tuple[ArrayRecord, str]
            The arrays, and ``completed``, ``target-reached`` or
            ``stopped-too-few-updates``.
        """
        arrays = initial
        if start_round == 1 and self.server_evaluate is not None:
            self.results.entry(0)["server"] = self.server_evaluate(arrays)
            log(INFO, "Initial server evaluation: %s", self.results.entry(0)["server"])
        status = "completed"
        last_round = start_round - 1
        for server_round in range(start_round, self.settings.num_rounds + 1):
            new_arrays = self._train_round(server_round, arrays, train_config)
            last_round = server_round
            if new_arrays is None:
                status = "stopped-too-few-updates"
                log(
                    ERROR,
                    "Stopping: round %d had fewer than min-train-nodes valid updates after "
                    "%d retries (see its failures in results.json)",
                    server_round,
                    self.settings.max_round_retries,
                )
                break
            arrays = new_arrays
            if on_round_end is not None:
                on_round_end(server_round, arrays)
            if self._target_reached(server_round):
                status = "target-reached"
                log(
                    INFO,
                    "Target accuracy %.3f reached after round %d; stopping",
                    self.settings.target_accuracy,
                    server_round,
                )
                break
        if last_round >= start_round:
            self._final_evaluation(last_round, arrays)
        return arrays, status

    def _train_round(
        self, server_round: int, arrays: ArrayRecord, train_config: ConfigRecord
    ) -> ArrayRecord | None:
        """Run one round, retrying it while too few valid updates arrive.

        Returns the new global arrays, or ``None`` if every attempt fell short.
        """
        started = time.monotonic()
        log(INFO, "")
        log(INFO, "[ROUND %d/%d]", server_round, self.settings.num_rounds)
        bytes_down = bytes_up = sent = received = 0
        failures: list[dict[str, Any]] = []
        new_arrays: ArrayRecord | None = None
        metrics: MetricRecord | None = None
        for attempt in range(1, self.settings.max_round_retries + 2):
            messages = list(
                self.strategy.configure_train(
                    server_round, arrays, ConfigRecord(dict(train_config)), self.grid
                )
            )
            bytes_down += wire_bytes(messages)
            replies, silent = exchange(self.grid, messages, self.settings.round_timeout)
            bytes_up += wire_bytes(replies)
            sent, received = sent + len(messages), received + len(replies)
            new_arrays, metrics = self.strategy.aggregate_train(server_round, replies)
            timeout_reason = f"no reply within round-timeout {self.settings.round_timeout:g} s"
            attempt_failures = [
                NodeFailure(node, "train", timeout_reason) for node in silent
            ] + self.strategy.round_log.failures
            failures += [{**f.to_dict(), "attempt": attempt} for f in attempt_failures]
            if new_arrays is not None:
                break
            if attempt <= self.settings.max_round_retries:
                log(
                    WARNING,
                    "Round %d: too few valid updates; retrying (attempt %d)",
                    server_round,
                    attempt + 1,
                )
        train_metrics, evaluation = _split_eval_metrics(dict(metrics or MetricRecord()))
        if evaluation:
            self.results.entry(server_round - 1)["evaluate"] = evaluation
        global_arrays = new_arrays if new_arrays is not None else arrays
        record: dict[str, Any] = {
            "round": server_round,
            "seconds": 0.0,
            "bytes_up": bytes_up,
            "bytes_down": bytes_down,
            "num_clients": len(messages),
            "attempts": attempt,
            "aggregated": new_arrays is not None,
            "train": train_metrics,
            "evaluate": {},
            "server": self.server_evaluate(global_arrays) if self.server_evaluate else {},
            "clients": [
                {k: v for k, v in client.items() if not k.startswith(EVAL_PREFIX)}
                for client in self.strategy.round_log.client_metrics
            ],
            "failures": failures,
        }
        record["seconds"] = round(time.monotonic() - started, 4)
        self.results.add_round(record)
        log(
            INFO,
            "Round %d: %d/%d replies, server accuracy %s, %.2f s, %.1f KB down / %.1f KB up",
            server_round,
            received,
            sent,
            f"{record['server']['accuracy']:.4f}" if record["server"] else "n/a",
            record["seconds"],
            bytes_down / 1024,
            bytes_up / 1024,
        )
        return new_arrays

    def _target_reached(self, server_round: int) -> bool:
        target = self.settings.target_accuracy
        if target <= 0:
            return False
        entry = self.results.entry(server_round)
        if entry["server"]:
            return entry["server"]["accuracy"] >= target
        previous = self.results.entry(server_round - 1)["evaluate"]
        return bool(previous) and previous["accuracy"] >= target

    def _final_evaluation(self, last_round: int, arrays: ArrayRecord) -> None:
        """Evaluate the final global model on the clients' validation data."""
        started = time.monotonic()
        messages = list(
            self.strategy.configure_evaluate(last_round, arrays, ConfigRecord(), self.grid)
        )
        replies, silent = exchange(self.grid, messages, self.settings.round_timeout)
        metrics = self.strategy.aggregate_evaluate(last_round, replies)
        entry = self.results.entry(last_round)
        entry["evaluate"] = dict(metrics) if metrics else {}
        entry["bytes_down"] += wire_bytes(messages)
        entry["bytes_up"] += wire_bytes(replies)
        entry["seconds"] = round(entry["seconds"] + time.monotonic() - started, 4)
        entry["failures"] += [
            {"node": node, "stage": "evaluate", "reason": "no reply within round-timeout"}
            for node in silent
        ] + [f.to_dict() for f in self.strategy.round_log.failures if f.stage == "evaluate"]
        if not metrics:
            log(WARNING, "Final federated evaluation got no valid replies")
        self.results.save()
        evaluation_count = entry["evaluate"].get(NUM_EXAMPLES_KEY, 0)
        log(
            INFO,
            "Final federated evaluation on %d examples: %s",
            evaluation_count,
            entry["evaluate"],
        )
