"""Aggregation math over lists of numpy arrays, shared by every strategy.

An *update* is one client's model (or gradient) as a list of arrays in the global
model's key order. Functions here know nothing about Flower messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Arrays = list[np.ndarray]


def _cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
    """Return ``value`` in the dtype of ``like`` (integers are rounded, not truncated)."""
    if np.issubdtype(like.dtype, np.integer):
        return np.rint(value).astype(like.dtype)
    return value.astype(like.dtype, copy=False)


def check_updates(updates: Sequence[Arrays]) -> None:
    """Raise ValueError unless there is at least one update and all share shapes."""
    if not updates:
        raise ValueError("cannot aggregate zero updates")
    shapes = [a.shape for a in updates[0]]
    for i, update in enumerate(updates[1:], start=1):
        if [a.shape for a in update] != shapes:
            raise ValueError(
                f"update {i} has array shapes {[a.shape for a in update]}, update 0 has {shapes}"
            )


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    """Return non-negative weights scaled to sum to 1.

    Raises
    ------
    ValueError
        If a weight is negative or not finite, or if all weights are zero (the
        caller decides the fallback; no division by zero happens here).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError(f"weights must be finite and >= 0, got {list(weights)}")
    total = w.sum()
    if total <= 0:
        raise ValueError("all weights are zero")
    return w / total


def weighted_average(updates: Sequence[Arrays], weights: Sequence[float]) -> Arrays:
    """Return the weighted mean of the updates, array by array.

    Weights are normalized; accumulation is in float64 and the result keeps each
    array's dtype.
    """
    check_updates(updates)
    if len(weights) != len(updates):
        raise ValueError(f"{len(weights)} weights for {len(updates)} updates")
    factors = normalize_weights(weights)
    result = []
    for position, like in enumerate(updates[0]):
        total = np.zeros(like.shape, dtype=np.float64)
        for update, factor in zip(updates, factors, strict=True):
            total += factor * update[position].astype(np.float64, copy=False)
        result.append(_cast_like(total, like))
    return result
