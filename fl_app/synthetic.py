"""Synthetic(α, β): the FedProx/LEAF synthetic federated dataset, one device at a time.

The dataset of Li et al., "Federated Optimization in Heterogeneous Networks" (FedProx,
MLSys 2020; ``data/synthetic_*/generate_synthetic.py`` and ``data/synthetic_iid/
generate_iid.py`` of github.com/litian96/FedProx), on which LEAF's synthetic dataset
(Caldas et al. 2018) is based. Device ``k`` of the non-IID variant, with ``d = 60``
features and 10 classes:

- ``n_k = min(int(LogNormal(4, 2)) + 50, MAX_SAMPLES)`` samples;
- ``mean_W_k ~ N(0, α²)``, ``mean_b_k = mean_W_k`` (model skew) and
  ``B_k ~ N(0, β²)`` (feature skew);
- ``mean_x_k ~ N(B_k, 1)`` in each of the ``d`` coordinates;
- ``W_k ~ N(mean_W_k, 1)`` of shape ``(d, 10)`` and ``b_k ~ N(mean_b_k, 1)`` of shape
  ``(10,)``;
- ``x ~ N(mean_x_k, Σ)`` with ``Σ = diag(j ** -1.2 for j = 1..d)``, ``n_k`` rows;
- ``y = argmax(softmax(x @ W_k + b_k))``.

The IID variant (FedProx's Synthetic-IID) has ``mean_x_k = 0`` and one global
``W, b ~ N(0, 1)`` shared by every device; α and β are ignored there.

Seeding, which differs from the reference on purpose: a device's data depend only on
``(seed, device, alpha, beta, iid)``, never on how many devices there are, so a
simulated client can generate its own data alone, in its own process. Every
per-device quantity is drawn, in the order listed above, from a generator seeded by
``np.random.SeedSequence([seed, device, _TAG])``; the IID variant's global ``W, b``
come from ``np.random.SeedSequence([seed, _GLOBAL_TAG])``, which depends on the seed
alone. A device's sample count is the first draw of its stream, so it is the same in
both variants and for every α and β.

Other differences from the FedProx reference, none of which changes a distribution
except the cap:

- The sample count is capped at ``MAX_SAMPLES`` (10,000) so that one device cannot
  blow up memory: the LogNormal(4, 2) tail is very heavy (its mean is e⁶ ≈ 403 but
  its median only e⁴ ≈ 55) and about 0.5% of devices would otherwise exceed it.
- The reference draws everything from numpy's global stream in one loop over all
  devices, so its numbers depend on the number of devices; ours do not (see above),
  hence the same seed gives other numbers than the reference, from the same
  distributions.
- ``x`` is drawn as ``mean_x + z * sqrt(diag(Σ))`` with independent standard normal
  ``z`` (exactly ``N(mean_x, Σ)``, since Σ is diagonal) instead of
  ``multivariate_normal``, and ``y`` as the argmax of the logits (softmax is
  monotonic), vectorised. Labels are computed in float64; ``x`` is then returned as
  float32 and ``y`` as int64 (the reference stores floats in JSON).
- No shuffling and no train/test split: the reference shuffles each device's samples
  and keeps 90% for training; ours are i.i.d. within a device, so any split of the
  returned rows is a fair one and is left to the caller.

LEAF's own generator (``data/synthetic/main.py`` of github.com/TalwalkarLab/leaf) is a
different process, not followed here: LogNormal(3, 2) + 5 samples capped at 1,000,
device models drawn around clusters through a random side-information matrix, a bias
feature, N(0, 0.1²) noise on the logits, and no α or β.

Two properties of the reference process worth knowing when reading results:

- α does not change a device's data. ``mean_W_k`` adds ``mean_W_k · (1 + Σ_j x_j)``
  to every class's logit alike, which the argmax ignores, so the distribution of
  ``(x, y)`` is the same for every α; with this module's fixed draw order the labels
  are even identical, up to floating-point ties. Only β (and the per-device draws of
  ``W_k``, ``b_k`` and ``mean_x_k``) make devices differ.
- Even Synthetic(0, 0) is strongly non-IID: each device has its own ``W_k``, ``b_k`` and
  ``mean_x_k``, so most of a device's labels fall in one or two classes; the mean
  total-variation distance between two devices' label histograms is about 0.88, against
  about 0.13 (mostly sampling noise) for the IID variant. β adds feature skew and makes
  the label skew somewhat stronger.
"""

