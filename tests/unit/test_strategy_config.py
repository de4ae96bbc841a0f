"""Run-config keys of the strategies: single-value and cross-field validation."""

import pytest

from fl_app.config import ConfigError, min_train_nodes, parse_run_config
from strategies.base import sample_size


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("weight-by", "loss", "'num-examples', 'val-accuracy', 'train-accuracy'"),
        ("hybrid-mix", 1.5, "[0, 1]"),
        ("server-learning-rate", -0.1, ">= 0 (0 = the strategy's default)"),
        ("server-learning-rate", float("inf"), ">= 0"),
        ("server-momentum", 1.0, "[0, 1)"),
        ("beta-1", -0.1, "[0, 1)"),
        ("beta-2", 1.0, "[0, 1)"),
        ("tau", 0.0, "> 0"),
        ("proximal-mu", -1.0, ">= 0"),
        ("trim-beta", 0.5, "[0, 0.5)"),
        ("trim-beta", -0.1, "[0, 0.5)"),
        ("num-malicious", -1, "an integer >= 0"),
        ("num-krum-selected", -2, "an integer >= 0"),
    ],
)
def test_bad_strategy_value_names_key_value_and_what_is_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as err:
        parse_run_config({key: value})
    assert f"'{key}'" in str(err.value) and repr(value) in str(err.value)
    assert allowed in str(err.value)


def test_every_strategy_name_is_accepted():
    for name in ("simple-average", "fedsgd", "fedyogi", "fedtrimmedavg", "multikrum"):
        assert parse_run_config({"strategy": name, "min-train-nodes": 3}).strategy == name


@pytest.mark.parametrize("strategy", ["krum", "multikrum"])
def test_krum_needs_num_malicious_plus_3_updates(strategy):
    with pytest.raises(
        ConfigError, match=r"'min-train-nodes' = 4 .* must be >= num-malicious \+ 3 = 5"
    ):
        parse_run_config({"strategy": strategy, "num-malicious": 2, "min-train-nodes": 4})
    config = parse_run_config({"strategy": strategy, "num-malicious": 2, "min-train-nodes": 5})
    assert config.num_malicious == 2
    # without min-train-nodes, Krum's own minimum; the rule is Krum's only
    assert min_train_nodes(parse_run_config({"strategy": strategy, "num-malicious": 2})) == 5
    assert min_train_nodes(parse_run_config({"strategy": "fedavg", "num-malicious": 2})) == 2


def test_multikrum_cannot_select_more_than_a_round_may_have():
    with pytest.raises(
        ConfigError, match=r"'num-krum-selected' = 6 is invalid: must be <= min-train-nodes = 5"
    ):
        parse_run_config({"strategy": "multikrum", "num-krum-selected": 6, "min-train-nodes": 5})
    config = parse_run_config(
        {"strategy": "multikrum", "num-krum-selected": 5, "min-train-nodes": 5}
    )
    assert config.num_krum_selected == 5


def test_hybrid_needs_a_quality_metric():
    with pytest.raises(
        ConfigError, match=r"'weight-by' = 'num-examples' is invalid for strategy 'hybrid'"
    ):
        parse_run_config({"strategy": "hybrid", "weight-by": "num-examples"})
    assert parse_run_config({"strategy": "weighted-average", "weight-by": "num-examples"})
    assert parse_run_config({"strategy": "hybrid"}).weight_by == "val-accuracy"


@pytest.mark.parametrize(
    ("available", "fraction", "minimum", "expected"),
    [(100, 0.29, 2, 29), (1000, 0.05, 2, 50), (10, 0.1, 2, 2), (3, 1.0, 2, 3), (7, 0.5, 9, 7)],
)
def test_sample_size_is_the_floor_of_the_fraction_within_the_bounds(
    available, fraction, minimum, expected
):
    assert sample_size(available, fraction, minimum) == expected
