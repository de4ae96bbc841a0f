"""Attacks on the privacy promises, played by the adversary each promise names; all must fail.

* The server against local DP: it knows the run config (seed), the round, the arrays it
  sent and the reply, and may replay a round. It must not regenerate or cancel noise.
* A reader of ``results.json``, ``model.pt`` and the checkpoint against central DP: it
  must not remove the noise.
* The server against a data holder's budget: no ID it sends may reset the budget, and
  the node's own limits hold whatever the run asks.
"""

import json
import logging

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from opacus.accountants import RDPAccountant
from torch.utils.data import DataLoader, TensorDataset

from fl_app import client_app
from fl_app.client_app import client_setup, training_seed
from fl_app.config import RunConfig
from fl_app.data import embedded_client_data, embedded_shape
from fl_app.model import build_model
from fl_app.server.checkpoint import CHECKPOINT_FILE
from fl_app.server_app import initial_model
from privacy.dp import PrivacyBudget, make_private, train_private
from privacy.secrets import derive_seed
from privacy.session import MAX_PHYSICAL_BATCH
from testing.inprocess_grid import run_server_app_in_process as run_server_app
from testing.inprocess_grid import set_task_identity

DIGITS = embedded_shape("digits")

LOCAL = {
    "dp": "local",
    "local-epochs": 1,
    "batch-size": 32,
    "dp-target-epsilon": 0.0,
    "dp-noise-multiplier": 1.0,
}


def train_message(config: RunConfig, server_round: int, state: dict) -> Message:
    """A train message as the server sends it (arrays, round, plan)."""
    set_task_identity()
    record = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "config": ConfigRecord({"server-round": server_round, "dp-plan": "plan-1"}),
        }
    )
    message = Message(record, dst_node_id=1017, message_type=MessageType.TRAIN)
    message.metadata.__dict__["_message_id"] = f"m-{server_round}-{id(state)}"
    return message


def node_context(config: RunConfig, partition_id: int, num_partitions: int) -> Context:
    return Context(
        run_id=7,
        node_id=1017,
        node_config={"partition-id": partition_id, "num-partitions": num_partitions},
        state=RecordDict(),
        run_config=config.to_dict(),
    )


def dp_sgd_replica(config: RunConfig, state: dict, partition_id: int, seeds: tuple[int, int]):
    """The client's DP-SGD re-run with chosen sampler and noise seeds (the attacker's tool)."""
    data = embedded_client_data(
        config.dataset, config.test_fraction, config.val_fraction, config.partitioner,
        2, partition_id, config.seed, config.dirichlet_alpha, config.labels_per_client,
    )  # fmt: skip
    model = build_model(config.model, (1, 8, 8), 10, prefer_mlp=True)
    model.load_state_dict(state, strict=True)
    x, y = torch.from_numpy(data.train.x), torch.from_numpy(data.train.y)
    sampler = torch.Generator().manual_seed(seeds[0])
    loader = DataLoader(TensorDataset(x, y), batch_size=config.batch_size, generator=sampler)
    optimizer = torch.optim.SGD(
        model.parameters(), lr=config.learning_rate, momentum=config.momentum
    )
    budget = PrivacyBudget(0.0, 1e-5, config.dp_noise_multiplier, config.dp_max_grad_norm)
    private = make_private(model, optimizer, loader, budget, noise_seed=seeds[1])
    train_private(private, config.local_epochs, MAX_PHYSICAL_BATCH)
    private.close()
    return {k: v.detach().numpy() for k, v in private.plain_state_dict().items()}


def distance(a: dict, b: dict) -> float:
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def test_the_server_cannot_regenerate_the_noise_of_a_local_dp_reply(node_state):
    config = RunConfig(**{k.replace("-", "_"): v for k, v in LOCAL.items()})
    state = initial_model(config).state_dict()
    reply = client_app.app(train_message(config, 5, state), node_context(config, 1, 2))
    received = {k: v.numpy() for k, v in reply.content["arrays"].items()}
    # the attack that recovered every noise tensor before: seeds from public values
    guesses = [training_seed(config.seed, 5, pid) for pid in range(2)]
    best = min(distance(dp_sgd_replica(config, state, 1, (g, g)), received) for g in guesses)
    # the same replica with the node's secret seeds reproduces the reply: only the secret
    # (never sent) separates the attacker from the noise
    (ledger,) = (node_state / "ledgers").glob("*.json")
    nonce = bytes.fromhex(json.loads(ledger.read_text())["sessions"][0]["nonce"])
    secret = (node_state / "node-secret").read_bytes()
    seeds = (derive_seed(secret, nonce, "sampler"), derive_seed(secret, nonce, "noise"))
    assert distance(dp_sgd_replica(config, state, 1, seeds), received) < 1e-5
    assert best > 1e-3, "the public seeds regenerate the client's noise"


