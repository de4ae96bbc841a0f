"""Sample-level DP in the ClientApp (``dp = "local"``): the Flower side of a DP-SGD session.

The data holder owns its budget. Everything lives in its own state directory
(node-config ``state-dir``; simulated nodes: ``$FL_NODE_STATE_DIR``), which the
server never learns or chooses:

* ``node-secret``: 32 bytes from the OS CSPRNG (mode 0600, never sent), which with a
  fresh nonce per session seeds the Poisson sampler and the noise;
* ``ledgers/<fingerprint>.json``: what has been spent on this dataset, keyed by a
  hash of the data itself, so no run ID, plan ID or partition ID can start a new
  budget for the same data.

The run asks for a target ε (for everything the dataset has spent), δ and an
accountant; the node's own limits (``dp-max-epsilon``, ``dp-min-noise-multiplier``,
``dp-max-delta``) hold whatever the run asks. A refused request trains nothing and
replies with an error naming the reason. The session itself is
:class:`privacy.session.PrivateTrainingSession`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from flwr.app import ConfigRecord

from fl_app.config import NodeConfig, RunConfig
from fl_app.data import ClientData
from fl_app.task import to_tensors
from privacy import auto_delta
from privacy.ledger import ledger_path, locked_ledger
from privacy.secrets import load_or_create_secret
from privacy.session import (
    LocalTraining,
    NodeLimits,
    PrivateTrainingSession,
    RunRequest,
)
from strategies.protocol import SERVER_ROUND_KEY

PLAN_KEY = "dp-plan"
"""Train config: names the run's calibration (kept across resumes); selects no budget."""
SECRET_FILE = "node-secret"
LEDGER_DIR = "ledgers"


def public_count(num_examples: int, batch_size: int) -> int:
    """Return the example count a DP client reports: its batches per epoch x batch size.

    It is a function of the Poisson sampling rate (``1 / batches``), which the
    accountant's history already treats as public, so it reveals nothing more.
    """
    return -(-num_examples // batch_size) * batch_size


def train_with_local_dp(
    model: torch.nn.Module,
    config: RunConfig,
    node: NodeConfig,
    data: ClientData,
    round_config: ConfigRecord,
) -> dict[str, float | int]:
    """Train ``model`` in place with DP-SGD, charge the node's ledger, return the metrics.

    Raises
    ------
    BudgetExceededError
        Before any training, if the run's target or the node's limits would be broken.
    """
    state_dir = Path(node.state_dir)
    train_data = data.train
    x, y = to_tensors(train_data)
    request = RunRequest(
        target_epsilon=config.dp_target_epsilon,
        delta=config.dp_delta or auto_delta(len(train_data)),
        noise_multiplier=config.dp_noise_multiplier,
        accountant=config.dp_accountant,
        plan=str(round_config.get(PLAN_KEY, "")),
        planned_epochs=config.num_server_rounds * config.local_epochs,
    )
    limits = NodeLimits(node.dp_max_epsilon, node.dp_min_noise_multiplier, node.dp_max_delta)
    training = LocalTraining(
        config.local_epochs,
        config.batch_size,
        config.learning_rate,
        config.momentum,
        config.dp_max_grad_norm,
    )
    secret = load_or_create_secret(state_dir / SECRET_FILE)
    path = ledger_path(state_dir / LEDGER_DIR, data.fingerprint)
    with locked_ledger(path) as record:
        result = PrivateTrainingSession(record, request, limits, training).run(
            model, x, y, secret, int(round_config.get(SERVER_ROUND_KEY, 0))
        )
    return {
        "train-loss": result.loss,
        "train-accuracy": result.accuracy,
        "dp-epsilon": result.epsilon,
        "dp-delta": result.delta,
        "dp-noise-multiplier": result.noise_multiplier,
        "dp-sample-rate": result.sample_rate,
        "dp-steps": result.steps,
    }
