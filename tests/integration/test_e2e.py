"""End-to-end: real ``flwr run`` on a private local SuperLink (temporary FLWR_HOME)."""

import pytest
import torch

from fl_app.config import RunConfig
from fl_app.model import build_model
from tests.integration.conftest import APP
from tools.flwr_run import SimulationError


def test_flwr_run_trains_and_writes_results(superlink, tmp_path):
    out = tmp_path / "run"
    outcome = superlink.run(
        APP,
        {"output-dir": str(out), "num-server-rounds": 3, "seed": 3},
        num_supernodes=4,
    )
    results = outcome.results
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


def test_bad_run_config_fails_before_training_with_a_clear_message(superlink, tmp_path):
    out = tmp_path / "bad"
    with pytest.raises(SimulationError) as err:
        superlink.run(
            APP,
            {"output-dir": str(out), "dirichlet-alpha": -1.0},
            num_supernodes=2,
            timeout=180,
        )
    assert "dirichlet-alpha' = -1.0 is invalid: must be a number > 0" in str(err.value)
    assert not out.exists()
    assert RunConfig().dirichlet_alpha > 0
