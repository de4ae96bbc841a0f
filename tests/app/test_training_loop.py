import json

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MessageType

from fl_app.client_app import app
from fl_app.config import RunConfig
from fl_app.server.factory import build_base_strategy
from fl_app.server.loop import LoopSettings, TrainingLoop
from fl_app.server.results import ResultsWriter, RunRecord
from fl_app.server_app import initial_model, make_server_evaluate, resolve_task
from testing.inprocess_grid import InProcessGrid


def run_loop(tmp_path, config: RunConfig, num_nodes=4, reply_hook=None, timeout=5.0):
    grid = InProcessGrid(app, num_nodes, config.to_dict(), reply_hook=reply_hook)
    results = ResultsWriter(tmp_path, RunRecord(config.to_dict(), {}, {}, {}))
    shape, test = resolve_task(config)
    loop = TrainingLoop(
        grid,
        build_base_strategy(config),
        LoopSettings(config.num_server_rounds, timeout, config.target_accuracy),
        results,
        make_server_evaluate(config, shape, test),
    )
    initial = ArrayRecord(initial_model(config, shape).state_dict())
    _arrays, status = loop.run(initial, ConfigRecord(shape.to_config()))
    return results, status, grid


def test_rounds_are_recorded_with_piggybacked_federated_evaluation(tmp_path):
    _results, status, grid = run_loop(tmp_path, RunConfig(num_server_rounds=3))
    assert status == "completed"
    data = json.loads((tmp_path / "results.json").read_text())
    assert [r["round"] for r in data["rounds"]] == [1, 2, 3]
    assert data["initial"]["server"]["accuracy"] < 0.3
    for record in data["rounds"]:
        assert record["evaluate"]["num-examples"] > 0
        assert 0 <= record["server"]["accuracy"] <= 1
        assert record["bytes_down"] > 4 * 38282 * 4  # four copies of the float32 model
        assert len(record["clients"]) == 4
    assert data["rounds"][-1]["server"]["accuracy"] > data["initial"]["server"]["accuracy"]
    # one exchange per round, plus one evaluate exchange at the end
    assert len(grid.sent) == 3 * 4 + 4


def test_early_stop_at_target_accuracy(tmp_path):
    results, status, _ = run_loop(tmp_path, RunConfig(num_server_rounds=30, target_accuracy=0.5))
    assert status == "target-reached"
    assert len(results.record.rounds) < 30
    assert results.record.rounds[-1].server["accuracy"] >= 0.5


def test_silent_and_failing_nodes_are_left_out_and_recorded(tmp_path):
    def hook(partition_id, message, reply):
        if partition_id == 0:
            return None  # never answers
        is_train = message.metadata.message_type == MessageType.TRAIN
        if partition_id == 1 and is_train and message.content["config"]["server-round"] == 2:
            arrays = reply.content["arrays"]
            arrays["classifier.2.bias"] = Array(arrays["classifier.2.bias"].numpy() * np.nan)
        return reply

    results, status, _ = run_loop(
        tmp_path, RunConfig(num_server_rounds=2), reply_hook=hook, timeout=0.3
    )
    assert status == "completed"
    round1, round2 = results.record.rounds
    assert [f["reason"] for f in round1.failures] == ["no reply within round-timeout 0.3 s"]
    reasons = sorted(f["reason"] for f in round2.failures if f["stage"] == "train")
    assert any("NaN" in r for r in reasons)
    assert round2.aggregated
