"""Aggregation strategies: one ``flwr.serverapp.strategy.Strategy`` subclass per method.

``STRATEGIES`` maps each run-config ``strategy`` name to its class. Strategies take
plain constructor arguments, as Flower's do; they know nothing about the app's run
config (``fl_app.server.factory`` maps one to the other).
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

LINEAR_STRATEGIES: tuple[str, ...] = tuple(name for name, cls in STRATEGIES.items() if cls.linear)
"""Strategies that aggregate with a linear rule: the ones encryption and client-level DP accept."""
