"""Privacy accounting on Opacus' accountants: calibration, ε of a history, saved state.

An accountant's *history* is the list of ``(noise_multiplier, sample_rate, steps)``
entries of the Gaussian mechanism runs it has seen; ε is always computed from the
whole history by Opacus (RDP by default, PRV selectable), never by hand. The state
is JSON-ready so that it can live in a ledger file or in Flower's ``Context.state``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from opacus.accountants import IAccountant, create_accountant
from opacus.accountants.utils import get_noise_multiplier

from privacy import ACCOUNTANTS

HistoryEntry = tuple[float, float, int]


def check_accountant(name: str) -> str:
    """Return ``name`` if Opacus has that accountant here, else raise ValueError."""
    if name not in ACCOUNTANTS:
        raise ValueError(f"accountant '{name}' is unknown; valid: {', '.join(ACCOUNTANTS)}")
    return name


def new_accountant(mechanism: str, state: dict[str, Any] | None = None) -> IAccountant:
    """Return an Opacus accountant, restored from :func:`accountant_state` output if given.

    Raises
    ------
    ValueError
        If ``state`` belongs to another mechanism than ``mechanism``.
    """
    accountant = create_accountant(mechanism=check_accountant(mechanism))
    if state:
        if state.get("mechanism") != mechanism:
            raise ValueError(
                f"saved accountant state is for '{state.get('mechanism')}', not '{mechanism}'"
            )
        accountant.load_state_dict(
            {"mechanism": mechanism, "history": [tuple(entry) for entry in state["history"]]}
        )
    return accountant


def accountant_state(accountant: IAccountant) -> dict[str, Any]:
    """Return the accountant's ``state_dict`` as plain JSON types."""
    state = accountant.state_dict()
    return {
        "mechanism": state["mechanism"],
        "history": [[float(s), float(q), int(n)] for s, q, n in state["history"]],
    }


def epsilon_of(mechanism: str, history: Sequence[Sequence[float]], delta: float) -> float:
    """Return ε at ``delta`` after the Gaussian mechanism runs in ``history`` (0 if none).

    Opacus' RDP conversion takes about 0.5 s per call on CPU; results are cached.
    """
    entries = tuple((float(s), float(q), int(n)) for s, q, n in history)
    return _epsilon_of(mechanism, entries, delta)


@lru_cache(maxsize=256)
def _epsilon_of(mechanism: str, history: tuple[HistoryEntry, ...], delta: float) -> float:
    if not history:
        return 0.0
    accountant = new_accountant(mechanism, {"mechanism": mechanism, "history": list(history)})
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        return float(accountant.get_epsilon(delta=delta))


@lru_cache(maxsize=64)
def calibrate_noise(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    mechanism: str = "rdp",
    history: tuple[HistoryEntry, ...] = (),
) -> float:
    """Return the noise multiplier whose ε after ``steps`` more steps is at most the target.

    Without a ``history`` this is Opacus' ``get_noise_multiplier``. With one (budget
    already spent), it is the same binary search over σ on the whole history plus the
    planned steps, so that the total ε lands at the target. The search is slow
    (seconds), so results are cached per process; callers that start a new process
    per round keep the result in their ledger too.

    Raises
    ------
    ValueError
        If the budget cannot be met with any noise (the history alone exceeds it, or
        Opacus: "privacy budget is too low").
    """
    if not (target_epsilon > 0 and math.isfinite(target_epsilon)):
        raise ValueError(f"target epsilon must be a finite number > 0, got {target_epsilon}")
    if steps < 1 or not 0 < sample_rate <= 1:
        raise ValueError(f"need steps >= 1 and sample rate in (0, 1], got {steps}, {sample_rate}")
    check_accountant(mechanism)
    if not history:
        return float(
            get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=steps,
                accountant=mechanism,
            )
        )
    spent = epsilon_of(mechanism, history, delta)
    if spent >= target_epsilon:
        raise ValueError(
            f"the history already spent epsilon {spent:.4g} >= target {target_epsilon:g}"
        )

    def total(sigma: float) -> float:
        return epsilon_of(mechanism, [*history, (sigma, sample_rate, steps)], delta)

    low, high = 0.0, 10.0
    while total(high) > target_epsilon:
        low, high = high, 2 * high
        if high > 1e4:
            raise ValueError(f"no noise multiplier reaches epsilon {target_epsilon:g}")
    while high - low > 1e-4 * high:
        middle = (low + high) / 2
        low, high = (middle, high) if total(middle) > target_epsilon else (low, middle)
    return high
