"""Weighted average: client models weighted by data size or by a reported quality metric."""

from __future__ import annotations

from typing import Any

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays
from strategies.linear import EXAMPLE_WEIGHTED, WEIGHT_BY, LinearRule
from strategies.protocol import NUM_EXAMPLES_KEY


class WeightedAverage(BaseStrategy):
    """``w = sum_k a_k w_k / sum_k a_k`` with ``a_k`` chosen by ``weight-by``.

    Parameters
    ----------
    weight_by : str
        ``num-examples`` (then this is FedAvg), or a metric each client reports
        about its trained model: ``val-accuracy`` (default) or ``train-accuracy``.
        A reply without that metric, or with a negative value, is left out.
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.

    Notes
    -----
    If every ``a_k`` is 0 (e.g. all clients report accuracy 0) the updates are
    averaged with equal weights and a warning is logged.
    """

    name = "weighted-average"
    linear = True

    def __init__(self, *, weight_by: str = "val-accuracy", **kwargs: Any) -> None:
        if weight_by not in WEIGHT_BY:
            raise ValueError(f"weight_by must be one of {WEIGHT_BY}, got {weight_by!r}")
        super().__init__(**kwargs)
        self.weight_by = weight_by
        self.linear_rule = (
            EXAMPLE_WEIGHTED
            if weight_by == NUM_EXAMPLES_KEY
            else LinearRule(examples_exponent=0.0, quality_metric=weight_by, quality_exponent=1.0)
        )

    def settings(self) -> dict[str, Any]:
        """Return ``weight-by``."""
        return {"weight-by": self.weight_by}

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the weighted mean of the client models."""
        return self.linear_aggregate(updates)
