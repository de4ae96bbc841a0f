"""Reconstruction of a client's training examples from its update, by the server.

Adversary: the (honest-but-curious) server. It knows the model weights it sent and
the architecture, receives one client's update, and knows or guesses the client's
batch size and learning rate. It never sees the client's data.

Attack: J. Geiping, H. Bauermeister, H. Dröge, M. Moeller, "Inverting Gradients --
How easy is it to break privacy in federated learning?", NeurIPS 2020. Dummy inputs
are optimised with Adam (signed gradients, step decay at 3/8, 5/8 and 7/8 of the
iterations, inputs kept in the data range) to minimise the cosine distance between
their gradient and the received one, over all layers at once, plus a total-variation
prior (weight 1e-4, the paper's); the best of several random restarts (lowest matching
loss, which the server can compute) is kept. Deviation: 200 iterations per restart
instead of the paper's thousands, which 8x8 digits do not need (< 2 s per run).
Labels: given, or for batch size 1 recovered from the sign of the
last layer's weight gradient as in iDLG (B. Zhao, K. R. Mopuri, H. Bilen, "iDLG:
Improved Deep Leakage from Gradients", 2020): with non-negative features, only the
true class's row sums to a negative value.

The update is turned into a gradient as for one local SGD step: ``(old - new) / η``.
Several local steps make this an average gradient along the trajectory, which the
attack only approximates (Geiping et al. also attack several local steps by unrolling them; not done
here). Quality is measured against the real examples (when the audit has them) by
PSNR and SSIM after optimally matching reconstructed to real examples (Hungarian
assignment on the mean squared error).

An encrypted update gives the server nothing to invert: :func:`invert_update` then
returns :class:`NothingToInvert`, never a number.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from torch import nn

from fl_app.he.records import CIPHERTEXT_PREFIX

NOTHING_TO_INVERT = "nothing to invert: the server holds only ciphertexts"


@dataclass(frozen=True)
class NothingToInvert:
    """The server holds no plaintext update: there is nothing to reconstruct from."""

    reason: str = NOTHING_TO_INVERT

    def to_dict(self) -> dict[str, Any]:
        """Return the refusal as plain JSON types (no metric at all)."""
        return {"status": "refused", "reason": self.reason}


@dataclass(frozen=True)
class InversionResult:
    """A reconstruction and, when the real examples were given, its quality.

    ``reconstruction`` is ``(batch, *input_shape)`` in the order of the real examples
    (after matching) when they were given. ``psnr``/``ssim`` are means over the batch.
    """

    reconstruction: np.ndarray
    labels: np.ndarray
    matching_loss: float
    psnr: float | None
    ssim: float | None
    per_example_psnr: tuple[float, ...] | None
    per_example_ssim: tuple[float, ...] | None
    restarts: int
    iterations: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """Return the metrics as plain JSON types (the images are left out)."""
        return {
            "status": "reconstructed",
            "batch_size": len(self.reconstruction),
            "labels": [int(v) for v in self.labels],
            "matching_loss": self.matching_loss,
            "psnr": self.psnr,
            "ssim": self.ssim,
            "per_example_psnr": list(self.per_example_psnr or ()),
            "per_example_ssim": list(self.per_example_ssim or ()),
            "restarts": self.restarts,
            "iterations": self.iterations,
            "seconds": self.seconds,
        }


def refuse_encrypted(reason: str = NOTHING_TO_INVERT) -> NothingToInvert:
    """Return the result for an update the server holds only as ciphertexts."""
    return NothingToInvert(reason)


def is_encrypted_update(update: object) -> bool:
    """Tell whether a received update is ciphertexts rather than plaintext arrays.

    Ciphertexts arrive as bytes, or as ``uint8`` arrays under ``he-ciphertext-*`` keys
    (:func:`fl_app.he.records.ciphertext_record`).
    """
    if isinstance(update, bytes | bytearray | memoryview):
        return True
    if isinstance(update, Mapping):
        return any(
            str(key).startswith(CIPHERTEXT_PREFIX) or isinstance(value, bytes | bytearray)
            for key, value in update.items()
        )
    if isinstance(update, Sequence) and not isinstance(update, str):
        return bool(update) and all(isinstance(v, bytes | bytearray) for v in update)
    return False


def psnr(real: np.ndarray, estimate: np.ndarray, data_range: float = 1.0) -> float:
    """Return the peak signal-to-noise ratio in dB (``inf`` for identical images)."""
    mse = float(np.mean((np.asarray(real, float) - np.asarray(estimate, float)) ** 2))
    return float("inf") if mse == 0 else float(10 * np.log10(data_range**2 / mse))


def ssim(
    real: np.ndarray, estimate: np.ndarray, data_range: float = 1.0, win_size: int = 7
) -> float:
    """Return the structural similarity of two single-channel images.

    Wang et al. 2004 with a ``win_size`` x ``win_size`` uniform window, sample
    covariances, ``K1 = 0.01``, ``K2 = 0.03``, averaged over the windows that fit in
    the image: the conventions of ``skimage.metrics.structural_similarity`` (whose
    default window, 7, fits an 8x8 digit). A leading channel axis of size 1 is dropped.
    """
    a = np.asarray(real, np.float64).squeeze()
    b = np.asarray(estimate, np.float64).squeeze()
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"need two single-channel images of one shape, got {a.shape}, {b.shape}")
    if win_size % 2 == 0 or win_size > min(a.shape):
        raise ValueError(f"win_size must be odd and at most {min(a.shape)}, got {win_size}")

    def mean(img: np.ndarray) -> np.ndarray:
        return ndimage.uniform_filter(img, size=win_size)

    samples = win_size**2
    cov_norm = samples / (samples - 1)
    mu_a, mu_b = mean(a), mean(b)
    var_a = cov_norm * (mean(a * a) - mu_a * mu_a)
    var_b = cov_norm * (mean(b * b) - mu_b * mu_b)
    cov = cov_norm * (mean(a * b) - mu_a * mu_b)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    index = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    pad = (win_size - 1) // 2
    return float(index[pad : a.shape[0] - pad, pad : a.shape[1] - pad].mean())


def match_to_real(real: np.ndarray, reconstruction: np.ndarray) -> np.ndarray:
    """Return the permutation ``p`` such that ``reconstruction[p[i]]`` best matches ``real[i]``.

    Minimises the total mean squared error (Hungarian assignment).
    """
    flat_real = np.asarray(real, float).reshape(len(real), -1)
    flat_rec = np.asarray(reconstruction, float).reshape(len(reconstruction), -1)
    cost = ((flat_real[:, None, :] - flat_rec[None, :, :]) ** 2).mean(axis=2)
    rows, cols = linear_sum_assignment(cost)
    return cols[np.argsort(rows)]


def gradient_from_update(
    update: Mapping[str, np.ndarray],
    kind: Literal["delta", "gradient"] = "delta",
    learning_rate: float | None = None,
) -> dict[str, np.ndarray]:
    """Return the gradient a received update stands for.

    ``kind="delta"``: the update is new minus old weights after one local SGD step
    with ``learning_rate`` η, so the gradient is ``(old - new) / η``.
    ``kind="gradient"``: the update is already a gradient (FedSGD).
    """
    if kind == "gradient":
        return {k: np.asarray(v, np.float32) for k, v in update.items()}
    if kind != "delta":
        raise ValueError(f"update kind must be 'delta' or 'gradient', got '{kind}'")
    if not learning_rate or learning_rate <= 0:
        raise ValueError("a weight delta needs the client's learning rate to become a gradient")
    return {k: -np.asarray(v, np.float32) / learning_rate for k, v in update.items()}


def recover_label(model: nn.Module, gradient: Mapping[str, np.ndarray]) -> int:
    """Return the label of a single example from its gradient (iDLG).

    The last 2-D parameter is the classifier's weight; with cross-entropy and
    non-negative (ReLU) features, only the true class's row has a negative sum.
    """
    names = [name for name, p in model.named_parameters() if p.ndim == 2]
    if not names:
        raise ValueError("the model has no linear classifier layer to read the label from")
    rows = np.asarray(gradient[names[-1]]).sum(axis=1)
    return int(np.argmin(rows))


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    dx = (x[..., :, 1:] - x[..., :, :-1]).abs().mean()
    dy = (x[..., 1:, :] - x[..., :-1, :]).abs().mean()
    return dx + dy


def _cosine_cost(trial: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> torch.Tensor:
    dot = sum((t * g).sum() for t, g in zip(trial, target, strict=True))
    trial_norm = sum(t.pow(2).sum() for t in trial).sqrt()
    target_norm = sum(g.pow(2).sum() for g in target).sqrt()
    return 1 - dot / (trial_norm * target_norm + 1e-12)


def _reconstruct_once(
    model: nn.Module,
    target: list[torch.Tensor],
    labels: torch.Tensor,
    shape: tuple[int, ...],
    *,
    iterations: int,
    step_size: float,
    tv_weight: float,
    data_range: tuple[float, float],
    generator: torch.Generator,
) -> tuple[torch.Tensor, float]:
    params = [p for p in model.parameters() if p.requires_grad]
    low, high = data_range
    x = torch.randn(shape, generator=generator).clamp(low, high).requires_grad_(True)
    optimizer = torch.optim.Adam([x], lr=step_size)
    milestones = [int(iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)]
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)

    def objective() -> tuple[torch.Tensor, torch.Tensor]:
        loss = nn.functional.cross_entropy(model(x), labels)
        trial = torch.autograd.grad(loss, params, create_graph=True)
        matching = _cosine_cost(trial, target)
        return matching, matching + tv_weight * _total_variation(x)

    for _ in range(iterations):
        optimizer.zero_grad(set_to_none=True)
        _, cost = objective()
        (x.grad,) = torch.autograd.grad(cost, [x])
        x.grad.sign_()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            x.clamp_(low, high)
    matching, _ = objective()
    return x.detach(), float(matching.detach())


def invert_update(
    model: nn.Module,
    global_weights: Mapping[str, np.ndarray],
    update: Mapping[str, np.ndarray] | bytes | Sequence[bytes],
    *,
    batch_size: int,
    input_shape: tuple[int, ...],
    kind: Literal["delta", "gradient"] = "delta",
    learning_rate: float | None = None,
    labels: np.ndarray | None = None,
    real: np.ndarray | None = None,
    restarts: int = 4,
    iterations: int = 200,
    step_size: float = 0.1,
    tv_weight: float = 1e-4,
    data_range: tuple[float, float] = (0.0, 1.0),
    seed: int = 0,
) -> InversionResult | NothingToInvert:
    """Reconstruct a client's batch from its update ("Inverting Gradients").

    Parameters
    ----------
    model : nn.Module
        The architecture (e.g. :func:`fl_app.model.build_model`); its weights are
        replaced by ``global_weights`` on a copy.
    global_weights : Mapping[str, np.ndarray]
        The weights the server sent (``state_dict`` keys).
    update : Mapping[str, np.ndarray]
        What the server received: new minus old weights (``kind="delta"``) or a
        gradient (``kind="gradient"``). Ciphertexts give :class:`NothingToInvert`.
    batch_size : int
        Examples behind the update.
    input_shape : tuple[int, ...]
        Shape of one example, e.g. ``(1, 8, 8)``.
    kind, learning_rate
        See :func:`gradient_from_update`.
    labels : np.ndarray, optional
        The batch's labels; recovered by iDLG when omitted (batch size 1 only).
    real : np.ndarray, optional
        The real examples, only to score the reconstruction (PSNR, SSIM).
    restarts, iterations, step_size, tv_weight
        Random restarts (the lowest matching loss wins), Adam steps per restart, its
        initial step size, and the weight of the total-variation prior.
    data_range : tuple[float, float]
        Box the inputs are kept in (digits: ``[0, 1]``).
    seed : int
        Seeds the random starting points.
    """
    if is_encrypted_update(update):
        return refuse_encrypted()
    if not isinstance(update, Mapping):
        raise TypeError(f"the update must map parameter names to arrays, got {type(update)}")
    if batch_size < 1 or restarts < 1 or iterations < 1:
        raise ValueError("batch_size, restarts and iterations must be >= 1")
    started = time.perf_counter()
    victim = _with_weights(model, global_weights)
    gradient = gradient_from_update(update, kind, learning_rate)
    missing = [name for name, _ in victim.named_parameters() if name not in gradient]
    if missing:
        raise ValueError(f"the update lacks parameters {missing}")
    if labels is None:
        if batch_size != 1:
            raise ValueError("labels can be recovered from the gradient for batch size 1 only")
        labels = np.array([recover_label(victim, gradient)])
    labels = np.asarray(labels, np.int64)
    if labels.shape != (batch_size,):
        raise ValueError(f"need {batch_size} labels, got shape {labels.shape}")
    target = [torch.from_numpy(gradient[name]) for name, _ in victim.named_parameters()]
    generator = torch.Generator().manual_seed(seed)
    best: tuple[torch.Tensor, float] | None = None
    for _ in range(restarts):
        candidate = _reconstruct_once(
            victim,
            target,
            torch.from_numpy(labels),
            (batch_size, *input_shape),
            iterations=iterations,
            step_size=step_size,
            tv_weight=tv_weight,
            data_range=data_range,
            generator=generator,
        )
        if best is None or candidate[1] < best[1]:
            best = candidate
    assert best is not None
    reconstruction = best[0].numpy()
    scores: tuple[list[float], list[float]] | None = None
    if real is not None:
        real = np.asarray(real, np.float32).reshape(batch_size, *input_shape)
        order = match_to_real(real, reconstruction)
        reconstruction, labels = reconstruction[order], labels[order]
        span = data_range[1] - data_range[0]
        scores = (
            [psnr(r, e, span) for r, e in zip(real, reconstruction, strict=True)],
            [ssim(r, e, span) for r, e in zip(real, reconstruction, strict=True)],
        )
    return InversionResult(
        reconstruction=reconstruction,
        labels=labels,
        matching_loss=best[1],
        psnr=float(np.mean(scores[0])) if scores else None,
        ssim=float(np.mean(scores[1])) if scores else None,
        per_example_psnr=tuple(scores[0]) if scores else None,
        per_example_ssim=tuple(scores[1]) if scores else None,
        restarts=restarts,
        iterations=iterations,
        seconds=time.perf_counter() - started,
    )


def _with_weights(model: nn.Module, weights: Mapping[str, np.ndarray]) -> nn.Module:
    victim = copy.deepcopy(model)
    victim.load_state_dict({k: torch.as_tensor(np.asarray(v)) for k, v in weights.items()})
    victim.eval()
    for p in victim.parameters():
        p.requires_grad_(True)
    return victim


def save_grid(real: np.ndarray, reconstructed: np.ndarray, path: str | Path) -> Path:
    """Write a PNG: real examples on the top row, their reconstructions below.

    Images are ``(batch, 1, H, W)`` or ``(batch, H, W)`` in ``[0, 1]``.
    """
    from matplotlib.figure import Figure

    real = np.asarray(real, float)
    rec = np.asarray(reconstructed, float)
    real, rec = (a.reshape(len(a), *a.shape[-2:]) for a in (real, rec))
    if len(real) != len(rec):
        raise ValueError(f"{len(real)} real images but {len(rec)} reconstructions")
    columns = len(real)
    figure = Figure(figsize=(1.2 * columns + 0.8, 2.6))
    axes = figure.subplots(2, columns, squeeze=False)
    for column in range(columns):
        for row, images in enumerate((real, rec)):
            axis = axes[row][column]
            axis.imshow(images[column], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
            axis.set_xticks([])
            axis.set_yticks([])
        axes[0][column].set_title(f"#{column}", fontsize=8)
    axes[0][0].set_ylabel("real")
    axes[1][0].set_ylabel("reconstructed")
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    return path
