"""Privacy add-ons that work without Flower: plain tensors and arrays in and out.

``privacy.session`` (a data holder's DP-SGD session: ledger, limits, fresh noise),
``privacy.dp`` (Opacus DP-SGD), ``privacy.accounting`` (calibration and ε on Opacus'
accountants), ``privacy.ledger`` (what a dataset has spent), ``privacy.secrets`` (a
participant's secret and its noise seeds), ``privacy.client_level`` (DP-FedAvg:
Poisson client sampling, clipping, fixed-denominator noise, client-level ε),
``privacy.he`` and ``privacy.he_model`` (CKKS encryption with TenSEAL).
"""

ACCOUNTANTS: tuple[str, ...] = ("rdp", "prv")
"""Opacus accountants selectable here (RDP is the default; PRV can fail above ε ≈ 10)."""


class PrivacyError(RuntimeError):
    """A privacy guarantee cannot be kept as asked; nothing was released."""


class BudgetExceededError(PrivacyError):
    """Going on would push ε over a target or limit; nothing was trained or released.

    Defined here, not in ``privacy.dp``, so that catching it does not import Opacus
    (a deployed ClientApp starts a new process per message).
    """


DELTA_CAP = 1e-5


def auto_delta(num_records: int) -> float:
    """Return the default δ for ``num_records`` records (or clients): ``min(1e-5, 1 / (10 n))``.

    δ is the probability that the ε guarantee fails; it must be well below ``1 / n``
    (a mechanism that publishes one random record outright has δ = 1/n).
    """
    if num_records < 1:
        raise ValueError(f"num_records must be >= 1 to choose a delta, got {num_records}")
    return min(DELTA_CAP, 1.0 / (10.0 * num_records))
