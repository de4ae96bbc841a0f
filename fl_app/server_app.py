"""ServerApp: validate the run config, run the strategy's rounds, write the results."""

from __future__ import annotations

import json
import os
import platform
import time
import uuid
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path

import flwr
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_app.config import CLIENT_LEVEL_DP, ConfigError, RunConfig, parse_run_config
from fl_app.data import (
    DATASETS,
    FILES,
    DataError,
    Split,
    TaskShape,
    embedded_shape,
    format_shape,
    read_server_test_file,
    server_split,
    task_shape,
)
from fl_app.dp.local import PLAN_KEY
from fl_app.he.records import is_encrypted
from fl_app.he.server import EncryptedAggregation
from fl_app.model import build_model, resolve_model_kind
from fl_app.server.checkpoint import (
    Checkpoint,
    CheckpointError,
    check_resumable,
    load_checkpoint,
    save_checkpoint,
)
from fl_app.server.factory import build_strategy
from fl_app.server.loop import LoopSettings, ServerEvaluate, TrainingLoop
from fl_app.server.results import (
    AccuracySource,
    FinalRecord,
    ResultsWriter,
    RunRecord,
    RunStatus,
    create_run_directory,
)
from fl_app.task import evaluate
from privacy.files import write_new_file
from privacy.he import HEError
from privacy.secrets import SECRET_BYTES, load_or_create_secret
from strategies.base import RoundStrategy

app = ServerApp()


def server_test_set(config: RunConfig) -> Split | None:
    """Return the server's test set: ``server-test-path``, the embedded split, or none.

    Synthetic devices and users' files have no server test set unless
    ``server-test-path`` names one; the run then reports federated validation only.

    Raises
    ------
    DataError
        Naming the test file and what is wrong with it.
    """
    if config.server_test_path:
        if config.dataset == FILES:
            shape_text, classes = config.input_shape, config.num_classes
        else:
            own = embedded_shape(config.dataset)
            shape_text, classes = format_shape(own.input_shape), own.num_classes
        return read_server_test_file(
            Path(config.server_test_path).expanduser(), shape_text, classes
        )
    if config.dataset in DATASETS:
        return server_split(config.dataset, config.test_fraction, config.seed)[1]
    return None


def resolve_task(config: RunConfig) -> tuple[TaskShape, Split | None]:
    """Return the task's shape and the server's test set (:func:`server_test_set`)."""
    test = server_test_set(config)
    return task_shape(config.dataset, config.input_shape, config.num_classes, test), test


def initial_model(config: RunConfig, shape: TaskShape | None = None) -> torch.nn.Module:
    """Build the global model with weights drawn from the run's seed.

    ``shape`` defaults to the embedded or synthetic dataset's own.
    """
    shape = shape or embedded_shape(config.dataset)
    torch.manual_seed(config.seed)
    return build_model(config.model, shape.input_shape, shape.num_classes, config.prefers_mlp)


def make_server_evaluate(config: RunConfig, shape: TaskShape, test: Split) -> ServerEvaluate:
    """Return a function that scores global arrays on the server's test set."""
    model = initial_model(config, shape)

    def server_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        loss, accuracy = evaluate(model, test)
        return {"loss": loss, "accuracy": accuracy, "num-examples": len(test)}

    return server_evaluate


PRIVATE_DIR = "private"
"""Part of a run directory never to publish: the run's secret (mode 0700 / 0600)."""
SECRET_FILE = "run-secret"


def run_secret(resume_from: str) -> bytes:
    """Return the run's secret (client-level DP's noise and sampling).

    A resumed run takes over the secret of the run it resumes, so it continues the same
    noise; without one there, it draws a fresh secret from the OS CSPRNG (its noise then
    differs from an uninterrupted run's; the privacy guarantee does not).
    """
    if resume_from:
        origin = Path(resume_from).expanduser()
        source = (origin if origin.is_dir() else origin.parent) / PRIVATE_DIR / SECRET_FILE
        if source.is_file():
            return load_or_create_secret(source)
        log(WARNING, "No run secret in %s: the resumed run draws fresh noise", source.parent)
    return os.urandom(SECRET_BYTES)


