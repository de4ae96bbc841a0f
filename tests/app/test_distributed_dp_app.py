"""Distributed DP and the HE rules in the app: in-process runs of the real ServerApp and ClientApp.

* With a dropout the round is not released and ε is Opacus' over every draw charged.
* Without noise, distributed DP gives central DP's model: the same estimator.
* HE with fewer than 3 clients per round is refused before round 1, naming the rule.
* The ServerApp never opens the clients' secret context, which lives where only the
  ClientApp side is pointed (simulation, ``fl-compare``).
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import Context, Message, MessageType
from opacus.accountants import RDPAccountant

from fl_app import client_app
from fl_app.config import NODE_STATE_ENV, ConfigError, parse_run_config
from fl_app.he.keys import KEY_DIR, SECRET_FILE, load_context_file
from fl_app.he.server import ENCRYPTED_MODEL_FILE
from privacy.he_model import EncryptedModel
from testing.inprocess_grid import run_server_app_in_process as run_server_app

pytestmark = pytest.mark.usefixtures("he_keys")

DISTRIBUTED = {
    "he": True,
    "dp": "distributed",
    "dp-central-noise-multiplier": 1.0,
    "dp-target-epsilon": 0.0,
    "local-epochs": 1,
    "batch-size": 64,  # fewer steps: these tests are about the aggregation, not the training
}


def rdp(sigma: float, steps: int, delta: float = 1e-5) -> float:
    accountant = RDPAccountant()
    accountant.history = [(sigma, 1.0, steps)]
    return accountant.get_epsilon(delta=delta)


def test_a_round_with_a_dropout_is_not_released_and_epsilon_counts_every_draw(tmp_path):
    attempts: dict[int, int] = {}

    def drop_once(partition_id, message, reply):
        if message.metadata.message_type != MessageType.TRAIN or partition_id != 2:
            return reply
        server_round = message.content["config"]["server-round"]
        attempts[server_round] = attempts.get(server_round, 0) + 1
        return None if (server_round, attempts[server_round]) == (2, 1) else reply

    results = run_server_app(
        tmp_path / "run",
        {**DISTRIBUTED, "num-server-rounds": 2, "round-timeout": 0.3},
        num_nodes=4,
        reply_hook=drop_once,
    )
    assert results["status"] == "completed"
    first, second = results["rounds"]
    assert (first["attempts"], second["attempts"]) == (1, 2)
    assert [(f["node"], f["attempt"]) for f in second["failures"]] == [(1034, 1)]
    assert second["aggregated"] and second["train"]["dp-noise-shares"] == 4
    # 3 draws charged (the unreleased one too), all with z = 1 and q = 1: Opacus, independently
    assert second["train"]["dp-epsilon"] == pytest.approx(rdp(1.0, 3), rel=1e-9)
    assert results["final"]["epsilon"] == second["train"]["dp-epsilon"]
    assert first["train"]["dp-epsilon"] == pytest.approx(rdp(1.0, 1), rel=1e-9)
    # a key holder: 2 released sums, each with the others' 3 shares of (zC)^2 / 4
    assert second["train"]["dp-key-holder-epsilon"] == pytest.approx(rdp(0.75**0.5, 2), rel=1e-9)
    # the server with one client: every update of the 3 attempts sent, each with its share
    assert second["train"]["dp-collusion-epsilon"] == pytest.approx(rdp(0.5, 3), rel=1e-9)
    assert f"{rdp(0.5, 3):.4g} (dp-collusion-epsilon)" in results["final"]["privacy"]
    for record in results["rounds"]:  # only the weight and a count of 1 left the nodes
        assert all(set(c) == {"node", "num-examples", "he-weight"} for c in record["clients"])
        assert record["evaluate"] == {} and record["server"] == {}


def test_every_epsilon_follows_the_draws_and_the_actual_sample(tmp_path):
    results = run_server_app(
        tmp_path / "run",
        {**DISTRIBUTED, "num-server-rounds": 2, "fraction-train": 0.6},
        num_nodes=8,
    )
    assert results["status"] == "completed"
    draws = sum(r["attempts"] for r in results["rounds"])
    published = RDPAccountant()
    published.history = [(1.0, 0.6, draws)]
    train = results["rounds"][-1]["train"]
    assert train["dp-epsilon"] == pytest.approx(published.get_epsilon(1e-5), rel=1e-9)
    key_holder: dict[int, list] = {}
    collusion: dict[int, list] = {}
    for record in results["rounds"]:  # no dropouts: every attempt that sent shares was released
        n = record["train"]["dp-noise-shares"]
        assert n == len(record["clients"]) >= 3
        for client in record["clients"]:
            key_holder.setdefault(client["node"], []).append(((1 - 1 / n) ** 0.5, 1.0, 1))
            collusion.setdefault(client["node"], []).append((n**-0.5, 1.0, 1))

    def largest(histories):
        values = []
        for history in histories.values():
            accountant = RDPAccountant()
            accountant.history = history
            values.append(accountant.get_epsilon(1e-5))
        return max(values)

    assert train["dp-key-holder-epsilon"] == pytest.approx(largest(key_holder), rel=1e-9)
    assert train["dp-collusion-epsilon"] == pytest.approx(largest(collusion), rel=1e-9)


def test_without_noise_distributed_dp_gives_central_dps_model(tmp_path, he_keys):
    exact = {
        "num-server-rounds": 1,
        "local-epochs": 1,
        "batch-size": 64,
        "dp-central-noise-multiplier": 1e-9,
        "dp-target-epsilon": 0.0,
        "dp-clipping-norm": 0.5,  # clips: the estimator, not just the mean, must agree
    }
    central = run_server_app(tmp_path / "central", {**exact, "dp": "central"})
    distributed = run_server_app(
        tmp_path / "distributed", {**exact, "dp": "distributed", "he": True}
    )
    assert central["status"] == distributed["status"] == "completed"
    model = EncryptedModel.from_bytes(
        (tmp_path / "distributed" / ENCRYPTED_MODEL_FILE).read_bytes()
    )
    assert model.count == 3
    decrypted = model.decrypt(load_context_file(he_keys.secret, secret=True))
    reference = torch.load(tmp_path / "central" / "model.pt")
    error = max(float(np.max(np.abs(decrypted[k] - reference[k].numpy()))) for k in reference)
    assert error < 2e-5  # the fixed-point grid (2^-16 per update) over 3 clients


@pytest.mark.parametrize("overrides", [{"he": True}, DISTRIBUTED], ids=["he", "distributed"])
def test_he_with_two_clients_is_refused_before_round_1_naming_the_rule(tmp_path, caplog, overrides):
    results = run_server_app(tmp_path / "run", {**overrides, "round-timeout": 0.1}, num_nodes=2)
    assert results["status"] == "failed" and results["rounds"] == []
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("Stopping before round 1: ")
    assert "homomorphic encryption needs at least 3 clients in every round" in line
    assert "only 2 node(s) connected" in line
    with pytest.raises(ConfigError, match="'min-train-nodes' = 2 cannot be used with he = true"):
        parse_run_config({**overrides, "min-train-nodes": 2})


def test_distributed_dp_config_rules():
    assert parse_run_config(DISTRIBUTED).dp == "distributed"
    with pytest.raises(ConfigError, match="'dp' = 'distributed' needs he = true"):
        parse_run_config({"dp": "distributed"})
    with pytest.raises(ConfigError, match="'fedmedian' cannot be used with dp = 'distributed'"):
        parse_run_config({**DISTRIBUTED, "strategy": "fedmedian"})
    with pytest.raises(ConfigError, match="'dp' = 'distributed' needs 'dp-target-epsilon' > 0"):
        parse_run_config({**DISTRIBUTED, "dp-central-noise-multiplier": 0.0})
    with pytest.raises(ConfigError, match="use dp = 'distributed'"):
        parse_run_config({"he": True, "dp": "central"})


class _Opens:
    """Every file the process opens, and whether the ClientApp side was running."""

    client_side = False
    active = False
    seen: list[tuple[str, bool]] = []  # noqa: RUF012 - one recorder for the process

    @classmethod
    def hook(cls, event: str, args: tuple) -> None:
        if cls.active and event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            cls.seen.append((os.path.abspath(os.fsdecode(args[0])), cls.client_side))


sys.addaudithook(_Opens.hook)  # audit hooks cannot be removed: it records only while active


class ClientSide:
    """The ClientApp, with the nodes' state directory in its environment only."""

    def __init__(self, node_state: Path) -> None:
        self.node_state = node_state

    def __call__(self, message: Message, context: Context) -> Message:
        os.environ[NODE_STATE_ENV] = str(self.node_state)
        _Opens.client_side = True
        try:
            return client_app.app(message, context)
        finally:
            _Opens.client_side = False
            del os.environ[NODE_STATE_ENV]


