"""Sample-level DP in the ClientApp (``dp = "local"``): DP-SGD with a cumulative budget.

Each client keeps one privacy ledger per run (the server's ``ledger-id``, kept across
resumes) in two places: Flower's ``Context.state`` (survives between rounds in a
simulation) and a JSON file (survives a restarted SuperNode or a resumed run):

* ``<dp-state-dir>/<ledger-id>/partition-<i>.json`` when the node config sets
  ``dp-state-dir`` (deployment: a directory on the node's own disk);
* otherwise ``$FLWR_HOME/dp-ledgers/<ledger-id>/partition-<i>.json`` (``FLWR_HOME``
  defaults to ``~/.flwr``; simulations started by ``flwr run`` inherit the
  SuperLink's).

If the two disagree, the one that records more spending wins: spent budget is never
forgotten. The noise multiplier is calibrated once, in the first round, for all
``num-server-rounds`` × ``local-epochs`` planned epochs, and kept in the ledger.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

import torch
from flwr.app import ConfigRecord, RecordDict
from torch.utils.data import DataLoader, TensorDataset

from fl_app.config import NodeConfig, RunConfig
from fl_app.data import Split
from fl_app.task import to_tensors
from privacy import BudgetExceededError
from privacy.ledger import LedgerRecord, ledger_path, read_ledger, write_ledger

STATE_KEY = "dp-ledger"
MAX_PHYSICAL_BATCH = 64

__all__ = ["BudgetExceededError", "ledger_file", "train_with_local_dp"]


def ledger_file(node: NodeConfig, ledger_id: str) -> Path:
    """Return this node's ledger file for ``ledger_id`` (see the module docstring)."""
    if node.dp_state_dir is not None:
        directory = node.dp_state_dir
    else:
        directory = Path(os.environ.get("FLWR_HOME", "~/.flwr")).expanduser() / "dp-ledgers"
    return ledger_path(directory, ledger_id, f"partition-{node.partition_id}")


def _from_state(state: RecordDict, ledger_id: str) -> LedgerRecord | None:
    record = state.config_records.get(STATE_KEY)
    if record is None:
        return None
    parsed = LedgerRecord.from_json(str(record["json"]), "in Context.state")
    return parsed if parsed.ledger_id == ledger_id else None


def load_ledger(state: RecordDict, path: Path, ledger_id: str, fresh: LedgerRecord) -> LedgerRecord:
    """Return the ledger that records the most spending (Context.state or file)."""
    candidates = [r for r in (_from_state(state, ledger_id), read_ledger(path)) if r is not None]
    if not candidates:
        return fresh
    return max(candidates, key=lambda r: (r.total_steps(), len(r.sessions)))


def _check_settings(record: LedgerRecord, fresh: LedgerRecord, path: Path) -> None:
    """Refuse to continue a ledger under a different accountant, δ or target."""
    for name in ("mechanism", "delta", "target_epsilon"):
        if getattr(record, name) != getattr(fresh, name):
            raise ValueError(
                f"privacy ledger '{path}' was kept with {name} {getattr(record, name)!r}, the "
                f"run now asks for {getattr(fresh, name)!r}; ε under one ledger must be "
                "computed one way"
            )


def train_with_local_dp(
    model: torch.nn.Module,
    config: RunConfig,
    node: NodeConfig,
    train_data: Split,
    round_config: ConfigRecord,
    state: RecordDict,
    seed: int,
) -> dict[str, float | int]:
    """Train ``model`` in place with DP-SGD, record the spending, return the metrics.

    Raises
    ------
    BudgetExceededError
        Before any training, if this round would push ε over ``dp-target-epsilon``.
    ValueError
        If the run sent no ``ledger-id`` or δ is not below ``1 / n``.
    """
    # Opacus takes ~1.5 s to import: only a client that trains privately pays for it.
    from privacy.accounting import auto_delta
    from privacy.dp import PrivacyBudget, make_private, train_private

    ledger_id = str(round_config.get("ledger-id", ""))
    if not ledger_id:
        raise ValueError("dp = 'local' needs the server's 'ledger-id' in the train config")
    n = len(train_data)
    delta = config.dp_delta or auto_delta(n)
    if delta >= 1.0 / n:
        raise ValueError(
            f"run-config 'dp-delta' = {delta:g} is too large for {n} training examples: "
            f"must be below 1/n = {1.0 / n:.3g}"
        )
    x, y = to_tensors(train_data)
    loader = DataLoader(
        TensorDataset(x, y),
        batch_size=config.batch_size,
        generator=torch.Generator().manual_seed(seed),
    )
    path = ledger_file(node, ledger_id)
    fresh = LedgerRecord(
        ledger_id,
        f"partition-{node.partition_id}",
        config.dp_accountant,
        delta,
        config.dp_target_epsilon,
    )
    record = load_ledger(state, path, ledger_id, fresh)
    _check_settings(record, fresh, path)
    budget = PrivacyBudget(
        target_epsilon=config.dp_target_epsilon,
        delta=delta,
        noise_multiplier=float(record.plan.get("noise_multiplier", config.dp_noise_multiplier)),
        max_grad_norm=config.dp_max_grad_norm,
        planned_steps=config.num_server_rounds * config.local_epochs * len(loader),
        accountant=config.dp_accountant,
    )
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum
    )
    training = make_private(
        model,
        optimizer,
        loader,
        budget,
        {"mechanism": record.mechanism, "history": record.history},
        epochs=config.local_epochs,
        noise_seed=seed,
    )
    result = train_private(training, config.local_epochs, MAX_PHYSICAL_BATCH)
    training.close()
    model.load_state_dict(training.plain_state_dict(), strict=True)
    epsilon = training.epsilon()
    record.history = training.state_dict()["history"]
    record.plan = {
        "noise_multiplier": training.noise_multiplier,
        "sample_rate": training.sample_rate,
        "planned_steps": budget.planned_steps,
    }
    record.sessions.append(
        {
            "round": int(round_config.get("server-round", 0)),
            "steps": result.steps,
            "epsilon": epsilon,
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
        }
    )
    write_ledger(path, record)
    state[STATE_KEY] = ConfigRecord({"json": record.to_json()})
    return {
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
        "dp-epsilon": epsilon,
        "dp-delta": delta,
        "dp-noise-multiplier": training.noise_multiplier,
        "dp-steps": result.steps,
    }
