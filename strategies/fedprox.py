"""FedProx (Li et al., 2020): FedAvg whose clients add a proximal term to their loss."""

from __future__ import annotations

from typing import Any

from flwr.app import ConfigRecord

from strategies.fedavg import FedAvg
from strategies.protocol import PROXIMAL_MU_KEY


class FedProx(FedAvg):
    """FedAvg aggregation; clients minimise ``loss + mu / 2 * ||w - w_global||^2``.

    The server sends ``proximal-mu`` with each round's config; the ClientApp's
    local training (:func:`fl_app.task.train`) adds the term.

    Parameters
    ----------
    proximal_mu : float
        ``mu >= 0`` (0 makes this FedAvg).
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    name = "fedprox"
    changes_client_loss = True

    def __init__(self, *, proximal_mu: float = 0.01, **kwargs: Any) -> None:
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu!r}")
        super().__init__(**kwargs)
        self.proximal_mu = proximal_mu

    def settings(self) -> dict[str, Any]:
        """Return ``proximal-mu``."""
        return {"proximal-mu": self.proximal_mu}

    def round_config(self, server_round: int, config: ConfigRecord) -> ConfigRecord:
        """Add ``proximal-mu`` to the round's config."""
        record = super().round_config(server_round, config)
        record[PROXIMAL_MU_KEY] = self.proximal_mu
        return record
