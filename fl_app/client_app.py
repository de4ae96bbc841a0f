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
    FILES,
    SYNTHETIC,
    ClientData,
    DataError,
    Split,
    TaskShape,
    embedded_client_data,
    embedded_shape,
    load_data_file,
    partition_file,
    split_train_val,
    synthetic_client_data,
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
    """Everything a client derives once from its run config, node config and task shape."""

    config: RunConfig
    node: NodeConfig
    shape: TaskShape
    data: ClientData


@lru_cache(maxsize=4)
def _file_data(
    path: Path,
    mtime: float,
    shape: TaskShape,
    label_column: str,
    val_fraction: float,
    seed: int,
) -> ClientData:
    """Load and split a node's data file; ``mtime`` in the cache key re-reads a changed file."""
    del mtime
    return split_train_val(load_data_file(path, shape, label_column), val_fraction, seed)


def _data_file(config: RunConfig, node: NodeConfig) -> Path | None:
    """Return the file this node trains on: its ``data-path``, else its ``partition-files`` entry.

    ``partition-files`` is how a simulation gives simulated partition ``i`` the file
    of silo ``i``; a node with its own ``data-path`` never reads a path the run
    config names.
    """
    own = node.path("data_path")
    if own is not None or config.dataset != FILES:
        return own
    if not config.partition_files:
        raise DataError(
            "dataset 'files' needs this node's file: node-config 'data-path' (deployed "
            "SuperNode) or run-config 'partition-files' (simulation)"
        )
    return partition_file(config.partition_files, node.partition_id, node.num_partitions)


def client_setup(context: Context, shape: TaskShape) -> ClientSetup:
    """Parse the configs and load this node's data (cached across rounds).

    A node's own file is split into train and validation parts with seed
    ``seed + partition-id``, as an embedded partition is: a SuperNode given the
    file of simulated partition ``i`` (``deploy/node_data.py``) with
    ``partition-id = i`` trains on exactly what simulated client ``i`` does.

    Raises
    ------
    DataError
        Naming the data file and what is wrong with it.
    """
    config = run_config_of(context)
    node = node_config_of(context)
    path = _data_file(config, node)
    if path is not None:
        data = _file_data(
            path,
            path.stat().st_mtime,
            shape,
            node.label_column,
            config.val_fraction,
            config.seed + node.partition_id,
        )
    elif config.dataset == SYNTHETIC:
        data = synthetic_client_data(
            config.seed,
            node.partition_id,
            config.synthetic_alpha,
            config.synthetic_beta,
            config.val_fraction,
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
    return ClientSetup(config, node, shape, data)


def _model_from(message: Message, setup: ClientSetup) -> torch.nn.Module:
    """Build the global model a message carries."""
    config, shape = setup.config, setup.shape
    model = build_model(config.model, shape.input_shape, shape.num_classes, config.prefers_mlp)
    model.load_state_dict(message.content[ARRAYS_KEY].to_torch_state_dict(), strict=True)
    return model


def _setup_or_error(msg: Message, context: Context) -> ClientSetup | Message:
    """Return the client's setup, or the error reply that names the bad data file.

    The task's shape is the embedded dataset's own, or for ``dataset = "files"`` the
    one the server resolved and sent (:class:`fl_app.data.TaskShape`).
    """
    try:
        dataset = run_config_of(context).dataset
        shape = (
            TaskShape.from_config(msg.content[CONFIG_KEY])
            if dataset == FILES
            else embedded_shape(dataset)
        )
        return client_setup(context, shape)
    except DataError as err:
        return Message(Error(code=0, reason=str(err)), reply_to=msg)


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
    setup = _setup_or_error(msg, context)
    if isinstance(setup, Message):
        return setup
    data = setup.data
    round_config = msg.content[CONFIG_KEY]
    model = _model_from(msg, setup)
    private = setup.config.dp == "local"
    report = not private or setup.node.dp_report_metrics
    metrics: dict[str, float | int] = {}
    if report:
        metrics = {
            **_evaluation(model, data.val, EVAL_PREFIX),
            **_evaluation(model, data.train, EVAL_PREFIX + "train-"),
            "eval-num-examples": len(data.val),
        }
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
    setup = _setup_or_error(msg, context)
    if isinstance(setup, Message):
        return setup
    if setup.config.dp == "local" and not setup.node.dp_report_metrics:
        reason = "node under local DP reports no evaluation (its dp-report-metrics is false)"
        return Message(Error(code=0, reason=reason), reply_to=msg)
    model = _model_from(msg, setup)
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
