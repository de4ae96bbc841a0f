"""Message plumbing shared by our strategies; each strategy adds only its math.

:class:`BaseStrategy` is a ``flwr.serverapp.strategy.Strategy``: it samples nodes
reproducibly from the run's seed, builds the train and evaluate messages, checks every
reply against the global model before it can be aggregated, and aggregates metrics.
A subclass implements :meth:`BaseStrategy.aggregate` over plain numpy arrays, usually
by calling one function of :mod:`strategies.core` or its :class:`LinearRule`.

Besides Flower's ``aggregate_train`` / ``aggregate_evaluate``, every strategy here
offers :meth:`~RoundStrategy.aggregate_round` and :meth:`~RoundStrategy.evaluate_round`,
which also return the nodes left out and why: the server's round loop records them
from the return value, not from state kept in the strategy.
"""

from __future__ import annotations

import math
import time
from abc import abstractmethod
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging import INFO, WARNING
from typing import Any, ClassVar

import numpy as np
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)
from flwr.common.logger import log
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from strategies.core import Arrays, flatten
from strategies.linear import LinearRule
from strategies.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVAL_PREFIX,
    MAX_METRICS,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    SERVER_ROUND_KEY,
)


class ReplyError(ValueError):
    """A reply cannot be used; the message says why."""


@dataclass(frozen=True)
class ClientUpdate:
    """One checked train reply: the client's arrays in global key order."""

    node_id: int
    arrays: Arrays
    num_examples: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class NodeFailure:
    """A node that was left out of a round, and why."""

    node_id: int
    stage: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready record."""
        return {"node": self.node_id, "stage": self.stage, "reason": self.reason}


@dataclass
class RoundOutcome:
    """What aggregating one round's train replies gave.

    ``arrays`` and ``metrics`` are ``None`` when the round was not aggregated (too few
    valid updates); ``failures`` lists every reply left out, ``client_metrics`` the
    metrics of every reply that carried valid ones.
    """

    arrays: ArrayRecord | None
    metrics: MetricRecord | None
    failures: list[NodeFailure] = field(default_factory=list)
    client_metrics: list[dict[str, float | int]] = field(default_factory=list)


@dataclass
class EvaluateOutcome:
    """What aggregating evaluation replies gave (``metrics`` None if none was valid)."""

    metrics: MetricRecord | None
    failures: list[NodeFailure] = field(default_factory=list)


def sample_size(available: int, fraction: float, minimum: int) -> int:
    """Return how many of ``available`` nodes a round samples: ``⌊available · fraction⌋``.

    At least ``minimum`` and at most ``available``. The floor forgives float error, so
    that 100 nodes at fraction 0.29 sample 29, not 28.
    """
    return min(available, max(math.floor(available * fraction + 1e-9), minimum))


def aggregate_metrics(records: Sequence[dict[str, float]]) -> dict[str, float]:
    """Aggregate client metrics.

    ``num-examples`` and ``eval-num-examples`` are summed; keys in ``MAX_METRICS``
    (privacy spent) take the maximum; ``eval-*`` keys are weighted by
    ``eval-num-examples``; every other key by ``num-examples``.
    """
    result: dict[str, float] = {}
    keys = sorted({k for record in records for k in record})
    for key in keys:
        present = [r for r in records if key in r]
        if key in (NUM_EXAMPLES_KEY, EVAL_PREFIX + NUM_EXAMPLES_KEY):
            result[key] = sum(r[key] for r in present)
        elif key in MAX_METRICS:
            result[key] = max(r[key] for r in present)
        else:
            weight_key = (
                EVAL_PREFIX + NUM_EXAMPLES_KEY if key.startswith(EVAL_PREFIX) else NUM_EXAMPLES_KEY
            )
            weights = [float(r.get(weight_key, 1.0)) for r in present]
            total = sum(weights)
            if total > 0:
                result[key] = sum(w * r[key] for w, r in zip(weights, present, strict=True)) / total
    return result


def enough_updates(
    server_round: int, valid: int, minimum: int, what: str = "valid updates"
) -> bool:
    """Tell whether a round has ``minimum`` updates; log why not if it has fewer."""
    if valid >= minimum:
        return True
    log(
        WARNING,
        "Round %d not aggregated: %d %s, min-train-nodes is %d",
        server_round,
        valid,
        what,
        minimum,
    )
    return False


def arrays_record(keys: Sequence[str], arrays: Arrays) -> ArrayRecord:
    """Return an ArrayRecord of ``arrays`` under ``keys``."""
    return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(keys, arrays, strict=True)})


def _registration_key(node: NodeInfo) -> tuple[datetime, int]:
    """Sort key: registration time (simulated nodes register in partition order)."""
    try:
        registered = datetime.fromisoformat(node.registered_at)
    except ValueError:
        registered = datetime.min
    if registered.tzinfo is None:
        registered = registered.replace(tzinfo=UTC)
    return registered, node.node_id


class RoundStrategy(Strategy):
    """A Flower strategy whose aggregation also reports the nodes it left out.

    Flower's ``aggregate_train`` and ``aggregate_evaluate`` are implemented on top of
    :meth:`aggregate_round` and :meth:`evaluate_round`.
    """

    name: str = ""

    @abstractmethod
    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Aggregate one round's train replies."""

    @abstractmethod
    def evaluate_round(self, server_round: int, replies: Iterable[Message]) -> EvaluateOutcome:
        """Aggregate one round's evaluation replies."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's API: the new global arrays and the aggregated train metrics."""
        outcome = self.aggregate_round(server_round, replies)
        return outcome.arrays, outcome.metrics

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Flower's API: the aggregated evaluation metrics."""
        return self.evaluate_round(server_round, replies).metrics

    def settings(self) -> dict[str, Any]:
        """Return the strategy's settings (for logs and results)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Return the state a checkpoint must keep (e.g. server-optimiser moments)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    def privacy_spent(self) -> dict[str, float]:
        """Return the ε and δ the strategy's own DP mechanism has spent (none by default)."""
        return {}

    def check_nodes(self, grid: Grid, timeout: float) -> list[NodeFailure]:
        """Check the connected nodes can take part before round 1; return those that cannot.

        Nothing to check by default; a wrapper that needs something of every node (a
        key, say) asks here, so that a run fails before training, not after.
        """
        return []


