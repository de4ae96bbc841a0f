"""ServerApp: validate the run config, run the strategy's rounds, write the results."""

from __future__ import annotations

import json
import platform
import time
import uuid
from logging import ERROR, INFO, WARNING
from pathlib import Path

import flwr
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.data import DATASETS, server_split
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
from privacy.secrets import load_or_create_secret

app = ServerApp()


def initial_model(config: RunConfig) -> torch.nn.Module:
    """Build the global model with weights drawn from the run's seed."""
    spec = DATASETS[config.dataset]
    torch.manual_seed(config.seed)
    return build_model(config.model, spec.input_shape, spec.num_classes, config.dp == "local")


def make_server_evaluate(config: RunConfig) -> ServerEvaluate:
    """Return a function that scores global arrays on the server's held-out test set."""
    _, test = server_split(config.dataset, config.test_fraction, config.seed)
    model = initial_model(config)

    def server_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        loss, accuracy = evaluate(model, test)
        return {"loss": loss, "accuracy": accuracy, "num-examples": len(test)}

    return server_evaluate


PRIVATE_DIR = "private"
"""Part of a run directory never to publish: the run's secret (mode 0700 / 0600)."""
SECRET_FILE = "run-secret"


def run_secret(directory: Path, resume_from: str) -> bytes:
    """Return the run's secret (client-level DP's noise and sampling), kept in ``private/``.

    A resumed run takes over the secret of the run it resumes, so it continues the same
    noise; without one there, it draws a fresh secret (its noise then differs from an
    uninterrupted run's; the privacy guarantee does not).
    """
    target = directory / PRIVATE_DIR / SECRET_FILE
    if resume_from:
        origin = Path(resume_from).expanduser()
        source = (origin if origin.is_dir() else origin.parent) / PRIVATE_DIR / SECRET_FILE
        if source.is_file():
            write_new_file(target, load_or_create_secret(source))
        else:
            log(WARNING, "No run secret in %s: the resumed run draws fresh noise", source.parent)
    return load_or_create_secret(target)


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


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run federated training as configured by the run config."""
    started = time.monotonic()
    try:
        config = parse_run_config(context.run_config, grid.run.override_config)
        checkpoint = _load_resume_checkpoint(config)
    except (ConfigError, CheckpointError) as err:
        log(ERROR, "Invalid run config, nothing was trained: %s", err)
        raise
    torch.set_num_threads(1)
    model = initial_model(config)
    directory = create_run_directory(config.output_dir, Path.cwd())
    log(INFO, "Results directory: %s", directory)
    secret = run_secret(directory, config.resume_from) if config.dp == "central" else b""
    strategy = build_strategy(config, {k: v.numpy() for k, v in model.state_dict().items()}, secret)
    spec = DATASETS[config.dataset]
    record = RunRecord(
        config=config.to_dict(),
        strategy={"name": strategy.name, **strategy.settings()},
        model={
            "kind": resolve_model_kind(config.model, spec.input_shape, config.dp == "local"),
            "parameters": sum(p.numel() for p in model.parameters()),
        },
        environment={
            "flwr": flwr.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
            "run_id": grid.run.run_id,
        },
    )
    arrays = ArrayRecord(model.state_dict())
    start_round, plan_id = 1, uuid.uuid4().hex
    if checkpoint is not None:
        arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.arrays.items()})
        strategy.load_state_dict(checkpoint.strategy_state)
        start_round, plan_id = checkpoint.server_round + 1, checkpoint.plan_id
        resumed = RunRecord.from_dict(checkpoint.results)
        record.initial, record.rounds = resumed.initial, resumed.rounds
        record.resumed_from = {"path": config.resume_from, "round": checkpoint.server_round}
        log(INFO, "Resuming after round %d from %s", checkpoint.server_round, config.resume_from)
    results = ResultsWriter(directory, record)

    def save_round(server_round: int, round_arrays: ArrayRecord) -> None:
        save_checkpoint(
            directory,
            Checkpoint(
                server_round=server_round,
                arrays={k: v.numpy() for k, v in round_arrays.items()},
                strategy_state=strategy.state_dict(),
                results=json.loads(json.dumps(record.to_dict())),
                config=config.to_dict(),
                plan_id=plan_id,
            ),
        )

    strategy.summary()
    loop = TrainingLoop(
        grid,
        strategy,
        LoopSettings(
            config.num_server_rounds,
            config.round_timeout,
            config.target_accuracy,
            config.max_round_retries,
            final_evaluation=config.dp != "local",
        ),
        results,
        None if config.he else make_server_evaluate(config),
    )
    final_arrays, status = loop.run(
        arrays, ConfigRecord({PLAN_KEY: plan_id}), start_round, save_round
    )
    if is_encrypted(final_arrays) and isinstance(strategy, EncryptedAggregation):
        log(INFO, "Encrypted final model: %s", strategy.save_model(directory, final_arrays))
    else:
        model.load_state_dict(final_arrays.to_torch_state_dict(), strict=True)
        results.save_model(model.state_dict())
    spent = strategy.privacy_spent()
    results.finish(final_record(record, config, status, time.monotonic() - started, spent))
    results.save_plot()
    log(INFO, "Final: %s", record.final)
    log(INFO, "Results written to %s", directory)
