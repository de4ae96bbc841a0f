"""Simple average: the unweighted mean of the client models."""

from __future__ import annotations

from collections.abc import Mapping

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays


class SimpleAverage(BaseStrategy):
    """``w = (1 / K) sum_k w_k`` over the ``K`` valid updates, whatever their data size."""

    name = "simple-average"
    linear = True

    def client_weight(self, num_examples: int, metrics: Mapping[str, float]) -> float:
        """Every client weighs 1."""
        return 1.0

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the unweighted mean of the client models."""
        return self.linear_aggregate(updates)
