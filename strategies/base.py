"""Message plumbing shared by our strategies; each strategy adds only its math.

:class:`BaseStrategy` is a ``flwr.serverapp.strategy.Strategy``: it samples nodes
deterministically from the run's seed, builds the train and evaluate messages,
checks every reply against the global model before it can be aggregated, and
aggregates metrics. A subclass implements :meth:`BaseStrategy.aggregate` over plain
numpy arrays, usually by calling one function of :mod:`strategies.core`.
"""

from __future__ import annotations

import time
from abc import abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from logging import INFO, WARNING
from typing import TYPE_CHECKING, Any, ClassVar, Self

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

from strategies.core import Arrays, equal_weights_if_all_zero, weighted_average

if TYPE_CHECKING:
    from fl_app.config import RunConfig

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
NUM_EXAMPLES_KEY = "num-examples"
EVAL_PREFIX = "eval-"
MAX_METRICS = frozenset({"dp-epsilon", "dp-delta"})


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
class RoundLog:
    """What the last configure/aggregate calls observed, for the results file."""

    failures: list[NodeFailure] = field(default_factory=list)
    client_metrics: list[dict[str, float | int]] = field(default_factory=list)


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


def _registration_key(node: NodeInfo) -> tuple[datetime, int]:
    """Sort key: registration time (simulated nodes register in partition order)."""
    try:
        registered = datetime.fromisoformat(node.registered_at)
    except ValueError:
        registered = datetime.min
    if registered.tzinfo is None:
        registered = registered.replace(tzinfo=UTC)
    return registered, node.node_id


