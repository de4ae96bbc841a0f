"""FedAvgM (Hsu et al., 2019): FedAvg followed by server SGD with momentum."""

from __future__ import annotations

from typing import Any

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays, ServerMomentum
from strategies.linear import EXAMPLE_WEIGHTED


class FedAvgM(BaseStrategy):
    """Example-weighted mean ``a``, then ``v = beta v + (w - a)``, ``w <- w - eta v``.

    See :class:`strategies.core.ServerMomentum`; this is Flower's FedAvgM.

    Parameters
    ----------
    server_learning_rate : float
        ``eta``.
    server_momentum : float
        ``beta`` in ``[0, 1)``.
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "fedavgm"

    def __init__(
        self, *, server_learning_rate: float = 1.0, server_momentum: float = 0.5, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.optimizer = ServerMomentum(server_learning_rate, server_momentum)

    def settings(self) -> dict[str, Any]:
        """Return ``server-learning-rate`` and ``server-momentum``."""
        return {
            "server-learning-rate": self.optimizer.learning_rate,
            "server-momentum": self.optimizer.momentum,
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the momentum buffer."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the momentum buffer."""
        self.optimizer.load_state_dict(state)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the model after the server momentum step."""
        mean = self.linear_aggregate(updates, EXAMPLE_WEIGHTED)
        return self.optimizer.step(self.global_arrays, mean)
