"""FedSGD: clients send full-batch gradients; the server takes one gradient step per round."""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays
from strategies.linear import LinearRule
from strategies.protocol import TRAIN_GRADIENT, TRAIN_MODE_KEY


class FedSGD(BaseStrategy):
    """``W <- W - eta * sum_k n_k g_k / sum_k n_k`` (McMahan et al., 2017, FedSGD).

    Each client replies with ``g_k``, the gradient of its mean loss over all its
    training data at the global weights (round config ``train-mode = "gradient"``),
    not with new weights. With one client holding all the data a round is one step
    of full-batch gradient descent with learning rate ``eta``.

    Parameters
    ----------
    server_learning_rate : float
        ``eta > 0``. The default, 0.5, was tuned on the clients' validation split (digits,
        10 clients, the MLP): it learns steadily (0.87 after 20 rounds, 0.96 after 60),
        where 0.8 and more oscillate and 0.1 hardly moves.
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "fedsgd"
    linear = True
    sends_gradient = True

    def __init__(self, *, server_learning_rate: float = 0.5, **kwargs: Any) -> None:
        if not server_learning_rate > 0:
            raise ValueError(f"server_learning_rate must be > 0, got {server_learning_rate!r}")
        super().__init__(**kwargs)
        self.server_learning_rate = server_learning_rate
        self.linear_rule = LinearRule(gradient_step=server_learning_rate)

    def settings(self) -> dict[str, Any]:
        """Return ``server-learning-rate``."""
        return {"server-learning-rate": self.server_learning_rate}

    def round_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """Ask the clients for gradients instead of trained weights."""
        record = super().round_config(server_round, config)
        record[TRAIN_MODE_KEY] = TRAIN_GRADIENT
        return record

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the model after one server gradient step."""
        return self.linear_aggregate(updates)
