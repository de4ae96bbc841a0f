"""The distributed-DP benchmark's tiny mode runs, so it cannot rot."""

import json
import math
import subprocess
import sys

from tests.conftest import APP_DIR


def test_distributed_dp_benchmark_tiny_mode_writes_its_report(tmp_path):
    out = tmp_path / "distributed_dp.json"
    subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "distributed_dp.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    settings = report["settings"]
    assert set(settings) == {"none", "he", "central-dp", "distributed-dp"}
    for name, row in settings.items():
        assert 0.0 <= row["accuracy"] <= 1.0, name
        assert row["runs"][0]["status"] == "completed", name
    # HE sums exactly what plaintext averaging does; both DP settings spend the target
    assert math.isclose(settings["he"]["accuracy"], settings["none"]["accuracy"], abs_tol=0.01)
    for name in ("central-dp", "distributed-dp"):
        assert 0 < settings[name]["epsilon"] <= report["target_epsilon"] + 1e-6
    assert settings["distributed-dp"]["collusion_epsilon"] > settings["distributed-dp"]["epsilon"]
    assert report["distributed_vs_he_bytes"] > 0.5
