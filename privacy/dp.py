"""Sample-level differential privacy: Opacus DP-SGD with a budget that spans many sessions.

:func:`make_private` is ``PrivacyEngine.make_private`` with what federated training
needs on top: the noise multiplier is calibrated once for the whole planned training
(all rounds × local epochs), the accountant continues from a saved state instead of
restarting at ε = 0 (Flower's Opacus example restarts it every round), and a session
that would push ε over the budget is refused *before* any training step.

Per-sample gradients (``grad_sample_mode``): Opacus' own modes (``hooks``, ``ghost``,
``functorch``, ``ew``) or two implemented here for speed on small models and batches,
where Opacus' fixed cost per step (module hooks, per-parameter bookkeeping, batch
assembly sample by sample) is 2-3x the step itself (``bench/dp.py``):

* ``fused`` (default): one forward pass recording each ``Linear``/``Conv2d`` layer's
  input, one ``autograd.grad`` for the layers' output gradients, then per layer the
  per-sample squared norms (for a ``Linear`` layer on 2-D input the per-sample
  gradient is an outer product, so ``‖g_i‖² = ‖∂y_i‖²(‖x_i‖² + 1)`` without forming
  it) and the clipped sum as one weighted matrix product;
* ``vmap``: per-sample gradients with ``torch.func`` (``functional_call`` +
  ``vmap(grad)``), for any model ``torch.func`` can trace.

Both keep the mechanism Opacus runs, step for step: Poisson batches from Opacus'
``DPDataLoader`` sampler (the loader's generator), flat per-sample clipping to
``max_grad_norm`` with Opacus' factor ``min(1, C / (‖g_i‖ + 1e-6))``, Gaussian noise of
std ``σ·C`` on the summed clipped gradients drawn per parameter, in Opacus' order, from
the same ``noise_seed`` generator, division by Opacus' expected batch size, and one
step of the ``PrivacyEngine``'s accountant per logical batch through
``accountant.get_optimizer_hook_fn`` — the same ``(σ, q, steps)`` history, so the same
ε. With the same seeds they give Opacus' weights up to float rounding
(``tests/unit/test_dp_sgd_modes.py``).

Nothing here imports Flower: torch modules, optimizers and data loaders in; a
:class:`PrivateTraining` with the private versions and a saveable accountant out.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.optimizers.utils import params as optimizer_params
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from opacus.validators import ModuleValidator
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

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
    "UnsupportedModelError",
    "check_budget",
    "make_private",
    "train_private",
]

OWN_MODES: tuple[str, ...] = ("fused", "vmap")
"""Per-sample clipping implemented here (Opacus' accountant, sampler and noise order)."""
OPACUS_MODES: tuple[str, ...] = ("hooks", "ghost", "functorch", "ew")
"""Opacus' ``grad_sample_mode`` values, run through ``PrivacyEngine.make_private``."""
GRAD_SAMPLE_MODES: tuple[str, ...] = OWN_MODES + OPACUS_MODES
DEFAULT_GRAD_SAMPLE_MODE = "fused"
"""The fastest for our models in ``bench/dp.py``; a model with layers it cannot handle
falls back to ``FALLBACK_GRAD_SAMPLE_MODE`` (unless ``fused`` was asked for explicitly)."""
FALLBACK_GRAD_SAMPLE_MODE = "hooks"


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

    With an Opacus mode, ``module`` computes per-sample gradients, ``optimizer`` clips
    and adds noise, ``data_loader`` samples batches by Poisson sampling, ``criterion`` is
    the loss to call (ghost clipping wraps it). With an own mode (``fused``, ``vmap``),
    ``module`` is the plain model, ``optimizer`` the plain one, and ``dp_step`` clips,
    adds noise, counts the step and steps ``optimizer`` (:func:`train_private` drives
    it). ``plain`` is the underlying ``nn.Module`` either way.
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
    grad_sample_mode: str = FALLBACK_GRAD_SAMPLE_MODE
    dp_step: DPSGDStep | None = None

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
        """Remove the per-sample gradient hooks and gradients; return the plain module."""
        if self.dp_step is not None:
            self.dp_step.close()
            return self.plain
        to_standard = getattr(self.module, "to_standard_module", None)
        return to_standard() if callable(to_standard) else self.plain


def _fixed(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[nn.Module, Any]:
    """Run ``ModuleValidator.fix``; rebuild the optimizer if layers were replaced."""
    if not ModuleValidator.validate(model, strict=False):
        return model, optimizer
    fixed = ModuleValidator.fix(model)
    ModuleValidator.validate(fixed, strict=True)
    return fixed, type(optimizer)(fixed.parameters(), **optimizer.defaults)


class UnsupportedModelError(ValueError):
    """The ``fused`` mode cannot compute this model's per-sample gradients."""


def _sum_loss(criterion: nn.Module | None) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Return the loss summed over the batch: per-sample gradients are its gradients."""
    if criterion is None:
        return lambda logits, y: F.cross_entropy(logits, y, reduction="sum")
    if getattr(criterion, "reduction", None) not in ("mean", "sum"):
        raise UnsupportedModelError(
            f"criterion {type(criterion).__name__} has no 'mean' or 'sum' reduction to "
            "turn into a sum of per-sample losses"
        )
    summed = copy.deepcopy(criterion)
    summed.reduction = "sum"
    return summed


def _conv_supported(module: nn.Conv2d) -> bool:
    return (
        module.groups == 1
        and module.padding_mode == "zeros"
        and not isinstance(module.padding, str)
    )


class FusedClipper:
    """Clipped per-sample gradient sums from layer inputs and output gradients.

    Forward hooks record each ``Linear``/``Conv2d`` call's input and output; one
    ``autograd.grad`` of the summed loss gives the outputs' gradients ``∂y`` (no
    parameter gradient is formed). For a ``Linear`` layer called once on 2-D input
    the per-sample gradient is ``∂y_i ⊗ x_i`` (and ``∂y_i`` for the bias), so its
    squared norm is ``‖∂y_i‖²·‖x_i‖²`` (+ ``‖∂y_i‖²``) and the clipped sum is
    ``(c ⊙ ∂y)ᵀ x``; any other call (convolutions via ``unfold``, inputs with more
    dimensions, a layer called twice) forms the per-sample gradients as Opacus does.

    Like Opacus' hooks, it assumes each parameter is used only through its layer's
    ``forward`` (a weight used directly, e.g. ``F.linear(x, layer.weight)``, would get
    no gradient from that use: the update is still clipped and noised, only wrong).

    Raises
    ------
    UnsupportedModelError
        If a trainable parameter is not a ``Linear``/``Conv2d`` weight or bias.
    """

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[nn.Parameter],
        criterion: nn.Module | None,
        max_grad_norm: float,
    ) -> None:
        self.model, self.params, self.max_grad_norm = model, list(params), max_grad_norm
        self.loss = _sum_loss(criterion)
        position = {id(p): k for k, p in enumerate(self.params)}
        self.slots: dict[nn.Module, tuple[int | None, int | None]] = {}
        covered: set[int] = set()
        for name, module in model.named_modules():
            own = [p for p in module.parameters(recurse=False) if p.requires_grad]
            if not own:
                continue
            if not (
                type(module) is nn.Linear or (type(module) is nn.Conv2d and _conv_supported(module))
            ):
                raise UnsupportedModelError(
                    f"layer '{name}' ({type(module).__name__}) has trainable parameters "
                    "the fused per-sample gradients do not cover (Linear and Conv2d only)"
                )
            slots = tuple(
                position.get(id(p)) if p is not None and p.requires_grad else None
                for p in (module.weight, module.bias)
            )
            covered.update(k for k in slots if k is not None)
            self.slots[module] = (slots[0], slots[1])
        if covered != set(range(len(self.params))):
            raise UnsupportedModelError("the optimizer has parameters outside the model's layers")
        self._records: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] | None = None
        self._handles = [m.register_forward_hook(self._record) for m in self.slots]

    def _record(self, module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        if self._records is not None:
            self._records.append((module, args[0].detach(), output))

    def close(self) -> None:
        """Remove the forward hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def clipped_sum(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], torch.Tensor, torch.Tensor]:
        """Return (Σ_i clip(g_i) per parameter, summed loss, logits) for one physical batch."""
        self._records = []
        try:
            logits = self.model(x)
        finally:
            records, self._records = self._records, None
        loss = self.loss(logits, y)
        output_grads = torch.autograd.grad(
            loss, [out for _, _, out in records], allow_unused=True, materialize_grads=True
        )
        modules = [module for module, _, _ in records]
        if len(set(modules)) == len(modules):
            calls = [
                (module, [(inp, grad_out)])
                for (module, inp, _), grad_out in zip(records, output_grads, strict=True)
            ]
        else:  # a layer called more than once: its per-sample gradient sums the calls
            grouped: dict[nn.Module, list[tuple[torch.Tensor, torch.Tensor]]] = {}
            for (module, inp, _), grad_out in zip(records, output_grads, strict=True):
                grouped.setdefault(module, []).append((inp, grad_out))
            calls = list(grouped.items())
        squared: torch.Tensor | None = None
        terms = []
        for module, seen in calls:
            weight, bias = self.slots[module]
            inp, grad_out = seen[0]
            if len(seen) == 1 and inp.dim() == 2 and type(module) is nn.Linear:
                # ‖∂y_i ⊗ x_i‖² + ‖∂y_i‖² = ‖∂y_i‖²(‖x_i‖² + 1): weight and bias
                out_squared = torch.linalg.vecdot(grad_out, grad_out)
                if weight is None:
                    term = out_squared
                else:
                    in_squared = torch.linalg.vecdot(inp, inp)
                    if bias is not None:
                        in_squared.add_(1.0)
                    if squared is not None:
                        squared.addcmul_(out_squared, in_squared)
                        term = None
                    else:
                        term = out_squared.mul_(in_squared)
                terms.append((weight, bias, True, inp, grad_out))
            else:
                per_weight, per_bias = _per_sample(module, seen)
                term = per_bias.square().sum(1) if bias is not None else None
                if weight is not None:
                    weight_squared = per_weight.flatten(1).square().sum(1)
                    term = weight_squared if term is None else term.add_(weight_squared)
                terms.append((weight, bias, False, per_weight, per_bias))
            if term is not None:
                squared = term if squared is None else squared.add_(term)
        sums: list[torch.Tensor | None] = [None] * len(self.params)
        if squared is None:
            return sums, loss.detach(), logits.detach()
        # Opacus' flat clipping: max_grad_norm / (‖g_i‖ + 1e-6), at most 1
        factor = squared.sqrt_().add_(1e-6).reciprocal_().mul_(self.max_grad_norm).clamp_(max=1.0)
        column = factor.unsqueeze(1)
        for weight, bias, outer, a, b in terms:
            if outer:  # a = layer input, b = output gradient: Σ_i c_i ∂y_i ⊗ x_i
                if weight is not None:
                    sums[weight] = b.t().mm(a.mul(column))
                if bias is not None:
                    sums[bias] = factor @ b
            else:  # a, b = per-sample weight and bias gradients
                if weight is not None:
                    sums[weight] = torch.einsum("i,i...", factor, a)
                if bias is not None:
                    sums[bias] = factor @ b
        return sums, loss.detach(), logits.detach()


