"""Adaptive server optimisers (Reddi et al., 2021): shared by FedAdagrad, FedAdam, FedYogi."""

from __future__ import annotations

from typing import Any, ClassVar

from strategies.base import BaseStrategy, ClientUpdate
from strategies.core import AdaptiveServerOptimizer, Arrays
from strategies.linear import EXAMPLE_WEIGHTED


class FedOpt(BaseStrategy):
    """Example-weighted mean of the client models, then an adaptive server step.

    The step is :class:`strategies.core.AdaptiveServerOptimizer` with this class's
    ``rule``; its moments are the strategy state kept by checkpoints.

    Parameters
    ----------
    eta : float, optional
        Server learning rate (``None``: the subclass default).
    beta_1, beta_2 : float
        First- and second-moment decay.
    tau : float
        Adaptivity, added to ``sqrt(v)``.
    **kwargs
        Passed to :class:`strategies.base.BaseStrategy`.
    """

    rule: ClassVar[str] = ""
    default_eta: ClassVar[float] = 0.1
    uses_betas: ClassVar[bool] = True

    def __init__(
        self,
        *,
        eta: float | None = None,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        tau: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not self.uses_betas:
            beta_1 = beta_2 = 0.0
        self.optimizer = AdaptiveServerOptimizer(
            self.rule, self.default_eta if eta is None else eta, beta_1, beta_2, tau
        )

    def settings(self) -> dict[str, Any]:
        """Return the optimiser's settings (kebab-case run-config names)."""
        settings: dict[str, Any] = {"server-learning-rate": self.optimizer.eta}
        if self.uses_betas:
            settings.update({"beta-1": self.optimizer.beta_1, "beta-2": self.optimizer.beta_2})
        settings["tau"] = self.optimizer.tau
        return settings

    def state_dict(self) -> dict[str, Any]:
        """Return the moments ``m`` and ``v``."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the moments ``m`` and ``v``."""
        self.optimizer.load_state_dict(state)

    def aggregate(self, server_round: int, updates: list[ClientUpdate]) -> Arrays:
        """Return the model after the adaptive server step on the mean update."""
        mean = self.linear_aggregate(updates, EXAMPLE_WEIGHTED)
        return self.optimizer.step(server_round, self.global_arrays, mean)
