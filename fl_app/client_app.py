"""ClientApp: train on local data and evaluate the global model on local validation data.

A train reply carries the new weights (or, for FedSGD, the gradient), the local
``num-examples``, train loss and accuracy, and the evaluation of the *received*
global model on the validation split (``eval-*`` keys), so the server needs no
separate evaluate exchange per round. Homomorphic encryption attaches as a mod
(:func:`fl_app.he.client.he_mod`); local differential privacy trains with DP-SGD
(:mod:`fl_app.dp.local`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Error,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp

from fl_app.config import NodeConfig, RunConfig, node_config_of, run_config_of
from fl_app.data import (
    DATASETS,
    ClientData,
    Split,
    embedded_client_data,
    load_local_file,
    split_train_val,
)
from fl_app.dp.local import public_count, train_with_local_dp
from fl_app.he.client import he_mod, key_check
from fl_app.model import build_model
from fl_app.task import evaluate, full_batch_gradient, train
from privacy import BudgetExceededError
from privacy.he import HEError
from strategies.protocol import (
    ARRAYS_KEY,
    CONFIG_KEY,
    EVAL_PREFIX,
    METRICS_KEY,
    NUM_EXAMPLES_KEY,
    PROXIMAL_MU_KEY,
    SERVER_ROUND_KEY,
    TRAIN_GRADIENT,
    TRAIN_MODE_KEY,
    TRAIN_WEIGHTS,
)

app = ClientApp(mods=[he_mod])


@dataclass(frozen=True)
class ClientSetup:
    """Everything a client derives once from its run config and node config."""

    config: RunConfig
    node: NodeConfig
    data: ClientData


@lru_cache(maxsize=4)
def _local_file_data(
    path: Path, mtime: float, dataset: str, label_column: str, val_fraction: float, seed: int
) -> ClientData:
    """Load and split a node's own data file; ``mtime`` in the cache key re-reads a changed file."""
    del mtime
    split = load_local_file(path, DATASETS[dataset], label_column)
    return split_train_val(split, val_fraction, seed)


def client_setup(context: Context) -> ClientSetup:
    """Parse the configs and load this node's data (cached across rounds).

    A node's own file is split into train and validation parts with seed
    ``seed + partition-id``, as an embedded partition is: a SuperNode given the
    file of simulated partition ``i`` (``deploy/node_data.py``) with
    ``partition-id = i`` trains on exactly what simulated client ``i`` does.
    """
    config = run_config_of(context)
    node = node_config_of(context)
    data_path = node.path("data_path")
    if data_path is not None:
        data = _local_file_data(
            data_path,
            data_path.stat().st_mtime,
            config.dataset,
            node.label_column,
            config.val_fraction,
            config.seed + node.partition_id,
        )
    else:
        data = embedded_client_data(
            config.dataset,
            config.test_fraction,
            config.val_fraction,
            config.partitioner,
            node.num_partitions,
            node.partition_id,
            config.seed,
            config.dirichlet_alpha,
            config.labels_per_client,
        )
    return ClientSetup(config, node, data)


def _model_from(message: Message, config: RunConfig) -> torch.nn.Module:
    """Build the global model a message carries."""
    spec = DATASETS[config.dataset]
    model = build_model(config.model, spec.input_shape, spec.num_classes, config.prefers_mlp)
    model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict(), strict=True)
    return model


def training_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Derive the seed of one client's local training in one round."""
    return int(np.random.SeedSequence([seed, server_round, partition_id]).generate_state(1)[0])


def _plain_training(
    model: torch.nn.Module, setup: ClientSetup, round_config: ConfigRecord
) -> dict[str, float | int]:
    """Train ``model`` in place with SGD (seeded from the run's seed); return its metrics."""
    config = setup.config
    result = train(
        model,
        setup.data.train,
        epochs=config.local_epochs,
        batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        momentum=config.momentum,
        seed=training_seed(
            config.seed, int(round_config.get(SERVER_ROUND_KEY, 0)), setup.node.partition_id
        ),
        proximal_mu=float(round_config.get(PROXIMAL_MU_KEY, 0.0)),
    )
    return {
        NUM_EXAMPLES_KEY: len(setup.data.train),
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
    }


