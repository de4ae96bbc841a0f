"""FedMedian (Yin et al., 2018): the coordinate-wise median of the client models."""

from __future__ import annotations

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays, coordinate_median


class FedMedian(BaseStrategy):
    """Each coordinate of the new model is the median of the clients' values (unweighted)."""

    name = "fedmedian"

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the coordinate-wise median."""
        return coordinate_median([u.arrays for u in updates])
