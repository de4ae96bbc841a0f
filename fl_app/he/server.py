"""Server side of homomorphic encryption: sum encrypted updates with the public context.

:class:`EncryptedAggregation` wraps a linear strategy through its public API. It
samples, configures and evaluates through the wrapped strategy, but aggregates by
adding ciphertexts: the server holds only the public context (no secret key), keeps
the global model encrypted (the weighted sum, the total weight the clients divide by
after decrypting, and the layout to unpack it), and never sees a client's update. The
train config carries the strategy's :class:`~strategies.linear.LinearRule`, which each
client applies to its own update before encrypting. Round 1 starts from the plaintext
initial model. A reply whose ciphertexts are corrupted, under another key or of the
wrong count is left out of the round with a reason naming the node.

What the encoding and the shared key require is enforced here: a released sum holds
at least :data:`~privacy.he.MIN_CLIENTS` = 3 updates (every client decrypts it; with
two, each would read the other's update), which the check before round 1 also
requires of the sample size and the nodes connected; and at most
:data:`~privacy.he.MAX_CLIENTS` (more could wrap around the fixed-point range): replies
beyond it are left out. The aggregate carries the number of updates it sums, which
every client checks against the sum's check slots.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common.logger import log
from flwr.serverapp import Grid

from fl_app.he.keys import load_context_file
from fl_app.he.records import (
    FINGERPRINT_KEY,
    KEY_RECORD,
    UPDATE_KEY,
    WEIGHT_KEY,
    ciphertext_record,
    ciphertexts_of,
    count_of,
    is_encrypted,
    total_weight_of,
)
from fl_app.server.loop import exchange
from privacy.he import (
    MAX_CLIENTS,
    MIN_CLIENTS,
    ArraySpec,
    EncryptedSum,
    HEError,
    array_specs,
    num_values,
)
from privacy.he_model import EncryptedModel
from strategies.base import (
    BaseStrategy,
    NodeFailure,
    ReplyError,
    RoundOutcome,
    aggregate_metrics,
    enough_updates,
    report_failure,
)
from strategies.protocol import CONFIG_KEY, METRICS_KEY, NUM_EXAMPLES_KEY
from strategies.wrapper import StrategyWrapper

ENCRYPTED_MODEL_FILE = "model-encrypted.npz"
PREFLIGHT = "HE preflight"
"""Stage of the failures the check before round 1 reports that concern no single node."""
MIN_CLIENTS_RULE = (
    f"homomorphic encryption needs at least {MIN_CLIENTS} clients in every round (every "
    "client decrypts the sum; with 2, each would subtract its own update and read the "
    "other's)"
)


class EncryptedAggregation(StrategyWrapper):
    """Aggregate a linear strategy's updates as encrypted sums (public context only).

    Parameters
    ----------
    strategy : BaseStrategy
        The linear strategy (sampling, messages, weights, metrics).
    public_context : Path
        The server's public context file, loaded now (a missing file or a secret
        context is refused at start-up).
    template : dict[str, np.ndarray]
        The global model's arrays by name (shapes and dtypes of the packing).

    Raises
    ------
    ValueError
        If the strategy has no linear rule.
    HEError
        If the public context is missing or holds the secret key.
    """

    def __init__(
        self, strategy: BaseStrategy, public_context: Path, template: dict[str, np.ndarray]
    ) -> None:
        if strategy.linear_rule is None:
            raise ValueError(
                f"strategy '{strategy.name}' cannot aggregate encrypted updates: it has no "
                "linear rule"
            )
        super().__init__(strategy)
        self.rule = strategy.linear_rule
        self.floor = max(MIN_CLIENTS, strategy.min_train_nodes)
        """Fewest valid updates a released sum holds."""
        self.public_context = public_context
        self.names = list(template)
        self.specs: list[ArraySpec] = array_specs(list(template.values()))
        self.key = load_context_file(public_context, secret=False)
        log(INFO, "HE: public context %s (key %s)", public_context, self.key.fingerprint)

    def settings(self) -> dict[str, object]:
        """Return the wrapped strategy's settings, and that aggregation is encrypted."""
        return {**self.strategy.settings(), "he": True}

    def summary(self) -> None:
        """Log the wrapped strategy and the encryption."""
        self.strategy.summary()
        log(INFO, "\t└──> Homomorphic encryption: server public context %s", self.public_context)

    def _with_key(self, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        record = ConfigRecord({**dict(config), **self.rule.to_config()})
        if is_encrypted(arrays):
            record[FINGERPRINT_KEY] = self.key.fingerprint
        return record

    def sample_size(self, connected: int) -> int:
        """Return how many of ``connected`` nodes the wrapped strategy samples per round."""
        strategy = self.strategy
        wanted = max(int(connected * strategy.fraction_train), strategy.min_train_nodes)
        return min(connected, wanted)

    def round_size_problems(self, connected: int) -> list[str]:
        """Return why rounds drawn from ``connected`` nodes cannot be summed encrypted."""
        size = self.sample_size(connected)
        if size < MIN_CLIENTS:
            return [
                f"{MIN_CLIENTS_RULE}; rounds would have {size} (connected nodes {connected}, "
                f"fraction-train {self.strategy.fraction_train:g}, min-train-nodes "
                f"{self.strategy.min_train_nodes})"
            ]
        if size > MAX_CLIENTS:
            return [
                f"the fixed-point encoding sums at most {MAX_CLIENTS} updates (MAX_CLIENTS); "
                f"rounds would sample {size} of {connected} connected nodes: lower fraction-train"
            ]
        return []

    def check_nodes(self, grid: Grid, timeout: float) -> list[NodeFailure]:
        """Before round 1: enough clients per round, and every connected node's key.

        A round that could hold fewer than :data:`~privacy.he.MIN_CLIENTS` or more
        than :data:`~privacy.he.MAX_CLIENTS` updates is refused (one failure naming
        the rule, node id 0); then every connected node is asked for the fingerprint
        of its secret context, and those without the server's key are returned.
        """
        try:
            nodes = self.strategy.connected_nodes(grid, self.floor)
        except RuntimeError as err:
            return [NodeFailure(0, PREFLIGHT, f"{MIN_CLIENTS_RULE}: {err}")]
        problems = self.round_size_problems(len(nodes))
        if problems:
            return [NodeFailure(0, PREFLIGHT, problem) for problem in problems]
        messages = [
            Message(
                RecordDict({CONFIG_KEY: ConfigRecord({FINGERPRINT_KEY: self.key.fingerprint})}),
                dst_node_id=node,
                message_type=MessageType.QUERY,
            )
            for node in nodes
        ]
        replies, silent = exchange(grid, messages, timeout)
        failures = [NodeFailure(node, "key check", "no reply") for node in silent]
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                failures.append(NodeFailure(node, "key check", reply.error.reason))
                continue
            found = reply.content.config_records.get(KEY_RECORD, ConfigRecord()).get("fingerprint")
            if found != self.key.fingerprint:
                failures.append(
                    NodeFailure(
                        node,
                        "key check",
                        f"holds HE key {found!r}, the server's public context is key "
                        f"{self.key.fingerprint!r}",
                    )
                )
        return failures

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the (encrypted) global model with its key's fingerprint and the linear rule."""
        return self.strategy.configure_train(
            server_round, arrays, self._with_key(arrays, config), grid
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the (encrypted) global model for federated evaluation."""
        return self.strategy.configure_evaluate(
            server_round, arrays, self._with_key(arrays, config), grid
        )

    def expected_weight(self, metrics: dict[str, float]) -> float:
        """Return the weight a reply's update must carry: the strategy's rule's weight.

        Raises
        ------
        ReplyError
            If the rule's weighting metric is missing or negative.
        """
        self.strategy.check_weighting(metrics)
        plain = {k: v for k, v in metrics.items() if k != WEIGHT_KEY}
        return self.rule.weight(int(metrics[NUM_EXAMPLES_KEY]), plain)

    def add_reply(self, total: EncryptedSum, message: Message, weight: float) -> None:
        """Add one reply's ciphertexts to ``total`` after checking its key and weight.

        Raises
        ------
        HEError
            If the update is under another key, claims another weight, has no
            ciphertexts, cannot be added, or the sum is full (``MAX_CLIENTS``).
        """
        key = message.content.config_records.get(KEY_RECORD, ConfigRecord()).get("fingerprint")
        expected = self.key.fingerprint
        if key != expected:
            raise HEError(
                f"update is under key {key!r}, the server's public context is key {expected!r}"
            )
        metrics = message.content.metric_records.get(METRICS_KEY, MetricRecord())
        claimed = metrics.get(WEIGHT_KEY)
        if claimed is None or not np.isclose(claimed, weight, rtol=1e-9, atol=0.0):
            raise HEError(f"update weighted by {claimed!r}, the expected weight is {weight!r}")
        record = message.content.array_records.get(UPDATE_KEY)
        if record is None:
            raise HEError(f"reply has no ArrayRecord '{UPDATE_KEY}'")
        total.add(ciphertexts_of(record))

    def releasable(self, server_round: int, count: int) -> bool:
        """Tell whether a sum of ``count`` valid updates may be released (at least the floor)."""
        return enough_updates(server_round, count, self.floor, "valid encrypted updates")

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Add the valid encrypted updates; return the encrypted global model."""
        total = EncryptedSum(self.key, num_values(self.specs))
        outcome = RoundOutcome(None, None)
        weights: list[float] = []
        accepted: list[dict[str, float]] = []
        for message in self.strategy.order_replies(replies):
            node = message.metadata.src_node_id
            try:
                metrics = self.strategy.check_metrics(message)
                outcome.client_metrics.append({"node": node, **metrics})
                weight = self.expected_weight(metrics)
                self.add_reply(total, message, weight)
            except ReplyError as err:
                outcome.failures.append(report_failure(node, "train", str(err)))
                continue
            except HEError as err:
                outcome.failures.append(
                    report_failure(node, "train", f"encrypted update rejected: {err}")
                )
                continue
            weights.append(weight)
            accepted.append({k: v for k, v in metrics.items() if k != WEIGHT_KEY})
        log(INFO, "aggregate_train: %d valid encrypted updates", total.count)
        if not self.releasable(server_round, total.count):
            return outcome
        if sum(weights) <= 0:
            log(WARNING, "Round %d not aggregated: the encrypted updates weigh 0", server_round)
            return outcome
        outcome.arrays = ciphertext_record(
            total.ciphertexts(), float(sum(weights)), (self.names, self.specs), total.count
        )
        outcome.metrics = MetricRecord(aggregate_metrics(accepted))
        return outcome

    def save_model(self, directory: Path, arrays: ArrayRecord) -> Path:
        """Write the encrypted global model (``fl-he decrypt-model`` turns it into model.pt)."""
        model = EncryptedModel(
            names=self.names,
            specs=self.specs,
            ciphertexts=ciphertexts_of(arrays),
            total_weight=total_weight_of(arrays),
            fingerprint=self.key.fingerprint,
            count=count_of(arrays),
        )
        path = directory / ENCRYPTED_MODEL_FILE
        model.save(path)
        return path
