"""From the run config to the strategy the ServerApp runs: one table, then the wrappers.

:data:`STRATEGY_ARGUMENTS` maps every strategy name to the constructor arguments it
takes from the run config; arguments every strategy takes come from
:func:`common_arguments`. A run-config value of 0 that means "the strategy's default"
is left out (:func:`_unless_zero`), so the default lives in the strategy's constructor
only. Privacy add-ons then wrap the strategy through its public API.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from fl_app.config import CLIENT_LEVEL_DP, RunConfig, min_train_nodes
from fl_app.dp.central import CentralDP, ClientLevelDP
from fl_app.dp.distributed import DistributedDP
from fl_app.he.keys import public_context_path
from fl_app.he.server import EncryptedAggregation
from privacy.he import MIN_CLIENTS
from privacy.secrets import SECRET_BYTES
from strategies import STRATEGIES
from strategies.base import BaseStrategy, RoundStrategy


def _unless_zero(**values: float) -> dict[str, float]:
    """Return the arguments whose run-config value is not 0 (0 = the strategy's default)."""
    return {name: value for name, value in values.items() if value}


def _adaptive(config: RunConfig) -> dict[str, Any]:
    return {
        "beta_1": config.beta_1,
        "beta_2": config.beta_2,
        "tau": config.tau,
        **_unless_zero(eta=config.server_learning_rate),
    }


STRATEGY_ARGUMENTS: dict[str, Callable[[RunConfig], dict[str, Any]]] = {
    "simple-average": lambda c: {},
    "weighted-average": lambda c: {"weight_by": c.weight_by},
    "fedavg": lambda c: {},
    "fedsgd": lambda c: _unless_zero(server_learning_rate=c.server_learning_rate),
    "hybrid": lambda c: {"mix": c.hybrid_mix, "quality_metric": c.weight_by},
    "fedprox": lambda c: {"proximal_mu": c.proximal_mu},
    "fedavgm": lambda c: {
        "server_momentum": c.server_momentum,
        **_unless_zero(server_learning_rate=c.server_learning_rate),
    },
    "fedadam": _adaptive,
    "fedyogi": _adaptive,
    "fedadagrad": lambda c: {"tau": c.tau, **_unless_zero(eta=c.server_learning_rate)},
    "fedmedian": lambda c: {},
    "fedtrimmedavg": lambda c: {"beta": c.trim_beta},
    "krum": lambda c: {"num_malicious": c.num_malicious},
    "multikrum": lambda c: {"num_malicious": c.num_malicious, "num_selected": c.num_krum_selected},
}


def common_arguments(config: RunConfig) -> dict[str, Any]:
    """Return the constructor arguments every strategy takes from the run config."""
    return {
        "fraction_train": config.fraction_train,
        "min_train_nodes": min_train_nodes(config),
        "seed": config.seed,
        "wait_timeout": config.round_timeout,
        "max_update_norm": config.max_update_norm,
    }


def build_base_strategy(config: RunConfig) -> BaseStrategy:
    """Return the configured aggregation strategy, without privacy add-ons."""
    return STRATEGIES[config.strategy](
        **common_arguments(config), **STRATEGY_ARGUMENTS[config.strategy](config)
    )


def client_level_dp(config: RunConfig) -> ClientLevelDP:
    """Return the client-level DP parameters (central or distributed) of the run config."""
    return ClientLevelDP(
        clipping_norm=config.dp_clipping_norm,
        noise_multiplier=config.dp_central_noise_multiplier,
        target_epsilon=config.dp_target_epsilon,
        delta=config.dp_delta,
        sample_rate=config.fraction_train,
        num_rounds=config.num_server_rounds,
        accountant=config.dp_accountant,
    )


def build_strategy(
    config: RunConfig, template: dict[str, np.ndarray], secret: bytes
) -> RoundStrategy:
    """Return the strategy the ServerApp runs: the base one, wrapped by privacy add-ons.

    Under ``he = true`` a round needs at least :data:`~privacy.he.MIN_CLIENTS` clients,
    so ``min-train-nodes = 0`` means that many (the config refuses a smaller one).

    Parameters
    ----------
    config : RunConfig
        The validated run config (its rules already refuse impossible combinations).
    template : dict[str, np.ndarray]
        The global model's arrays by name (encrypted aggregation packs by them).
    secret : bytes
        The run's secret (client-level DP draws its sampling, and central DP its
        noise, from it); empty = a new one from the OS CSPRNG.
    """
    if config.he:
        config = replace(config, min_train_nodes=max(MIN_CLIENTS, min_train_nodes(config)))
    if config.dp in CLIENT_LEVEL_DP:
        secret = secret or os.urandom(SECRET_BYTES)
    if config.dp == "distributed":  # the wrapper draws the sample: the strategy asks every node
        return DistributedDP(
            build_base_strategy(replace(config, fraction_train=1.0)),
            public_context_path(config.he_public_context),
            template,
            client_level_dp(config),
            secret,
        )
    if config.dp != "central":
        base = build_base_strategy(config)
        strategy: RoundStrategy = base
    else:  # the wrapper draws the sample: the strategy asks every node
        base = build_base_strategy(replace(config, fraction_train=1.0))
        strategy = CentralDP(base, client_level_dp(config), secret)
    if config.he:
        strategy = EncryptedAggregation(
            base, public_context_path(config.he_public_context), template
        )
    return strategy
