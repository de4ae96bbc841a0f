"""Differential privacy wired into the app: in-process runs, config checks, flwr run."""

import json
import math

import pytest
import torch
from opacus.accountants import RDPAccountant

from fl_app.config import ConfigError, parse_run_config
from fl_app.data import embedded_client_data
from fl_app.model import build_model
from testing.inprocess_grid import run_server_app_in_process as run_server_app

LOCAL = {"dp": "local", "local-epochs": 1, "batch-size": 32, "dp-target-epsilon": 0.0}


def rdp_epsilon(sigma, q, steps, delta):
    accountant = RDPAccountant()
    accountant.history = [(sigma, q, steps)]
    return accountant.get_epsilon(delta=delta)


def client_epsilons(results):
    """Per round: {node: dp-epsilon} of the clients that trained."""
    return [{c["node"]: c["dp-epsilon"] for c in r["clients"]} for r in results["rounds"]]


def test_cumulative_epsilon_after_k_rounds_matches_opacus(tmp_path):
    results = run_server_app(
        tmp_path / "out", {**LOCAL, "num-server-rounds": 3, "dp-noise-multiplier": 1.2}, num_nodes=2
    )
    assert results["status"] == "completed"
    steps_per_round = steps_per_epoch(2)
    for k, record in enumerate(results["rounds"], start=1):
        for client in record["clients"]:
            assert client["dp-sample-rate"] == 1 / steps_per_round
            assert client["dp-steps"] == steps_per_round
            expected = rdp_epsilon(1.2, 1 / steps_per_round, k * steps_per_round, 1e-5)
            assert client["dp-epsilon"] == pytest.approx(expected, rel=1e-9)
        assert record["train"]["dp-epsilon"] == max(c["dp-epsilon"] for c in record["clients"])
    fresh_engine_per_round = rdp_epsilon(1.2, 1 / steps_per_round, steps_per_round, 1e-5)
    assert results["final"]["epsilon"] > 1.3 * fresh_engine_per_round
    assert results["final"]["epsilon"] == results["rounds"][-1]["train"]["dp-epsilon"]
    assert results["final"]["delta"] == 1e-5 and results["final"]["dp"] == "local"
    assert results["model"]["kind"] == "mlp"  # auto: the MLP for DP-SGD
    state = torch.load(tmp_path / "out" / "model.pt")
    build_model("auto", (1, 8, 8), 10, prefer_mlp=True).load_state_dict(state, strict=True)


def steps_per_epoch(num_nodes, partition_id=0, batch_size=32):
    data = embedded_client_data("digits", 0.2, 0.1, "iid", num_nodes, partition_id, 42, 0.5, 2)
    return math.ceil(len(data.train) / batch_size)


def test_small_budget_stops_clients_before_exceeding_and_the_run_ends_cleanly(tmp_path):
    steps = steps_per_epoch(2)
    assert steps == steps_per_epoch(2, 1)
    one_round = rdp_epsilon(1.0, 1 / steps, steps, 1e-5)
    two_rounds = rdp_epsilon(1.0, 1 / steps, 2 * steps, 1e-5)
    target = round((one_round + two_rounds) / 2, 3)  # one round fits, a second does not
    results = run_server_app(
        tmp_path / "out",
        {
            **LOCAL,
            "num-server-rounds": 4,
            "dp-noise-multiplier": 1.0,
            "dp-target-epsilon": target,
            "max-round-retries": 0,
        },
        num_nodes=2,
    )
    assert results["status"] == "stopped-too-few-updates"
    assert results["final"]["rounds_completed"] == 2
    assert results["rounds"][0]["aggregated"] and not results["rounds"][1]["aggregated"]
    reasons = [f["reason"] for f in results["rounds"][1]["failures"]]
    assert len(reasons) == 2
    assert all(
        "node refuses to train" in r and f"> the run's target {target:g}" in r for r in reasons
    )
    assert results["final"]["epsilon"] <= target


def test_resumed_run_keeps_the_spent_epsilon(tmp_path, node_state, monkeypatch):
    config = {**LOCAL, "num-server-rounds": 3, "dp-noise-multiplier": 1.1}
    run_server_app(tmp_path / "part", {**config, "num-server-rounds": 2}, num_nodes=2)
    resumed = run_server_app(
        tmp_path / "resumed", {**config, "resume-from": str(tmp_path / "part")}, num_nodes=2
    )
    monkeypatch.setenv("FL_NODE_STATE_DIR", str(tmp_path / "other-data-holders"))
    full = run_server_app(tmp_path / "full", config, num_nodes=2)
    assert sorted(client_epsilons(resumed)[2].values()) == sorted(client_epsilons(full)[2].values())
    assert resumed["final"]["epsilon"] == full["final"]["epsilon"]
    ledgers = list((node_state / "ledgers").glob("*.json"))
    assert len(ledgers) == 2  # one per data holder's data, whatever the runs
    plans = {s["plan"] for p in ledgers for s in json.loads(p.read_text())["sessions"]}
    assert len(plans) == 1  # the resumed run keeps the interrupted run's plan
    for path in ledgers:
        assert [s["round"] for s in json.loads(path.read_text())["sessions"]] == [1, 2, 3]
        assert path.stat().st_mode & 0o777 == 0o600