class BaseStrategy(Strategy):
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

    name: ClassVar[str] = ""
    linear: ClassVar[bool] = False
    """True when the new global arrays are ``finish_linear(sum_k w_k u_k / sum_k w_k)``
    with ``w_k = client_weight(...)``: such a strategy can aggregate encrypted updates,
    because each client can weight its own update before encrypting it."""

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
        self.global_keys: list[str] = []
        self.global_arrays: Arrays = []
        self.round_log = RoundLog()
        self._rank: dict[int, int] = {}
        self._sampled_round = 0
        self._attempt = 0

    @classmethod
    def from_run_config(cls, config: RunConfig) -> Self:
        """Build the strategy from the run config (subclasses add their own keys)."""
        return cls(**cls.common_kwargs(config))

    @staticmethod
    def common_kwargs(config: RunConfig) -> dict[str, Any]:
        """Return the constructor arguments every strategy takes from the run config."""
        return {
            "fraction_train": config.fraction_train,
            "min_train_nodes": config.min_train_nodes,
            "seed": config.seed,
            "wait_timeout": config.round_timeout,
            "max_update_norm": config.max_update_norm,
        }

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

    def settings(self) -> dict[str, Any]:
        """Return the strategy-specific settings (for logs and results)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Return the state a checkpoint must keep (e.g. server-optimiser moments)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state:
            raise ValueError(f"{type(self).__name__} keeps no state, got keys {sorted(state)}")

    # ----------------------------------------------------------------- sampling
    def _connected_nodes(self, grid: Grid, minimum: int) -> list[int]:
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
        nodes = self._connected_nodes(grid, minimum)
        size = min(len(nodes), max(int(len(nodes) * fraction), minimum))
        if size == len(nodes):
            return nodes
        rng = np.random.default_rng([self.seed, server_round, attempt])
        chosen = sorted(rng.choice(len(nodes), size=size, replace=False).tolist())
        return [nodes[i] for i in chosen]

    # ------------------------------------------------------------------ messages
    def round_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """Return the config sent with a train message (subclasses add their keys)."""
        record = ConfigRecord(dict(config))
        record["server-round"] = server_round
        return record

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample nodes and send each the global arrays and the round's config."""
        self.global_keys = list(arrays.keys())
        self.global_arrays = [arrays[k].numpy() for k in self.global_keys]
        self.round_log = RoundLog()
        node_ids = self.sample_nodes(grid, server_round, self.fraction_train, self.min_train_nodes)
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
        record["server-round"] = server_round
        content = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: record})
        return [
            Message(content=content, dst_node_id=node, message_type=MessageType.EVALUATE)
            for node in node_ids
        ]

    # ------------------------------------------------------------------ replies
    def _fail(self, node_id: int, stage: str, reason: str) -> None:
        log(WARNING, "Node %d left out of %s: %s", node_id, stage, reason)
        self.round_log.failures.append(NodeFailure(node_id, stage, reason))

    def _ordered(self, replies: Iterable[Message]) -> list[Message]:
        """Order replies by node rank so that floating-point sums are reproducible."""
        return sorted(
            replies,
            key=lambda m: (self._rank.get(m.metadata.src_node_id, 1 << 62), m.metadata.src_node_id),
        )

    def _metrics_of(self, message: Message, stage: str) -> dict[str, float] | None:
        node = message.metadata.src_node_id
        if message.has_error():
            self._fail(node, stage, f"client error: {message.error.reason}")
            return None
        record = message.content.metric_records.get(METRICS_KEY)
        if record is None:
            self._fail(node, stage, f"reply has no MetricRecord '{METRICS_KEY}'")
            return None
        metrics = {k: v for k, v in record.items() if isinstance(v, int | float)}
        examples = metrics.get(NUM_EXAMPLES_KEY)
        if not isinstance(examples, int) or isinstance(examples, bool) or examples < 0:
            self._fail(
                node, stage, f"'{NUM_EXAMPLES_KEY}' must be an integer >= 0, got {examples!r}"
            )
            return None
        if not all(np.isfinite(v) for v in metrics.values()):
            self._fail(node, stage, "reply metrics contain NaN or infinity")
            return None
        return metrics

    def check_arrays(self, record: ArrayRecord | None) -> tuple[Arrays | None, str]:
        """Check a reply's arrays against the global model; return them or a reason."""
        if record is None:
            return None, f"reply has no ArrayRecord '{ARRAYS_KEY}'"
        if list(record.keys()) != self.global_keys:
            return None, (
                f"array keys {sorted(record.keys())} differ from the global model's "
                f"{sorted(self.global_keys)}"
            )
        arrays = []
        for key, like in zip(self.global_keys, self.global_arrays, strict=True):
            value = record[key].numpy()
            if value.shape != like.shape or value.dtype != like.dtype:
                return None, (
                    f"array '{key}' has shape {value.shape} and dtype {value.dtype}; "
                    f"the global model has {like.shape} and {like.dtype}"
                )
            if not np.all(np.isfinite(value)):
                return None, f"array '{key}' contains NaN or infinity"
            arrays.append(value)
        if self.max_update_norm > 0:
            norm = self.update_norm(arrays)
            if norm > self.max_update_norm:
                return (
                    None,
                    f"update norm {norm:.4g} exceeds max-update-norm {self.max_update_norm:g}",
                )
        return arrays, ""

    def update_norm(self, arrays: Arrays) -> float:
        """L2 norm of a client's change to the global model (all arrays together)."""
        return float(
            np.sqrt(
                sum(
                    np.sum((a.astype(np.float64) - g.astype(np.float64)) ** 2)
                    for a, g in zip(arrays, self.global_arrays, strict=True)
                )
            )
        )

    def collect_updates(self, replies: Iterable[Message]) -> list[ClientUpdate]:
        """Turn train replies into checked updates; record every rejected reply."""
        updates = []
        for message in self._ordered(replies):
            metrics = self._metrics_of(message, "train")
            if metrics is None:
                continue
            node = message.metadata.src_node_id
            self.round_log.client_metrics.append({"node": node, **metrics})
            arrays, reason = self.check_arrays(message.content.array_records.get(ARRAYS_KEY))
            if arrays is None:
                self._fail(node, "train", reason)
                continue
            updates.append(ClientUpdate(node, arrays, int(metrics[NUM_EXAMPLES_KEY]), metrics))
        return updates

    # -------------------------------------------------------------- aggregation
    @abstractmethod
    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the new global arrays from at least ``min_train_nodes`` updates."""

    def client_weight(self, num_examples: int, metrics: Mapping[str, float]) -> float:
        """Weight of one client's update in a linear aggregate (its examples by default).

        Clients call this too, to weight their own update before encrypting it.
        """
        return float(num_examples)

    def finish_linear(self, mean: Arrays, current: Arrays) -> Arrays:
        """Turn the weighted mean of the updates into the new global arrays.

        Model averaging keeps the mean; FedSGD steps from ``current`` along it.
        """
        return mean

    def linear_aggregate(self, updates: list[ClientUpdate]) -> Arrays:
        """Weighted mean by :meth:`client_weight`, then :meth:`finish_linear`.

        When every weight is zero (no examples, or zero quality everywhere) the
        updates are weighted equally, with a warning, rather than dividing by zero.
        """
        weights, fallback = equal_weights_if_all_zero(
            [self.client_weight(u.num_examples, u.metrics) for u in updates]
        )
        if fallback:
            log(WARNING, "%s: every client weight is 0; weighting the updates equally", self.name)
        mean = weighted_average([u.arrays for u in updates], weights)
        return self.finish_linear(mean, self.global_arrays)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check the replies, aggregate the valid updates and their metrics."""
        updates = self.collect_updates(replies)
        log(INFO, "aggregate_train: %d valid updates", len(updates))
        if len(updates) < self.min_train_nodes:
            log(
                WARNING,
                "Round %d not aggregated: %d valid updates, min-train-nodes is %d",
                server_round,
                len(updates),
                self.min_train_nodes,
            )
            return None, None
        new_arrays = self.aggregate(server_round, updates)
        self.global_arrays = new_arrays
        record = ArrayRecord(
            {k: Array(np.asarray(v)) for k, v in zip(self.global_keys, new_arrays, strict=True)}
        )
        return record, MetricRecord(aggregate_metrics([u.metrics for u in updates]))

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate evaluation metrics, weighted by each client's examples."""
        records = []
        for message in self._ordered(replies):
            metrics = self._metrics_of(message, "evaluate")
            if metrics is not None:
                records.append(metrics)
        return MetricRecord(aggregate_metrics(records)) if records else None
