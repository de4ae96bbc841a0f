"""Models and their registry: a small CNN for images, an MLP for tabular data, yours.

Run-config ``model`` names a model of :data:`MODELS` (or ``auto``: the CNN for
images, else the MLP). Add a model with one decorated function::

    @register_model("wide-mlp")
    def wide_mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return MLP(math.prod(input_shape), num_classes, hidden=256)

The shipped models use only layers that Opacus supports for per-sample gradients
(no BatchNorm), so they train with and without differential privacy.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn


class MLP(nn.Module):
    """Two-layer perceptron: flatten, hidden ReLU layer, linear classifier."""

    def __init__(self, num_features: int, num_classes: int, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(num_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.net(x)


class CNN(nn.Module):
    """Small CNN for single-channel images (two 3x3 convolutions, one pooling)."""

    def __init__(self, input_shape: tuple[int, int, int], num_classes: int) -> None:
        super().__init__()
        channels, height, width = input_shape
        self.features = nn.Sequential(
            nn.Conv2d(channels, 16, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(32 * (height // 2) * (width // 2), 64),
            nn.ReLU(),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class logits."""
        return self.classifier(self.features(x))


ModelBuilder = Callable[[tuple[int, ...], int], nn.Module]
"""Builds a model from the shape of one sample and the number of classes."""

MODELS: dict[str, ModelBuilder] = {}
"""The models run-config ``model`` can name; add yours with :func:`register_model`."""


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Add a model to the registry under ``name`` (run-config ``model = "<name>"``).

    The function receives the shape of one sample (e.g. ``(1, 28, 28)`` or ``(17,)``)
    and the number of classes, and returns a fresh ``nn.Module`` that maps a batch
    of that shape to class logits. For ``dp = "local"`` use layers Opacus supports
    (no BatchNorm; ``opacus.validators.ModuleValidator`` tells).
    """

    def add(builder: ModelBuilder) -> ModelBuilder:
        if name in MODELS or name == "auto":
            raise ValueError(f"model name '{name}' is already taken")
        MODELS[name] = builder
        return builder

    return add


@register_model("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two-layer perceptron over the flattened sample."""
    return MLP(math.prod(input_shape), num_classes)


@register_model("cnn")
def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Small CNN; needs ``(channels, height, width)`` samples."""
    if len(input_shape) != 3:
        raise ValueError(f"a CNN needs (channels, height, width) input, got {input_shape}")
    return CNN((input_shape[0], input_shape[1], input_shape[2]), num_classes)


@register_model("logreg")
def logistic_regression(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Multinomial logistic regression (the FedProx paper's model for Synthetic(α, β))."""
    return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


def model_kinds() -> tuple[str, ...]:
    """Return the names run-config ``model`` accepts: ``auto`` and the registry's."""
    return ("auto", *MODELS)


def resolve_model_kind(kind: str, input_shape: tuple[int, ...], prefer_mlp: bool = False) -> str:
    """Return the concrete model kind.

    ``auto`` picks a CNN for images, else an MLP — and the MLP when ``prefer_mlp``
    (see :attr:`fl_app.config.RunConfig.prefers_mlp`).
    """
    if kind == "auto":
        return "cnn" if len(input_shape) == 3 and not prefer_mlp else "mlp"
    return kind


def build_model(
    kind: str, input_shape: tuple[int, ...], num_classes: int, prefer_mlp: bool = False
) -> nn.Module:
    """Build the model for a task's shape.

    Parameters
    ----------
    kind : str
        ``auto`` or a name in :data:`MODELS`.
    input_shape : tuple[int, ...]
        Shape of one sample, e.g. ``(1, 8, 8)`` or ``(30,)``.
    num_classes : int
        Number of output classes.
    prefer_mlp : bool
        ``auto`` then means an MLP.
    """
    concrete = resolve_model_kind(kind, input_shape, prefer_mlp)
    if concrete not in MODELS:
        raise ValueError(f"unknown model '{kind}'; valid: {', '.join(model_kinds())}")
    return MODELS[concrete](input_shape, num_classes)
