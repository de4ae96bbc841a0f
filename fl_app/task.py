"""Local computation on one node: training, evaluation and full-batch gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fl_app.data import Split


@dataclass(frozen=True)
class TrainResult:
    """What local training reports: mean loss and accuracy over the seen batches."""

    loss: float
    accuracy: float
    num_examples: int
    steps: int


def to_tensors(split: Split) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x, y)`` as torch tensors without copying."""
    return torch.from_numpy(split.x), torch.from_numpy(split.y)


def train(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    momentum: float,
    seed: int,
    proximal_mu: float = 0.0,
) -> TrainResult:
    """Train ``model`` in place with mini-batch SGD.

    Parameters
    ----------
    model : nn.Module
        Model holding the starting (global) weights.
    data : Split
        Local training data.
    epochs, batch_size, learning_rate, momentum : int, int, float, float
        Local SGD settings.
    seed : int
        Seeds the batch order, so equal inputs give equal weights.
    proximal_mu : float
        FedProx: adds ``mu / 2 * ||w - w_start||^2`` to the loss (0 disables it).
    """
    x, y = to_tensors(data)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate, momentum=momentum)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    total_loss, correct, seen, steps = 0.0, 0, 0, 0
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch_size):
            batch = order[start : start + batch_size]
            logits = model(x[batch])
            loss = loss_fn(logits, y[batch])
            total_loss += loss.item() * len(batch)
            if anchor:
                loss = loss + proximal_mu / 2 * sum(
                    (p - a).pow(2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            correct += int((logits.argmax(dim=1) == y[batch]).sum())
            seen += len(batch)
            steps += 1
    return TrainResult(total_loss / max(seen, 1), correct / max(seen, 1), len(y), steps)


@torch.no_grad()
def evaluate(model: nn.Module, data: Split) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``data``."""
    if len(data) == 0:
        return 0.0, 0.0
    x, y = to_tensors(data)
    model.eval()
    logits = model(x)
    loss = nn.functional.cross_entropy(logits, y).item()
    accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def full_batch_gradient(model: nn.Module, data: Split) -> dict[str, np.ndarray]:
    """Return the gradient of the mean loss over all of ``data`` at the model's weights.

    Keys and shapes follow ``model.state_dict()`` (FedSGD replies with these).
    """
    x, y = to_tensors(data)
    model.train()
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()
    grads = {name: p.grad for name, p in model.named_parameters()}
    return {
        name: (grads[name] if grads.get(name) is not None else torch.zeros_like(value))
        .detach()
        .numpy()
        .copy()
        for name, value in model.state_dict().items()
    }
