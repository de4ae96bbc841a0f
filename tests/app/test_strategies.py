"""Each strategy class: its weights, its messages, its settings and its state."""

import logging

import numpy as np
import pytest
import torch
from flwr.app import ConfigRecord

from fl_app.config import RunConfig, parse_run_config
from fl_app.data import embedded_client_data
from fl_app.server.checkpoint import load_checkpoint
from fl_app.server.factory import STRATEGY_ARGUMENTS, build_base_strategy
from fl_app.server_app import initial_model
from strategies import STRATEGIES
from strategies.base import ClientUpdate
from strategies.fedsgd import FedSGD
from strategies.hybrid import Hybrid
from strategies.krum import MultiKrum
from strategies.simple_average import SimpleAverage
from strategies.weighted_average import WeightedAverage
from testing.inprocess_grid import run_server_app_in_process
from tests.unit.test_fedavg import reply

LINEAR = {"simple-average", "weighted-average", "fedavg", "fedsgd", "hybrid", "fedprox"}


def prepared(strategy, like):
    strategy.global_keys = ["w"]
    strategy.global_arrays = [np.zeros_like(like)]
    return strategy


def aggregate(strategy, clients):
    """Aggregate ``(node, w, metrics)`` clients; return the new ``w``."""
    strategy = prepared(strategy, clients[0][1])
    replies = [reply(node, {"w": w}, metrics) for node, w, metrics in clients]
    arrays, _ = strategy.aggregate_train(1, replies)
    return None if arrays is None else arrays["w"].numpy()


W1, W2, W3 = (np.array([v, 2 * v], np.float32) for v in (1.0, 4.0, 10.0))


def test_registry_has_every_strategy_and_linear_is_set_exactly_where_it_should():
    assert set(STRATEGIES) == {
        "simple-average", "weighted-average", "fedavg", "fedsgd", "hybrid", "fedprox",
        "fedavgm", "fedadam", "fedyogi", "fedadagrad", "fedmedian", "fedtrimmedavg",
        "krum", "multikrum",
    }  # fmt: skip
    assert {name for name, cls in STRATEGIES.items() if cls.linear} == LINEAR


def test_the_factory_table_covers_every_strategy():
    assert set(STRATEGY_ARGUMENTS) == set(STRATEGIES)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_every_strategy_builds_from_the_run_config_and_reports_run_config_keys(name):
    config = parse_run_config({"strategy": name, "min-train-nodes": 3})
    strategy = build_base_strategy(config)
    assert type(strategy) is STRATEGIES[name] and strategy.name == name
    assert set(strategy.settings()) <= set(config.to_dict())
    assert strategy.state_dict() == {}
    assert (strategy.linear_rule is not None) == strategy.linear


def test_zero_in_the_run_config_means_the_strategy_default():
    adam = build_base_strategy(parse_run_config({"strategy": "fedadam"}))
    yogi = build_base_strategy(parse_run_config({"strategy": "fedyogi"}))
    assert adam.settings()["server-learning-rate"] == 0.1
    assert yogi.settings()["server-learning-rate"] == 0.03
    fast = parse_run_config({"strategy": "fedyogi", "server-learning-rate": 0.5})
    assert build_base_strategy(fast).settings()["server-learning-rate"] == 0.5


def test_simple_average_ignores_data_size():
    out = aggregate(
        SimpleAverage(min_train_nodes=1),
        [(1, W1, {"num-examples": 1}), (2, W2, {"num-examples": 99}), (3, W3, {"num-examples": 0})],
    )
    np.testing.assert_allclose(out, (W1 + W2 + W3) / 3, atol=1e-6)


def test_weighted_average_by_quality_and_by_examples():
    clients = [
        (1, W1, {"num-examples": 10, "val-accuracy": 0.2}),
        (2, W2, {"num-examples": 30, "val-accuracy": 0.6}),
    ]
    by_quality = aggregate(WeightedAverage(min_train_nodes=1), clients)
    np.testing.assert_allclose(by_quality, (0.2 * W1 + 0.6 * W2) / 0.8, atol=1e-6)
    by_size = aggregate(WeightedAverage(weight_by="num-examples", min_train_nodes=1), clients)
    np.testing.assert_allclose(by_size, (10 * W1 + 30 * W2) / 40, atol=1e-6)


def test_all_zero_weights_fall_back_to_equal_weights_with_a_warning(caplog):
    clients = [
        (1, W1, {"num-examples": 10, "val-accuracy": 0.0}),
        (2, W2, {"num-examples": 30, "val-accuracy": 0.0}),
    ]
    with caplog.at_level(logging.WARNING, logger="flwr"):
        out = aggregate(WeightedAverage(min_train_nodes=1), clients)
    np.testing.assert_allclose(out, (W1 + W2) / 2, atol=1e-6)
    assert np.all(np.isfinite(out))
    assert "every client weight is 0" in caplog.text


