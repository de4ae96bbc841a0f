"""One front object for a data holder's DP-SGD: :class:`PrivateTrainingSession`.

Like Opacus' ``PrivacyEngine`` hides per-sample gradients, clipping and noise, a
session hides what federated DP-SGD needs around it:

* the data holder's ledger for this dataset (:mod:`privacy.ledger`), locked, charged
  *before* any step and never un-charged;
* the data holder's own limits (:class:`NodeLimits`), enforced whatever a run asks;
* the run's request (:class:`RunRequest`): a target ε for everything this dataset
  has spent, δ, the accountant, and the noise (given, or calibrated once per plan
  against the budget that is left);
* fresh randomness: the Poisson sampler and the Gaussian noise are seeded from the
  data holder's secret and a new nonce (:mod:`privacy.secrets`), so no two sessions
  share noise and nothing public regenerates it.

Nothing here imports Flower.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from torch.utils.data import DataLoader, TensorDataset

from privacy import BudgetExceededError
from privacy.ledger import LedgerRecord
from privacy.secrets import derive_seed, new_nonce

MAX_PHYSICAL_BATCH = 64
"""Largest physical batch (Opacus' BatchMemoryManager); logical batches are Poisson."""


@dataclass(frozen=True)
class LocalTraining:
    """How a data holder trains: SGD settings and the per-sample clipping norm."""

    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    max_grad_norm: float


@dataclass(frozen=True)
class RunRequest:
    """What a run asks of a data holder's budget.

    Parameters
    ----------
    target_epsilon : float
        The largest ε everything this dataset has spent may reach (0 = no ceiling
        from the run; then ``noise_multiplier`` must be given).
    delta : float
        δ at which ε is computed.
    noise_multiplier : float
        σ; 0 = calibrate once per plan against the budget left.
    accountant : str
        Opacus accountant: ``"rdp"`` or ``"prv"``.
    plan : str
        Names the calibration (one per run, kept across resumes). It selects nothing
        else: the budget is the dataset's, whatever the plan.
    planned_epochs : int
        Epochs the plan will train in total (calibration only).
    """

    target_epsilon: float
    delta: float
    noise_multiplier: float
    accountant: str
    plan: str
    planned_epochs: int


@dataclass(frozen=True)
class NodeLimits:
    """Limits a data holder sets on its own data; no run can raise them.

    Parameters
    ----------
    max_epsilon : float
        ε (at the run's δ) that everything this dataset has spent may never exceed.
    min_noise_multiplier : float
        σ below which the data holder does not train.
    max_delta : float
        The largest δ the data holder accepts.
    """

    max_epsilon: float = math.inf
    min_noise_multiplier: float = 0.0
    max_delta: float = 1.0


@dataclass(frozen=True)
class SessionResult:
    """What one session did and what it cost (ε of everything spent, after it)."""

    loss: float
    accuracy: float
    steps: int
    epsilon: float
    delta: float
    noise_multiplier: float
    sample_rate: float


def _refuse(reason: str) -> BudgetExceededError:
    return BudgetExceededError(f"node refuses to train: {reason}; nothing was trained")


class PrivateTrainingSession:
    """One session of DP-SGD against a data holder's ledger and limits.

    Parameters
    ----------
    record : LedgerRecord
        The ledger of this dataset, held locked by the caller; the session charges it
        before training and records the session in it.
    request : RunRequest
        What the run asks.
    limits : NodeLimits
        What the data holder allows.
    training : LocalTraining
        The SGD settings.
    """

    def __init__(
        self,
        record: LedgerRecord,
        request: RunRequest,
        limits: NodeLimits,
        training: LocalTraining,
    ) -> None:
        self.record = record
        self.request = request
        self.limits = limits
        self.training = training

    def _noise(self, sample_rate: float, steps_per_epoch: int) -> float:
        """Return σ: the run's, the plan's, or a new calibration against the budget left."""
        request = self.request
        if request.noise_multiplier > 0:
            return request.noise_multiplier
        plan = self.record.plans.get(request.plan, {})
        if plan.get("sample_rate") == sample_rate and "noise_multiplier" in plan:
            return float(plan["noise_multiplier"])
        from privacy.accounting import calibrate_noise, epsilon_of  # imports Opacus

        spent = epsilon_of(request.accountant, self.record.history, request.delta)
        if 0 < request.target_epsilon <= spent:
            raise _refuse(
                f"this data has already spent epsilon {spent:.4g} >= the run's target "
                f"{request.target_epsilon:g} (delta {request.delta:.3g}); a new budget for "
                "the same data is the data holder's decision"
            )
        try:
            sigma = calibrate_noise(
                request.target_epsilon,
                request.delta,
                sample_rate,
                request.planned_epochs * steps_per_epoch,
                request.accountant,
                tuple((float(s), float(q), int(n)) for s, q, n in self.record.history),
            )
        except ValueError as err:
            raise _refuse(f"no noise meets the run's target epsilon ({err})") from err
        self.record.plans[request.plan] = {"noise_multiplier": sigma, "sample_rate": sample_rate}
        return sigma

    def _charge(self, sigma: float, sample_rate: float, steps: int) -> float:
        """Check the request and the limits; charge the ledger; return ε after the charge."""
        from privacy.accounting import epsilon_of  # imports Opacus

        request, limits = self.request, self.limits
        if request.delta > limits.max_delta:
            raise _refuse(f"the run's delta {request.delta:g} exceeds its dp-max-delta")
        if sigma < limits.min_noise_multiplier:
            raise _refuse(
                f"noise multiplier {sigma:.4g} is below its dp-min-noise-multiplier "
                f"{limits.min_noise_multiplier:g}"
            )
        entry = [sigma, sample_rate, steps]
        spent = epsilon_of(request.accountant, self.record.history, request.delta)
        after = epsilon_of(request.accountant, [*self.record.history, entry], request.delta)
        for name, ceiling in (
            ("the run's target", request.target_epsilon),
            ("its dp-max-epsilon", limits.max_epsilon),
        ):
            if 0 < ceiling < after:
                raise _refuse(
                    f"epsilon spent on this data {spent:.4g}; {steps} more DP-SGD steps would "
                    f"reach {after:.4g} > {name} {ceiling:g} at delta {request.delta:.3g}"
                )
        self.record.history.append(entry)
        return after

    def run(
        self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, secret: bytes, label: int
    ) -> SessionResult:
        """Charge the ledger, then train ``model`` in place with DP-SGD.

        Parameters
        ----------
        model : torch.nn.Module
            Starts from the global weights; holds the trained weights afterwards.
        x, y : torch.Tensor
            The data holder's training data.
        secret : bytes
            The data holder's secret (seeds sampling and noise with a fresh nonce).
        label : int
            Recorded with the session (the server round).

        Raises
        ------
        BudgetExceededError
            Before any training, if the request breaks the run's target or the data
            holder's limits.
        """
        # Opacus takes ~1.5 s to import: only a data holder that trains privately pays.
        from privacy.dp import PrivacyBudget, make_private, train_private

        settings, request = self.training, self.request
        if not 0 < request.delta < 1.0 / len(y):
            raise _refuse(
                f"delta {request.delta:g} is not below 1/n = {1.0 / len(y):.3g} for its "
                f"{len(y)} training examples"
            )
        nonce = new_nonce()
        sampler = torch.Generator().manual_seed(derive_seed(secret, nonce, "sampler"))
        loader = DataLoader(TensorDataset(x, y), batch_size=settings.batch_size, generator=sampler)
        sample_rate = 1.0 / len(loader)
        sigma = self._noise(sample_rate, len(loader))
        epsilon = self._charge(sigma, sample_rate, settings.epochs * len(loader))
        self.record.sessions.append(
            {
                "plan": request.plan,
                "round": label,
                "steps": settings.epochs * len(loader),
                "noise_multiplier": sigma,
                "sample_rate": sample_rate,
                "nonce": nonce.hex(),
                "epsilon": epsilon,
                "delta": request.delta,
                "accountant": request.accountant,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.learning_rate, momentum=settings.momentum
        )
        private = make_private(
            model,
            optimizer,
            loader,
            PrivacyBudget(
                target_epsilon=0.0,
                delta=request.delta,
                noise_multiplier=sigma,
                max_grad_norm=settings.max_grad_norm,
                accountant=request.accountant,
            ),
            epochs=settings.epochs,
            noise_seed=derive_seed(secret, nonce, "noise"),
        )
        result = train_private(private, settings.epochs, MAX_PHYSICAL_BATCH)
        private.close()
        model.load_state_dict(private.plain_state_dict(), strict=True)
        return SessionResult(
            result.loss, result.accuracy, result.steps, epsilon, request.delta, sigma, sample_rate
        )
