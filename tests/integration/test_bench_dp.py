"""The DP benchmark's tiny mode runs, so the benchmark cannot rot."""

import json
import subprocess
import sys

from tests.conftest import APP_DIR


def test_dp_benchmark_tiny_mode_writes_its_report(tmp_path):
    out = tmp_path / "dp.json"
    subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "dp.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
        env={"FLWR_HOME": str(tmp_path / "flwr-home"), "PATH": "/usr/bin:/bin"},
    )
    report = json.loads(out.read_text())
    (timing,) = report["timing"]
    assert set(timing["seconds_per_epoch"]) == {"non-private", "hooks", "ghost"}
    assert all(v > 0 for v in timing["seconds_per_epoch"].values())
    (run,) = report["accuracy"]
    assert run["status"] == "completed" and 0 < run["epsilon"] <= 8.0
    assert run["final_accuracy"] > 0.1
    assert report["load_average_1min"] >= 0
