"""Privacy add-ons that work without Flower: plain tensors and arrays in and out.

``privacy.dp`` (Opacus DP-SGD with a budget that spans sessions), ``privacy.accounting``
(calibration and ε on Opacus' accountants), ``privacy.ledger`` (the persistent record of
spent budget), ``privacy.client_level`` (DP-FedAvg clipping, noise and client-level ε).
"""

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
"""Opacus accountants selectable here (RDP is the default; PRV can fail above ε ≈ 10)."""


class BudgetExceededError(RuntimeError):
    """Training this session would push ε over the target; nothing was trained.

    Defined here, not in ``privacy.dp``, so that catching it does not import Opacus
    (a deployed ClientApp starts a new process per message).
    """