def _per_sample(
    module: nn.Module, calls: list[tuple[torch.Tensor, torch.Tensor]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return per-sample (weight, bias) gradients of a layer, summed over its calls."""
    per_weight: torch.Tensor | None = None
    per_bias: torch.Tensor | None = None
    for inp, grad_out in calls:
        batch = inp.shape[0]
        if isinstance(module, nn.Conv2d):
            columns = F.unfold(
                inp,
                module.kernel_size,
                dilation=module.dilation,
                padding=module.padding,  # type: ignore[arg-type]
                stride=module.stride,
            )
            outputs = grad_out.reshape(batch, grad_out.shape[1], -1)
            w = outputs.bmm(columns.transpose(1, 2)).reshape(batch, *module.weight.shape)
        else:
            columns = inp.reshape(batch, -1, inp.shape[-1])
            outputs = grad_out.reshape(batch, -1, grad_out.shape[-1])
            w = outputs.transpose(1, 2).bmm(columns)
        b = outputs.sum(2 if isinstance(module, nn.Conv2d) else 1)
        per_weight = w if per_weight is None else per_weight + w
        per_bias = b if per_bias is None else per_bias + b
    assert per_weight is not None and per_bias is not None
    return per_weight, per_bias


class VmapClipper:
    """Clipped per-sample gradient sums from ``torch.func``: ``vmap(grad(loss))``."""

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[nn.Parameter],
        criterion: nn.Module | None,
        max_grad_norm: float,
    ) -> None:
        from torch.func import functional_call, grad, vmap

        self.model, self.params, self.max_grad_norm = model, list(params), max_grad_norm
        names = {id(p): name for name, p in model.named_parameters()}
        self.names = [names[id(p)] for p in self.params]
        loss = _sum_loss(criterion)

        def one(
            weights: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
        ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            logits = functional_call(model, weights, (x.unsqueeze(0),), strict=False)
            value = loss(logits, y.unsqueeze(0))
            return value, (value.detach(), logits.squeeze(0).detach())

        self.per_sample = vmap(
            grad(one, has_aux=True), in_dims=(None, 0, 0), randomness="different"
        )

    def close(self) -> None:
        """Nothing to remove."""

    def clipped_sum(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[list[torch.Tensor | None], torch.Tensor, torch.Tensor]:
        """Return (Σ_i clip(g_i) per parameter, summed loss, logits) for one physical batch."""
        weights = {name: p.detach() for name, p in zip(self.names, self.params, strict=True)}
        grads, (losses, logits) = self.per_sample(weights, x, y)
        per_sample = [grads[name] for name in self.names]
        squared = torch.stack([g.flatten(1).square().sum(1) for g in per_sample]).sum(0)
        factor = (self.max_grad_norm / (squared.sqrt() + 1e-6)).clamp(max=1.0)
        sums: list[torch.Tensor | None] = [torch.einsum("i,i...", factor, g) for g in per_sample]
        return sums, losses.sum(), logits


class DPSGDStep:
    """One DP-SGD step per logical batch: clipped sums, Opacus' noise, accountant, step.

    Mirrors ``opacus.optimizers.DPOptimizer`` (``clip_and_accumulate``, ``add_noise``,
    ``scale_grad``, the accountant's step hook, then the wrapped optimizer's step) with
    the per-sample gradients of ``clipper``.
    """

    accumulated_iterations = 1
    """Read by Opacus' accountant hook: one logical batch per step."""

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        clipper: FusedClipper | VmapClipper,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        generator: torch.Generator | None,
        accountant_hook: Callable[[Any], None],
    ) -> None:
        self.original_optimizer = optimizer
        self.clipper = clipper
        self.params = clipper.params
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.generator = generator
        self.accountant_hook = accountant_hook
        contiguous = torch.contiguous_format
        self._grads = [torch.empty_like(p, memory_format=contiguous) for p in self.params]

    def close(self) -> None:
        """Remove the clipper's hooks and the last noisy gradients."""
        self.clipper.close()
        self.original_optimizer.zero_grad(set_to_none=True)

    def step(self, physical: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int, int]:
        """Take one DP-SGD step on a logical batch given as physical batches.

        Returns
        -------
        tuple
            (summed loss, correct predictions, examples) of the logical batch.
        """
        sums: list[torch.Tensor | None] = [None] * len(self.params)
        total_loss, correct, seen = 0.0, 0, 0
        for x, y in physical:
            if not len(y):
                continue
            clipped, loss, logits = self.clipper.clipped_sum(x, y)
            for k, part in enumerate(clipped):
                if part is not None:
                    before = sums[k]
                    sums[k] = part if before is None else before.add_(part)
            total_loss += float(loss)
            correct += int((logits.argmax(dim=1) == y).sum())
            seen += len(y)
        # DPOptimizer.add_noise + scale_grad: grad = (Σ clipped + N(0, σ²C²)) / E[batch];
        # noise per parameter in Opacus' order (normal_ draws as torch.normal does)
        std = self.noise_multiplier * self.max_grad_norm
        grads = self._grads
        for grad in grads:
            if std != 0:
                grad.normal_(0, std, generator=self.generator)
            else:
                grad.zero_()
        present = [k for k, part in enumerate(sums) if part is not None]
        if present:
            torch._foreach_add_([grads[k] for k in present], [sums[k] for k in present])
        torch._foreach_div_(grads, float(self.expected_batch_size * self.accumulated_iterations))
        for p, grad in zip(self.params, grads, strict=True):
            if p.grad is not grad:
                p.grad = grad
        self.accountant_hook(self)
        self.original_optimizer.step()
        return total_loss, correct, seen


def make_private(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    budget: PrivacyBudget,
    accountant_state: dict[str, Any] | None = None,
    *,
    epochs: int = 1,
    grad_sample_mode: str | None = None,
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
    grad_sample_mode : str, optional
        How per-sample gradients are computed (the mechanism and its accounting are
        the same for all): ``"fused"`` (the default, ``DEFAULT_GRAD_SAMPLE_MODE``, read
        at call time; a model it cannot handle falls back to ``"hooks"``), ``"vmap"``
        (``torch.func``), or Opacus' ``"hooks"``, ``"ghost"`` (ghost clipping, which
        pays off for large layers and batches), ``"functorch"``, ``"ew"``.
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
    UnsupportedModelError
        If ``"fused"`` was asked for explicitly and the model has other layers.
    """
    explicit = grad_sample_mode is not None
    mode = DEFAULT_GRAD_SAMPLE_MODE if grad_sample_mode is None else grad_sample_mode
    if mode not in GRAD_SAMPLE_MODES:
        raise ValueError(
            f"grad_sample_mode '{mode}' is unknown; valid: " + ", ".join(GRAD_SAMPLE_MODES)
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
    facts = (engine, budget, noise, sample_rate, steps_per_epoch)
    if mode in OWN_MODES:
        try:
            return _make_own(mode, model, optimizer, data_loader, criterion, generator, facts)
        except UnsupportedModelError:
            if explicit:
                raise
            mode = FALLBACK_GRAD_SAMPLE_MODE
    with quiet_opacus():
        made = engine.make_private(
            module=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            data_loader=data_loader,
            noise_multiplier=noise,
            max_grad_norm=budget.max_grad_norm,
            grad_sample_mode=mode,
            noise_generator=generator,
        )
    if mode == "ghost":
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
        grad_sample_mode=mode,
    )


class _BatchRows(Dataset[tuple[torch.Tensor, ...]]):
    """A two-tensor ``TensorDataset`` that hands a whole batch over as one indexing."""

    def __init__(self, dataset: TensorDataset) -> None:
        self.tensors = dataset.tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        rows = torch.tensor(indices, dtype=torch.long)
        return tuple(t[rows] for t in self.tensors)


def _whole_batch(batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return batch


def _poisson_loader(data_loader: DataLoader) -> DPDataLoader:
    """Return Opacus' Poisson loader for ``data_loader`` (same rate, same generator).

    For a two-tensor ``TensorDataset`` it indexes the tensors once per batch instead
    of collating sample by sample; the batches, and the draws from the generator
    (a DataLoader's base seed per epoch, one ``torch.rand`` per batch), are the same.
    """
    dataset = data_loader.dataset
    if not (isinstance(dataset, TensorDataset) and len(dataset.tensors) == 2):
        return DPDataLoader.from_data_loader(data_loader)
    return DPDataLoader(
        _BatchRows(dataset),
        sample_rate=1 / len(data_loader),
        collate_fn=_whole_batch,
        generator=data_loader.generator,
    )


def _make_own(
    mode: str,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data_loader: DataLoader,
    criterion: nn.Module | None,
    generator: torch.Generator | None,
    facts: tuple[PrivacyEngine, PrivacyBudget, float, float, int],
) -> PrivateTraining:
    """``make_private`` for the ``fused`` and ``vmap`` modes, on Opacus' engine and loader.

    Does what ``PrivacyEngine.make_private`` does around the per-sample gradients: the
    same parameter check, the same Poisson loader (``DPDataLoader`` on the loader's
    generator), the same sample rate and expected batch size, the same accountant
    hook; the clipping and noise of ``DPOptimizer`` are in :class:`DPSGDStep`.
    """
    engine, budget, noise, sample_rate, steps_per_epoch = facts
    model_parameters = set(model.parameters())
    if any(p not in model_parameters for g in optimizer.param_groups for p in g["params"]):
        raise ValueError("Module parameters are different than optimizer Parameters")
    params = optimizer_params(optimizer)
    make_clipper = FusedClipper if mode == "fused" else VmapClipper
    clipper = make_clipper(model, params, criterion, budget.max_grad_norm)
    with quiet_opacus():
        loader = _poisson_loader(data_loader)
    opacus_rate = 1 / len(loader)  # what PrivacyEngine.make_private gives the accountant
    step = DPSGDStep(
        optimizer,
        clipper,
        noise_multiplier=noise,
        max_grad_norm=budget.max_grad_norm,
        expected_batch_size=int(len(loader.dataset) * opacus_rate),  # type: ignore[arg-type]
        generator=generator,
        accountant_hook=engine.accountant.get_optimizer_hook_fn(sample_rate=opacus_rate),
    )
    return PrivateTraining(
        plain=model,
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
        engine=engine,
        budget=budget,
        noise_multiplier=noise,
        sample_rate=sample_rate,
        steps_per_epoch=steps_per_epoch,
        grad_sample_mode=mode,
        dp_step=step,
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
    """Train ``epochs`` epochs of DP-SGD; physical batches are at most ``max_physical_batch_size``.

    Poisson sampling makes the logical batch size random (and large logical batches
    help DP-SGD); a logical batch larger than ``max_physical_batch_size`` is split into
    physical batches (Opacus' ``BatchMemoryManager`` for its modes) while the optimizer
    steps (and the accountant counts) once per logical batch.
    """
    if training.dp_step is not None:
        return _train_own(training, epochs, max_physical_batch_size)
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


def _train_own(training: PrivateTraining, epochs: int, max_physical: int) -> PrivateEpochs:
    """Train the ``fused``/``vmap`` epochs: Opacus' Poisson batches, one DP step each."""
    step = training.dp_step
    assert step is not None
    training.module.train()
    total_loss, correct, seen = 0.0, 0, 0
    steps_before = training.steps()
    for _ in range(epochs):
        for x, y in _poisson_batches(training.data_loader):
            if len(y) <= max_physical:
                loss, right, count = step.step(((x, y),))
            else:
                chunks = zip(x.split(max_physical), y.split(max_physical), strict=True)
                loss, right, count = step.step(chunks)
            total_loss, correct, seen = total_loss + loss, correct + right, seen + count
    return PrivateEpochs(
        loss=total_loss / seen if seen else math.nan,
        accuracy=correct / seen if seen else 0.0,
        steps=training.steps() - steps_before,
    )


def _poisson_batches(loader: DataLoader) -> Iterator[Any]:
    """Yield one epoch of ``loader``'s batches, as iterating it would.

    For :class:`_BatchRows` under Opacus' ``UniformWithReplacementSampler`` the batches
    are drawn here as that sampler draws them (per batch ``torch.rand(n) < q`` on its
    generator, ``steps`` batches) and cut from the tensors with one ``index_select``,
    without the DataLoader's per-batch machinery (profiler scope, fetcher, collate,
    index lists). The DataLoader iterator is still created, since it draws its
    workers' base seed from the same generator: the batches are those Opacus would
    draw (``tests/unit/test_dp_sgd_modes.py`` checks it against Opacus' loader).
    """
    rows = loader.dataset
    sampler = loader.batch_sampler
    if not isinstance(rows, _BatchRows):
        yield from loader
        return
    iter(loader)
    if type(sampler) is not UniformWithReplacementSampler:
        for indices in sampler:  # type: ignore[union-attr]
            yield rows.__getitems__(indices)
        return
    size, rate, generator = sampler.num_samples, sampler.sample_rate, sampler.generator
    for _ in range(sampler.steps):
        chosen = (torch.rand(size, generator=generator) < rate).nonzero().view(-1)
        yield tuple(t.index_select(0, chosen) for t in rows.tensors)