def test_the_server_app_never_opens_the_clients_secret_context(
    tmp_path, flwr_home, node_state, he_keys, monkeypatch
):
    monkeypatch.delenv(NODE_STATE_ENV)  # the ServerApp side is not pointed at the nodes' folder
    _Opens.seen = []
    _Opens.active = True
    try:
        results = run_server_app(
            tmp_path / "run",
            {**DISTRIBUTED, "num-server-rounds": 1},
            client_app=ClientSide(node_state),  # type: ignore[arg-type]
        )
    finally:
        _Opens.active = False
    assert results["status"] == "completed"
    state = str(node_state.resolve())
    secret = str(he_keys.secret.resolve())
    assert (secret, True) in _Opens.seen  # the clients did read it: the recorder works
    server_side = [path for path, client in _Opens.seen if not client]
    assert str(he_keys.public.resolve()) in server_side
    assert [path for path in server_side if path.startswith(state)] == []
    # and it is nowhere the server writes or is pointed at
    for directory in (flwr_home, tmp_path / "run"):
        assert not list(directory.rglob(SECRET_FILE))
    assert he_keys.secret == node_state / KEY_DIR / SECRET_FILE


def test_fl_compare_keeps_the_secret_context_with_the_simulated_nodes(tmp_path):
    from tools.compare import Sweep, he_keys

    sweep = Sweep(("he",), (0,), {"num-server-rounds": 1}, 3, tmp_path / "out")
    public = Path(he_keys(sweep, "he")["he-public-context"])
    secret = sweep.node_state("he") / KEY_DIR / SECRET_FILE
    assert secret.is_file() and public.is_file()
    server_home = sweep.out / "flwr-home"  # the FLWR_HOME fl-compare runs the SuperLink with
    assert not secret.resolve().is_relative_to(server_home.resolve())
    assert not secret.resolve().is_relative_to(public.parent.resolve())
    assert not public.resolve().is_relative_to(sweep.node_state("he").resolve())
