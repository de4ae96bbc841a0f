"""One front object for a participant's DP-SGD: :class:`PrivateTrainingSession`.

Like Opacus' ``PrivacyEngine`` hides per-sample gradients, clipping and noise, a
session hides what federated DP-SGD adds around it: the ledger that keeps the
accountant's history between sessions, the check that the ledger was kept under the
same accountant, δ and target, the budget check before any step, the calibration
kept in the ledger's plan, and the record of the session afterwards. Nothing here
imports Flower.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import torch
from torch.utils.data import DataLoader, TensorDataset

from privacy.ledger import LedgerError, LedgerRecord

MAX_PHYSICAL_BATCH = 64
"""Largest physical batch (Opacus' BatchMemoryManager); logical batches are Poisson."""


@dataclass(frozen=True)
class LocalTraining:
    """How a participant trains: SGD settings and the DP-SGD mechanism's parameters."""

    epochs: int
    batch_size: int
    learning_rate: float
    momentum: float
    max_grad_norm: float
    noise_multiplier: float
    """0 = calibrate from the ledger's target for ``planned_epochs``."""
    planned_epochs: int
    """Epochs planned over the whole run (rounds x local epochs): calibration only."""


@dataclass(frozen=True)
class SessionResult:
    """What one session did and what it cost."""

    loss: float
    accuracy: float
    steps: int
    epsilon: float
    delta: float
    noise_multiplier: float


def check_same_settings(record: LedgerRecord, fresh: LedgerRecord, where: str) -> None:
    """Refuse to continue a ledger under a different accountant, δ or target.

    Raises
    ------
    LedgerError
        Naming the setting, the ledger's value and the requested one.
    """
    for name in ("mechanism", "delta", "target_epsilon"):
        if getattr(record, name) != getattr(fresh, name):
            raise LedgerError(
                f"privacy ledger {where} was kept with {name} {getattr(record, name)!r}, the "
                f"run now asks for {getattr(fresh, name)!r}; ε under one ledger must be "
                "computed one way"
            )


class PrivateTrainingSession:
    """Train one session of DP-SGD against a ledger, and record what it spent.

    Parameters
    ----------
    record : LedgerRecord
        The participant's ledger (its history is continued, then extended).
    training : LocalTraining
        The SGD and DP-SGD settings.
    """

    def __init__(self, record: LedgerRecord, training: LocalTraining) -> None:
        self.record = record
        self.training = training

    def run(
        self,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        seed: int,
        label: int,
    ) -> SessionResult:
        """Train ``model`` in place; extend the ledger record; return the result.

        Parameters
        ----------
        model : torch.nn.Module
            Starts from the global weights; holds the trained weights afterwards.
        x, y : torch.Tensor
            The participant's training data.
        seed : int
            Seeds Poisson sampling and the Gaussian noise.
        label : int
            Recorded with the session (the server round).

        Raises
        ------
        BudgetExceededError
            Before any training, if this session would push ε over the target.
        """
        # Opacus takes ~1.5 s to import: only a participant that trains privately pays.
        from privacy.dp import PrivacyBudget, make_private, train_private

        settings, record = self.training, self.record
        loader = DataLoader(
            TensorDataset(x, y),
            batch_size=settings.batch_size,
            generator=torch.Generator().manual_seed(seed),
        )
        budget = PrivacyBudget(
            target_epsilon=record.target_epsilon,
            delta=record.delta,
            noise_multiplier=float(record.plan.get("noise_multiplier", settings.noise_multiplier)),
            max_grad_norm=settings.max_grad_norm,
            planned_steps=settings.planned_epochs * len(loader),
            accountant=record.mechanism,
        )
        optimizer = torch.optim.SGD(
            model.parameters(), lr=settings.learning_rate, momentum=settings.momentum
        )
        private = make_private(
            model,
            optimizer,
            loader,
            budget,
            {"mechanism": record.mechanism, "history": record.history},
            epochs=settings.epochs,
            noise_seed=seed,
        )
        result = train_private(private, settings.epochs, MAX_PHYSICAL_BATCH)
        private.close()
        model.load_state_dict(private.plain_state_dict(), strict=True)
        epsilon = private.epsilon()
        record.history = private.state_dict()["history"]
        record.plan = {
            "noise_multiplier": private.noise_multiplier,
            "sample_rate": private.sample_rate,
            "planned_steps": budget.planned_steps,
        }
        record.sessions.append(
            {
                "round": label,
                "steps": result.steps,
                "epsilon": epsilon,
                "time": datetime.now(UTC).isoformat(timespec="seconds"),
            }
        )
        return SessionResult(
            result.loss,
            result.accuracy,
            result.steps,
            epsilon,
            record.delta,
            private.noise_multiplier,
        )
