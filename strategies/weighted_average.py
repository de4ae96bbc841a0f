"""Weighted average: client models weighted by data size or by a reported quality metric."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

from strategies.base import ClientUpdate
from strategies.core import Arrays
from strategies.quality import WEIGHT_BY, MetricWeightedStrategy, metric_weight

if TYPE_CHECKING:
    from fl_app.config import RunConfig


class WeightedAverage(MetricWeightedStrategy):
    """``w = sum_k a_k w_k / sum_k a_k`` with ``a_k`` chosen by ``weight-by``.

    Parameters
    ----------
    weight_by : str
        ``num-examples`` (then this is FedAvg), or a metric each client reports
        about its trained model: ``val-accuracy`` (default) or ``train-accuracy``.
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

    @classmethod
    def from_run_config(cls, config: RunConfig) -> Self:
        """Build from the run config (``weight-by``)."""
        return cls(weight_by=config.weight_by, **cls.common_kwargs(config))

    def settings(self) -> dict[str, Any]:
        """Return ``weight-by``."""
        return {"weight-by": self.weight_by}

    def weight_metric(self) -> str:
        """Return ``weight-by``."""
        return self.weight_by

    def client_weight(self, num_examples: int, metrics: Mapping[str, float]) -> float:
        """Return the client's examples or its reported metric."""
        return metric_weight(self.weight_by, num_examples, metrics)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the weighted mean of the client models."""
        return self.linear_aggregate(updates)
