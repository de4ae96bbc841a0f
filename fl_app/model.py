"""Models sized for the dataset: a small CNN for images, an MLP for tabular data.

Both use only layers that Opacus supports for per-sample gradients (no BatchNorm),
so the same model trains with and without differential privacy.
"""

from __future__ import annotations

import math

import torch
from torch import nn

MODEL_KINDS: tuple[str, ...] = ("auto", "mlp", "cnn")


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
    """Build the model for a dataset shape.

    Parameters
    ----------
    kind : str
        One of ``MODEL_KINDS``.
    input_shape : tuple[int, ...]
        Shape of one sample, e.g. ``(1, 8, 8)`` or ``(30,)``.
    num_classes : int
        Number of output classes.
    prefer_mlp : bool
        ``auto`` then means an MLP.
    """
    concrete = resolve_model_kind(kind, input_shape, prefer_mlp)
    if concrete == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"a CNN needs (channels, height, width) input, got {input_shape}")
        return CNN((input_shape[0], input_shape[1], input_shape[2]), num_classes)
    if concrete == "mlp":
        return MLP(math.prod(input_shape), num_classes)
    raise ValueError(f"unknown model kind '{kind}'; valid: {', '.join(MODEL_KINDS)}")
