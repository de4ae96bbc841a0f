"""Aggregation math over lists of numpy arrays, shared by every strategy.

An *update* is one client's model (or gradient) as a list of arrays in the global
model's key order. Functions here know nothing about Flower messages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

Arrays = list[np.ndarray]


def cast_like(value: np.ndarray, like: np.ndarray) -> np.ndarray:
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
        result.append(cast_like(total, like))
    return result


def equal_weights_if_all_zero(weights: Sequence[float]) -> tuple[list[float], bool]:
    """Return ``weights``, or equal weights when they are all zero.

    Returns
    -------
    tuple[list[float], bool]
        The weights to use and whether the equal-weights fallback was taken. Negative
        or non-finite weights are left for :func:`normalize_weights` to reject.
    """
    values = [float(w) for w in weights]
    if values and all(w == 0.0 for w in values):
        return [1.0] * len(values), True
    return values, False


def _stacked(updates: Sequence[Arrays], position: int) -> np.ndarray:
    """Stack array ``position`` of every update along a new first axis, in float64."""
    return np.stack([u[position].astype(np.float64, copy=False) for u in updates])


def coordinate_median(updates: Sequence[Arrays]) -> Arrays:
    """Return the coordinate-wise median of the updates (mean of the middle two if even)."""
    check_updates(updates)
    return [
        cast_like(np.median(_stacked(updates, i), axis=0), like)
        for i, like in enumerate(updates[0])
    ]


def trimmed_mean(updates: Sequence[Arrays], beta: float) -> Arrays:
    """Return the coordinate-wise mean after cutting ``int(beta * n)`` values at each end.

    Parameters
    ----------
    updates : Sequence[Arrays]
        ``n`` updates.
    beta : float
        Fraction cut from each end, in ``[0, 0.5)`` (as ``scipy.stats.trim_mean``
        and Flower's FedTrimmedAvg); at least one value per coordinate always remains.
    """
    if not 0.0 <= beta < 0.5:
        raise ValueError(f"trim beta must be in [0, 0.5), got {beta!r}")
    check_updates(updates)
    n = len(updates)
    low = int(beta * n)
    result = []
    for i, like in enumerate(updates[0]):
        ordered = np.sort(_stacked(updates, i), axis=0)
        result.append(cast_like(ordered[low : n - low].mean(axis=0), like))
    return result


def flatten(update: Arrays) -> np.ndarray:
    """Return one update as a single float64 vector."""
    if not update:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([a.astype(np.float64, copy=False).ravel() for a in update])


def pairwise_squared_distances(updates: Sequence[Arrays]) -> np.ndarray:
    """Return the ``n x n`` matrix of squared L2 distances between the updates.

    Computed from differences (not ``|x|^2 + |y|^2 - 2 x.y``), so it is exactly
    symmetric, zero on the diagonal and never negative.
    """
    check_updates(updates)
    flat = np.stack([flatten(u) for u in updates])
    n = len(flat)
    distances = np.zeros((n, n), dtype=np.float64)
    for i in range(n):
        for j in range(i + 1, n):
            distances[i, j] = distances[j, i] = float(np.sum((flat[i] - flat[j]) ** 2))
    return distances


def krum_scores(distances: np.ndarray, num_malicious: int) -> np.ndarray:
    """Return each update's Krum score (Blanchard et al., 2017).

    The score of update ``i`` is the sum of its squared distances to its
    ``max(1, n - f - 2)`` nearest other updates (``f = num_malicious``; the lower
    bound of 1 is Flower's, for rounds with fewer than ``f + 3`` updates).
    """
    n = len(distances)
    if n < 2:
        return np.zeros(n, dtype=np.float64)
    closest = min(n - 1, max(1, n - num_malicious - 2))
    scores = np.empty(n, dtype=np.float64)
    for i in range(n):
        others = np.delete(distances[i], i)
        scores[i] = np.sort(others)[:closest].sum()
    return scores


def krum_select(updates: Sequence[Arrays], num_malicious: int, num_selected: int) -> list[int]:
    """Return the indices of the ``num_selected`` updates with the lowest Krum scores.

    Ties keep the lower index (stable sort). ``num_selected = 1`` is Krum;
    more is Multi-Krum.
    """
    if num_malicious < 0:
        raise ValueError(f"num_malicious must be >= 0, got {num_malicious}")
    if not 1 <= num_selected <= len(updates):
        raise ValueError(f"cannot select {num_selected} of {len(updates)} updates")
    scores = krum_scores(pairwise_squared_distances(updates), num_malicious)
    return [int(i) for i in np.argsort(scores, kind="stable")[:num_selected]]


def _zeros_like(arrays: Arrays) -> Arrays:
    return [np.zeros(a.shape, dtype=np.float64) for a in arrays]


def _as_float(arrays: Arrays) -> Arrays:
    return [a.astype(np.float64, copy=False) for a in arrays]


class ServerMomentum:
    """Server SGD with momentum over the pseudo-gradient (FedAvgM, Hsu et al., 2019).

    With ``d = current - aggregate``: ``v = d`` in the first round, then
    ``v = momentum * v + d``; the new model is ``current - learning_rate * v``
    (PyTorch's SGD convention, as Flower's FedAvgM). ``momentum = 0`` uses ``d``.
    """

    def __init__(self, learning_rate: float, momentum: float) -> None:
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.velocity: Arrays | None = None

    def step(self, current: Arrays, aggregate: Arrays) -> Arrays:
        """Return the new global arrays and update the momentum buffer."""
        pseudo_gradient = [
            c - a for c, a in zip(_as_float(current), _as_float(aggregate), strict=True)
        ]
        if self.momentum > 0:
            if self.velocity is None:
                self.velocity = pseudo_gradient
            else:
                self.velocity = [
                    self.momentum * v + d
                    for v, d in zip(self.velocity, pseudo_gradient, strict=True)
                ]
            pseudo_gradient = self.velocity
        return [
            cast_like(c.astype(np.float64) - self.learning_rate * d, c)
            for c, d in zip(current, pseudo_gradient, strict=True)
        ]

    def state_dict(self) -> dict[str, Arrays]:
        """Return the momentum buffer (empty before the first step)."""
        return {} if self.velocity is None else {"velocity": [v.copy() for v in self.velocity]}

    def load_state_dict(self, state: dict[str, Arrays]) -> None:
        """Restore what :meth:`state_dict` returned."""
        velocity = state.get("velocity")
        self.velocity = None if velocity is None else _as_float(list(velocity))


class AdaptiveServerOptimizer:
    """FedAdagrad, FedAdam and FedYogi (Reddi et al., 2021) over the aggregated update.

    With ``delta = aggregate - current`` (elementwise, per array):

    * ``m = beta_1 * m + (1 - beta_1) * delta`` (``m`` starts at 0);
    * ``v`` (starts at 0): ``adagrad``: ``v + delta^2``; ``adam``:
      ``beta_2 * v + (1 - beta_2) * delta^2``; ``yogi``:
      ``v - (1 - beta_2) * delta^2 * sign(v - delta^2)``;
    * new model ``current + eta_t * m / (sqrt(v) + tau)``, where ``eta_t = eta``
      except for ``adam``: ``eta * sqrt(1 - beta_2^(t+1)) / (1 - beta_1^(t+1))`` in
      round ``t`` (bias correction, as Flower's FedAdam).

    These are exactly the updates of Flower's ``flwr.serverapp.strategy`` FedAdagrad
    (which fixes ``beta_1 = 0``), FedAdam and FedYogi; state is kept in float64.
    """

    RULES = ("adagrad", "adam", "yogi")

    def __init__(self, rule: str, eta: float, beta_1: float, beta_2: float, tau: float) -> None:
        if rule not in self.RULES:
            raise ValueError(f"unknown rule {rule!r}; valid: {', '.join(self.RULES)}")
        self.rule = rule
        self.eta = eta
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.tau = tau
        self.m: Arrays | None = None
        self.v: Arrays | None = None

    def _second_moment(self, v: np.ndarray, delta: np.ndarray) -> np.ndarray:
        squared = delta**2
        if self.rule == "adagrad":
            return v + squared
        if self.rule == "adam":
            return self.beta_2 * v + (1.0 - self.beta_2) * squared
        return v - (1.0 - self.beta_2) * squared * np.sign(v - squared)

    def step(self, server_round: int, current: Arrays, aggregate: Arrays) -> Arrays:
        """Return the new global arrays after round ``server_round``; update ``m`` and ``v``."""
        delta = [a - c for a, c in zip(_as_float(aggregate), _as_float(current), strict=True)]
        m = self.m if self.m is not None else _zeros_like(delta)
        v = self.v if self.v is not None else _zeros_like(delta)
        self.m = [
            self.beta_1 * mi + (1.0 - self.beta_1) * d for mi, d in zip(m, delta, strict=True)
        ]
        self.v = [self._second_moment(vi, d) for vi, d in zip(v, delta, strict=True)]
        eta = self.eta
        if self.rule == "adam":
            t = server_round + 1.0
            eta = self.eta * np.sqrt(1.0 - self.beta_2**t) / (1.0 - self.beta_1**t)
        return [
            cast_like(c.astype(np.float64) + eta * mi / (np.sqrt(vi) + self.tau), c)
            for c, mi, vi in zip(current, self.m, self.v, strict=True)
        ]

    def state_dict(self) -> dict[str, Arrays]:
        """Return the moments ``m`` and ``v`` (empty before the first step)."""
        if self.m is None or self.v is None:
            return {}
        return {"m": [a.copy() for a in self.m], "v": [a.copy() for a in self.v]}

    def load_state_dict(self, state: dict[str, Arrays]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if state and set(state) != {"m", "v"}:
            raise ValueError(f"expected moments 'm' and 'v', got keys {sorted(state)}")
        self.m = _as_float(list(state["m"])) if state else None
        self.v = _as_float(list(state["v"])) if state else None