class BaseStrategy(RoundStrategy):
    """Shared sampling, messaging and reply checks for our aggregation strategies.

    Parameters
    ----------
    fraction_train : float
        Fraction of connected nodes sampled for training each round.
    min_train_nodes : int
        At least this many nodes are sampled, and at least this many valid updates
        are needed to aggregate a round.
    fraction_evaluate : float
        Fraction of connected nodes sampled for federated evaluation.
    min_evaluate_nodes : int
        At least this many nodes are sampled for evaluation.
    seed : int
        Seeds node sampling.
    wait_timeout : float
        Seconds to wait for enough nodes to connect before giving up.
    max_update_norm : float
        Reject an update whose L2 norm (see :meth:`update_norm`) exceeds this; 0 = off.
    """

    linear: ClassVar[bool] = False
    """True when the strategy aggregates with a :class:`LinearRule` (``linear_rule``):
    such a strategy can aggregate encrypted updates and take client-level DP."""
    sends_gradient: ClassVar[bool] = False
    """True when clients reply with a gradient instead of trained weights."""
    changes_client_loss: ClassVar[bool] = False
    """True when clients add a term of the strategy's to their training loss (FedProx)."""

    def __init__(
        self,
        *,
        fraction_train: float = 1.0,
        min_train_nodes: int = 2,
        fraction_evaluate: float = 1.0,
        min_evaluate_nodes: int = 1,
        seed: int = 0,
        wait_timeout: float = 300.0,
        max_update_norm: float = 0.0,
    ) -> None:
        self.fraction_train = fraction_train
        self.min_train_nodes = min_train_nodes
        self.fraction_evaluate = fraction_evaluate
        self.min_evaluate_nodes = min_evaluate_nodes
        self.seed = seed
        self.wait_timeout = wait_timeout
        self.max_update_norm = max_update_norm
        self.linear_rule: LinearRule | None = None
        self.global_keys: list[str] = []
        self.global_arrays: Arrays = []
        self._rank: dict[int, int] = {}
        self._train_attempts: defaultdict[int, int] = defaultdict(int)

    # ------------------------------------------------------------------ summary
    def summary(self) -> None:
        """Log the strategy and its settings."""
        log(INFO, "\t├──> Strategy: %s (%s)", self.name, type(self).__name__)
        for key, value in self.settings().items():
            log(INFO, "\t│\t├── %s: %s", key, value)
        log(
            INFO,
            "\t└──> Sampling: train %.2f (min %d) | evaluate %.2f (min %d)",
            self.fraction_train,
            self.min_train_nodes,
            self.fraction_evaluate,
            self.min_evaluate_nodes,
        )

    # ----------------------------------------------------------------- sampling
    def connected_nodes(self, grid: Grid, minimum: int) -> list[int]:
        """Wait (bounded) for ``minimum`` nodes; return them in registration order."""
        deadline = time.monotonic() + self.wait_timeout
        while True:
            nodes = list(grid.get_nodes())
            if len(nodes) >= minimum:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"only {len(nodes)} node(s) connected after {self.wait_timeout:.0f} s; "
                    f"{minimum} needed (min-train-nodes)"
                )
            log(INFO, "Waiting for nodes: %d connected, %d needed", len(nodes), minimum)
            time.sleep(1.0)
        ordered = sorted(nodes, key=_registration_key)
        self._rank = {n.node_id: i for i, n in enumerate(ordered)}
        return [n.node_id for n in ordered]

    def sample_nodes(
        self, grid: Grid, server_round: int, fraction: float, minimum: int, attempt: int = 0
    ) -> list[int]:
        """Sample nodes reproducibly from the seed, the round and the attempt.

        A retried round (too few valid updates the first time) draws a new sample.
        """
        nodes = self.connected_nodes(grid, minimum)
        size = sample_size(len(nodes), fraction, minimum)
        if size == len(nodes):
            return nodes
        rng = np.random.default_rng([self.seed, server_round, attempt])
        chosen = sorted(rng.choice(len(nodes), size=size, replace=False).tolist())
        return [nodes[i] for i in chosen]

    # ------------------------------------------------------------------ messages
    def round_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """Return the config sent with a train message (subclasses add their keys)."""
        record = ConfigRecord(dict(config))
        record[SERVER_ROUND_KEY] = server_round
        return record

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send each the global arrays and the round's config.

        Calling it again for the same round (a retry) draws a new sample.
        """
        self.global_keys = list(arrays.keys())
        self.global_arrays = [arrays[k].numpy() for k in self.global_keys]
        attempt = self._train_attempts[server_round]
        self._train_attempts[server_round] += 1
        node_ids = self.sample_nodes(
            grid, server_round, self.fraction_train, self.min_train_nodes, attempt
        )
        log(INFO, "configure_train: sampled %d nodes", len(node_ids))
        content = RecordDict(
            {ARRAYS_KEY: arrays, CONFIG_KEY: self.round_config(server_round, config)}
        )
        return [
            Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN)
            for node in node_ids
        ]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes for federated evaluation of the global arrays."""
        node_ids = self.sample_nodes(
            grid, server_round, self.fraction_evaluate, self.min_evaluate_nodes
        )
        record = ConfigRecord(dict(config))
        record[SERVER_ROUND_KEY] = server_round
        content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: record})
        return [
            Message(content=content, dst_node_id=node, message_type=MessageType.EVALUATE)
            for node in node_ids
        ]

    # ------------------------------------------------------------------ replies
    def order_replies(self, replies: Iterable[Message]) -> list[Message]:
        """Order replies by node rank so that floating-point sums are reproducible."""
        return sorted(
            replies,
            key=lambda m: (self._rank.get(m.metadata.src_node_id, 1 << 62), m.metadata.src_node_id),
        )

    def check_metrics(self, message: Message) -> dict[str, float]:
        """Return a reply's numeric metrics, checked.

        Raises
        ------
        ReplyError
            For a client error, a missing MetricRecord, a bad ``num-examples``, a
            non-finite metric or a missing weighting metric.
        """
        if message.has_error():
            raise ReplyError(f"client error: {message.error.reason}")
        record = message.content.metric_records.get(METRICS_KEY)
        if record is None:
            raise ReplyError(f"reply has no MetricRecord '{METRICS_KEY}'")
        metrics = {k: v for k, v in record.items() if isinstance(v, int | float)}
        examples = metrics.get(NUM_EXAMPLES_KEY)
        if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
            raise ReplyError(f"'{NUM_EXAMPLES_KEY}' must be an integer >= 0, got {examples!r}")
        if not all(np.isfinite(v) for v in metrics.values()):
            raise ReplyError("reply metrics contain NaN or infinity")
        return metrics

    def check_weighting(self, metrics: dict[str, float]) -> None:
        """Raise ReplyError if the linear rule's weighting metric is missing or negative."""
        key = self.linear_rule.required_metric if self.linear_rule else ""
        if not key:
            return
        if key not in metrics:
            raise ReplyError(f"reply has no metric '{key}' to weight by")
        if metrics[key] < 0:
            raise ReplyError(f"metric '{key}' = {metrics[key]} is negative")

    def check_arrays(self, record: ArrayRecord | None) -> Arrays:
        """Return a reply's arrays in global key order, checked against the global model.

        Raises
        ------
        ReplyError
            For missing arrays, other keys, shapes or dtypes, non-finite values, or
            an update norm above ``max_update_norm``.
        """
        if record is None:
            raise ReplyError(f"reply has no ArrayRecord '{ARRAYS_KEY}'")
        if list(record.keys()) != self.global_keys:
            raise ReplyError(
                f"array keys {sorted(record.keys())} differ from the global model's "
                f"{sorted(self.global_keys)}"
            )
        arrays = []
        for key, like in zip(self.global_keys, self.global_arrays, strict=True):
            value = record[key].numpy()
            if value.shape != like.shape or value.dtype != like.dtype:
                raise ReplyError(
                    f"array '{key}' has shape {value.shape} and dtype {value.dtype}; "
                    f"the global model has {like.shape} and {like.dtype}"
                )
            if not np.all(np.isfinite(value)):
                raise ReplyError(f"array '{key}' contains NaN or infinity")
            arrays.append(value)
        if self.max_update_norm > 0:
            norm = self.update_norm(arrays)
            if norm > self.max_update_norm:
                raise ReplyError(
                    f"update norm {norm:.4g} exceeds max-update-norm {self.max_update_norm:g}"
                )
        return arrays

    def update_norm(self, arrays: Arrays) -> float:
        """L2 norm of a client's change to the global model (all arrays together).

        For gradient replies, the norm of the step the gradient alone would take.
        """
        if self.linear_rule is not None and self.linear_rule.sends_gradient:
            return float(self.linear_rule.gradient_step * np.linalg.norm(flatten(arrays)))
        return float(
            np.sqrt(
                sum(
                    np.sum((a.astype(np.float64) - g.astype(np.float64)) ** 2)
                    for a, g in zip(arrays, self.global_arrays, strict=True)
                )
            )
        )

    def screen_replies(
        self, replies: Iterable[Message]
    ) -> tuple[list[ClientUpdate], list[NodeFailure], list[dict[str, float | int]]]:
        """Check train replies; return the valid updates, the failures and all metrics."""
        updates: list[ClientUpdate] = []
        failures: list[NodeFailure] = []
        client_metrics: list[dict[str, float | int]] = []
        for message in self.order_replies(replies):
            node = message.metadata.src_node_id
            try:
                metrics = self.check_metrics(message)
                client_metrics.append({"node": node, **metrics})
                self.check_weighting(metrics)
                arrays = self.check_arrays(message.content.array_records.get(ARRAYS_KEY))
            except ReplyError as err:
                failures.append(report_failure(node, "train", str(err)))
                continue
            updates.append(ClientUpdate(node, arrays, int(metrics[NUM_EXAMPLES_KEY]), metrics))
        return updates, failures, client_metrics

    # -------------------------------------------------------------- aggregation
    @abstractmethod
    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the new global arrays from at least ``min_train_nodes`` updates."""

    def linear_aggregate(
        self, updates: list[ClientUpdate], rule: LinearRule | None = None
    ) -> Arrays:
        """Aggregate with ``rule`` (default: the strategy's own :class:`LinearRule`).

        When every weight is zero (no examples, or zero quality everywhere) the
        updates are weighted equally, with a warning, rather than dividing by zero.
        """
        rule = rule or self.linear_rule
        if rule is None:
            raise TypeError(f"strategy '{self.name}' has no linear rule")
        new, fallback = rule.aggregate(
            [u.arrays for u in updates],
            [rule.weight(u.num_examples, u.metrics) for u in updates],
            self.global_arrays,
        )
        if fallback:
            log(WARNING, "%s: every client weight is 0; weighting the updates equally", self.name)
        return new

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Check the replies, aggregate the valid updates and their metrics."""
        updates, failures, client_metrics = self.screen_replies(replies)
        log(INFO, "aggregate_train: %d valid updates", len(updates))
        if not enough_updates(server_round, len(updates), self.min_train_nodes):
            return RoundOutcome(None, None, failures, client_metrics)
        new_arrays = self.aggregate(server_round, updates)
        self.global_arrays = new_arrays
        return RoundOutcome(
            arrays_record(self.global_keys, new_arrays),
            MetricRecord(aggregate_metrics([u.metrics for u in updates])),
            failures,
            client_metrics,
        )

    def evaluate_round(self, server_round: int, replies: Iterable[Message]) -> EvaluateOutcome:
        """Aggregate evaluation metrics, weighted by each client's examples."""
        records, failures = [], []
        for message in self.order_replies(replies):
            try:
                records.append(self.check_metrics(message))
            except ReplyError as err:
                failures.append(report_failure(message.metadata.src_node_id, "evaluate", str(err)))
        metrics = MetricRecord(aggregate_metrics(records)) if records else None
        return EvaluateOutcome(metrics, failures)


def report_failure(node_id: int, stage: str, reason: str) -> NodeFailure:
    """Log that a node was left out of a stage, and return the failure."""
    log(WARNING, "Node %d left out of %s: %s", node_id, stage, reason)
    return NodeFailure(node_id, stage, reason)
