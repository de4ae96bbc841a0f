"""FedAvg (McMahan et al., 2017): mean of client models weighted by their examples."""

from __future__ import annotations

from typing import Any

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays
from strategies.linear import EXAMPLE_WEIGHTED


class FedAvg(BaseStrategy):
    """Federated Averaging: ``w = sum_k n_k w_k / sum_k n_k`` over sampled clients.

    Clients train ``local-epochs`` epochs from the global model; sampling follows
    ``fraction-train`` with at least ``min-train-nodes`` nodes.

    Parameters
    ----------
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "fedavg"
    linear = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.linear_rule = EXAMPLE_WEIGHTED

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the example-weighted mean of the client models."""
        return self.linear_aggregate(updates)
