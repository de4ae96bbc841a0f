"""ServerApp: validate the run config, run the strategy's rounds, write the results."""

from __future__ import annotations

import json
import platform
import time
import uuid
from logging import ERROR, INFO
from pathlib import Path

import flwr
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.data import DATASETS, server_split
from fl_app.dp.local import LEDGER_ID_KEY
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


def final_record(
    record: RunRecord, config: RunConfig, status: RunStatus, seconds: float
) -> FinalRecord:
    """Return the ``final`` block: the last accuracy, where it comes from, privacy spent.

    ``epsilon`` is the largest cumulative ε any client reached (``dp = "local"``:
    sample-level, per client; ``"central"``: client-level), ``delta`` the largest δ;
    both are ``None`` without differential privacy.
    """
    last = record.rounds[-1] if record.rounds else record.initial
    source = "server" if last.server else "evaluate"
    metrics = getattr(last, source)
    return FinalRecord(
        accuracy=metrics.get("accuracy"),
        loss=metrics.get("loss"),
        accuracy_source=(
            AccuracySource.SERVER_TEST_SET
            if source == "server"
            else AccuracySource.FEDERATED_VALIDATION
        ).value,
        rounds_completed=len(record.rounds),
        status=status.value,
        seconds_total=round(seconds, 3),
        dp=config.dp,
        epsilon=record.largest("dp-epsilon"),
        delta=record.largest("dp-delta"),
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
    strategy = build_strategy(config, {k: v.numpy() for k, v in model.state_dict().items()})
    directory = create_run_directory(config.output_dir, Path.cwd())
    log(INFO, "Results directory: %s", directory)
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
    start_round, ledger_id = 1, uuid.uuid4().hex
    if checkpoint is not None:
        arrays = ArrayRecord({k: Array(v) for k, v in checkpoint.arrays.items()})
        strategy.load_state_dict(checkpoint.strategy_state)
        start_round, ledger_id = checkpoint.server_round + 1, checkpoint.ledger_id
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
                ledger_id=ledger_id,
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
        ),
        results,
        None if config.he else make_server_evaluate(config),
    )
    final_arrays, status = loop.run(
        arrays, ConfigRecord({LEDGER_ID_KEY: ledger_id}), start_round, save_round
    )
    if is_encrypted(final_arrays) and isinstance(strategy, EncryptedAggregation):
        log(INFO, "Encrypted final model: %s", strategy.save_model(directory, final_arrays))
    else:
        model.load_state_dict(final_arrays.to_torch_state_dict(), strict=True)
        results.save_model(model.state_dict())
    results.finish(final_record(record, config, status, time.monotonic() - started))
    results.save_plot()
    log(INFO, "Final: %s", record.final)
    log(INFO, "Results written to %s", directory)
