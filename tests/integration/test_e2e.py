"""End-to-end: real ``flwr run`` on a private local SuperLink (temporary FLWR_HOME)."""

import json
import re

import torch

from fl_app.model import build_model
from tests.integration.conftest import APP
from tools import run_app
from tools.app_source import stage_app

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_flwr_run_trains_writes_results_and_logs_each_event_once(
    superlink, tmp_path, capfd, monkeypatch
):
    for key, value in superlink.env().items():
        monkeypatch.setenv(key, value)
    out = tmp_path / "run"
    args = [
        str(stage_app(APP, tmp_path)),
        "local",
        "--federation-config",
        "num-supernodes=4",
        "--run-config",
        f"output-dir='{out}' num-server-rounds=3 seed=3",
    ]
    assert run_app.main(args) == 0
    log = ANSI.sub("", capfd.readouterr().out)
    for event in ("[ROUND 1/3]", "Results directory:", "Round 3: 4/4 replies"):
        assert sum(event in line for line in log.splitlines()) == 1, event
    assert "DEBUG" not in log
    results = json.loads((out / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["config"]["num-server-rounds"] == 3
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3]
    for record in results["rounds"]:
        assert record["num_clients"] == 4
        assert record["bytes_down"] > 0 and record["bytes_up"] > 0
        assert record["evaluate"]["accuracy"] >= 0
        assert record["failures"] == []
    assert results["final"]["accuracy"] == results["rounds"][-1]["server"]["accuracy"]
    assert results["final"]["accuracy"] > 0.5
    assert results["final"]["rounds_completed"] == 3
    state = torch.load(out / "model.pt")
    build_model("auto", (1, 8, 8), 10).load_state_dict(state, strict=True)
    assert (out / "metrics.csv").read_text().count("\n") == 4
    assert (out / "accuracy_loss.png").stat().st_size > 1000
