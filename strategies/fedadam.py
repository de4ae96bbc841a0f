"""FedAdam (Reddi et al., 2021): Adam on the server over the aggregated update."""

from __future__ import annotations

from strategies.fedopt import FedOpt


class FedAdam(FedOpt):
    """``v = beta_2 v + (1 - beta_2) delta^2``, bias-corrected step (Flower's FedAdam).

    Defaults as Flower's: ``eta = 0.1``, ``beta_1 = 0.9``, ``beta_2 = 0.99``,
    ``tau = 1e-3``. See :class:`strategies.core.AdaptiveServerOptimizer`.
    """

    name = "fedadam"
    rule = "adam"
    default_eta = 0.1