def test_reply_without_the_weighting_metric_is_left_out_with_its_reason():
    strategy = prepared(WeightedAverage(min_train_nodes=1), W1)
    clients = [(1, W1, {"num-examples": 10}), (2, W2, {"num-examples": 5, "val-accuracy": 0.5})]
    outcome = strategy.aggregate_round(1, [reply(n, {"w": w}, m) for n, w, m in clients])
    np.testing.assert_array_equal(outcome.arrays["w"].numpy(), W2)
    (failure,) = outcome.failures
    assert failure.node_id == 1 and "no metric 'val-accuracy'" in failure.reason


@pytest.mark.parametrize("mix", [0.0, 0.25, 1.0])
def test_hybrid_weights_are_size_and_quality_mixed_geometrically(mix):
    n, q = np.array([10.0, 40.0, 50.0]), np.array([0.9, 0.5, 0.0])
    clients = [
        (i + 1, w, {"num-examples": int(n[i]), "val-accuracy": q[i]})
        for i, w in enumerate((W1, W2, W3))
    ]
    out = aggregate(Hybrid(mix=mix, min_train_nodes=1), clients)
    a = n ** (1 - mix) * q**mix
    expected = (a[0] * W1 + a[1] * W2 + a[2] * W3) / a.sum()
    np.testing.assert_allclose(out, expected, rtol=1e-6)
    if mix == 0.0:
        np.testing.assert_allclose(out, (10 * W1 + 40 * W2 + 50 * W3) / 100, rtol=1e-6)


def test_fedsgd_asks_for_gradients_and_steps_along_their_weighted_mean():
    strategy = FedSGD(server_learning_rate=0.5, min_train_nodes=1)
    assert strategy.round_config(1, ConfigRecord())["train-mode"] == "gradient"
    strategy = prepared(strategy, W1)
    strategy.global_arrays = [np.array([1.0, 1.0], np.float32)]
    g1, g2 = np.array([1.0, 0.0], np.float32), np.array([0.0, 4.0], np.float32)
    arrays, _ = strategy.aggregate_train(
        1, [reply(1, {"w": g1}, {"num-examples": 3}), reply(2, {"w": g2}, {"num-examples": 1})]
    )
    np.testing.assert_allclose(arrays["w"].numpy(), [1 - 0.5 * 0.75, 1 - 0.5 * 1.0])
    assert strategy.update_norm([g2]) == pytest.approx(2.0)  # eta * ||g||, not ||g - w||


def test_multikrum_keeps_all_but_num_malicious_by_default():
    strategy = MultiKrum(num_malicious=1, min_train_nodes=1)
    assert strategy.num_selected(5) == 4
    assert MultiKrum(num_selected=7).num_selected(5) == 5
    updates = [
        ClientUpdate(i, [np.array([v], np.float64)], 1, {})
        for i, v in enumerate([0.0, 1.0, 2.0, 100.0])
    ]
    strategy = prepared(strategy, updates[0].arrays[0])
    np.testing.assert_allclose(strategy.aggregate(1, updates)[0], [1.0])


def test_fedsgd_round_with_one_full_data_client_is_one_full_batch_gradient_step(tmp_path):
    overrides = {
        "strategy": "fedsgd",
        "num-server-rounds": 1,
        "min-train-nodes": 1,
        "server-learning-rate": 0.5,
    }
    run_server_app_in_process(tmp_path / "run", overrides, num_nodes=1)
    federated = torch.load(tmp_path / "run" / "model.pt")

    config = RunConfig(**{k.replace("-", "_"): v for k, v in overrides.items()})
    model = initial_model(config)
    data = embedded_client_data(
        config.dataset, config.test_fraction, config.val_fraction, config.partitioner,
        1, 0, config.seed, config.dirichlet_alpha, config.labels_per_client,
    ).train  # fmt: skip
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    loss = torch.nn.functional.cross_entropy(
        model(torch.from_numpy(data.x)), torch.from_numpy(data.y)
    )
    loss.backward()
    optimizer.step()
    direct = model.state_dict()
    assert initial_model(config).state_dict().keys() == federated.keys()
    for key, value in direct.items():
        torch.testing.assert_close(federated[key], value, rtol=0, atol=1e-6)
    last = list(federated)[-1]  # the output layer's bias moves in one step
    assert not torch.equal(federated[last], initial_model(config).state_dict()[last])


@pytest.mark.parametrize("name", ["fedadam", "fedavgm"])
def test_resumed_server_optimiser_run_gives_identical_weights(tmp_path, name):
    base = {"strategy": name, "local-epochs": 1}
    run_server_app_in_process(tmp_path / "full", {**base, "num-server-rounds": 3})
    run_server_app_in_process(tmp_path / "part", {**base, "num-server-rounds": 2})
    resumed = run_server_app_in_process(
        tmp_path / "resumed",
        {**base, "num-server-rounds": 3, "resume-from": str(tmp_path / "part")},
    )
    assert resumed["resumed_from"]["round"] == 2
    a = torch.load(tmp_path / "full" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    state = load_checkpoint(tmp_path / "part").strategy_state
    assert set(state) == ({"m", "v"} if name == "fedadam" else {"velocity"})
    assert all(np.any(a != 0) for arrays in state.values() for a in arrays)
