import tomllib

import pytest

from fl_app.config import (
    RUN_CONFIG_KEYS,
    ConfigError,
    RunConfig,
    parse_node_config,
    parse_run_config,
)
from tests.conftest import APP_DIR

PYPROJECT = APP_DIR / "pyproject.toml"


def pyproject_defaults() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_declares_every_key_with_the_same_default():
    assert pyproject_defaults() == RunConfig().to_dict()
    assert set(pyproject_defaults()) == set(RUN_CONFIG_KEYS)


def test_defaults_parse():
    assert parse_run_config(pyproject_defaults()) == RunConfig()


def test_int_is_accepted_for_float_keys():
    assert parse_run_config({"learning-rate": 1}).learning_rate == 1.0


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("num-server-rounds", -1, "an integer >= 1"),
        ("num-server-rounds", 0, "an integer >= 1"),
        ("fraction-train", 0.0, "(0, 1]"),
        ("fraction-train", 1.5, "(0, 1]"),
        ("dataset", "mnist", "'digits', 'breast-cancer'"),
        ("partitioner", "zipf", "'iid', 'dirichlet', 'pathological'"),
        ("dirichlet-alpha", 0.0, "> 0"),
        ("dirichlet-alpha", -2.0, "> 0"),
        ("strategy", "fedbogus", "'fedavg'"),
        ("model", "resnet", "'auto', 'mlp', 'cnn'"),
        ("learning-rate", float("nan"), "> 0"),
        ("target-accuracy", 1.2, "[0, 1]"),
        ("test-fraction", 1.0, "(0, 1)"),
        ("momentum", 1.0, "[0, 1)"),
        ("batch-size", 0, "an integer >= 1"),
        ("round-timeout", 0.0, "> 0"),
    ],
)
def test_bad_value_names_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    message = str(err.value)
    assert f"'{key}'" in message
    assert repr(value) in message
    assert allowed in message


@pytest.mark.parametrize(
    ("key", "value"),
    [("num-server-rounds", 2.5), ("num-server-rounds", "3"), ("seed", True), ("dataset", 3)],
)
def test_wrong_type_is_rejected(key, value):
    with pytest.raises(ConfigError, match=f"'{key}'.*expected"):
        parse_run_config({key: value})


def test_unknown_key_suggests_the_close_one_and_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"num-server-round": 3})
    assert "unknown run-config key 'num-server-round'" in str(err.value)
    assert "did you mean 'num-server-rounds'" in str(err.value)
    assert "Valid keys:" in str(err.value)


def test_unknown_override_that_flower_dropped_is_still_rejected():
    with pytest.raises(ConfigError, match="'lr'"):
        parse_run_config(pyproject_defaults(), overrides={"lr": 0.1})


def test_all_errors_are_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_run_config({"num-server-rounds": 0, "dirichlet-alpha": -1.0})
    assert "num-server-rounds" in str(err.value)
    assert "dirichlet-alpha" in str(err.value)


def test_cross_field_checks():
    with pytest.raises(ConfigError, match="labels-per-client"):
        parse_run_config(
            {"dataset": "breast-cancer", "partitioner": "pathological", "labels-per-client": 3}
        )
    with pytest.raises(ConfigError, match="CNN needs image-shaped data"):
        parse_run_config({"dataset": "breast-cancer", "model": "cnn"})


def test_node_config(tmp_path):
    assert parse_node_config({"partition-id": 2, "num-partitions": 5}).partition_id == 2
    with pytest.raises(ConfigError, match="partition-id"):
        parse_node_config({"partition-id": 5, "num-partitions": 5})
    with pytest.raises(ConfigError, match="not a readable file"):
        parse_node_config({"data-path": str(tmp_path / "missing.npz")})
    data = tmp_path / "d.npz"
    data.write_bytes(b"x")
    assert parse_node_config({"data-path": str(data)}).path("data_path") == data


def test_node_config_names_unknown_keys_and_reads_the_data_holders_settings_file(node_state):
    with pytest.raises(ConfigError, match="unknown node-config key 'dp-max-epsilom'"):
        parse_node_config({"dp-max-epsilom": 1.0})
    with pytest.raises(ConfigError, match=r"'dp-max-delta' = 2\.0 is invalid"):
        parse_node_config({"dp-max-delta": 2.0})
    assert parse_node_config({}).state_dir == str(node_state)
    (node_state / "node-config.toml").write_text("dp-max-epsilon = 3.0\ndp-report-metrics = true\n")
    node = parse_node_config({"dp-max-epsilon": 2.0})
    assert node.dp_max_epsilon == 2.0 and node.dp_report_metrics is True
    (node_state / "node-config.toml").write_text("partition = 3\n")
    with pytest.raises(ConfigError, match="unknown node-config key 'partition'"):
        parse_node_config({})
