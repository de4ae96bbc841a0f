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
``results.json`` therefore lists no client of a round and no training statistic
(:func:`published_evaluation`); what it does publish outside ε is the federated
validation accuracy (``eval-*``, used when there is no server test set) and the
number of clients sampled each round. The server itself sees every update in
plaintext (use ``he`` for that). The noise
and the sampling come from the run's secret (32 bytes from the OS CSPRNG, in the
run directory's ``private/`` folder, mode 0600), never from the public ``seed``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from logging import INFO
from typing import Any, TypeVar

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
from strategies.protocol import EVAL_PREFIX
from strategies.wrapper import StrategyWrapper

STATE_KEY = "central-dp"

T = TypeVar("T")


def published_evaluation(metrics: Sequence[dict[str, float]]) -> dict[str, float]:
    """Return the federated evaluation aggregates (``eval-*``) of the clients' metrics.

    They are the only client metrics central DP publishes, and only on the clients'
    validation data: losses and accuracies on training data stay on the server.
    """
    published = aggregate_metrics(metrics).items()
    return {
        k: v
        for k, v in published
        if k.startswith(EVAL_PREFIX) and not k.startswith(EVAL_PREFIX + "train-")
    }


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


class ClientLevelAccount:
    """The server's side of client-level DP: calibration, the draws charged, the sampling.

    Shared by :class:`CentralDP` and distributed DP
    (:class:`fl_app.dp.distributed.DistributedDP`): both run the sampled Gaussian
    mechanism with noise multiplier ``z`` and rate ``q``, one draw per round attempt.

    Parameters
    ----------
    dp : ClientLevelDP
        The guarantee and the mechanism's parameters.
    secret : bytes
        The run's secret: seeds the sampling (and central DP's noise).
    label : str
        Names the mechanism in log lines and errors (``"central DP"``).
    """

    def __init__(self, dp: ClientLevelDP, secret: bytes, label: str) -> None:
        if not secret:
            raise ValueError(f"{label} needs the run's secret to sample clients")
        self.dp = dp
        self.secret = secret
        self.label = label
        self.noise_multiplier = dp.noise_multiplier
        self.delta = dp.delta
        self.num_clients = 0
        self.history: list[list[float]] = []
        self.draw = b""
        self._attempts: defaultdict[int, int] = defaultdict(int)

    @property
    def expected_clients(self) -> float:
        """``m = q N``: the fixed denominator of the mean."""
        return self.dp.sample_rate * self.num_clients

    def state(self) -> dict[str, Any]:
        """Return the accounting as plain JSON types (nothing secret)."""
        return {
            "history": self.history,
            "noise": self.noise_multiplier,
            "delta": self.delta,
            "clients": self.num_clients,
        }

    def load(self, saved: dict[str, Any]) -> None:
        """Restore :meth:`state` output."""
        self.history = [list(entry) for entry in saved.get("history", [])]
        self.noise_multiplier = float(saved.get("noise", self.noise_multiplier))
        self.delta = float(saved.get("delta", self.delta))
        self.num_clients = int(saved.get("clients", 0))

    def spent(self) -> dict[str, float]:
        """Return the client-level ε of every draw charged so far, and δ."""
        if not self.history:
            return {}
        from privacy.accounting import epsilon_of  # imports Opacus

        return {
            "epsilon": epsilon_of(self.dp.accountant, self.history, self.delta),
            "delta": self.delta,
        }

    def prepare(self, num_clients: int) -> None:
        """Fix ``N`` and δ and calibrate ``z`` at the first round (a resumed run keeps all).

        Raises
        ------
        PrivacyError
            If δ is not below ``1 / N``.
        """
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
            log(INFO, "%s: noise multiplier %.4f calibrated", self.label, self.noise_multiplier)

    def charge(self, server_round: int) -> None:
        """Charge one draw of the sampled Gaussian mechanism, or stop before the target.

        Raises
        ------
        BudgetExceededError
            If the draw would push ε over ``dp-target-epsilon`` (nothing is charged).
        """
        from privacy.accounting import epsilon_of  # imports Opacus

        z, q = self.noise_multiplier, self.dp.sample_rate
        after = epsilon_of(self.dp.accountant, [*self.history, [z, q, 1]], self.delta)
        if 0 < self.dp.target_epsilon < after:
            raise BudgetExceededError(
                f"{self.label}: round {server_round} would reach client-level epsilon "
                f"{after:.4g} > dp-target-epsilon {self.dp.target_epsilon:g} "
                f"(delta {self.delta:.3g}); no further round is released"
            )
        if self.history and self.history[-1][:2] == [z, q]:
            self.history[-1][2] += 1
        else:
            self.history.append([z, q, 1])

    def sample(self, candidates: Sequence[T], server_round: int) -> list[T]:
        """Poisson-sample ``candidates`` from the run's secret (a new draw per attempt)."""
        attempt = self._attempts[server_round]
        self._attempts[server_round] += 1
        self.draw = f"round {server_round} attempt {attempt}".encode()
        rng = derive_generator(self.secret, self.draw, "client sampling")
        chosen = poisson_sample(len(candidates), self.dp.sample_rate, rng)
        log(INFO, "%s: %d of %d nodes sampled", self.label, len(chosen), len(candidates))
        return [candidates[i] for i in chosen]

    def noise_generator(self) -> np.random.Generator:
        """Return the generator of the current draw's server noise (central DP)."""
        return derive_generator(self.secret, self.draw, "noise")


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
        self.account = ClientLevelAccount(dp, secret, "Central DP")

    @property
    def noise_multiplier(self) -> float:
        """``z`` (0 until calibrated at round 1 when ``dp-target-epsilon`` sets it)."""
        return self.account.noise_multiplier

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
        return {**self.strategy.state_dict(), STATE_KEY: self.account.state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        state = dict(state)
        self.account.load(state.pop(STATE_KEY, {}))
        self.strategy.load_state_dict(state)

    def privacy_spent(self) -> dict[str, float]:
        """Return the client-level ε of every draw charged so far, and δ."""
        return self.account.spent()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Charge a draw, then Poisson-sample the nodes from the run's secret."""
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self.account.prepare(len(messages))
        self.account.charge(server_round)
        return self.account.sample(messages, server_round)

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Clip every update, sum, divide by the expected clients, add noise, finish."""
        strategy = self.strategy
        updates, failures, _ = strategy.screen_replies(replies)
        outcome = RoundOutcome(None, None, failures, [])  # published: nothing per client
        if not enough_updates(server_round, len(updates), strategy.min_train_nodes):
            return outcome
        current = strategy.global_arrays
        reference = self.rule.reference(current)
        clipped = [clip_delta(u.arrays, reference, self.dp.clipping_norm)[0] for u in updates]
        mean_delta = noisy_mean_delta(
            clipped,
            current,
            self.account.expected_clients,
            self.noise_multiplier * self.dp.clipping_norm,
            self.account.noise_generator(),
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
                **published_evaluation([u.metrics for u in updates]),
                **{f"dp-{k}": v for k, v in self.privacy_spent().items()},
                "dp-noise-multiplier": self.noise_multiplier,
                "dp-sample-rate": self.dp.sample_rate,
            }
        )
        return outcome
