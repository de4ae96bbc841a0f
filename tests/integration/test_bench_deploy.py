"""The deployment benchmark's tiny mode runs, so the benchmark cannot rot."""

import json
import subprocess
import sys

from tests.conftest import APP_DIR


def test_deploy_benchmark_tiny_mode_writes_its_report(tmp_path):
    out = tmp_path / "deploy.json"
    subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "deploy.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=900,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert report["rounds"] == 1 and report["nodes"] == 2
    for side in ("deployment", "simulation"):
        assert len(report[side]["round_seconds"]) == 1
        assert report[side]["steady_seconds_per_round"] > 0
    assert report["same_accuracy"] is True
    assert report["deployment"]["final_accuracy"] > 0.5
    assert report["clientapp_process_startup_seconds"] > 0
