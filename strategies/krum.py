"""Krum and Multi-Krum (Blanchard et al., 2017): keep the updates closest to their neighbours."""

from __future__ import annotations

from logging import INFO, WARNING
from typing import Any

from flwr.common.logger import log

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays, krum_select
from strategies.linear import EXAMPLE_WEIGHTED


class Krum(BaseStrategy):
    """The new model is the one client model with the lowest Krum score.

    A model's score is the sum of its squared L2 distances to its ``n - f - 2``
    nearest other models (``f`` = ``num-malicious``, at least 1 neighbour); see
    :func:`strategies.core.krum_scores`. Krum tolerates ``f`` Byzantine clients when
    ``n >= 2 f + 3``; a round with fewer updates is still aggregated, with a warning.

    Parameters
    ----------
    num_malicious : int
        ``f``, the number of malicious clients assumed (Flower's ``num_malicious_nodes``).
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "krum"

    def __init__(self, *, num_malicious: int = 0, **kwargs: Any) -> None:
        if num_malicious < 0:
            raise ValueError(f"num_malicious must be >= 0, got {num_malicious!r}")
        super().__init__(**kwargs)
        self.num_malicious = num_malicious

    def settings(self) -> dict[str, Any]:
        """Return ``num-malicious``."""
        return {"num-malicious": self.num_malicious}

    def num_selected(self, num_updates: int) -> int:
        """Return how many updates are kept this round (1 for Krum)."""
        return 1

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Keep the lowest-scoring update(s); average them weighted by examples."""
        n, f = len(updates), self.num_malicious
        if n < 2 * f + 3:
            log(
                WARNING,
                "%s round %d: %d updates; tolerating num-malicious = %d needs at least %d",
                self.name,
                server_round,
                n,
                f,
                2 * f + 3,
            )
        chosen = krum_select([u.arrays for u in updates], f, self.num_selected(n))
        log(
            INFO,
            "%s round %d kept nodes %s",
            self.name,
            server_round,
            [updates[i].node_id for i in chosen],
        )
        return self.linear_aggregate([updates[i] for i in chosen], EXAMPLE_WEIGHTED)


class MultiKrum(Krum):
    """Multi-Krum: the example-weighted mean of the ``m`` lowest-scoring client models.

    Parameters
    ----------
    num_selected : int
        ``m`` (run-config ``num-krum-selected``; Flower's ``num_nodes_to_select``);
        0 means ``n - f`` of the ``n`` updates in each round (at least 1).
    **kwargs
        Passed to :class:`Krum`.
    """

    name = "multikrum"

    def __init__(self, *, num_selected: int = 0, **kwargs: Any) -> None:
        if num_selected < 0:
            raise ValueError(f"num_selected must be >= 0, got {num_selected!r}")
        super().__init__(**kwargs)
        self.num_krum_selected = num_selected

    def settings(self) -> dict[str, Any]:
        """Return ``num-malicious`` and ``num-krum-selected``."""
        return {**super().settings(), "num-krum-selected": self.num_krum_selected}

    def num_selected(self, num_updates: int) -> int:
        """Return ``m``, or ``n - f`` when ``m`` is 0, never more than ``n``."""
        if self.num_krum_selected:
            return min(self.num_krum_selected, num_updates)
        return max(1, num_updates - self.num_malicious)