def privacy_statement(config: RunConfig, record: RunRecord) -> str:
    """Return what the run's ε covers and what it does not, in one sentence."""
    if config.dp == "local":
        reported = any("train-loss" in c for r in record.rounds for c in r.clients)
        metrics = (
            "some nodes reported losses and accuracies, which epsilon does not cover"
            if reported
            else "clients reported no losses or accuracies"
        )
        return (
            "sample-level DP-SGD: epsilon is the largest any client's data reached "
            f"(all its runs included), noise from each node's secret; {metrics}"
        )
    if config.dp == "central":
        return (
            "client-level DP of the published model (Poisson sampling and noise from the "
            "run's secret); the server saw every update in plaintext"
        )
    if config.dp == "distributed":
        collusion = record.largest("dp-collusion-epsilon")
        reach = f"reached epsilon {collusion:.4g}" if collusion is not None else "was not accounted"
        return (
            "client-level DP of the published model (Poisson sampling from the run's secret, "
            "each client's noise share from its node's secret, summed encrypted); the server "
            "saw only ciphertexts; the server colluding with one client can decrypt every "
            "update, each protected by its own share only: that view "
            f"{reach} (dp-collusion-epsilon)"
        )
    return "no differential privacy"


def final_record(
    record: RunRecord,
    config: RunConfig,
    status: RunStatus,
    seconds: float,
    spent: dict[str, float],
) -> FinalRecord:
    """Return the ``final`` block: the last accuracy, where it comes from, privacy spent.

    ``epsilon`` is the largest ε any client reported (``dp = "local"``: sample-level,
    per client, aggregated or not) or the client-level ε of every draw the server
    charged (``"central"``: ``spent``); ``delta`` likewise; both are ``None`` without
    differential privacy.
    """
    last = record.rounds[-1] if record.rounds else record.initial
    if last.server:
        metrics, source = last.server, AccuracySource.SERVER_TEST_SET
    elif last.evaluate:
        metrics, source = last.evaluate, AccuracySource.FEDERATED_VALIDATION
    else:
        metrics, source = {}, AccuracySource.NONE
    return FinalRecord(
        accuracy=metrics.get("accuracy"),
        loss=metrics.get("loss"),
        accuracy_source=source.value,
        rounds_completed=len(record.rounds),
        status=status.value,
        seconds_total=round(seconds, 3),
        dp=config.dp,
        epsilon=spent.get("epsilon", record.largest("dp-epsilon")),
        delta=spent.get("delta", record.largest("dp-delta")),
        privacy=privacy_statement(config, record),
    )


def _load_resume_checkpoint(config: RunConfig) -> Checkpoint | None:
    """Load and check the checkpoint named by ``resume-from`` (None for a new run)."""
    if not config.resume_from:
        return None
    checkpoint = load_checkpoint(Path(config.resume_from).expanduser())
    check_resumable(checkpoint, config.to_dict())
    return checkpoint


@dataclass
class PreparedRun:
    """A validated run, before its first round: nothing is written before it exists."""

    config: RunConfig
    model: torch.nn.Module
    strategy: RoundStrategy
    results: ResultsWriter
    arrays: ArrayRecord
    start_round: int
    plan_id: str
    shape: TaskShape
    test: Split | None


