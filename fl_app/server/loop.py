"""The server's round loop: train, aggregate, evaluate, record, stop early.

It drives any :class:`strategies.base.RoundStrategy` through the Grid, like Flower's
``Strategy.start`` does, with what a long federated run needs on top: one message
exchange per round (clients evaluate the global model they receive and report it
with their train reply, so no separate evaluate exchange is needed until the end),
a round timeout that leaves silent nodes out, a retry with a new sample when too few
valid updates arrive, a short poll interval instead of the HTTP grid's fixed 3 s,
bytes on the wire, failures per node, results saved after every round, and early
stopping at ``target-accuracy``.
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
from flwr.supercore.inflatable.inflatable_object import (
    get_all_nested_objects,
    no_object_id_recompute,
)

from fl_app.server.results import FinalEvaluationRecord, ResultsWriter, RoundRecord, RunStatus
from privacy import BudgetExceededError, PrivacyError
from strategies.base import NodeFailure, RoundStrategy
from strategies.protocol import EVAL_PREFIX, NUM_EXAMPLES_KEY

ServerEvaluate = Callable[[ArrayRecord], dict[str, float]]
RoundCallback = Callable[[int, ArrayRecord], None]

POLL_INTERVAL = 0.05


@dataclass(frozen=True)
class LoopSettings:
    """How long the loop runs, when it stops, and how often a short round is retried."""

    num_rounds: int
    round_timeout: float
    target_accuracy: float
    max_round_retries: int = 0
    final_evaluation: bool = True


def wire_bytes(messages: Iterable[Message]) -> int:
    """Return the bytes the messages' serialized objects take on the wire.

    Each object's ID (a SHA-256 of its content) is computed once, as Flower does when
    it sends a message, not once per level of the object tree.
    """
    total = 0
    with no_object_id_recompute():
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


def _silent(nodes: list[int], stage: str, timeout: float) -> list[NodeFailure]:
    reason = f"no reply within round-timeout {timeout:g} s"
    return [NodeFailure(node, stage, reason) for node in nodes]


@dataclass
class TrainingLoop:
    """Runs a strategy for a number of rounds and records everything in ``results``.

    Parameters
    ----------
    grid : Grid
        Flower's grid to the nodes.
    strategy : RoundStrategy
        The aggregation strategy (possibly wrapped by privacy add-ons).
    settings : LoopSettings
        Rounds, timeout and stopping rule.
    results : ResultsWriter
        Where each round is recorded (saved after every round).
    server_evaluate : ServerEvaluate, optional
        Evaluates global arrays on the server's test set; ``None`` when the server
        cannot read the model (homomorphic encryption).
    """

    grid: Grid
    strategy: RoundStrategy
    settings: LoopSettings
    results: ResultsWriter
    server_evaluate: ServerEvaluate | None

    def run(
        self,
        initial: ArrayRecord,
        train_config: ConfigRecord,
        start_round: int = 1,
        on_round_end: RoundCallback | None = None,
    ) -> tuple[ArrayRecord, RunStatus]:
        """Run the rounds; return the final global arrays and how the run ended.

        Parameters
        ----------
        initial : ArrayRecord
            Global arrays before ``start_round``.
        train_config : ConfigRecord
            Extra config sent with every train and evaluate message (the task's
            shape, the privacy plan).
        start_round : int
            First round to run (> 1 when resuming; earlier rounds are in ``results``).
        on_round_end : callable, optional
            Called with ``(round, global arrays)`` after each completed round
            (checkpointing).
        """
        arrays = initial
        unready = self.strategy.check_nodes(self.grid, self.settings.round_timeout)
        if unready:
            reasons = "; ".join(
                f"node {f.node_id}: {f.reason}" if f.node_id else f.reason for f in unready
            )
            log(ERROR, "Stopping before round %d: %s", start_round, reasons)
            return arrays, RunStatus.FAILED
        if start_round == 1 and self.server_evaluate is not None:
            metrics = self.server_evaluate(arrays)
            self.results.set_evaluation(0, "server", metrics)
            log(INFO, "Initial server evaluation: %s", metrics)
        status = RunStatus.COMPLETED
        last_round = start_round - 1
        for server_round in range(start_round, self.settings.num_rounds + 1):
            try:
                new_arrays = self._train_round(server_round, arrays, train_config)
            except PrivacyError as err:
                status = (
                    RunStatus.BUDGET_EXHAUSTED
                    if isinstance(err, BudgetExceededError)
                    else RunStatus.FAILED
                )
                log(ERROR, "Stopping before round %d: %s", server_round, err)
                break
            last_round = server_round
            if new_arrays is None:
                status = RunStatus.STOPPED_TOO_FEW_UPDATES
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
                status = RunStatus.TARGET_REACHED
                log(
                    INFO,
                    "Target accuracy %.3f reached after round %d; stopping",
                    self.settings.target_accuracy,
                    server_round,
                )
                break
        if last_round >= start_round and self.settings.final_evaluation:
            self._final_evaluation(last_round, arrays, train_config)
        elif last_round >= start_round:
            log(INFO, "Final federated evaluation skipped: DP clients report no evaluation")
        return arrays, status

    def _train_round(
        self, server_round: int, arrays: ArrayRecord, train_config: ConfigRecord
    ) -> ArrayRecord | None:
        """Run one round, retrying it (with a new sample) while too few valid updates arrive.

        Returns the new global arrays, or ``None`` if every attempt fell short.
        """
        started = time.monotonic()
        log(INFO, "")
        log(INFO, "[ROUND %d/%d]", server_round, self.settings.num_rounds)
        timeout = self.settings.round_timeout
        record = RoundRecord(round=server_round)
        received = sent = 0
        outcome = None
        for attempt in range(1, self.settings.max_round_retries + 2):
            messages = list(
                self.strategy.configure_train(
                    server_round, arrays, ConfigRecord(dict(train_config)), self.grid
                )
            )
            record.bytes_down += wire_bytes(messages)
            replies, silent = exchange(self.grid, messages, timeout)
            record.bytes_up += wire_bytes(replies)
            sent, received = sent + len(messages), received + len(replies)
            outcome = self.strategy.aggregate_round(server_round, replies)
            record.failures += [
                {**f.to_dict(), "attempt": attempt}
                for f in _silent(silent, "train", timeout) + outcome.failures
            ]
            record.num_clients, record.attempts = len(messages), attempt
            if outcome.arrays is not None:
                break
            if attempt <= self.settings.max_round_retries:
                log(
                    WARNING,
                    "Round %d: too few valid updates; retrying with a new sample (attempt %d)",
                    server_round,
                    attempt + 1,
                )
        assert outcome is not None
        record.train, evaluation = _split_eval_metrics(dict(outcome.metrics or MetricRecord()))
        if evaluation:
            self.results.set_evaluation(server_round - 1, "evaluate", evaluation)
        record.aggregated = outcome.arrays is not None
        global_arrays = outcome.arrays if outcome.arrays is not None else arrays
        record.server = self.server_evaluate(global_arrays) if self.server_evaluate else {}
        record.clients = [
            {k: v for k, v in client.items() if not k.startswith(EVAL_PREFIX)}
            for client in outcome.client_metrics
        ]
        record.seconds = round(time.monotonic() - started, 4)
        self.results.add_round(record)
        if record.server:
            accuracy = f"server test accuracy {record.server['accuracy']:.4f}"
        elif evaluation:
            accuracy = (
                f"federated validation accuracy {evaluation['accuracy']:.4f} "
                f"(round {server_round - 1}'s model)"
            )
        else:
            accuracy = "no accuracy reported"
        log(
            INFO,
            "Round %d: %d/%d replies, %s, %.2f s, %.3f MB down / %.3f MB up",
            server_round,
            received,
            sent,
            accuracy,
            record.seconds,
            record.bytes_down / 1e6,
            record.bytes_up / 1e6,
        )
        return outcome.arrays

    def _target_reached(self, server_round: int) -> bool:
        target = self.settings.target_accuracy
        if target <= 0:
            return False
        rounds = self.results.record.rounds
        if rounds[server_round - 1].server:
            return rounds[server_round - 1].server["accuracy"] >= target
        previous = (
            rounds[server_round - 2].evaluate
            if server_round > 1
            else self.results.record.initial.evaluate
        )
        return bool(previous) and previous["accuracy"] >= target

    def _final_evaluation(self, last_round: int, arrays: ArrayRecord, config: ConfigRecord) -> None:
        """Evaluate the final global model on the clients' validation data."""
        started = time.monotonic()
        timeout = self.settings.round_timeout
        messages = list(
            self.strategy.configure_evaluate(
                last_round, arrays, ConfigRecord(dict(config)), self.grid
            )
        )
        replies, silent = exchange(self.grid, messages, timeout)
        outcome = self.strategy.evaluate_round(last_round, replies)
        metrics = dict(outcome.metrics) if outcome.metrics else {}
        if not metrics:
            log(WARNING, "Final federated evaluation got no valid replies")
        failures = _silent(silent, "evaluate", timeout) + outcome.failures
        cost = FinalEvaluationRecord(
            seconds=round(time.monotonic() - started, 4),
            bytes_up=wire_bytes(replies),
            bytes_down=wire_bytes(messages),
            num_clients=len(messages),
            failures=[f.to_dict() for f in failures],
        )
        self.results.add_final_evaluation(last_round, metrics, cost)
        log(
            INFO,
            "Final federated evaluation on %d examples: %s",
            metrics.get(NUM_EXAMPLES_KEY, 0),
            metrics,
        )
