"""Client-level DP through a real ``flwr run`` (local DP-SGD runs end to end with HE in
``test_he_e2e.py``; both run in process in ``tests/app``)."""

import torch

from fl_app.model import build_model
from tests.integration.conftest import APP


def test_flwr_run_with_central_dp(superlink, tmp_path):
    out = tmp_path / "run"
    outcome = superlink.run(
        APP, {"output-dir": str(out), "num-server-rounds": 2, "dp": "central"}, num_supernodes=2
    )
    results = outcome.results
    assert results["status"] == "completed"
    epsilons = [r["train"]["dp-epsilon"] for r in results["rounds"]]
    assert 0 < epsilons[0] < epsilons[1] == results["final"]["epsilon"]
    assert results["final"]["delta"] == 1e-5
    model = build_model("auto", (1, 8, 8), 10)
    model.load_state_dict(torch.load(out / "model.pt"), strict=True)
