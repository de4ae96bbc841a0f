import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict

from fl_app.client_app import app
from fl_app.config import RunConfig
from fl_app.data import server_split
from fl_app.server_app import initial_model
from testing.inprocess_grid import set_task_identity


def train_message(arrays: ArrayRecord, config: dict) -> Message:
    set_task_identity()
    message = Message(
        RecordDict({"arrays": arrays, "config": ConfigRecord(config)}),
        dst_node_id=1,
        message_type=MessageType.TRAIN,
    )
    message.metadata.__dict__["_message_id"] = "m1"
    return message


def test_data_path_client_trains_on_its_own_npz_file(tmp_path):
    pool, _ = server_split("digits", 0.2, 42)
    path = tmp_path / "silo.npz"
    np.savez(path, x=pool.x[:200].reshape(200, 64), y=pool.y[:200])
    config = RunConfig(local_epochs=3)
    model = initial_model(config)
    context = Context(1, 1, {"data-path": str(path)}, RecordDict(), config.to_dict())
    reply = app(train_message(ArrayRecord(model.state_dict()), {"server-round": 1}), context)
    metrics = reply.content["metrics"]
    assert metrics["num-examples"] == 180  # 200 minus the 10 % validation split
    assert metrics["eval-num-examples"] == 20
    assert metrics["train-accuracy"] > metrics["eval-accuracy"]
    new_state = reply.content["arrays"].to_torch_state_dict()
    model.load_state_dict(new_state, strict=True)
    assert not torch.equal(
        new_state["classifier.2.bias"], initial_model(config).state_dict()["classifier.2.bias"]
    )


def test_gradient_mode_returns_a_gradient_per_array():
    config = RunConfig()
    model = initial_model(config)
    context = Context(
        1, 1, {"partition-id": 0, "num-partitions": 2}, RecordDict(), config.to_dict()
    )
    reply = app(train_message(ArrayRecord(model.state_dict()), {"train-mode": "gradient"}), context)
    grads = reply.content["arrays"]
    assert list(grads.keys()) == list(model.state_dict().keys())
    assert float(np.abs(grads["classifier.2.weight"].numpy()).sum()) > 0


def test_same_seed_same_weights():
    config = RunConfig()
    context = Context(
        1, 1, {"partition-id": 1, "num-partitions": 3}, RecordDict(), config.to_dict()
    )
    arrays = ArrayRecord(initial_model(config).state_dict())
    a = app(train_message(arrays, {"server-round": 2}), context).content["arrays"]
    b = app(train_message(arrays, {"server-round": 2}), context).content["arrays"]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
