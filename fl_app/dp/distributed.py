"""Distributed client-level DP (``dp = "distributed"``): the clients' noise shares, summed under HE.

Central DP's guarantee without a server that sees updates. :class:`DistributedDP` is
:class:`~fl_app.he.server.EncryptedAggregation` with central DP's sampling and
accounting (:class:`~fl_app.dp.central.ClientLevelAccount`): each round it charges one
draw of the sampled Gaussian mechanism, Poisson-samples the nodes from the run's
secret, and tells the ``n`` sampled clients their :class:`~privacy.client_level.NoiseShare`.
Each client clips its own update to ``C``, adds ``N(0, (z C)^2 / n)`` per coordinate
from its node secret (a fresh nonce each time, never the seed), weights it by
``m / n`` and encrypts it (:func:`fl_app.he.records.noisy_payload`); the server only
adds ciphertexts. The ``n`` shares add up to ``N(0, (z C)^2)``, so the decrypted sum
over the fixed denominator ``m = q N`` is central DP's noisy mean: same sensitivity,
same noise, same ε (``dp-epsilon``, Opacus over ``[(z, q, draws)]``).

Dropouts: a round in which fewer than ``n`` valid shares arrived carries less noise
than accounted, so it is **not released** (its sum is never sent to anyone; the draw
stays charged) and the round is retried with a new draw, as a round with too few
updates is. A draw of fewer than :data:`~privacy.he.MIN_CLIENTS` or more than
:data:`~privacy.he.MAX_CLIENTS` clients sends nothing and is retried too. Released
rounds therefore always carry exactly the noise accounted.

Who learns what, and the ε reported for each (every one Opacus' accountant over the
mechanism actually run; for the two views that know who was sampled, with ``q = 1``
over the rounds each client was actually sampled in, the largest over clients):

* ``dp-epsilon``: anyone holding only the published (decrypted) model: as central DP.
* ``dp-key-holder-epsilon``: any client (key holder), who can decrypt every released
  round's sum and subtract its own share: the others' updates under noise of variance
  ``(n - 1) / n (z C)^2``, i.e. multiplier ``z sqrt((n - 1) / n)`` per released round.
* ``dp-collusion-epsilon``: the server colluding with one client: with the shared key
  they decrypt every *individual* update, protected only by its own share, multiplier
  ``z / sqrt(n)``, for every round whose shares were sent.

Per-client metrics (losses, accuracies, counts) do not leave a node unless its node
config sets ``dp-report-metrics`` (the client mod sends ``num-examples = 1``); there is
therefore no federated evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid

from fl_app.dp.central import ClientLevelAccount, ClientLevelDP
from fl_app.he.records import share_config
from fl_app.he.server import MIN_CLIENTS_RULE, EncryptedAggregation
from privacy.client_level import NoiseShare
from privacy.he import MAX_CLIENTS, MIN_CLIENTS
from strategies.base import BaseStrategy, ReplyError, RoundOutcome
from strategies.protocol import CONFIG_KEY

STATE_KEY = "distributed-dp"


def _record(history: list[list[float]], noise_multiplier: float) -> None:
    """Append one run of the (unsampled, ``q = 1``) Gaussian mechanism to ``history``."""
    if history and history[-1][:2] == [noise_multiplier, 1.0]:
        history[-1][2] += 1
    else:
        history.append([noise_multiplier, 1.0, 1])


class DistributedDP(EncryptedAggregation):
    """Client-level DP whose noise the sampled clients add, in shares, under encryption.

    Parameters
    ----------
    strategy : BaseStrategy
        A linear strategy that asks every connected node (``fraction_train = 1``):
        the wrapper draws the sample. Its client weights are not used (uniform).
    public_context : Path
        The server's public HE context.
    template : dict[str, np.ndarray]
        The global model's arrays by name.
    dp : ClientLevelDP
        The guarantee and the mechanism's parameters (as central DP's).
    secret : bytes
        The run's secret: seeds the sampling (the noise is the clients').

    Raises
    ------
    ValueError
        If the strategy has no linear rule or samples clients itself.
    HEError
        If the public context is missing or holds the secret key.
    """

    def __init__(
        self,
        strategy: BaseStrategy,
        public_context: Path,
        template: dict[str, np.ndarray],
        dp: ClientLevelDP,
        secret: bytes,
    ) -> None:
        if strategy.fraction_train != 1.0:
            raise ValueError("the wrapped strategy must ask every node; DistributedDP samples")
        super().__init__(strategy, public_context, template)
        self.dp = dp
        self.account = ClientLevelAccount(dp, secret, "Distributed DP")
        self.share: NoiseShare | None = None
        """The noise share of the current attempt (None: nothing was sent)."""
        self.sampled: list[int] = []
        """The nodes asked for a share in the current attempt."""
        self.key_holder_histories: dict[int, list[list[float]]] = {}
        """Per node: the released sums it took part in, as a key holder sees them."""
        self.collusion_histories: dict[int, list[list[float]]] = {}
        """Per node: the updates it sent, as the server with one client sees them."""

    @property
    def noise_multiplier(self) -> float:
        """``z`` (0 until calibrated at round 1 when ``dp-target-epsilon`` sets it)."""
        return self.account.noise_multiplier

    def settings(self) -> dict[str, Any]:
        """Return the encrypted aggregation's settings plus the distributed-DP ones."""
        return {
            **super().settings(),
            "dp": "distributed",
            "dp-clipping-norm": self.dp.clipping_norm,
            "dp-sample-rate": self.dp.sample_rate,
            "dp-central-noise-multiplier": self.noise_multiplier or "calibrated at round 1",
            "dp-accountant": self.dp.accountant,
            "dp-estimator": (
                "Poisson sampling, each client's noise share N(0, (zC)^2/n) summed under HE, "
                "sum / expected clients, uniform weights"
            ),
            "dp-dropouts": "a round missing a noise share is not released (charged, retried)",
        }

    def summary(self) -> None:
        """Log the strategy, the encryption and the distributed noise."""
        super().summary()
        log(
            INFO,
            "\t└──> Distributed DP: clip %g, sample rate %g, noise shares from the clients",
            self.dp.clipping_norm,
            self.dp.sample_rate,
        )

    def state_dict(self) -> dict[str, Any]:
        """Return the strategy's state plus the accounting (nothing secret)."""
        return {
            **super().state_dict(),
            STATE_KEY: {
                **self.account.state(),
                "key-holder": {str(n): h for n, h in self.key_holder_histories.items()},
                "collusion": {str(n): h for n, h in self.collusion_histories.items()},
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        state = dict(state)
        saved = state.pop(STATE_KEY, {})
        self.account.load(saved)
        self.key_holder_histories = {
            int(n): [list(e) for e in h] for n, h in saved.get("key-holder", {}).items()
        }
        self.collusion_histories = {
            int(n): [list(e) for e in h] for n, h in saved.get("collusion", {}).items()
        }
        super().load_state_dict(state)

    def privacy_spent(self) -> dict[str, float]:
        """Return ε of the published model, of a key holder and of server + one client, and δ."""
        spent = self.account.spent()
        if not spent:
            return {}
        from privacy.accounting import epsilon_of  # imports Opacus

        accountant, delta = self.dp.accountant, self.account.delta

        def largest(histories: dict[int, list[list[float]]]) -> float:
            return max((epsilon_of(accountant, h, delta) for h in histories.values()), default=0.0)

        return {
            **spent,
            "key-holder-epsilon": largest(self.key_holder_histories),
            "collusion-epsilon": largest(self.collusion_histories),
        }

    def round_size_problems(self, connected: int) -> list[str]:
        """Return why Poisson samples from ``connected`` nodes cannot be summed encrypted."""
        expected = self.dp.sample_rate * connected
        if expected < MIN_CLIENTS:
            return [
                f"{MIN_CLIENTS_RULE}; fraction-train {self.dp.sample_rate:g} of {connected} "
                f"connected nodes samples {expected:g} on average"
            ]
        if expected > MAX_CLIENTS:
            return [
                f"the fixed-point encoding sums at most {MAX_CLIENTS} updates (MAX_CLIENTS); "
                f"fraction-train {self.dp.sample_rate:g} of {connected} connected nodes samples "
                f"{expected:g} on average: lower fraction-train"
            ]
        return []

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Charge a draw, Poisson-sample from the run's secret, tell the sample its share."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.account.prepare(len(messages))
        self.account.charge(server_round)
        sampled = self.account.sample(messages, server_round)
        self.share, self.sampled = None, []
        if not self.floor <= len(sampled) <= MAX_CLIENTS:
            log(
                WARNING,
                "Distributed DP: round %d drew %d clients; a released sum needs %d to %d: "
                "nothing sent (the draw stays charged)",
                server_round,
                len(sampled),
                self.floor,
                MAX_CLIENTS,
            )
            return []
        share = NoiseShare(
            shares=len(sampled),
            expected_clients=self.account.expected_clients,
            noise_multiplier=self.noise_multiplier,
            clipping_norm=self.dp.clipping_norm,
        )
        for message in sampled:
            round_config = dict(message.content[CONFIG_KEY])
            message.content[CONFIG_KEY] = ConfigRecord({**round_config, **share_config(share)})
        self.share = share
        self.sampled = [message.metadata.dst_node_id for message in sampled]
        for node in self.sampled:
            _record(
                self.collusion_histories.setdefault(node, []),
                share.noise_multiplier / math.sqrt(share.shares),
            )
        return sampled

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask no node: under distributed DP clients report no evaluation."""
        log(INFO, "Distributed DP: no federated evaluation (clients report none)")
        return []

    def expected_weight(self, metrics: dict[str, float]) -> float:
        """Return ``m / n``, the weight of every update of the round (uniform weights).

        Raises
        ------
        ReplyError
            If no noise shares were asked for in this attempt.
        """
        if self.share is None:
            raise ReplyError("no noise share was asked for in this round")
        return self.share.weight

    def releasable(self, server_round: int, count: int) -> bool:
        """Tell whether every share of the round arrived (then the noise is as accounted)."""
        share = self.share
        if share is not None and count == share.shares:
            return True
        log(
            WARNING,
            "Round %d not released: %d of %d noise shares arrived; the sum would carry less "
            "noise than accounted (the draw stays charged)",
            server_round,
            count,
            share.shares if share is not None else 0,
        )
        return False

    def aggregate_round(self, server_round: int, replies: Iterable[Message]) -> RoundOutcome:
        """Sum the encrypted noisy updates; release the round only if every share arrived."""
        outcome = super().aggregate_round(server_round, replies)
        share = self.share
        if outcome.arrays is not None and share is not None:
            for node in self.sampled:
                _record(
                    self.key_holder_histories.setdefault(node, []),
                    share.noise_multiplier * math.sqrt((share.shares - 1) / share.shares),
                )
        outcome.metrics = MetricRecord(
            {
                **dict(outcome.metrics or MetricRecord()),
                **{f"dp-{k}": v for k, v in self.privacy_spent().items()},
                "dp-noise-multiplier": self.noise_multiplier,
                "dp-sample-rate": self.dp.sample_rate,
                "dp-noise-shares": share.shares if share is not None else 0,
            }
        )
        return outcome
