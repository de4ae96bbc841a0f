"""The privacy part of ``results.json``'s ``final`` block."""

from __future__ import annotations

from typing import Any


def final_privacy(dp_mode: str, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Return ``dp``, ``epsilon`` and ``delta`` for the run's ``final`` block.

    ``epsilon`` is the largest cumulative ε any client reached (``dp = "local"``:
    sample-level, per client; ``"central"``: client-level), ``delta`` the largest δ;
    both are ``None`` without differential privacy.
    """
    epsilons = [r["train"]["dp-epsilon"] for r in rounds if "dp-epsilon" in r.get("train", {})]
    deltas = [r["train"]["dp-delta"] for r in rounds if "dp-delta" in r.get("train", {})]
    return {
        "dp": dp_mode,
        "epsilon": max(epsilons) if epsilons else None,
        "delta": max(deltas) if deltas else None,
    }
