"""FedTrimmedAvg (Yin et al., 2018): coordinate-wise mean without the extreme values."""

from __future__ import annotations

from typing import Any

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays, trimmed_mean


class FedTrimmedAvg(BaseStrategy):
    """Per coordinate, cut the ``int(beta K)`` lowest and highest of ``K`` values, average the rest.

    Parameters
    ----------
    beta : float
        ``trim-beta`` in ``[0, 0.5)`` (Flower's ``beta``, default 0.2).
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "fedtrimmedavg"

    def __init__(self, *, beta: float = 0.2, **kwargs: Any) -> None:
        if not 0.0 <= beta < 0.5:
            raise ValueError(f"trim beta must be in [0, 0.5), got {beta!r}")
        super().__init__(**kwargs)
        self.beta = beta

    def settings(self) -> dict[str, Any]:
        """Return ``trim-beta``."""
        return {"trim-beta": self.beta}

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the coordinate-wise trimmed mean."""
        return trimmed_mean([u.arrays for u in updates], self.beta)
