"""Sample-level differential privacy: Opacus DP-SGD with a budget that spans many sessions.

:func:`make_private` is ``PrivacyEngine.make_private`` with what federated training
needs on top: the noise multiplier is calibrated once for the whole planned training
(all rounds × local epochs), the accountant continues from a saved state instead of
restarting at ε = 0 (Flower's Opacus example restarts it every round), and a session
that would push ε over the budget is refused *before* any training step.

Nothing here imports Flower: torch modules, optimizers and data loaders in; a
:class:`PrivateTraining` with the private versions and a saveable accountant out.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from opacus import PrivacyEngine
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader

from privacy import BudgetExceededError
from privacy.accounting import (
    accountant_state,
    calibrate_noise,
    check_accountant,
    epsilon_of,
    new_accountant,
)

__all__ = [
    "BudgetExceededError",
    "PrivacyBudget",
    "PrivateTraining",
    "check_budget",
    "make_private",
    "train_private",
]

GRAD_SAMPLE_MODES: tuple[str, ...] = ("hooks", "ghost")
DEFAULT_GRAD_SAMPLE_MODE = "hooks"
"""Measured faster than ghost clipping here for our small models and batches (bench/dp.py)."""


@contextlib.contextmanager
def quiet_opacus() -> Iterator[None]:
    """Silence Opacus' warnings that do not apply here.

    "Secure RNG turned off": ``secure_mode`` needs ``torchcsprng``, which has no build
    for torch 2.x; callers seed the noise from a secret and a fresh nonce instead
    (:mod:`privacy.secrets`; the limits are stated in docs/differential-privacy.md).
    The full-backward-hook notice is about inputs that need no gradient, which is
    always true for data.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


@dataclass(frozen=True)
class PrivacyBudget:
    """What DP-SGD may spend, and how.

    Parameters
    ----------
    target_epsilon : float
        Budget for the whole planned training; 0 = no ceiling (then
        ``noise_multiplier`` must be given).
    delta : float
        δ of the (ε, δ) guarantee; must be below ``1 / len(dataset)``.
    noise_multiplier : float
        σ (noise std / clipping norm); 0 = calibrate from ``target_epsilon`` for
        ``planned_steps``.
    max_grad_norm : float
        Per-sample gradient clipping norm C.
    planned_steps : int
        Optimizer steps planned over the whole training (rounds × local epochs ×
        steps per epoch); used only for calibration.
    accountant : str
        ``"rdp"`` (default) or ``"prv"``.
    """

    target_epsilon: float
    delta: float
    noise_multiplier: float = 0.0
    max_grad_norm: float = 1.0
    planned_steps: int = 0
    accountant: str = "rdp"

    def __post_init__(self) -> None:
        check_accountant(self.accountant)
        if not 0 < self.delta < 1:
            raise ValueError(f"delta must be in (0, 1), got {self.delta}")
        if self.target_epsilon < 0 or self.noise_multiplier < 0 or self.max_grad_norm <= 0:
            raise ValueError(
                "target_epsilon and noise_multiplier must be >= 0 and max_grad_norm > 0, got "
                f"{self.target_epsilon}, {self.noise_multiplier}, {self.max_grad_norm}"
            )
        if self.noise_multiplier == 0 and (self.target_epsilon == 0 or self.planned_steps < 1):
            raise ValueError(
                "give a noise multiplier, or a target epsilon and the planned steps to "
                "calibrate one"
            )

    def resolve_noise(self, sample_rate: float) -> float:
        """Return σ: the given one, or the calibration for ``planned_steps`` (cached)."""
        if self.noise_multiplier > 0:
            return self.noise_multiplier
        return calibrate_noise(
            self.target_epsilon, self.delta, sample_rate, self.planned_steps, self.accountant
        )


@dataclass
class PrivateTraining:
    """The private model, optimizer and loader, with their accountant.

    ``module`` computes per-sample gradients, ``optimizer`` clips and adds noise,
    ``data_loader`` samples batches by Poisson sampling, ``criterion`` is the loss to
    call (ghost clipping wraps it). ``plain`` is the underlying ``nn.Module``.
    """

    plain: nn.Module
    module: nn.Module
    optimizer: torch.optim.Optimizer
    data_loader: DataLoader
    criterion: Any
    engine: PrivacyEngine
    budget: PrivacyBudget
    noise_multiplier: float
    sample_rate: float
    steps_per_epoch: int

    @property
    def accountant(self) -> Any:
        """The Opacus accountant (``state_dict()`` / ``load_state_dict()``)."""
        return self.engine.accountant

    def epsilon(self) -> float:
        """Return ε spent so far (whole history) at the budget's δ."""
        history = self.engine.accountant.history
        return epsilon_of(self.budget.accountant, list(history), self.budget.delta)

    def steps(self) -> int:
        """Return the optimizer steps the accountant has seen in total."""
        return sum(int(n) for _, _, n in self.engine.accountant.history)

    def state_dict(self) -> dict[str, Any]:
        """Return the accountant state to save (JSON-ready)."""
        return accountant_state(self.engine.accountant)

    def plain_state_dict(self) -> dict[str, torch.Tensor]:
        """Return the trained weights with the plain module's keys (no ``_module.``)."""
        return self.plain.state_dict()

    def close(self) -> nn.Module:
        """Remove Opacus' hooks and per-sample gradients; return the plain module."""
        to_standard = getattr(self.module, "to_standard_module", None)
        return to_standard() if callable(to_standard) else self.plain


