"""A strategy that adds behaviour to another through its public API only.

The pattern of Flower's ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``:
the wrapper delegates everything it does not change to the wrapped strategy.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Message
from flwr.serverapp import Grid

from strategies.base import BaseStrategy, EvaluateOutcome, NodeFailure, RoundStrategy


class StrategyWrapper(RoundStrategy):
    """Delegate sampling, messages, evaluation, settings and state to ``strategy``.

    Parameters
    ----------
    strategy : BaseStrategy
        The wrapped strategy.
    """

    def __init__(self, strategy: BaseStrategy) -> None:
        self.strategy = strategy
        self.name = strategy.name

    def summary(self) -> None:
        """Log the wrapped strategy."""
        self.strategy.summary()

    def settings(self) -> dict[str, Any]:
        """Return the wrapped strategy's settings."""
        return self.strategy.settings()

    def state_dict(self) -> dict[str, Any]:
        """Return the wrapped strategy's state."""
        return self.strategy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the wrapped strategy's state."""
        self.strategy.load_state_dict(state)

    def privacy_spent(self) -> dict[str, float]:
        """Return what the wrapped strategy has spent."""
        return self.strategy.privacy_spent()

    def check_nodes(self, grid: Grid, timeout: float) -> list[NodeFailure]:
        """Check the nodes as the wrapped strategy does."""
        return self.strategy.check_nodes(grid, timeout)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample and configure as the wrapped strategy does."""
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample and configure evaluation as the wrapped strategy does."""
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def evaluate_round(self, server_round: int, replies: Iterable[Message]) -> EvaluateOutcome:
        """Aggregate evaluation replies as the wrapped strategy does."""
        return self.strategy.evaluate_round(server_round, replies)
