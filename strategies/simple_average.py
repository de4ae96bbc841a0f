"""Simple average: the unweighted mean of the client models."""

from __future__ import annotations

from typing import Any

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays
from strategies.linear import UNIFORM


class SimpleAverage(BaseStrategy):
    """``w = (1 / K) sum_k w_k`` over the ``K`` valid updates, whatever their data size.

    Parameters
    ----------
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "simple-average"
    linear = True

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.linear_rule = UNIFORM

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the unweighted mean of the client models."""
        return self.linear_aggregate(updates)
