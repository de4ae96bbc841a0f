"""Dropped clients, bad updates, retries, checkpoint and resume."""

import numpy as np
import pytest
import torch
from flwr.app import Array, Message, MessageType
from flwr.clientapp import ClientApp

from fl_app import client_app
from testing.inprocess_grid import RunNotStartedError
from testing.inprocess_grid import run_server_app_in_process as run_server_app

faulty_app = ClientApp()


@faulty_app.train()
def faulty_train(msg: Message, context) -> Message:
    """Test-only ClientApp: partition 1 crashes in round 2."""
    if context.node_config["partition-id"] == 1 and msg.content["config"]["server-round"] == 2:
        raise RuntimeError("simulated crash in round 2")
    return client_app.train_handler(msg, context)


@faulty_app.evaluate()
def faulty_evaluate(msg: Message, context) -> Message:
    return client_app.evaluate_handler(msg, context)


def test_client_crash_in_round_2_is_recorded_and_the_run_completes(tmp_path):
    results = run_server_app(tmp_path / "out", {"num-server-rounds": 3}, client_app=faulty_app)
    assert results["status"] == "completed"
    round1, round2, round3 = results["rounds"]
    assert round1["failures"] == [] and round3["failures"] == []
    assert len(round2["failures"]) == 1
    assert "simulated crash in round 2" in round2["failures"][0]["reason"]
    assert round2["aggregated"] and len(round2["clients"]) == 2


def corrupt(kind: str):
    def hook(partition_id: int, message: Message, reply: Message) -> Message:
        if partition_id != 0 or message.metadata.message_type != MessageType.TRAIN:
            return reply
        arrays = reply.content["arrays"]
        key = "classifier.2.bias"
        value = arrays[key].numpy()
        if kind == "nan":
            arrays[key] = Array(np.full_like(value, np.nan))
        elif kind == "shape":
            arrays[key] = Array(np.zeros(value.size + 1, value.dtype))
        elif kind == "norm":
            arrays[key] = Array(value + 1e4)
        return reply

    return hook


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("nan", "contains NaN or infinity"),
        ("shape", "has shape (11,)"),
        ("norm", "exceeds max-update-norm 100"),
    ],
)
def test_bad_updates_are_rejected_with_their_reason(tmp_path, kind, reason):
    results = run_server_app(
        tmp_path / "out",
        {"num-server-rounds": 1, "max-update-norm": 100.0},
        reply_hook=corrupt(kind),
    )
    (failure,) = results["rounds"][0]["failures"]
    assert reason in failure["reason"]
    assert results["rounds"][0]["aggregated"]
    assert results["final"]["accuracy"] > 0.3  # the two honest updates were averaged


def test_too_few_updates_retries_then_stops_cleanly(tmp_path):
    def silent_in_round_2(partition_id, message, reply):
        is_train = message.metadata.message_type == MessageType.TRAIN
        if is_train and message.content["config"]["server-round"] == 2 and partition_id > 0:
            return None
        return reply

    results = run_server_app(
        tmp_path / "out",
        {"num-server-rounds": 4, "round-timeout": 0.2, "max-round-retries": 1},
        reply_hook=silent_in_round_2,
    )
    assert results["status"] == "stopped-too-few-updates"
    assert results["final"]["rounds_completed"] == 2
    round2 = results["rounds"][1]
    assert round2["attempts"] == 2 and not round2["aggregated"]
    assert sorted({f["attempt"] for f in round2["failures"]}) == [1, 2]
    assert (tmp_path / "out" / "model.pt").is_file()


def test_a_retried_round_draws_a_new_sample_of_nodes(tmp_path):
    asked: dict[int, int] = {}

    def first_attempt_silent(partition_id, message, reply):
        if message.metadata.message_type != MessageType.TRAIN:
            return reply
        round_ = message.content["config"]["server-round"]
        asked[round_] = asked.get(round_, 0) + 1
        return None if round_ == 1 and asked[round_] <= 4 else reply

    results = run_server_app(
        tmp_path / "out",
        {
            "num-server-rounds": 1,
            "fraction-train": 0.5,
            "min-train-nodes": 3,
            "round-timeout": 0.2,
            "max-round-retries": 2,
        },
        num_nodes=8,
        reply_hook=first_attempt_silent,
    )
    (round1,) = results["rounds"]
    assert round1["attempts"] == 2 and round1["aggregated"]
    first = {f["node"] for f in round1["failures"] if f["attempt"] == 1}
    second = {c["node"] for c in round1["clients"]}
    assert len(first) == 4 and len(second) == 4
    assert first != second


def test_in_process_resume_gives_identical_weights(tmp_path):
    full = run_server_app(tmp_path / "full", {"num-server-rounds": 4})
    run_server_app(tmp_path / "part", {"num-server-rounds": 2})
    resumed = run_server_app(
        tmp_path / "resumed",
        {"num-server-rounds": 4, "resume-from": str(tmp_path / "part")},
    )
    assert resumed["resumed_from"]["round"] == 2
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3, 4]
    assert resumed["final"]["accuracy"] == full["final"]["accuracy"]
    a = torch.load(tmp_path / "full" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)


def refused(caplog, out, overrides) -> str:
    """Run expecting a refusal; return the one ERROR line the ServerApp logged."""
    caplog.clear()
    with pytest.raises(RunNotStartedError):
        run_server_app(out, overrides)
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "Traceback" not in caplog.text
    return line


def test_resume_refuses_a_changed_config_and_a_finished_run(tmp_path, caplog):
    run_server_app(tmp_path / "part", {"num-server-rounds": 1})
    part = str(tmp_path / "part")
    changed = {"num-server-rounds": 3, "learning-rate": 0.1, "resume-from": part}
    assert "'learning-rate': checkpoint 0.05, now 0.1" in refused(caplog, tmp_path / "x", changed)
    finished = {"num-server-rounds": 1, "resume-from": part}
    assert "already completed 1 rounds" in refused(caplog, tmp_path / "y", finished)
    nowhere = {"resume-from": str(tmp_path / "nowhere")}
    assert "no checkpoint.npz" in refused(caplog, tmp_path / "z", nowhere)
    assert not (tmp_path / "x").exists() and not (tmp_path / "z").exists()
