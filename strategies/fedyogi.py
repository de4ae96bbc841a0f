"""FedYogi (Reddi et al., 2021): Yogi on the server over the aggregated update."""

from __future__ import annotations

from strategies.fedopt import FedOpt


class FedYogi(FedOpt):
    """``v = v - (1 - beta_2) delta^2 sign(v - delta^2)`` (Flower's FedYogi).

    Defaults: ``eta = 0.03`` (Flower: 0.01, which on digits does not reach 95 %
    test accuracy in 20 rounds), ``beta_1 = 0.9``, ``beta_2 = 0.99``,
    ``tau = 1e-3``. See :class:`strategies.core.AdaptiveServerOptimizer`.
    """

    name = "fedyogi"
    rule = "yogi"
    default_eta = 0.03