from __future__ import annotations

import math
import operator

import numpy as np

NUM_FEATURES = 60
NUM_CLASSES = 10
MAX_SAMPLES = 10_000
"""The cap on a device's sample count (the reference has none)."""

MIN_SAMPLES = 50
"""The reference's floor: every device has at least this many samples."""

_TAG = 0x53594E54
"""Tags this dataset's seed sequences ("SYNT"), apart from other uses of the run's seed."""

_GLOBAL_TAG = 0x53594E47
"""Tags the IID variant's global model ("SYNG"); no device's sequence ends with it."""

_MAX_DEVICE = 2**32
"""Device indices are one 32-bit word of the seed sequence, so that no two collide.

(``SeedSequence`` splits a larger integer into several words, and then seed ``s`` with
device ``d + 2**32 * e`` would give the same words as seed ``s + 2**32 * d`` with
device ``e``.)
"""

_FEATURE_STD = np.arange(1, NUM_FEATURES + 1, dtype=np.float64) ** -0.6
"""The square root of the diagonal of Σ: ``(j + 1) ** -1.2`` for ``j = 0..d-1``."""


def device_data(
    seed: int, device: int, alpha: float, beta: float, iid: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Return the samples of one device of Synthetic(α, β).

    Parameters
    ----------
    seed : int
        The dataset's seed, a non-negative integer.
    device : int
        The device's index, in ``[0, 2**32)``.
    alpha : float
        The model skew α ≥ 0 (the standard deviation of ``mean_W``); ignored when
        ``iid``.
    beta : float
        The feature skew β ≥ 0 (the standard deviation of ``B``); ignored when ``iid``.
    iid : bool, optional
        Whether to generate the IID variant: one global model, ``mean_x = 0``.

    Returns
    -------
    tuple[np.ndarray, np.ndarray]
        ``x``, float32 of shape ``(n, NUM_FEATURES)``, and ``y``, int64 of shape
        ``(n,)`` with values in ``[0, NUM_CLASSES)``, where
        ``MIN_SAMPLES <= n <= MAX_SAMPLES``.

    Raises
    ------
    ValueError
        If ``seed`` is negative, ``device`` out of range, or ``alpha`` or ``beta``
        negative or not finite.
    """
    seed = operator.index(seed)
    device = operator.index(device)
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0 <= device < _MAX_DEVICE:
        raise ValueError(f"device must be in [0, 2**32), got {device}")
    for name, value in (("alpha", alpha), ("beta", beta)):
        if not (math.isfinite(value) and value >= 0):
            raise ValueError(f"{name} must be finite and non-negative, got {value}")

    rng = np.random.default_rng(np.random.SeedSequence([seed, device, _TAG]))
    n = _num_samples(rng)
    if iid:
        weights, bias = _global_model(seed)
        mean_x = np.zeros(NUM_FEATURES)
    else:
        mean_w = rng.normal(0.0, alpha)
        b_shift = rng.normal(0.0, beta)
        mean_x = rng.normal(b_shift, 1.0, NUM_FEATURES)
        weights = rng.normal(mean_w, 1.0, (NUM_FEATURES, NUM_CLASSES))
        bias = rng.normal(mean_w, 1.0, NUM_CLASSES)
    x = mean_x + rng.standard_normal((n, NUM_FEATURES)) * _FEATURE_STD
    y = np.argmax(x @ weights + bias, axis=1).astype(np.int64)
    return x.astype(np.float32), y


def _num_samples(rng: np.random.Generator) -> int:
    """Draw a device's sample count: ``int(LogNormal(4, 2)) + 50``, capped."""
    draw = rng.lognormal(4.0, 2.0)
    return min(int(min(draw, MAX_SAMPLES)) + MIN_SAMPLES, MAX_SAMPLES)


def _global_model(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw the IID variant's model ``W, b ~ N(0, 1)``, shared by every device."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, _GLOBAL_TAG]))
    weights = rng.normal(0.0, 1.0, (NUM_FEATURES, NUM_CLASSES))
    bias = rng.normal(0.0, 1.0, NUM_CLASSES)
    return weights, bias
