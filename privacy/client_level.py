"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018) over numpy arrays.

Each client's update (its change to the global model) is clipped to an L2 norm C;
the server averages the clipped updates and adds Gaussian noise with standard
deviation ``z * C * max_k w_k / sum_k w_k`` (``z * C / n`` for n equally weighted
clients: one client's whole contribution is covered by noise ``z`` times its
largest possible effect). ε is per *client* (whole dataset of one participant), from
Opacus' RDP accountant with sampling rate = sampled clients / all clients and one
step per aggregated round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Arrays = list[np.ndarray]


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """Return the L2 norm of all arrays together (float64)."""
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))


def clip_update(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], clipping_norm: float
) -> tuple[Arrays, float]:
    """Clip ``update - reference`` to ``clipping_norm``; return ``reference + clipped``.

    Parameters
    ----------
    update : sequence of arrays
        The client's arrays (a model, or a gradient with a zero reference).
    reference : sequence of arrays
        What the update is relative to (the global model the client started from).
    clipping_norm : float
        C > 0.

    Returns
    -------
    tuple[Arrays, float]
        The clipped arrays (dtypes kept) and the norm of the unclipped delta.
    """
    if clipping_norm <= 0:
        raise ValueError(f"clipping norm must be > 0, got {clipping_norm}")
    deltas = [
        u.astype(np.float64) - r.astype(np.float64) for u, r in zip(update, reference, strict=True)
    ]
    norm = l2_norm(deltas)
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    clipped = [
        (r.astype(np.float64) + scale * d).astype(u.dtype)
        for u, r, d in zip(update, reference, deltas, strict=True)
    ]
    return clipped, norm


def aggregate_noise_std(
    noise_multiplier: float, clipping_norm: float, weights: Sequence[float]
) -> float:
    """Return the noise std for a weighted mean of clipped updates: ``z * C * max w / sum w``."""
    w = np.asarray(weights, dtype=np.float64)
    if w.size == 0 or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"weights must be >= 0 and not all zero, got {list(weights)}")
    return float(noise_multiplier * clipping_norm * w.max() / w.sum())


def add_gaussian_noise(
    arrays: Sequence[np.ndarray], std: float, rng: np.random.Generator
) -> Arrays:
    """Return ``arrays`` plus i.i.d. N(0, std²) noise on every floating-point entry.

    Integer arrays (counters) carry no gradient information and are left unchanged.
    """
    noisy = []
    for array in arrays:
        if np.issubdtype(array.dtype, np.floating):
            noise = rng.normal(0.0, std, size=array.shape)
            noisy.append((array.astype(np.float64) + noise).astype(array.dtype))
        else:
            noisy.append(array.copy())
    return noisy


def client_level_epsilon(
    noise_multiplier: float, history: Sequence[tuple[float, int]], delta: float
) -> float:
    """Return client-level ε after the rounds in ``history``.

    Parameters
    ----------
    noise_multiplier : float
        z of the aggregate noise.
    history : sequence of (sample_rate, rounds)
        Sampling rate (sampled / all clients) of each aggregated round, grouped.
    delta : float
        δ, below 1 / number of clients.
    """
    from privacy.accounting import epsilon_of  # imports Opacus: only where DP is accounted

    if noise_multiplier <= 0:
        return float("inf") if history else 0.0
    entries = [(noise_multiplier, float(q), int(n)) for q, n in history]
    return epsilon_of("rdp", entries, delta)
