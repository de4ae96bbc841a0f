"""Fuzzed run configs and client replies: they work or fail with the clear error."""

import json

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MessageType, MetricRecord, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fl_app.config import RUN_CONFIG_KEYS, ConfigError, RunConfig, parse_run_config
from strategies.fedavg import FedAvg
from testing.inprocess_grid import RunNotStartedError, set_task_identity
from testing.inprocess_grid import run_server_app_in_process as run_server_app

VALUES = st.one_of(
    st.integers(min_value=-(10**6), max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.booleans(),
)
KEYS = st.one_of(st.sampled_from(RUN_CONFIG_KEYS), st.text(min_size=1, max_size=12))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, VALUES, max_size=6))
def test_any_run_config_parses_or_gives_a_config_error(raw):
    try:
        config = parse_run_config(raw)
    except ConfigError as err:
        assert "run-config key" in str(err) or "unknown run-config key" in str(err)
    else:
        assert isinstance(config, RunConfig)


ARRAY_VALUES = st.sampled_from([0.0, 1.0, -3.5, 1e30, np.nan, np.inf])


@st.composite
def replies(draw):
    set_task_identity()
    messages = []
    for node in range(draw(st.integers(1, 4))):
        arrays = {}
        for key in draw(st.lists(st.sampled_from(["w", "b", "x"]), unique=True, max_size=3)):
            shape = draw(st.sampled_from([(2,), (3,), (2, 2), ()]))
            dtype = draw(st.sampled_from([np.float32, np.float64, np.int64]))
            with np.errstate(invalid="ignore"):
                arrays[key] = np.full(shape, draw(ARRAY_VALUES)).astype(dtype)
        metrics = draw(
            st.dictionaries(
                st.sampled_from(["num-examples", "train-loss", "eval-accuracy"]),
                st.one_of(st.integers(-5, 50), st.floats(allow_nan=True)),
            )
        )
        content = RecordDict({"metrics": MetricRecord(metrics)})
        if arrays or draw(st.booleans()):
            content["arrays"] = ArrayRecord({k: Array(v) for k, v in arrays.items()})
        request = Message(RecordDict(), dst_node_id=100 + node, message_type=MessageType.TRAIN)
        request.metadata.__dict__["_message_id"] = f"m{node}"
        messages.append(Message(content, reply_to=request))
    return messages


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(replies())
def test_any_reply_is_aggregated_or_rejected_with_a_reason(messages):
    strategy = FedAvg(min_train_nodes=1)
    strategy.global_keys = ["w", "b"]
    strategy.global_arrays = [np.zeros(2, np.float32), np.zeros((2, 2), np.float32)]
    outcome = strategy.aggregate_round(1, messages)
    arrays = outcome.arrays
    accepted = len(messages) - len(outcome.failures)
    assert all(f.reason for f in outcome.failures)
    if arrays is None:
        assert accepted == 0
    else:
        assert arrays["w"].numpy().shape == (2,) and arrays["b"].numpy().shape == (2, 2)
        assert np.all(np.isfinite(arrays["w"].numpy()))


EDGE_CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "dataset": st.sampled_from(["digits", "breast-cancer", "mnist"]),
        "partitioner": st.sampled_from(["iid", "dirichlet", "pathological", "zipf"]),
        "dirichlet-alpha": st.sampled_from([1e-4, 0.1, 1.0, 0.0, -1.0]),
        "labels-per-client": st.sampled_from([1, 2, 11]),
        "batch-size": st.sampled_from([1, 10_000, 0]),
        "learning-rate": st.sampled_from([0.05, 1e6, float("inf")]),
        "val-fraction": st.sampled_from([0.5, 0.99, 1.0]),
        "model": st.sampled_from(["auto", "mlp", "cnn"]),
    },
)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(EDGE_CONFIG)
def test_server_app_never_leaves_a_corrupted_results_directory(tmp_path_factory, overrides):
    out = tmp_path_factory.mktemp("fuzz") / "run"
    try:
        results = run_server_app(
            out, {"num-server-rounds": 1, "round-timeout": 5.0, **overrides}, num_nodes=2
        )
    except RunNotStartedError:  # an invalid config: refused before anything is written
        assert not out.exists()
        return
    assert results["status"] in {"completed", "stopped-too-few-updates"}
    assert json.loads((out / "results.json").read_text()) == results
    assert (out / "model.pt").is_file() and (out / "metrics.csv").is_file()
    for failure in results["rounds"][0]["failures"]:
        assert failure["reason"]