def test_central_dp_reports_client_level_epsilon(tmp_path):
    results = run_server_app(
        tmp_path / "out",
        {
            "dp": "central",
            "num-server-rounds": 2,
            "dp-central-noise-multiplier": 0.8,
            "dp-target-epsilon": 0.0,
        },
        num_nodes=3,
    )
    assert results["status"] == "completed"
    assert results["strategy"]["dp"] == "central"
    for k, record in enumerate(results["rounds"], start=1):
        assert record["train"]["dp-epsilon"] == pytest.approx(rdp_epsilon(0.8, 1.0, k, 1e-5))
    assert results["final"]["epsilon"] == results["rounds"][-1]["train"]["dp-epsilon"]
    assert results["final"]["delta"] == 1e-5


def test_central_dp_with_negligible_noise_and_wide_clip_equals_the_simple_average(tmp_path):
    plain = run_server_app(
        tmp_path / "plain", {"num-server-rounds": 1, "strategy": "simple-average"}, num_nodes=2
    )
    private = run_server_app(
        tmp_path / "dp",
        {
            "dp": "central",
            "num-server-rounds": 1,
            "dp-central-noise-multiplier": 1e-12,
            "dp-target-epsilon": 0.0,
            "dp-clipping-norm": 1e3,
        },
        num_nodes=2,
    )
    a = torch.load(tmp_path / "plain" / "model.pt")
    b = torch.load(tmp_path / "dp" / "model.pt")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert private["final"]["accuracy"] == pytest.approx(plain["final"]["accuracy"], abs=0.01)


def test_config_validation():
    with pytest.raises(ConfigError, match="'dp' = 'local' needs a budget"):
        parse_run_config({"dp": "local", "dp-target-epsilon": 0.0})
    with pytest.raises(ConfigError, match="'dp' = 'central' needs"):
        parse_run_config({"dp": "central", "dp-target-epsilon": 0.0})
    with pytest.raises(ConfigError, match=r"'dp' = 'laplace' is invalid: must be one of 'none'"):
        parse_run_config({"dp": "laplace"})
    with pytest.raises(ConfigError, match="'dp-accountant' = 'gdp' is invalid"):
        parse_run_config({"dp-accountant": "gdp"})
    with pytest.raises(ConfigError, match=r"'dp-delta' = 1\.0 is invalid"):
        parse_run_config({"dp-delta": 1.0})
    with pytest.raises(ConfigError, match=r"'dp-max-grad-norm' = 0\.0 is invalid"):
        parse_run_config({"dp-max-grad-norm": 0.0})
    with pytest.raises(ConfigError, match="'fedmedian' cannot be used with dp = 'central'"):
        parse_run_config({"dp": "central", "strategy": "fedmedian"})
    with pytest.raises(ConfigError, match="'dp' = 'local' cannot be used with strategy 'fedsgd'"):
        parse_run_config({"dp": "local", "strategy": "fedsgd"})
    with pytest.raises(ConfigError, match="would silently drop the strategy's proximal term"):
        parse_run_config({"dp": "local", "strategy": "fedprox"})
    assert parse_run_config({"dp": "local", "dp-target-epsilon": 3}).dp_target_epsilon == 3.0
    assert parse_run_config({"dp": "central"}).dp == "central"


def test_too_large_delta_is_refused_by_the_client(tmp_path):
    results = run_server_app(
        tmp_path / "out",
        {
            **LOCAL,
            "num-server-rounds": 1,
            "dp-noise-multiplier": 1.0,
            "dp-delta": 0.5,
            "max-round-retries": 0,
        },
        num_nodes=2,
    )
    assert results["status"] == "stopped-too-few-updates"
    assert "delta 0.5 is not below 1/n" in results["rounds"][0]["failures"][0]["reason"]


def test_central_dp_resumes_with_its_accounting_and_the_run_secret(tmp_path):
    config = {
        "dp": "central",
        "num-server-rounds": 3,
        "dp-central-noise-multiplier": 0.5,
        "dp-target-epsilon": 0.0,
    }
    run_server_app(tmp_path / "part", {**config, "num-server-rounds": 2}, num_nodes=2)
    again = [
        run_server_app(
            tmp_path / name, {**config, "resume-from": str(tmp_path / "part")}, num_nodes=2
        )
        for name in ("resumed", "resumed-again")
    ]
    for resumed in again:
        assert resumed["final"]["epsilon"] == pytest.approx(rdp_epsilon(0.5, 1.0, 3, 1e-5))
    secrets = [(tmp_path / d / "private" / "run-secret").read_bytes() for d in ("part", "resumed")]
    assert secrets[0] == secrets[1]
    # the same secret continues the same noise: two resumptions end identically
    a = torch.load(tmp_path / "resumed" / "model.pt")
    b = torch.load(tmp_path / "resumed-again" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
