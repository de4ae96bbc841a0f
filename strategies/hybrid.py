"""Hybrid: client models weighted by data size and quality together, with a mix."""

from __future__ import annotations

from typing import Any

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays
from strategies.linear import LinearRule


class Hybrid(BaseStrategy):
    """Weights that combine data size ``n_k`` and quality ``q_k`` geometrically.

    The new global model is ``w = sum_k a_k w_k / sum_k a_k`` with

        ``a_k = n_k ** (1 - mix) * q_k ** mix``

    where ``n_k`` is the client's ``num-examples``, ``q_k`` the quality metric it
    reports about its trained model (``weight-by``: ``val-accuracy`` or
    ``train-accuracy``) and ``mix`` is ``hybrid-mix`` in ``[0, 1]`` (``0 ** 0 = 1``).
    ``mix = 0`` is FedAvg, ``mix = 1`` weights by quality only, ``mix = 0.5`` by
    ``sqrt(n_k q_k)``. Each ``a_k`` depends on that client alone, so the aggregate
    stays linear (a client can weight its own update before encrypting it), and
    scaling every ``n_k`` or every ``q_k`` by a constant leaves the result unchanged.
    A client with ``q_k = 0`` (and ``mix > 0``) gets weight 0; if all weights are 0
    the updates are averaged equally, with a warning.

    Parameters
    ----------
    mix : float
        ``hybrid-mix`` in ``[0, 1]``.
    quality_metric : str
        The reported metric used as ``q_k``.
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "hybrid"
    linear = True

    def __init__(
        self, *, mix: float = 0.5, quality_metric: str = "val-accuracy", **kwargs: Any
    ) -> None:
        if not 0.0 <= mix <= 1.0:
            raise ValueError(f"hybrid mix must be in [0, 1], got {mix!r}")
        super().__init__(**kwargs)
        self.mix = mix
        self.quality_metric = quality_metric
        self.linear_rule = LinearRule(
            examples_exponent=1.0 - mix, quality_metric=quality_metric, quality_exponent=mix
        )

    def settings(self) -> dict[str, Any]:
        """Return ``hybrid-mix`` and the quality metric (``weight-by``)."""
        return {"hybrid-mix": self.mix, "weight-by": self.quality_metric}

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the hybrid-weighted mean of the client models."""
        return self.linear_aggregate(updates)