def test_a_replayed_round_gets_fresh_noise_and_is_charged_twice(node_state):
    config = RunConfig(**{k.replace("-", "_"): v for k, v in LOCAL.items()})
    state = initial_model(config).state_dict()
    context = node_context(config, 0, 2)
    replies = [
        client_app.app(train_message(config, 5, state), context).content["arrays"] for _ in range(2)
    ]
    difference = max(
        float(np.max(np.abs(replies[0][k].numpy() - replies[1][k].numpy()))) for k in state
    )
    assert difference > 1e-3  # the same request twice: independent noise
    (ledger,) = (node_state / "ledgers").glob("*.json")
    sessions = json.loads(ledger.read_text())["sessions"]
    assert [s["round"] for s in sessions] == [5, 5]
    assert sessions[0]["nonce"] != sessions[1]["nonce"]
    steps = sessions[0]["steps"]
    assert sum(entry[2] for entry in json.loads(ledger.read_text())["history"]) == 2 * steps


def test_central_dp_noise_cannot_be_removed_from_the_published_files(tmp_path):
    replies = []

    def record_replies(partition_id, message, reply):
        if message.metadata.message_type == MessageType.TRAIN:
            replies.append({k: v.numpy().copy() for k, v in reply.content["arrays"].items()})
        return reply

    config = {
        "dp": "central",
        "num-server-rounds": 1,
        "dp-central-noise-multiplier": 1.0,
        "dp-target-epsilon": 0.0,
    }
    results = run_server_app(tmp_path / "run", config, num_nodes=3, reply_hook=record_replies)
    published = torch.load(tmp_path / "run" / "model.pt")
    start = initial_model(RunConfig(**{"dp": "central"})).state_dict()
    clipping = results["config"]["dp-clipping-norm"]
    # the noiseless aggregate: clipped deltas summed, over the expected clients (3)
    deltas = [{k: r[k].astype(np.float64) - start[k].numpy() for k in r} for r in replies]
    noiseless = {}
    for key in start:
        total = np.zeros_like(start[key].numpy(), dtype=np.float64)
        for delta in deltas:
            norm = np.sqrt(sum(np.sum(d**2) for d in delta.values()))
            total += delta[key] * min(1.0, clipping / norm)
        noiseless[key] = start[key].numpy() + total / 3
    noise_std = 1.0 * clipping / 3
    true_noise = {k: published[k].numpy() - noiseless[k] for k in start}
    assert np.std(np.concatenate([n.ravel() for n in true_noise.values()])) == pytest.approx(
        noise_std, rel=0.05
    )
    # the attack that removed it before: the noise stream from the public seed
    rng = np.random.default_rng([results["config"]["seed"], 1, 0xD9])
    guess = {k: rng.normal(0.0, noise_std, size=start[k].shape) for k in start}
    residual = np.concatenate([(true_noise[k] - guess[k]).ravel() for k in start])
    assert np.std(residual) > 1.3 * noise_std  # independent noise: no better than none
    # and the secret is nowhere in what is published
    secret = (tmp_path / "run" / "private" / "run-secret").read_bytes()
    assert (tmp_path / "run" / "private" / "run-secret").stat().st_mode & 0o777 == 0o600
    for name in ("results.json", "model.pt", CHECKPOINT_FILE, "metrics.csv"):
        content = (tmp_path / "run" / name).read_bytes()
        assert secret not in content and secret.hex().encode() not in content


def test_no_server_id_resets_a_data_holders_budget(tmp_path, node_state):
    data_file = tmp_path / "silo.npz"
    pool = embedded_client_data("digits", 0.2, 0.1, "iid", 4, 0, 42, 0.5, 2)
    np.savez(data_file, x=np.concatenate([pool.train.x, pool.val.x]),
             y=np.concatenate([pool.train.y, pool.val.y]))  # fmt: skip
    config = {**LOCAL, "num-server-rounds": 1, "max-round-retries": 0}
    spent = []
    for partition_id in (0, 1):  # a new run (new plan) and a new partition ID: same data
        nodes = [{"data-path": str(data_file)}, {"data-path": str(data_file)}]
        nodes = [nodes[0]] if partition_id == 0 else nodes
        results = run_server_app(
            tmp_path / f"run-{partition_id}",
            {**config, "min-train-nodes": 1},
            num_nodes=len(nodes),
            node_configs=nodes,
        )
        spent.append(sorted(c["dp-epsilon"] for c in results["rounds"][0]["clients"]))
    (ledger,) = (node_state / "ledgers").glob("*.json")
    assert len(json.loads(ledger.read_text())["sessions"]) == 3
    assert spent[1][0] > spent[0][0] and spent[1][1] > spent[1][0]


def test_a_node_limit_refuses_a_request_and_the_run_goes_on_without_it(tmp_path, caplog):
    results = run_server_app(
        tmp_path / "run",
        {**LOCAL, "num-server-rounds": 2, "min-train-nodes": 1, "dp-target-epsilon": 50.0},
        num_nodes=2,
        node_configs=[{"dp-max-epsilon": 0.5}, {}],
    )
    assert results["status"] == "completed"
    for record in results["rounds"]:
        assert record["aggregated"] and len(record["clients"]) == 1
        (failure,) = record["failures"]
        assert failure["node"] == 1000
        assert "node refuses to train" in failure["reason"]
        assert "> its dp-max-epsilon 0.5" in failure["reason"]
    assert "Node 1000 left out of train: client error: node refuses to train" in caplog.text


