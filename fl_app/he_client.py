"""Client side of homomorphic encryption: decrypt the global model, encrypt the update.

A client weights its update in plaintext by the strategy's ``client_weight`` and
applies the strategy's ``finish_linear`` to it (against the global model it
received) before encrypting, so the server's encrypted sum divided by the total
weight *is* the next global model: ``sum_k w_k f(u_k) / sum_k w_k = f(mean)`` for the
affine ``finish_linear`` of a linear strategy (checked at start-up, see
:mod:`fl_app.he_server`). The next round's clients decrypt it and divide; nothing
has to be remembered between rounds. Whatever local training produced (also with
local differential privacy) is what gets encrypted.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from fl_app.config import RunConfig
from fl_app.he_keys import client_secret_context
from fl_app.he_records import (
    FINGERPRINT_KEY,
    KEY_RECORD,
    UPDATE_KEY,
    WEIGHT_KEY,
    ciphertext_record,
    ciphertexts_of,
    is_encrypted,
    total_weight_of,
)
from privacy.he import array_specs, decrypt_arrays, encrypt_arrays
from strategies import strategy_class
from strategies.base import METRICS_KEY, NUM_EXAMPLES_KEY, BaseStrategy


@lru_cache(maxsize=4)
def _strategy(config: RunConfig) -> BaseStrategy:
    return strategy_class(config.strategy).from_run_config(config)


def received_state_dict(
    record: ArrayRecord,
    round_config: ConfigRecord,
    template: Mapping[str, torch.Tensor],
    node_config: Mapping[str, Any],
) -> dict[str, torch.Tensor]:
    """Return the global model of a train/evaluate message as a state dict.

    An encrypted global model is decrypted with this node's secret context and
    divided by its total weight; a plaintext one (round 1) is returned as is.
    ``template`` (a fresh model's state dict) gives the names, shapes and dtypes.
    """
    if not is_encrypted(record):
        return record.to_torch_state_dict()
    names = list(template)
    arrays = decrypt_arrays(
        client_secret_context(node_config),
        ciphertexts_of(record),
        array_specs([template[name].numpy() for name in names]),
        total_weight_of(record),
        str(round_config.get(FINGERPRINT_KEY, "")),
    )
    return {name: torch.from_numpy(array) for name, array in zip(names, arrays, strict=True)}


def model_arrays(model: torch.nn.Module) -> list[np.ndarray]:
    """Return a copy of the model's arrays (the received global, before training)."""
    return [v.detach().cpu().numpy().copy() for v in model.state_dict().values()]


def encrypted_reply(
    update: ArrayRecord,
    current: list[np.ndarray],
    metrics: dict[str, float | int],
    config: RunConfig,
    node_config: Mapping[str, Any],
) -> RecordDict:
    """Build the train reply: the weighted, encrypted update and plaintext metrics.

    Parameters
    ----------
    update : ArrayRecord
        What the client would send in plaintext (weights, or the gradient for FedSGD).
    current : list[np.ndarray]
        The global model the client received, in the same order.
    metrics : dict
        The reply metrics (``num-examples``, train and ``eval-*`` keys); the weight
        is added as ``he-weight``.
    config : RunConfig
        The run config (builds the strategy whose weighting is applied).
    node_config : Mapping
        This node's config (where its secret context is).
    """
    strategy = _strategy(config)
    weight = strategy.client_weight(int(metrics[NUM_EXAMPLES_KEY]), metrics)
    payload = strategy.finish_linear([update[key].numpy() for key in update], current)
    key = client_secret_context(node_config)
    ciphertexts = encrypt_arrays(key, payload, weight)
    return RecordDict(
        {
            UPDATE_KEY: ciphertext_record(ciphertexts),
            METRICS_KEY: MetricRecord({**metrics, WEIGHT_KEY: weight}),
            KEY_RECORD: ConfigRecord({"fingerprint": key.fingerprint}),
        }
    )