def _fixed(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
    """Run ``ModuleValidator.fix``; rebuild the optimizer if layers were replaced."""
    if not ModuleValidator.validate(model, strict=False):
        return model, optimizer
    fixed = ModuleValidator.fix(model)
    ModuleValidator.validate(fixed, strict=True)
    return fixed, type(optimizer)(fixed.parameters(), **optimizer.defaults)


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    budget: PrivacyBudget,
    accountant_state: dict[str, Any] | None = None,
    *,
    epochs: int = 1,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    noise_seed: int | None = None,
    criterion: nn.Module | None = None,
) -> PrivateTraining:
    """Make model, optimizer and loader private, continuing a saved accountant.

    Parameters
    ----------
    model, optimizer, data_loader
        The non-private training objects. The model goes through
        ``ModuleValidator.fix`` (the optimizer is rebuilt if a layer was replaced);
        the loader's ``generator`` seeds Poisson sampling.
    budget : PrivacyBudget
        Target ε and δ, or a noise multiplier, and the clipping norm.
    accountant_state : dict, optional
        What :meth:`PrivateTraining.state_dict` returned in an earlier session.
    epochs : int
        Epochs this session will train: checked against the budget before returning.
    grad_sample_mode : str
        ``"hooks"`` (default: per-sample gradients from module hooks, the faster mode
        for our models in ``bench/dp.py``) or ``"ghost"`` (ghost clipping, which pays
        off for large layers and batches).
    noise_seed : int, optional
        Seeds the Gaussian noise (derive it from a secret: :mod:`privacy.secrets`);
        None = torch's global generator.
    criterion : nn.Module, optional
        The loss; cross-entropy by default.

    Returns
    -------
    PrivateTraining
        Ready to train with :func:`train_private`.

    Raises
    ------
    BudgetExceededError
        If ``epochs`` more epochs would push ε over ``budget.target_epsilon``.
    """
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"grad_sample_mode '{grad_sample_mode}' is unknown; valid: "
            + ", ".join(GRAD_SAMPLE_MODES)
        )
    steps_per_epoch = len(data_loader)
    if steps_per_epoch < 1:
        raise ValueError("the data loader is empty: nothing to train on privately")
    sample_rate = 1.0 / steps_per_epoch
    noise = budget.resolve_noise(sample_rate)
    history = list(new_accountant(budget.accountant, accountant_state).history)
    check_budget(budget, history, (noise, sample_rate, epochs * steps_per_epoch))

    model.train()
    model, optimizer = _fixed(model, optimizer)
    with quiet_opacus():
        engine = PrivacyEngine(accountant=budget.accountant)
    if accountant_state:
        engine.accountant.load_state_dict(
            {"mechanism": budget.accountant, "history": [tuple(h) for h in history]}
        )
    generator = None if noise_seed is None else torch.Generator().manual_seed(noise_seed)
    with quiet_opacus():
        made = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            data_loader=data_loader,
            noise_multiplier=noise,
            max_grad_norm=budget.max_grad_norm,
            grad_sample_mode=grad_sample_mode,
            noise_generator=generator,
        )
    if grad_sample_mode == "ghost":
        module, private_optimizer, private_criterion, loader = made
    else:
        module, private_optimizer, loader = made
        private_criterion = criterion if criterion is not None else nn.CrossEntropyLoss()
    return PrivateTraining(
        plain=model,
        module=module,
        optimizer=private_optimizer,
        data_loader=loader,
        criterion=private_criterion,
        engine=engine,
        budget=budget,
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps_per_epoch=steps_per_epoch,
    )


def check_budget(
    budget: PrivacyBudget, history: list[Any], session: tuple[float, float, int]
) -> float:
    """Return ε after ``session`` is added to ``history``; raise if it exceeds the budget.

    Raises
    ------
    BudgetExceededError
        Naming the spent ε, the ε this session would reach and the target.
    """
    spent = epsilon_of(budget.accountant, history, budget.delta)
    after = epsilon_of(budget.accountant, [*history, session], budget.delta)
    target = budget.target_epsilon
    if target > 0 and after > target:
        raise BudgetExceededError(
            f"privacy budget exhausted: epsilon spent {spent:.4g}, {session[2]} more DP-SGD "
            f"steps (noise multiplier {session[0]:.4g}, sample rate {session[1]:.4g}) would "
            f"reach {after:.4g} > target {target:g} at delta {budget.delta:.3g}; not training"
        )
    return after


@dataclass(frozen=True)
class PrivateEpochs:
    """What :func:`train_private` reports: mean loss and accuracy over the seen samples."""

    loss: float
    accuracy: float
    steps: int


def train_private(
    training: PrivateTraining, epochs: int, max_physical_batch_size: int = 64
) -> PrivateEpochs:
    """Train ``epochs`` epochs of DP-SGD; physical batches are bounded by BatchMemoryManager.

    Poisson sampling makes the logical batch size random (and large logical batches
    help DP-SGD); ``BatchMemoryManager`` splits each into physical batches of at most
    ``max_physical_batch_size`` while the optimizer steps (and the accountant counts)
    once per logical batch.
    """
    module, optimizer = training.module, training.optimizer
    module.train()
    total_loss, correct, seen = 0.0, 0, 0
    steps_before = training.steps()
    for _ in range(epochs):
        with (
            quiet_opacus(),
            BatchMemoryManager(
                data_loader=training.data_loader,
                max_physical_batch_size=max_physical_batch_size,
                optimizer=optimizer,
            ) as loader,
        ):
            for x, y in loader:
                optimizer.zero_grad(set_to_none=True)
                logits = module(x)
                loss = training.criterion(logits, y)
                loss.backward()
                optimizer.step()
                if len(y):
                    total_loss += float(loss.item()) * len(y)
                    correct += int((logits.argmax(dim=1) == y).sum())
                    seen += len(y)
    return PrivateEpochs(
        loss=total_loss / seen if seen else math.nan,
        accuracy=correct / seen if seen else 0.0,
        steps=training.steps() - steps_before,
    )
