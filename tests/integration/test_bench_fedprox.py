"""The FedAvg-vs-FedProx benchmark's tiny mode runs, so the benchmark cannot rot."""

import json
import math
import subprocess
import sys

from tests.conftest import APP_DIR


def test_fedprox_benchmark_tiny_mode_prints_and_writes_its_report(tmp_path):
    out = tmp_path / "fedprox.json"
    done = subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "fedprox.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert "FedAvg vs FedProx" in done.stdout and "fedprox μ=1" in done.stdout
    report = json.loads(out.read_text())
    assert report["rounds"] == 2 and report["local_epochs"] == 2
    assert report["settings"] == ["synthetic-1-1"]
    assert report["devices"] == 30 and report["clients_per_round"] == 10
    assert "start" in report["load_average_1min"]
    cases = {c["method"]: c for c in report["cases"]}
    assert set(cases) == {"fedavg", "fedprox"}
    assert cases["fedavg"]["proximal_mu"] == 0.0 and cases["fedprox"]["proximal_mu"] == 1.0
    for case in cases.values():
        assert case["status"] == "completed" and case["finite"]
        assert case["clients_per_round"] == [10, 10]
        assert case["train_examples"] > case["test_examples"] > 0
        curves = case["curves"]
        assert curves["round"] == [0, 1, 2]
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert len(curves[key]) == 3 and all(math.isfinite(v) for v in curves[key])
        assert all(0.0 <= a <= 1.0 for a in curves["test_accuracy"])
        assert curves["train_loss"][-1] < curves["train_loss"][0]  # it trains
    # both start from the same model; the proximal term changes the result
    assert cases["fedavg"]["curves"]["train_loss"][0] == cases["fedprox"]["curves"]["train_loss"][0]
    assert cases["fedavg"]["final_train_loss"] != cases["fedprox"]["final_train_loss"]
    cost = report["local_training_cost"]
    assert cost["steps"] > 0 and cost["fedavg_seconds"] > 0 and cost["fedprox_seconds"] > 0
    assert math.isfinite(cost["fedprox_over_fedavg"])
    table = out.with_suffix(".md").read_text()
    assert "| Synthetic(1,1) | fedavg |" in table and "load average" in table
    assert "Local training of one device" in table
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
