"""Client-level differential privacy (DP-FedAvg, McMahan et al. 2018) over numpy arrays.

The mechanism, step by step, and why its ε is what the accountant says:

1. **Poisson sampling.** Each of the ``N`` clients takes part in a round
   independently with probability ``q``, drawn from a secret RNG (nobody can
   predict or replay who was sampled). This is the sampling Opacus' accountants
   assume, so they apply the amplification by sampling at rate ``q``.
2. **Clipping.** Each client's update (its change to the global model; for
   gradient-sending strategies the gradient itself) is clipped to L2 norm ``C``.
3. **Fixed denominator.** The clipped updates are *summed* and divided by the
   expected number of participants ``m = q N``, not by the number that replied
   (McMahan et al.'s estimator with uniform weights). Adding or removing one client
   then moves the estimate by at most ``C / m``: the sensitivity does not depend on
   who else took part, nor on any weight a client reports.
4. **Gaussian noise** with standard deviation ``z C / m`` is added: the sampled
   Gaussian mechanism with noise multiplier ``z`` and rate ``q``.

ε after ``T`` such rounds is Opacus' accountant (RDP or PRV) over the history
``[(z, q, T)]``; ε is per *client* (a client's whole data, add/remove adjacency).

Distributed noise (:class:`NoiseShare`)
---------------------------------------
The same mechanism without a server that sees updates: each of the ``n`` clients
sampled in a round clips its own update and adds a *share* of the noise,
``N(0, (z C)^2 / n)`` per coordinate (:func:`add_noise`), before its update is
encrypted. The ``n`` shares of a complete round add up to ``N(0, (z C)^2)`` on the
sum, exactly step 4 above, whatever ``n`` the sampling drew; divided by the fixed
``m`` that is noise of standard deviation ``z C / m`` on the mean. A round with fewer
than ``n`` shares carries less noise than that and must not be released.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Arrays = list[np.ndarray]


def l2_norm(arrays: Sequence[np.ndarray]) -> float:
    """Return the L2 norm of all arrays together (float64)."""
    return float(np.sqrt(sum(np.sum(np.square(a, dtype=np.float64)) for a in arrays)))


def clip_delta(
    update: Sequence[np.ndarray], reference: Sequence[np.ndarray], clipping_norm: float
) -> tuple[Arrays, float]:
    """Return ``update - reference`` clipped to ``clipping_norm`` (float64), and its norm.

    Parameters
    ----------
    update : sequence of arrays
        The client's arrays (a model, or a gradient with a zero reference).
    reference : sequence of arrays
        What the update is relative to (the global model the client started from).
    clipping_norm : float
        C > 0.
    """
    if clipping_norm <= 0:
        raise ValueError(f"clipping norm must be > 0, got {clipping_norm}")
    deltas = [
        u.astype(np.float64) - r.astype(np.float64) for u, r in zip(update, reference, strict=True)
    ]
    norm = l2_norm(deltas)
    scale = min(1.0, clipping_norm / norm) if norm > 0 else 1.0
    return [scale * d for d in deltas], norm


def poisson_sample(num_clients: int, sample_rate: float, rng: np.random.Generator) -> list[int]:
    """Return the indices of the clients sampled, each independently with ``sample_rate``."""
    if not 0 < sample_rate <= 1:
        raise ValueError(f"sample rate must be in (0, 1], got {sample_rate}")
    return [int(i) for i in np.flatnonzero(rng.random(num_clients) < sample_rate)]


def noisy_mean_delta(
    clipped: Sequence[Arrays],
    like: Sequence[np.ndarray],
    expected_clients: float,
    noise_std: float,
    rng: np.random.Generator,
) -> Arrays:
    """Return ``(sum of clipped deltas + N(0, noise_std^2)) / expected_clients``, per array.

    ``noise_std`` is the standard deviation of the noise on the *sum* (``z C``);
    ``like`` gives the shapes when no client took part (the noise is still added).
    Integer arrays (counters) carry no gradient information and stay zero.
    """
    if expected_clients <= 0:
        raise ValueError(f"expected clients must be > 0, got {expected_clients}")
    result = []
    for position, array in enumerate(like):
        total = np.zeros(array.shape, dtype=np.float64)
        for delta in clipped:
            total += delta[position]
        if np.issubdtype(array.dtype, np.floating):
            total += rng.normal(0.0, noise_std, size=array.shape)
        else:
            total[...] = 0.0
        result.append(total / expected_clients)
    return result


@dataclass(frozen=True)
class NoiseShare:
    """What one sampled client adds under distributed noise, and how its update is weighed.

    Parameters
    ----------
    shares : int
        ``n``, the clients sampled in the round, each adding one share.
    expected_clients : float
        ``m = q N``, the fixed denominator of the mean.
    noise_multiplier : float
        ``z``: the shares of a complete round add up to ``N(0, (z C)^2)``.
    clipping_norm : float
        ``C``, the L2 bound of one client's update.
    """

    shares: int
    expected_clients: float
    noise_multiplier: float
    clipping_norm: float

    def __post_init__(self) -> None:
        if self.shares < 1:
            raise ValueError(f"noise shares must be >= 1, got {self.shares}")
        if not (self.expected_clients > 0 and math.isfinite(self.expected_clients)):
            raise ValueError(f"expected clients must be > 0, got {self.expected_clients}")
        if not (self.noise_multiplier >= 0 and math.isfinite(self.noise_multiplier)):
            raise ValueError(f"noise multiplier must be >= 0, got {self.noise_multiplier}")
        if not (self.clipping_norm > 0 and math.isfinite(self.clipping_norm)):
            raise ValueError(f"clipping norm must be > 0, got {self.clipping_norm}")

    @property
    def std(self) -> float:
        """Standard deviation of one share, per coordinate: ``z C / sqrt(n)``."""
        return self.noise_multiplier * self.clipping_norm / math.sqrt(self.shares)

    @property
    def weight(self) -> float:
        """``m / n``: the weight of each update, so that ``n`` of them sum to ``m``."""
        return self.expected_clients / self.shares


def add_noise(
    clipped: Sequence[np.ndarray],
    like: Sequence[np.ndarray],
    noise_std: float,
    rng: np.random.Generator,
) -> Arrays:
    """Return ``clipped + N(0, noise_std^2)`` per coordinate of the floating-point arrays.

    ``like`` gives the dtypes: integer arrays (counters) carry no gradient information;
    their delta is zero and gets no noise, as in :func:`noisy_mean_delta`.
    """
    if not (noise_std >= 0 and math.isfinite(noise_std)):
        raise ValueError(f"noise std must be >= 0, got {noise_std}")
    result = []
    for delta, array in zip(clipped, like, strict=True):
        if np.issubdtype(array.dtype, np.floating):
            result.append(np.asarray(delta, np.float64) + rng.normal(0.0, noise_std, array.shape))
        else:
            result.append(np.zeros(array.shape, dtype=np.float64))
    return result
