"""Client-level DP on the server (``dp = "central"``): DP-FedAvg as a strategy wrapper.

:class:`CentralDP` wraps any strategy that aggregates with a
:class:`~strategies.linear.LinearRule`, through its public API, as Flower's
``DifferentialPrivacyServerSideFixedClipping(strategy, ...)`` does: it clips each
client's update (its change to the global model; for a gradient-sending strategy the
gradient itself) to ``clipping_norm``, takes the rule's weighted mean, adds Gaussian
noise and finishes with the rule (McMahan et al. 2018).

The noise multiplier is given or, if 0, calibrated once so that client-level ε after
``num_rounds`` rounds meets ``target_epsilon`` at the sampling rate sampled / connected
clients. ε after each round is reported in the round's train metrics (``dp-epsilon``,
``dp-delta``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from privacy.client_level import (
    add_gaussian_noise,
    aggregate_noise_std,
    client_level_epsilon,
    clip_update,
)
from strategies.base import (
    BaseStrategy,
    RoundOutcome,
    aggregate_metrics,
    arrays_record,
    enough_updates,
)
from strategies.core import weighted_average
from strategies.wrapper import StrategyWrapper

STATE_KEY = "central-dp-history"
NOISE_STREAM = 0xD9
DELTA_CAP = 1e-5


def central_delta(delta: float, num_clients: int) -> float:
    """Return δ for client-level DP: ``delta``, or ``min(1e-5, 1 / (10 clients))`` if 0."""
    return delta or min(DELTA_CAP, 1.0 / (10.0 * max(num_clients, 1)))


@dataclass(frozen=True)
class ClientLevelDP:
    """What client-level DP promises and how.

    Parameters
    ----------
    clipping_norm : float
        ``C``, the L2 bound of one client's update.
    noise_multiplier : float
        ``z``; 0 = calibrate from ``target_epsilon`` at round 1.
    target_epsilon : float
        Client-level ε after ``num_rounds`` rounds (calibration).
    delta : float
        δ; 0 = ``min(1e-5, 1 / (10 clients))``.
    num_rounds : int
        Rounds planned (calibration).
    """

    clipping_norm: float
    noise_multiplier: float
    target_epsilon: float
    delta: float
    num_rounds: int


class CentralDP(StrategyWrapper):
    """Clip, average, noise: DP-FedAvg on top of a linear strategy.

    Parameters
    ----------
    strategy : BaseStrategy
        A strategy with a linear rule.
    dp : ClientLevelDP
        The guarantee and the mechanism's parameters.
    seed : int
        Seeds the noise.

    Raises
    ------
    ValueError
        If the strategy has no linear rule.
    """

    def __init__(self, strategy: BaseStrategy, dp: ClientLevelDP, seed: int) -> None:
        if strategy.linear_rule is None:
            raise ValueError(
                f"dp = 'central' needs a linear (averaging) strategy; '{strategy.name}' is not"
            )
        super().__init__(strategy)
        self.rule = strategy.linear_rule
        self.clipping_norm = dp.clipping_norm
        self.noise_multiplier = dp.noise_multiplier
        self.dp = dp
        self.seed = seed
        self.history: list[list[float]] = []
        self.sample_rate = 1.0
        self.num_clients = 0

    def settings(self) -> dict[str, Any]:
        """Return the strategy's settings plus the central-DP ones."""
        return {
            **self.strategy.settings(),
            "dp": "central",
            "dp-clipping-norm": self.clipping_norm,
            "dp-central-noise-multiplier": self.noise_multiplier or "calibrated at round 1",
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the strategy's state plus the aggregated rounds' accounting history."""
        return {
            **self.strategy.state_dict(),
            STATE_KEY: {"history": self.history, "noise": self.noise_multiplier},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        state = dict(state)
        saved = state.pop(STATE_KEY, {"history": [], "noise": self.noise_multiplier})
        self.history = [list(entry) for entry in saved["history"]]
        self.noise_multiplier = float(saved["noise"])
        self.strategy.load_state_dict(state)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Sample as the strategy does; remember the sampling rate of this round."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.num_clients = max(len(list(grid.get_nodes())), len(messages))
        self.sample_rate = len(messages) / self.num_clients
        if not self.noise_multiplier:
            from privacy.accounting import calibrate_noise  # imports Opacus

            self.noise_multiplier = calibrate_noise(
                self.dp.target_epsilon,
                central_delta(self.dp.delta, self.num_clients),
                self.sample_rate,
                self.dp.num_rounds,
            )
            log(INFO, "Central DP: noise multiplier %.4f calibrated", self.noise_multiplier)
        return messages

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Clip every update, take the weighted mean, add noise, finish linearly."""
        strategy = self.strategy
        updates, failures, client_metrics = strategy.screen_replies(replies)
        outcome = RoundOutcome(None, None, failures, client_metrics)
        if not enough_updates(server_round, len(updates), strategy.min_train_nodes):
            return outcome
        current = strategy.global_arrays
        reference = self.rule.reference(current)
        clipped = [clip_update(u.arrays, reference, self.clipping_norm)[0] for u in updates]
        weights = [self.rule.weight(u.num_examples, u.metrics) for u in updates]
        mean = weighted_average(clipped, weights)
        std = aggregate_noise_std(self.noise_multiplier, self.clipping_norm, weights)
        rng = np.random.default_rng([self.seed, server_round, NOISE_STREAM])
        noisy = add_gaussian_noise(mean, std, rng)
        self.history.append([self.sample_rate, 1])
        outcome.arrays = arrays_record(strategy.global_keys, self.rule.finish(noisy, current))
        delta = central_delta(self.dp.delta, self.num_clients)
        outcome.metrics = MetricRecord(
            {
                **aggregate_metrics([u.metrics for u in updates]),
                "dp-epsilon": client_level_epsilon(
                    self.noise_multiplier, [(q, int(n)) for q, n in self.history], delta
                ),
                "dp-delta": delta,
                "dp-noise-multiplier": self.noise_multiplier,
            }
        )
        return outcome
