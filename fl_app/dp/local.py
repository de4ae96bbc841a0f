"""Sample-level DP in the ClientApp (``dp = "local"``): the Flower side of a DP-SGD session.

Each client keeps one privacy ledger per run (the server's ``ledger-id``, kept across
resumes) in two places: Flower's ``Context.state`` (survives between rounds in a
simulation) and a JSON file (survives a restarted SuperNode or a resumed run):

* ``<dp-state-dir>/<ledger-id>/partition-<i>.json`` when the node config sets
  ``dp-state-dir`` (deployment: a directory on the node's own disk);
* otherwise ``$FLWR_HOME/dp-ledgers/<ledger-id>/partition-<i>.json`` (``FLWR_HOME``
  defaults to ``~/.flwr``; simulations started by ``flwr run`` inherit the
  SuperLink's).

If the two disagree, the one that records more spending wins: spent budget is never
forgotten. The session itself (budget check, calibration, DP-SGD, accounting) is
:class:`privacy.session.PrivateTrainingSession`.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from flwr.app import ConfigRecord, RecordDict

from fl_app.config import NodeConfig, RunConfig
from fl_app.data import Split
from fl_app.task import to_tensors
from privacy.ledger import LedgerRecord, ledger_path, read_ledger, write_ledger
from privacy.session import LocalTraining, PrivateTrainingSession, check_same_settings
from strategies.protocol import SERVER_ROUND_KEY

STATE_KEY = "dp-ledger"
LEDGER_ID_KEY = "ledger-id"


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
    from privacy.accounting import auto_delta  # imports Opacus: only when training privately

    ledger_id = str(round_config.get(LEDGER_ID_KEY, ""))
    if not ledger_id:
        raise ValueError("dp = 'local' needs the server's 'ledger-id' in the train config")
    n = len(train_data)
    delta = config.dp_delta or auto_delta(n)
    if delta >= 1.0 / n:
        raise ValueError(
            f"run-config 'dp-delta' = {delta:g} is too large for {n} training examples: "
            f"must be below 1/n = {1.0 / n:.3g}"
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
    check_same_settings(record, fresh, f"'{path}'")
    session = PrivateTrainingSession(
        record,
        LocalTraining(
            epochs=config.local_epochs,
            batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            momentum=config.momentum,
            max_grad_norm=config.dp_max_grad_norm,
            noise_multiplier=config.dp_noise_multiplier,
            planned_epochs=config.num_server_rounds * config.local_epochs,
        ),
    )
    x, y = to_tensors(train_data)
    result = session.run(model, x, y, seed=seed, label=int(round_config.get(SERVER_ROUND_KEY, 0)))
    write_ledger(path, record)
    state[STATE_KEY] = ConfigRecord({"json": record.to_json()})
    return {
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
        "dp-epsilon": result.epsilon,
        "dp-delta": result.delta,
        "dp-noise-multiplier": result.noise_multiplier,
        "dp-steps": result.steps,
    }