def prepare_run(grid: Grid, context: Context) -> PreparedRun:
    """Validate everything a run needs, then create its results directory.

    Raises
    ------
    ConfigError, CheckpointError, DataError, HEError, FileExistsError
        For a run that cannot start: nothing was trained or written.
    """
    config = parse_run_config(context.run_config, grid.run.override_config)
    checkpoint = _load_resume_checkpoint(config)
    shape, test = resolve_task(config)
    model = initial_model(config, shape)
    client_level = config.dp in CLIENT_LEVEL_DP
    secret = run_secret(config.resume_from) if client_level else b""
    strategy = build_strategy(config, {k: v.numpy() for k, v in model.state_dict().items()}, secret)
    arrays = ArrayRecord(model.state_dict())
    start_round, plan_id = 1, uuid.uuid4().hex
    if checkpoint is not None:
        arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.arrays.items()})
        strategy.load_state_dict(checkpoint.strategy_state)
        start_round, plan_id = checkpoint.server_round + 1, checkpoint.plan_id
    directory = create_run_directory(config.output_dir, Path.cwd())
    log(INFO, "Results directory: %s", directory)
    if secret:
        write_new_file(directory / PRIVATE_DIR / SECRET_FILE, secret)
    record = RunRecord(
        config=config.to_dict(),
        strategy={"name": strategy.name, **strategy.settings()},
        model={
            "kind": resolve_model_kind(config.model, shape.input_shape, config.prefers_mlp),
            "parameters": sum(p.numel() for p in model.parameters()),
            "input-shape": format_shape(shape.input_shape),
            "num-classes": shape.num_classes,
        },
        environment={
            "flwr": flwr.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "run_id": grid.run.run_id,
        },
    )
    if checkpoint is not None:
        resumed = RunRecord.from_dict(checkpoint.results)
        record.initial, record.rounds = resumed.initial, resumed.rounds
        record.resumed_from = {"path": config.resume_from, "round": checkpoint.server_round}
        log(INFO, "Resuming after round %d from %s", checkpoint.server_round, config.resume_from)
    results = ResultsWriter(directory, record)
    return PreparedRun(config, model, strategy, results, arrays, start_round, plan_id, shape, test)


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run federated training as configured by the run config.

    A run that cannot start logs one ERROR line saying why (no traceback) and writes
    nothing; ``scripts/run.sh`` then exits non-zero.
    """
    started = time.monotonic()
    torch.set_num_threads(1)
    try:
        run = prepare_run(grid, context)
    except (ConfigError, CheckpointError, DataError, HEError, FileExistsError) as err:
        log(ERROR, "Run not started, nothing was trained: %s", err)
        return
    config, strategy, results = run.config, run.strategy, run.results
    directory = results.directory

    def save_round(server_round: int, round_arrays: ArrayRecord) -> None:
        save_checkpoint(
            directory,
            Checkpoint(
                server_round=server_round,
                arrays={k: v.numpy() for k, v in round_arrays.items()},
                strategy_state=strategy.state_dict(),
                results=json.loads(json.dumps(results.record.to_dict())),
                config=config.to_dict(),
                plan_id=run.plan_id,
            ),
        )

    strategy.summary()
    if config.he:
        evaluation = None
        log(INFO, "Server evaluation: none (the server cannot read the encrypted model)")
    elif run.test is None:
        evaluation = None
        log(INFO, "Server evaluation: none (no server-test-path); accuracy is federated validation")
    else:
        evaluation = make_server_evaluate(config, run.shape, run.test)
        log(INFO, "Server evaluation: %d test examples, %s", len(run.test), run.shape.describe())
    loop = TrainingLoop(
        grid,
        strategy,
        LoopSettings(
            config.num_server_rounds,
            config.round_timeout,
            config.target_accuracy,
            config.max_round_retries,
            final_evaluation=config.dp not in ("local", "distributed"),
        ),
        results,
        evaluation,
    )
    final_arrays, status = loop.run(
        run.arrays,
        ConfigRecord({PLAN_KEY: run.plan_id, **run.shape.to_config()}),
        run.start_round,
        save_round,
    )
    if is_encrypted(final_arrays) and isinstance(strategy, EncryptedAggregation):
        log(INFO, "Encrypted final model: %s", strategy.save_model(directory, final_arrays))
    else:
        run.model.load_state_dict(final_arrays.to_torch_state_dict(), strict=True)
        results.save_model(run.model.state_dict())
    spent = strategy.privacy_spent()
    record = results.record
    results.finish(final_record(record, config, status, time.monotonic() - started, spent))
    results.save_plot()
    log(INFO, "Final: %s", record.final)
    log(INFO, "Results written to %s", directory)