def test_only_private_quantities_leave_a_dp_client_unless_its_node_opts_in(tmp_path):
    private = run_server_app(tmp_path / "private", {**LOCAL, "num-server-rounds": 1}, num_nodes=2)
    for client in private["rounds"][0]["clients"]:
        assert set(client) == {
            "node", "num-examples", "dp-epsilon", "dp-delta", "dp-noise-multiplier",
            "dp-sample-rate", "dp-steps",
        }  # fmt: skip
        assert client["num-examples"] % 32 == 0
        assert client["num-examples"] == round(32 / client["dp-sample-rate"])
    assert private["rounds"][0]["evaluate"] == {} and "no losses" in private["final"]["privacy"]
    opted = run_server_app(
        tmp_path / "opted",
        {**LOCAL, "num-server-rounds": 1},
        num_nodes=2,
        node_configs=[{"dp-report-metrics": True}, {}],
    )
    keys = [set(c) for c in opted["rounds"][0]["clients"]]
    assert {"train-loss", "val-accuracy"} <= keys[0]
    assert "train-loss" not in keys[1]
    assert opted["initial"]["evaluate"]["num-examples"] > 0  # the opted-in node's evaluation
    assert "epsilon does not cover" in opted["final"]["privacy"]


def test_final_epsilon_is_the_largest_any_client_reached_even_if_not_aggregated(tmp_path):
    def reject_round_2(partition_id, message, reply):
        if message.content["config"]["server-round"] != 2:
            return reply
        if partition_id == 1:
            return None
        arrays = reply.content["arrays"]
        key = next(iter(arrays.keys()))
        arrays[key] = type(arrays[key])(arrays[key].numpy() * np.nan)
        return reply

    results = run_server_app(
        tmp_path / "run",
        {**LOCAL, "num-server-rounds": 2, "max-round-retries": 0, "round-timeout": 0.3},
        num_nodes=2,
        reply_hook=reject_round_2,
    )
    assert results["status"] == "stopped-too-few-updates"
    aggregated = results["rounds"][0]["train"]["dp-epsilon"]
    (rejected,) = results["rounds"][1]["clients"]
    assert results["final"]["epsilon"] == rejected["dp-epsilon"] > aggregated


def test_central_epsilon_equals_opacus_for_the_sampling_rate_and_draws_charged(tmp_path):
    results = run_server_app(
        tmp_path / "run",
        {
            "dp": "central",
            "num-server-rounds": 3,
            "fraction-train": 0.5,
            "min-train-nodes": 1,
            "dp-central-noise-multiplier": 1.1,
            "dp-target-epsilon": 0.0,
            "dp-accountant": "rdp",
        },
        num_nodes=10,
    )
    draws = sum(r["attempts"] for r in results["rounds"])
    accountant = RDPAccountant()
    accountant.history = [(1.1, 0.5, draws)]
    assert results["final"]["epsilon"] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-9)
    sampled = [r["num_clients"] for r in results["rounds"]]
    assert results["strategy"]["dp-sample-rate"] == 0.5 and sampled != [10, 10, 10]


def test_central_dp_stops_at_its_target_on_resume(tmp_path):
    config = {"dp": "central", "dp-central-noise-multiplier": 2.0, "dp-target-epsilon": 6.0}
    run_server_app(tmp_path / "part", {**config, "num-server-rounds": 2}, num_nodes=3)
    resumed = run_server_app(
        tmp_path / "more",
        {**config, "num-server-rounds": 20, "resume-from": str(tmp_path / "part")},
        num_nodes=3,
    )
    assert resumed["status"] == "budget-exhausted"
    assert resumed["final"]["epsilon"] <= 6.0
    assert 2 < resumed["final"]["rounds_completed"] < 20


def test_the_node_secret_is_private_and_never_sent(node_state, caplog):
    caplog.set_level(logging.INFO)
    config = RunConfig(**{k.replace("-", "_"): v for k, v in LOCAL.items()})
    reply = client_app.app(
        train_message(config, 1, initial_model(config).state_dict()), node_context(config, 0, 2)
    )
    secret_file = node_state / "node-secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600 and len(secret_file.read_bytes()) == 32
    sent = b"".join(a.numpy().tobytes() for a in reply.content["arrays"].values())
    secret = secret_file.read_bytes()
    assert secret not in sent and secret.hex() not in str(dict(reply.content["metrics"]))
    assert client_setup(node_context(config, 0, 2), DIGITS).node.state_dir == str(node_state)


def test_central_dp_publishes_no_client_statistic(tmp_path):
    """A reader of results.json under central DP: no client, loss or accuracy of training."""
    results = run_server_app(tmp_path / "run", {"dp": "central", "num-server-rounds": 2})
    for record in results["rounds"]:
        assert record["aggregated"] and record["clients"] == []
        assert not [key for key in record["train"] if key.startswith("train-")]
        assert record["train"]["dp-epsilon"] > 0
    published = (tmp_path / "run" / "results.json").read_text()
    assert "train-loss" not in published and "train-accuracy" not in published
