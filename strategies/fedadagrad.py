"""FedAdagrad (Reddi et al., 2021): Adagrad on the server over the aggregated update."""

from __future__ import annotations

from strategies.fedopt import FedOpt


class FedAdagrad(FedOpt):
    """``v = v + delta^2``, ``m = delta`` (``beta-1``/``beta-2`` unused, as in Flower).

    Defaults as Flower's: ``eta = 0.1``, ``tau = 1e-3``.
    See :class:`strategies.core.AdaptiveServerOptimizer`.
    """

    name = "fedadagrad"
    rule = "adagrad"
    default_eta = 0.1
    uses_betas = False
