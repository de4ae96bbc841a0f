"""Aggregation strategies: one ``flwr.serverapp.strategy.Strategy`` subclass per method.

``STRATEGIES`` maps each run-config ``strategy`` name to its class.
"""

from __future__ import annotations

from strategies.base import BaseStrategy
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedmedian import FedMedian
from strategies.fedprox import FedProx
from strategies.fedsgd import FedSGD
from strategies.fedtrimmedavg import FedTrimmedAvg
from strategies.fedyogi import FedYogi
from strategies.hybrid import Hybrid
from strategies.krum import Krum, MultiKrum
from strategies.simple_average import SimpleAverage
from strategies.weighted_average import WeightedAverage

STRATEGIES: dict[str, type[BaseStrategy]] = {
    cls.name: cls
    for cls in (
        SimpleAverage,
        WeightedAverage,
        FedAvg,
        FedSGD,
        Hybrid,
        FedProx,
        FedAvgM,
        FedAdam,
        FedYogi,
        FedAdagrad,
        FedMedian,
        FedTrimmedAvg,
        Krum,
        MultiKrum,
    )
}


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
