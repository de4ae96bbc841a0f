"""ServerApp: validate the run config, run the strategy's rounds, write the results."""

from __future__ import annotations

import platform
import time
from logging import ERROR, INFO
from pathlib import Path

import flwr
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from fl_app.config import ConfigError, RunConfig, parse_run_config
from fl_app.data import DATASETS, server_split
from fl_app.model import build_model, resolve_model_kind
from fl_app.results import RunResults, create_run_directory
from fl_app.task import evaluate
from fl_app.training_loop import LoopSettings, ServerEvaluate, TrainingLoop
from strategies import strategy_class

app = ServerApp()


def initial_model(config: RunConfig) -> torch.nn.Module:
    """Build the global model with weights drawn from the run's seed."""
    spec = DATASETS[config.dataset]
    torch.manual_seed(config.seed)
    return build_model(config.model, spec.input_shape, spec.num_classes)


def make_server_evaluate(config: RunConfig) -> ServerEvaluate:
    """Return a function that scores global arrays on the server's held-out test set."""
    _, test = server_split(config.dataset, config.test_fraction, config.seed)
    model = initial_model(config)

    def server_evaluate(arrays: ArrayRecord) -> dict[str, float]:
        model.load_state_dict(arrays.to_torch_state_dict(), strict=True)
        loss, accuracy = evaluate(model, test)
        return {"loss": loss, "accuracy": accuracy, "num-examples": len(test)}

    return server_evaluate


def _final_summary(results: RunResults, status: str, seconds: float) -> dict[str, object]:
    """Return the ``final`` block: the last round's accuracy and where it comes from."""
    rounds = results.rounds
    last = rounds[-1] if rounds else results.entry(0)
    source = "server" if last.get("server") else "evaluate"
    metrics = last.get(source) or {}
    return {
        "accuracy": metrics.get("accuracy"),
        "loss": metrics.get("loss"),
        "accuracy_source": "server-test-set" if source == "server" else "federated-validation",
        "rounds_completed": len(rounds),
        "status": status,
        "seconds_total": round(seconds, 3),
    }


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Run federated training as configured by the run config."""
    started = time.monotonic()
    try:
        config = parse_run_config(context.run_config, grid.run.override_config)
    except ConfigError as err:
        log(ERROR, "Invalid run config, nothing was trained: %s", err)
        raise
    torch.set_num_threads(1)
    strategy = strategy_class(config.strategy).from_run_config(config)
    model = initial_model(config)
    directory = create_run_directory(config.output_dir, Path.cwd())
    log(INFO, "Results directory: %s", directory)
    spec = DATASETS[config.dataset]
    results = RunResults(
        directory,
        {
            "config": config.to_dict(),
            "strategy": {"name": strategy.name, **strategy.settings()},
            "model": {
                "kind": resolve_model_kind(config.model, spec.input_shape),
                "parameters": sum(p.numel() for p in model.parameters()),
            },
            "environment": {
                "flwr": flwr.__version__,
                "torch": torch.__version__,
                "python": platform.python_version(),
                "run_id": grid.run.run_id,
            },
        },
    )
    strategy.summary()
    loop = TrainingLoop(
        grid,
        strategy,
        LoopSettings(config.num_server_rounds, config.round_timeout, config.target_accuracy),
        results,
        make_server_evaluate(config),
    )
    final_arrays, status = loop.run(ArrayRecord(model.state_dict()), ConfigRecord())
    model.load_state_dict(final_arrays.to_torch_state_dict(), strict=True)
    results.save_model(model.state_dict())
    results.finish(status, _final_summary(results, status, time.monotonic() - started))
    results.save_plot()
    log(INFO, "Final: %s", results.data["final"])
    log(INFO, "Results written to %s", directory)
