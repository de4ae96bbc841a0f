"""Client weights from what a client reports: its examples or a quality metric."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flwr.app import Message

from strategies.base import NUM_EXAMPLES_KEY, BaseStrategy, ClientUpdate

QUALITY_METRICS: tuple[str, ...] = ("val-accuracy", "train-accuracy")
"""Metrics the ClientApp reports about its *trained* model (higher = better)."""
WEIGHT_BY: tuple[str, ...] = (NUM_EXAMPLES_KEY, *QUALITY_METRICS)


def metric_weight(key: str, num_examples: int, metrics: Mapping[str, float]) -> float:
    """Return ``num_examples``, or the reported metric ``key`` (which must be present)."""
    if key == NUM_EXAMPLES_KEY:
        return float(num_examples)
    return float(metrics[key])


class MetricWeightedStrategy(BaseStrategy):
    """A strategy whose client weights use a metric every reply must carry.

    A reply without the metric, or with a negative value of it, is left out of the
    round with its reason recorded, like any other invalid reply.
    """

    def weight_metric(self) -> str:
        """Return the metric the weights use (``num-examples`` needs no check)."""
        return NUM_EXAMPLES_KEY

    def collect_updates(self, replies: Iterable[Message]) -> list[ClientUpdate]:
        """Check the replies as :class:`BaseStrategy` does, then require the metric."""
        key = self.weight_metric()
        kept = []
        for update in super().collect_updates(replies):
            if key == NUM_EXAMPLES_KEY:
                kept.append(update)
            elif key not in update.metrics:
                self._fail(update.node_id, "train", f"reply has no metric '{key}' to weight by")
            elif update.metrics[key] < 0:
                self._fail(
                    update.node_id, "train", f"metric '{key}' = {update.metrics[key]} is negative"
                )
            else:
                kept.append(update)
        return kept
