"""Client-level DP on the server (``dp = "central"``): DP-FedAvg as a strategy wrapper.

:class:`CentralDP` wraps any strategy that aggregates with a
:class:`~strategies.linear.LinearRule`, through its public API, as Flower's
``DifferentialPrivacyServerSideFixedClipping(strategy, ...)`` does. Each round it
samples clients by Poisson sampling from the server's secret, clips every update,
sums them, divides by the *expected* number of participants and adds Gaussian
noise (:mod:`privacy.client_level` explains why this has sensitivity ``C / m``),
then finishes with the strategy's rule (a model step, or a gradient step for FedSGD).
The strategy's own client weights are not used: weights a client reports would
change the sensitivity.

Every sampling draw is charged to the accountant before the clients are asked, so
a round that is retried or not released still counts; a round that would push ε
over ``dp-target-epsilon`` is not started, and the run ends ``budget-exhausted``.
ε is Opacus' accountant (``dp-accountant``) over ``[(z, q, rounds)]`` at δ.

Adversary: a reader of the published model, ``results.json`` and the checkpoint.
The server itself sees every update in plaintext (use ``he`` for that). The noise
and the sampling come from the run's secret (32 bytes from the OS CSPRNG, in the
run directory's ``private/`` folder, mode 0600), never from the public ``seed``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from privacy import BudgetExceededError, PrivacyError, auto_delta
from privacy.client_level import clip_delta, noisy_mean_delta, poisson_sample
from privacy.secrets import derive_generator
from strategies.base import (
    BaseStrategy,
    RoundOutcome,
    aggregate_metrics,
    arrays_record,
    enough_updates,
)
from strategies.core import cast_like
from strategies.wrapper import StrategyWrapper

STATE_KEY = "central-dp"


@dataclass(frozen=True)
class ClientLevelDP:
    """What client-level DP promises and how.

    Parameters
    ----------
    clipping_norm : float
        ``C``, the L2 bound of one client's update.
    noise_multiplier : float
        ``z``; 0 = calibrate at round 1 so that ε after ``num_rounds`` rounds meets
        ``target_epsilon``.
    target_epsilon : float
        The ε no round may push the run over (0 = no ceiling; then give ``z``).
    delta : float
        δ; 0 = ``min(1e-5, 1 / (10 N))`` for ``N`` connected clients.
    sample_rate : float
        ``q``, the probability that a client takes part in a round.
    num_rounds : int
        Rounds planned (calibration).
    accountant : str
        Opacus accountant, ``"rdp"`` or ``"prv"``.
    """

    clipping_norm: float
    noise_multiplier: float
    target_epsilon: float
    delta: float
    sample_rate: float
    num_rounds: int
    accountant: str


class CentralDP(StrategyWrapper):
    """Poisson-sample, clip, sum, noise: DP-FedAvg on top of a linear strategy.

    Parameters
    ----------
    strategy : BaseStrategy
        A strategy with a linear rule that asks every connected node
        (``fraction_train = 1``): the wrapper draws the sample.
    dp : ClientLevelDP
        The guarantee and the mechanism's parameters.
    secret : bytes
        The run's secret: seeds the sampling and the noise.

    Raises
    ------
    ValueError
        If the strategy has no linear rule or samples clients itself.
    """

    def __init__(self, strategy: BaseStrategy, dp: ClientLevelDP, secret: bytes) -> None:
        if strategy.linear_rule is None:
            raise ValueError(
                f"dp = 'central' needs a linear (averaging) strategy; '{strategy.name}' is not"
            )
        if strategy.fraction_train != 1.0:
            raise ValueError("the wrapped strategy must ask every node; CentralDP samples")
        super().__init__(strategy)
        self.rule = strategy.linear_rule
        self.dp = dp
        self.secret = secret
        self.noise_multiplier = dp.noise_multiplier
        self.delta = dp.delta
        self.num_clients = 0
        self.history: list[list[float]] = []
        self._attempts: defaultdict[int, int] = defaultdict(int)
        self._draw = b""

    def settings(self) -> dict[str, Any]:
        """Return the strategy's settings plus the central-DP ones."""
        return {
            **self.strategy.settings(),
            "dp": "central",
            "dp-clipping-norm": self.dp.clipping_norm,
            "dp-sample-rate": self.dp.sample_rate,
            "dp-central-noise-multiplier": self.noise_multiplier or "calibrated at round 1",
            "dp-accountant": self.dp.accountant,
            "dp-estimator": "Poisson sampling, sum / expected clients, uniform weights",
        }

    def state_dict(self) -> dict[str, Any]:
        """Return the strategy's state plus the accounting (nothing secret)."""
        return {
            **self.strategy.state_dict(),
            STATE_KEY: {
                "history": self.history,
                "noise": self.noise_multiplier,
                "delta": self.delta,
                "clients": self.num_clients,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        state = dict(state)
        saved = state.pop(STATE_KEY, {})
        self.history = [list(entry) for entry in saved.get("history", [])]
        self.noise_multiplier = float(saved.get("noise", self.noise_multiplier))
        self.delta = float(saved.get("delta", self.delta))
        self.num_clients = int(saved.get("clients", 0))
        self.strategy.load_state_dict(state)

    def privacy_spent(self) -> dict[str, float]:
        """Return the client-level ε of every draw charged so far, and δ."""
        if not self.history:
            return {}
        from privacy.accounting import epsilon_of  # imports Opacus

        return {
            "epsilon": epsilon_of(self.dp.accountant, self.history, self.delta),
            "delta": self.delta,
        }

    def _prepare(self, num_clients: int) -> None:
        """Fix δ and calibrate ``z`` at the first round (a resumed run keeps both)."""
        if not self.num_clients:
            self.num_clients = num_clients
        if not self.delta:
            self.delta = auto_delta(self.num_clients)
        if self.delta >= 1.0 / self.num_clients:
            raise PrivacyError(
                f"dp-delta {self.delta:g} is not below 1/N for N = {self.num_clients} clients: "
                "client-level (epsilon, delta) would promise nothing"
            )
        if not self.noise_multiplier:
            from privacy.accounting import calibrate_noise  # imports Opacus

            self.noise_multiplier = calibrate_noise(
                self.dp.target_epsilon,
                self.delta,
                self.dp.sample_rate,
                self.dp.num_rounds,
                self.dp.accountant,
            )
            log(INFO, "Central DP: noise multiplier %.4f calibrated", self.noise_multiplier)

    def _charge(self, server_round: int) -> None:
        """Charge one draw of the sampled Gaussian mechanism, or stop before the target."""
        from privacy.accounting import epsilon_of  # imports Opacus

        z, q = self.noise_multiplier, self.dp.sample_rate
        after = epsilon_of(self.dp.accountant, [*self.history, [z, q, 1]], self.delta)
        if 0 < self.dp.target_epsilon < after:
            raise BudgetExceededError(
                f"central DP: round {server_round} would reach client-level epsilon "
                f"{after:.4g} > dp-target-epsilon {self.dp.target_epsilon:g} "
                f"(delta {self.delta:.3g}); no further round is released"
            )
        if self.history and self.history[-1][:2] == [z, q]:
            self.history[-1][2] += 1
        else:
            self.history.append([z, q, 1])

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Charge a draw, then Poisson-sample the nodes from the run's secret."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._prepare(len(messages))
        self._charge(server_round)
        attempt = self._attempts[server_round]
        self._attempts[server_round] += 1
        self._draw = f"round {server_round} attempt {attempt}".encode()
        rng = derive_generator(self.secret, self._draw, "client sampling")
        sampled = [messages[i] for i in poisson_sample(len(messages), self.dp.sample_rate, rng)]
        log(INFO, "Central DP: %d of %d nodes sampled", len(sampled), len(messages))
        return sampled

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Clip every update, sum, divide by the expected clients, add noise, finish."""
        strategy = self.strategy
        updates, failures, client_metrics = strategy.screen_replies(replies)
        outcome = RoundOutcome(None, None, failures, client_metrics)
        if not enough_updates(server_round, len(updates), strategy.min_train_nodes):
            return outcome
        current = strategy.global_arrays
        reference = self.rule.reference(current)
        clipped = [clip_delta(u.arrays, reference, self.dp.clipping_norm)[0] for u in updates]
        mean_delta = noisy_mean_delta(
            clipped,
            current,
            self.dp.sample_rate * self.num_clients,
            self.noise_multiplier * self.dp.clipping_norm,
            derive_generator(self.secret, self._draw, "noise"),
        )
        estimate = [
            cast_like(r.astype(np.float64) + d, c)
            for r, d, c in zip(reference, mean_delta, current, strict=True)
        ]
        new_arrays = self.rule.finish(estimate, current)
        strategy.global_arrays = new_arrays
        outcome.arrays = arrays_record(strategy.global_keys, new_arrays)
        outcome.metrics = MetricRecord(
            {
                **aggregate_metrics([u.metrics for u in updates]),
                **{f"dp-{k}": v for k, v in self.privacy_spent().items()},
                "dp-noise-multiplier": self.noise_multiplier,
                "dp-sample-rate": self.dp.sample_rate,
            }
        )
        return outcome
