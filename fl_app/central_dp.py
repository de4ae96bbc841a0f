"""Client-level DP on the server (``dp = "central"``): DP-FedAvg over any linear strategy.

:func:`build_strategy` returns the configured strategy; with ``dp = "central"`` it is
a subclass of the chosen strategy class that, in :meth:`aggregate`, clips each
client's update (its change to the global model; for a gradient-sending strategy the
gradient itself) to ``dp-clipping-norm``, takes the strategy's own weighted mean
(:meth:`~strategies.base.BaseStrategy.client_weight`), adds Gaussian noise, and
finishes with the strategy's :meth:`~strategies.base.BaseStrategy.finish_linear`
(McMahan et al. 2018; the same steps as Flower's server-side fixed-clipping wrapper).
That is exactly the math of every strategy with ``linear = True``; other strategies
(medians, Krum, ...) are refused at start-up by the run-config check.

The noise multiplier is ``dp-central-noise-multiplier`` or, if 0, calibrated once so
that client-level ε after ``num-server-rounds`` rounds meets ``dp-target-epsilon``
at the sampling rate sampled / connected clients. ε after each round is reported in
the round's ``train`` metrics (``dp-epsilon``, ``dp-delta``).
"""

from __future__ import annotations

from logging import INFO
from typing import Any, Self

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from fl_app.config import RunConfig
from privacy.accounting import DELTA_CAP, calibrate_noise
from privacy.client_level import (
    add_gaussian_noise,
    aggregate_noise_std,
    client_level_epsilon,
    clip_update,
)
from strategies import strategy_class
from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import Arrays, weighted_average

STATE_KEY = "central-dp-history"
NOISE_STREAM = 0xD9


def central_delta(config: RunConfig, num_clients: int) -> float:
    """Return δ for client-level DP: ``dp-delta``, or ``min(1e-5, 1 / (10 clients))``."""
    return config.dp_delta or min(DELTA_CAP, 1.0 / (10.0 * max(num_clients, 1)))


class CentralDPMixin:
    """Clip, average, noise: DP-FedAvg on top of a linear :class:`BaseStrategy`."""

    dp_config: RunConfig
    dp_history: list[list[float]]
    dp_noise: float

    @classmethod
    def from_run_config(cls, config: RunConfig) -> Self:
        """Build the strategy and its DP settings from the run config."""
        strategy = super().from_run_config(config)  # type: ignore[misc]
        strategy.dp_config = config
        strategy.dp_history = []
        strategy.dp_noise = config.dp_central_noise_multiplier
        return strategy

    def settings(self) -> dict[str, Any]:
        """Return the strategy's settings plus the central-DP ones."""
        return {
            **super().settings(),  # type: ignore[misc]
            "dp": "central",
            "dp-clipping-norm": self.dp_config.dp_clipping_norm,
            "dp-central-noise-multiplier": self.dp_noise or "calibrated at round 1",
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the strategy's state plus the aggregated rounds' accounting history."""
        return {
            **super().state_dict(),  # type: ignore[misc]
            STATE_KEY: {"history": self.dp_history, "noise": self.dp_noise},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        state = dict(state)
        saved = state.pop(STATE_KEY, {"history": [], "noise": self.dp_noise})
        self.dp_history = [list(entry) for entry in saved["history"]]
        self.dp_noise = float(saved["noise"])
        super().load_state_dict(state)  # type: ignore[misc]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> list[Message]:
        """Sample as the strategy does; remember the sampling rate of this round."""
        messages = list(super().configure_train(server_round, arrays, config, grid))  # type: ignore[misc]
        total = max(len(self._rank), len(messages))  # type: ignore[attr-defined]
        self._dp_round = (server_round, len(messages) / total, total)
        if not self.dp_noise:
            cfg = self.dp_config
            self.dp_noise = calibrate_noise(
                cfg.dp_target_epsilon,
                central_delta(cfg, total),
                len(messages) / total,
                cfg.num_server_rounds,
            )
            log(INFO, "Central DP: noise multiplier %.4f calibrated", self.dp_noise)
        return messages

    def _reference(self, server_round: int) -> Arrays:
        """Return what an update is relative to: the global model, or zeros for gradients."""
        sent = self.round_config(server_round, ConfigRecord())  # type: ignore[attr-defined]
        if sent.get("train-mode", "weights") == "gradient":
            return [np.zeros_like(a) for a in self.global_arrays]  # type: ignore[attr-defined]
        return self.global_arrays  # type: ignore[attr-defined]

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Clip every update, take the weighted mean, add noise, finish linearly."""
        cfg = self.dp_config
        reference = self._reference(server_round)
        clipped = [clip_update(u.arrays, reference, cfg.dp_clipping_norm)[0] for u in updates]
        weights = [self.client_weight(u.num_examples, u.metrics) for u in updates]  # type: ignore[attr-defined]
        mean = weighted_average(clipped, weights)
        std = aggregate_noise_std(self.dp_noise, cfg.dp_clipping_norm, weights)
        rng = np.random.default_rng([cfg.seed, server_round, NOISE_STREAM])
        noisy = add_gaussian_noise(mean, std, rng)
        _, sample_rate, _ = self._dp_round
        self.dp_history.append([sample_rate, 1])
        return self.finish_linear(noisy, self.global_arrays)  # type: ignore[attr-defined]

    def aggregate_train(
        self, server_round: int, replies: Any
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate as the strategy does; add client-level ε and δ to the metrics."""
        arrays, metrics = super().aggregate_train(server_round, replies)  # type: ignore[misc]
        if metrics is not None:
            delta = central_delta(self.dp_config, self._dp_round[2])
            history = [(q, int(n)) for q, n in self.dp_history]
            metrics["dp-epsilon"] = client_level_epsilon(self.dp_noise, history, delta)
            metrics["dp-delta"] = delta
            metrics["dp-noise-multiplier"] = self.dp_noise
        return arrays, metrics


def build_strategy(config: RunConfig) -> BaseStrategy:
    """Return the configured strategy, with client-level DP if ``dp = "central"``.

    Raises
    ------
    ValueError
        If the DP mode cannot work with the strategy (central DP with a non-linear
        strategy; local DP with a strategy whose clients send gradients).
    """
    base = strategy_class(config.strategy)
    if config.dp == "central":
        if not base.linear:
            raise ValueError(
                f"dp = 'central' needs a linear (averaging) strategy; '{config.strategy}' is not"
            )
        cls = type(f"CentralDP{base.__name__}", (CentralDPMixin, base), {})
        return cls.from_run_config(config)
    strategy = base.from_run_config(config)
    if (
        config.dp == "local"
        and strategy.round_config(1, ConfigRecord()).get("train-mode", "weights") == "gradient"
    ):
        raise ValueError(
            f"dp = 'local' trains with DP-SGD, but strategy '{config.strategy}' asks clients "
            "for a full-batch gradient instead of a trained model; use dp = 'central' or a "
            "model-averaging strategy"
        )
    return strategy
