import numpy as np
import pytest
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from strategies import STRATEGIES
from strategies.core import weighted_average
from strategies.fedavg import FedAvg
from testing.inprocess_grid import set_task_identity


def reply(node: int, arrays: dict, metrics: dict) -> Message:
    set_task_identity()
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    request.metadata.__dict__["_message_id"] = f"m{node}"
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
            "metrics": MetricRecord(metrics),
        }
    )
    message = Message(content, reply_to=request)
    message.metadata.__dict__["_src_node_id"] = node
    return message


def test_fedavg_equals_hand_computed_weighted_mean():
    strategy = FedAvg(min_train_nodes=1)
    strategy.global_keys = ["w", "b"]
    strategy.global_arrays = [np.zeros((2, 2), np.float32), np.zeros(3, np.float32)]
    w1, b1 = np.array([[1, 2], [3, 4]], np.float32), np.array([1, 1, 1], np.float32)
    w2, b2 = np.array([[5, 6], [7, 8]], np.float32), np.array([4, 4, 4], np.float32)
    replies = [
        reply(1, {"w": w1, "b": b1}, {"num-examples": 10, "train-loss": 1.0}),
        reply(2, {"w": w2, "b": b2}, {"num-examples": 30, "train-loss": 3.0}),
    ]
    arrays, metrics = strategy.aggregate_train(1, replies)
    expected_w = (10 * w1 + 30 * w2) / 40
    np.testing.assert_allclose(arrays["w"].numpy(), expected_w, rtol=0, atol=1e-7)
    np.testing.assert_allclose(arrays["b"].numpy(), [3.25, 3.25, 3.25], atol=1e-7)
    assert arrays["w"].numpy().dtype == np.float32
    assert metrics["train-loss"] == pytest.approx(2.5)
    assert metrics["num-examples"] == 40


def test_rejected_replies_are_recorded_and_not_aggregated():
    strategy = FedAvg(min_train_nodes=1)
    strategy.global_keys = ["w"]
    strategy.global_arrays = [np.zeros(2, np.float32)]
    good = reply(1, {"w": np.ones(2, np.float32)}, {"num-examples": 5})
    nan = reply(2, {"w": np.array([np.nan, 1], np.float32)}, {"num-examples": 5})
    shape = reply(3, {"w": np.ones(3, np.float32)}, {"num-examples": 5})
    outcome = strategy.aggregate_round(1, [good, nan, shape])
    np.testing.assert_array_equal(outcome.arrays["w"].numpy(), [1, 1])
    reasons = {f.node_id: f.reason for f in outcome.failures}
    assert "NaN" in reasons[2]
    assert "shape (3,)" in reasons[3]


def test_too_few_valid_updates_skips_aggregation():
    strategy = FedAvg(min_train_nodes=2)
    strategy.global_keys = ["w"]
    strategy.global_arrays = [np.zeros(2, np.float32)]
    assert strategy.aggregate_train(
        1, [reply(1, {"w": np.ones(2, np.float32)}, {"num-examples": 1})]
    ) == (None, None)


def test_weighted_average_keeps_dtypes_and_rounds_integers():
    out = weighted_average(
        [
            [np.array([1.0], np.float64), np.array([1], np.int64)],
            [np.array([2.0], np.float64), np.array([2], np.int64)],
        ],
        [1, 3],
    )
    assert out[0].dtype == np.float64 and out[0][0] == pytest.approx(1.75)
    assert out[1].dtype == np.int64 and out[1][0] == 2


def test_registry_names_every_class_by_its_name():
    assert STRATEGIES["fedavg"] is FedAvg
    assert all(cls.name == name for name, cls in STRATEGIES.items())


def test_round_config_carries_server_round():
    assert FedAvg().round_config(4, ConfigRecord({"a": 1}))["server-round"] == 4
