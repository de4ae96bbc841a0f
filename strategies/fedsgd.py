"""FedSGD: clients send full-batch gradients; the server takes one gradient step per round."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Self

import numpy as np
from flwr.app import ConfigRecord

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays, _cast_like, flatten

if TYPE_CHECKING:
    from fl_app.config import RunConfig


class FedSGD(BaseStrategy):
    """``W <- W - eta * sum_k n_k g_k / sum_k n_k`` (McMahan et al., 2017, FedSGD).

    Each client replies with ``g_k``, the gradient of its mean loss over all its
    training data at the global weights (round config ``train-mode = "gradient"``),
    not with new weights. With one client holding all the data a round is one step
    of full-batch gradient descent with learning rate ``eta``.

    Parameters
    ----------
    server_learning_rate : float
        ``eta`` (run-config ``server-learning-rate``; 0 there means the default 0.1:
        on digits larger steps make full-batch gradient descent oscillate).
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "fedsgd"
    linear = True
    default_server_learning_rate: ClassVar[float] = 0.1

    def __init__(self, *, server_learning_rate: float = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.server_learning_rate = server_learning_rate

    @classmethod
    def from_run_config(cls, config: RunConfig) -> Self:
        """Build from the run config (``server-learning-rate``)."""
        return cls(
            server_learning_rate=config.server_learning_rate or cls.default_server_learning_rate,
            **cls.common_kwargs(config),
        )

    def settings(self) -> dict[str, Any]:
        """Return ``server-learning-rate``."""
        return {"server-learning-rate": self.server_learning_rate}

    def round_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """Ask the clients for gradients instead of trained weights."""
        record = super().round_config(server_round, config)
        record["train-mode"] = "gradient"
        return record

    def update_norm(self, arrays: Arrays) -> float:
        """Norm of the step this client's gradient alone would take: ``eta * ||g||``."""
        return float(self.server_learning_rate * np.linalg.norm(flatten(arrays)))

    def finish_linear(self, mean: Arrays, current: Arrays) -> Arrays:
        """Step from the current model along the example-weighted mean gradient."""
        return [
            _cast_like(c.astype(np.float64) - self.server_learning_rate * g.astype(np.float64), c)
            for c, g in zip(current, mean, strict=True)
        ]

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the model after one server gradient step."""
        return self.linear_aggregate(updates)
