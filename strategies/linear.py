"""Linear aggregation rules: a weighted mean of the updates, then an affine finish.

A :class:`LinearRule` is pure numpy: the server's linear strategies aggregate with it,
and under homomorphic encryption each client applies it to its own update before
encrypting (the server sends the rule with the round's config), so that the
encrypted sum divided by the total weight *is* the next global model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from strategies.core import Arrays, cast_like, equal_weights_if_all_zero, weighted_average
from strategies.protocol import NUM_EXAMPLES_KEY

QUALITY_METRICS: tuple[str, ...] = ("val-accuracy", "train-accuracy")
"""Metrics the ClientApp reports about its *trained* model (higher = better)."""
WEIGHT_BY: tuple[str, ...] = (NUM_EXAMPLES_KEY, *QUALITY_METRICS)

RULE_PREFIX = "linear-rule-"


@dataclass(frozen=True)
class LinearRule:
    """``new = finish(sum_k w_k u_k / sum_k w_k)`` with ``w_k = n_k^a * q_k^b``.

    Parameters
    ----------
    examples_exponent : float
        ``a``, the exponent of the client's ``num-examples`` ``n_k`` (1 = FedAvg,
        0 = ignore data size).
    quality_metric : str
        The reply metric ``q_k`` (one of ``QUALITY_METRICS``), or ``""`` for none.
    quality_exponent : float
        ``b``, the exponent of ``q_k`` (``0 ** 0 = 1``).
    gradient_step : float
        0 for model averaging (``finish`` keeps the mean); ``eta > 0`` when the
        updates are gradients and ``finish`` steps ``current - eta * mean`` (FedSGD).
    """

    examples_exponent: float = 1.0
    quality_metric: str = ""
    quality_exponent: float = 0.0
    gradient_step: float = 0.0

    def __post_init__(self) -> None:
        if self.quality_metric and self.quality_metric not in QUALITY_METRICS:
            raise ValueError(
                f"quality metric must be one of {QUALITY_METRICS}, got {self.quality_metric!r}"
            )
        if self.quality_exponent and not self.quality_metric:
            raise ValueError("a quality exponent needs a quality metric")
        if self.gradient_step < 0:
            raise ValueError(f"gradient step must be >= 0, got {self.gradient_step!r}")

    @property
    def sends_gradient(self) -> bool:
        """Tell whether the updates are gradients rather than models."""
        return self.gradient_step > 0

    @property
    def required_metric(self) -> str:
        """The metric every reply must carry to be weighted (``""`` if none)."""
        return self.quality_metric if self.quality_exponent else ""

    def weight(self, num_examples: int, metrics: Mapping[str, float]) -> float:
        """Return ``w_k = n_k^a * q_k^b`` of one client."""
        quality = float(metrics[self.quality_metric]) if self.required_metric else 1.0
        return float(num_examples) ** self.examples_exponent * quality**self.quality_exponent

    def reference(self, current: Arrays) -> Arrays:
        """Return what an update is relative to: the global model, or zeros for gradients."""
        return [np.zeros_like(a) for a in current] if self.sends_gradient else list(current)

    def finish(self, mean: Arrays, current: Arrays) -> Arrays:
        """Turn the weighted mean of the updates into the new global arrays."""
        if not self.sends_gradient:
            return mean
        return [
            cast_like(c.astype(np.float64) - self.gradient_step * g.astype(np.float64), c)
            for c, g in zip(current, mean, strict=True)
        ]

    def aggregate(
        self, updates: Sequence[Arrays], weights: Sequence[float], current: Arrays
    ) -> tuple[Arrays, bool]:
        """Return ``finish(weighted mean)`` and whether equal weights replaced all-zero ones."""
        used, fallback = equal_weights_if_all_zero(weights)
        return self.finish(weighted_average(updates, used), current), fallback

    def to_config(self) -> dict[str, Any]:
        """Return the rule as round-config entries (sent to clients under encryption)."""
        return {RULE_PREFIX + key.replace("_", "-"): value for key, value in asdict(self).items()}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LinearRule:
        """Read the rule back from round-config entries written by :meth:`to_config`.

        Raises
        ------
        ValueError
            If an entry is missing or invalid.
        """
        values = {}
        for key, default in asdict(cls()).items():
            name = RULE_PREFIX + key.replace("_", "-")
            if name not in config:
                raise ValueError(f"round config has no '{name}'")
            values[key] = type(default)(config[name])
        return cls(**values)


EXAMPLE_WEIGHTED = LinearRule()
"""FedAvg's rule: the mean weighted by ``num-examples``."""
UNIFORM = LinearRule(examples_exponent=0.0)
"""Every client weighs 1."""
