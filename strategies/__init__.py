"""Aggregation strategies: one ``flwr.serverapp.strategy.Strategy`` subclass per method.

``STRATEGIES`` maps each run-config ``strategy`` name to its class.
"""

from __future__ import annotations

from strategies.base import BaseStrategy
from strategies.fedavg import FedAvg

STRATEGIES: dict[str, type[BaseStrategy]] = {cls.name: cls for cls in (FedAvg,)}


def strategy_class(name: str) -> type[BaseStrategy]:
    """Return the strategy class registered under ``name``.

    Raises
    ------
    ValueError
        Naming the unknown strategy and listing the valid ones.
    """
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ValueError(
            f"unknown strategy '{name}'; valid: {', '.join(sorted(STRATEGIES))}"
        ) from None