def _private_training(
    model: torch.nn.Module, setup: ClientSetup, round_config: ConfigRecord
) -> dict[str, float | int]:
    """Train ``model`` in place with DP-SGD; return what a DP client may report.

    By default only the privacy spent and an example count derived from the public
    sampling rate leave the client; the node's ``dp-report-metrics`` adds the train
    loss and accuracy, which ε does not cover.
    """
    config = setup.config
    metrics = train_with_local_dp(model, config, setup.node, setup.data, round_config)
    reported = {k: v for k, v in metrics.items() if k.startswith("dp-")}
    reported[NUM_EXAMPLES_KEY] = public_count(len(setup.data.train), config.batch_size)
    if setup.node.dp_report_metrics:
        reported.update({k: v for k, v in metrics.items() if k.startswith("train-")})
    return reported


def _evaluation(model: torch.nn.Module, data: Split, prefix: str) -> dict[str, float | int]:
    loss, accuracy = evaluate(model, data)
    return {f"{prefix}loss": loss, f"{prefix}accuracy": accuracy}


@app.train()
def train_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received model, train locally, reply with weights or gradient.

    A client under local DP reports only private quantities unless its node opts in
    (``dp-report-metrics``): no evaluation, no loss or accuracy, no exact count.
    """
    torch.set_num_threads(1)
    setup = client_setup(context)
    data = setup.data
    round_config = msg.content[CONFIG_KEY]
    model = _model_from(msg, setup.config)
    private = setup.config.dp == "local"
    report = not private or setup.node.dp_report_metrics
    metrics: dict[str, float | int] = {}
    if report:
        metrics = {**_evaluation(model, data.val, EVAL_PREFIX), "eval-num-examples": len(data.val)}
    if round_config.get(TRAIN_MODE_KEY, TRAIN_WEIGHTS) == TRAIN_GRADIENT:
        gradient = full_batch_gradient(model, data.train)
        arrays = ArrayRecord({k: Array(v) for k, v in gradient.items()})
        metrics[NUM_EXAMPLES_KEY] = len(data.train)
        metrics["train-loss"], metrics["train-accuracy"] = evaluate(model, data.train)
    else:
        try:
            trained = (_private_training if private else _plain_training)(
                model, setup, round_config
            )
        except BudgetExceededError as err:  # refused before training: say why
            return Message(Error(code=0, reason=str(err)), reply_to=msg)
        metrics.update(trained)
        if report:
            metrics.update(_evaluation(model, data.val, "val-"))
        arrays = ArrayRecord(model.state_dict())
    content = RecordDict({ARRAYS_KEY: arrays, METRICS_KEY: MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate_handler(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on the local validation split.

    A client under local DP refuses unless its node opts in (``dp-report-metrics``):
    an accuracy on its own data is not covered by ε.
    """
    torch.set_num_threads(1)
    setup = client_setup(context)
    if setup.config.dp == "local" and not setup.node.dp_report_metrics:
        reason = "node under local DP reports no evaluation (its dp-report-metrics is false)"
        return Message(Error(code=0, reason=reason), reply_to=msg)
    model = _model_from(msg, setup.config)
    loss, accuracy = evaluate(model, setup.data.val)
    metrics = MetricRecord(
        {"loss": loss, "accuracy": accuracy, NUM_EXAMPLES_KEY: len(setup.data.val)}
    )
    return Message(content=RecordDict({METRICS_KEY: metrics}), reply_to=msg)


@app.query()
def query_handler(msg: Message, context: Context) -> Message:
    """Answer the server's checks before round 1 (the HE key's fingerprint)."""
    try:
        content = key_check(context) if run_config_of(context).he else RecordDict()
    except HEError as err:
        return Message(Error(code=0, reason=str(err)), reply_to=msg)
    return Message(content=content, reply_to=msg)
