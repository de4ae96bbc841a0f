"""Server side of homomorphic encryption: sum encrypted updates with the public context.

:class:`EncryptedAggregation` wraps a linear strategy. It samples, configures and
evaluates through the wrapped strategy, but aggregates by adding ciphertexts: the
server holds only the public context (no secret key), keeps the global model
encrypted (the weighted sum plus the total weight, which the clients divide by after
decrypting), and never sees a client's update. Round 1 starts from the plaintext
initial model. A reply whose ciphertexts are corrupted, under another key or of the
wrong count is left out of the round with a reason naming the node.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fl_app.config import ConfigError
from fl_app.he_keys import load_context_file
from fl_app.he_records import (
    FINGERPRINT_KEY,
    KEY_RECORD,
    UPDATE_KEY,
    WEIGHT_KEY,
    ciphertext_record,
    ciphertexts_of,
    is_encrypted,
    total_weight_of,
)
from privacy.he import ArraySpec, EncryptedSum, HEError, HEKey, array_specs, num_values
from privacy.he_model import EncryptedModel
from strategies.base import NUM_EXAMPLES_KEY, BaseStrategy, RoundLog, aggregate_metrics
from strategies.core import Arrays

ENCRYPTED_MODEL_FILE = "model-encrypted.npz"


def check_affine(strategy: BaseStrategy, like: Arrays) -> None:
    """Check that ``finish_linear`` is affine in the mean, as encrypted summation needs.

    Clients apply ``finish_linear`` to their own update before encrypting; the
    decrypted weighted mean equals ``finish_linear(mean)`` only if it is affine.

    Raises
    ------
    ConfigError
        Naming the strategy, if it is not marked linear or its ``finish_linear`` is
        not affine.
    """
    if not type(strategy).linear:
        raise ConfigError(
            f"strategy '{strategy.name}' cannot be used with he = true: homomorphic "
            "encryption needs a linear aggregation (a weighted sum of the updates)"
        )
    rng = np.random.default_rng(0)
    current = [rng.normal(size=a.shape) for a in like]
    first, second = ([rng.normal(size=a.shape) for a in like] for _ in range(2))
    mixed = [0.3 * a + 0.7 * b for a, b in zip(first, second, strict=True)]
    expected = [
        0.3 * a + 0.7 * b
        for a, b in zip(
            strategy.finish_linear(first, current),
            strategy.finish_linear(second, current),
            strict=True,
        )
    ]
    actual = strategy.finish_linear(mixed, current)
    if not all(np.allclose(a, e, atol=1e-9) for a, e in zip(actual, expected, strict=True)):
        raise ConfigError(
            f"strategy '{strategy.name}' cannot be used with he = true: its finish_linear "
            "is not affine in the mean, so it cannot be applied to encrypted updates"
        )


class EncryptedAggregation(Strategy):
    """Aggregate a linear strategy's updates as encrypted sums (public context only).

    Parameters
    ----------
    inner : BaseStrategy
        The linear strategy (sampling, messages, weights, metrics).
    public_context : Path
        The server's public context file: loaded now if it exists (a secret context
        is refused at start-up), else when first needed (in simulation the clients
        create the key files in round 1).
    template : dict[str, np.ndarray]
        The global model's arrays by name (shapes and dtypes of the packing).
    """

    def __init__(
        self, inner: BaseStrategy, public_context: Path, template: dict[str, np.ndarray]
    ) -> None:
        check_affine(inner, [np.asarray(a, dtype=np.float64) for a in template.values()])
        self.inner = inner
        self.public_context = public_context
        self.names = list(template)
        self.specs: list[ArraySpec] = array_specs(list(template.values()))
        self._key: HEKey | None = None
        if public_context.exists():
            self.key()

    # ----------------------------------------------------------- delegation
    @property
    def name(self) -> str:
        """The wrapped strategy's name."""
        return self.inner.name

    @property
    def round_log(self) -> RoundLog:
        """Failures and client metrics of the last round."""
        return self.inner.round_log

    def settings(self) -> dict[str, Any]:
        """Return the wrapped strategy's settings, and that aggregation is encrypted."""
        return {**self.inner.settings(), "he": True}

    def summary(self) -> None:
        """Log the wrapped strategy and the encryption."""
        self.inner.summary()
        log(INFO, "\t└──> Homomorphic encryption: server public context %s", self.public_context)

    def state_dict(self) -> dict[str, Any]:
        """Return the wrapped strategy's state."""
        return self.inner.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped strategy's state."""
        self.inner.load_state_dict(state)

    # ----------------------------------------------------------------- keys
    def key(self) -> HEKey:
        """Load the public context (once); a secret context is refused."""
        if self._key is None:
            self._key = load_context_file(self.public_context, secret=False)
            log(
                INFO,
                "HE: loaded public context %s (key %s)",
                self.public_context,
                self._key.fingerprint,
            )
        return self._key

    def _with_key(self, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        record = ConfigRecord(dict(config))
        if is_encrypted(arrays):
            record[FINGERPRINT_KEY] = self.key().fingerprint
        return record

    # ------------------------------------------------------------- messages
    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the (encrypted) global model, with its key's fingerprint."""
        return self.inner.configure_train(
            server_round, arrays, self._with_key(arrays, config), grid
        )

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the (encrypted) global model for federated evaluation."""
        return self.inner.configure_evaluate(
            server_round, arrays, self._with_key(arrays, config), grid
        )

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """Aggregate the clients' evaluation metrics (plaintext)."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def _add_reply(self, total: EncryptedSum, message: Message, metrics: dict[str, float]) -> float:
        """Add one reply's ciphertexts to ``total``; return its weight."""
        key = message.content.config_records.get(KEY_RECORD, ConfigRecord()).get("fingerprint")
        expected = self.key().fingerprint
        if key != expected:
            raise HEError(
                f"update is under key {key!r}, the server's public context is key {expected!r}"
            )
        plain = {k: v for k, v in metrics.items() if k != WEIGHT_KEY}
        weight = self.inner.client_weight(int(metrics[NUM_EXAMPLES_KEY]), plain)
        claimed = metrics.get(WEIGHT_KEY)
        if claimed is None or not np.isclose(claimed, weight, rtol=1e-9, atol=0.0):
            raise HEError(f"update weighted by {claimed!r}, the strategy's weight is {weight!r}")
        record = message.content.array_records.get(UPDATE_KEY)
        if record is None:
            raise HEError(f"reply has no ArrayRecord '{UPDATE_KEY}'")
        total.add(ciphertexts_of(record))
        return weight

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Add the valid encrypted updates; return the encrypted global model."""
        inner = self.inner
        total = EncryptedSum(self.key(), num_values(self.specs))
        weights: list[float] = []
        accepted: list[dict[str, float]] = []
        for message in inner._ordered(replies):
            metrics = inner._metrics_of(message, "train")
            if metrics is None:
                continue
            node = message.metadata.src_node_id
            inner.round_log.client_metrics.append({"node": node, **metrics})
            try:
                weights.append(self._add_reply(total, message, metrics))
            except HEError as err:
                inner._fail(node, "train", f"encrypted update rejected: {err}")
                continue
            accepted.append({k: v for k, v in metrics.items() if k != WEIGHT_KEY})
        log(INFO, "aggregate_train: %d valid encrypted updates", total.count)
        if total.count < inner.min_train_nodes or sum(weights) <= 0:
            log(
                WARNING,
                "Round %d not aggregated: %d valid encrypted updates (total weight %g), "
                "min-train-nodes is %d",
                server_round,
                total.count,
                sum(weights),
                inner.min_train_nodes,
            )
            return None, None
        record = ciphertext_record(total.ciphertexts(), float(sum(weights)))
        return record, MetricRecord(aggregate_metrics(accepted))

    # ---------------------------------------------------------------- model
    def save_model(self, directory: Path, arrays: ArrayRecord) -> Path:
        """Write the encrypted global model (``fl-he decrypt-model`` turns it into model.pt)."""
        model = EncryptedModel(
            names=self.names,
            specs=self.specs,
            ciphertexts=ciphertexts_of(arrays),
            total_weight=total_weight_of(arrays),
            fingerprint=self.key().fingerprint,
        )
        path = directory / ENCRYPTED_MODEL_FILE
        model.save(path)
        return path
