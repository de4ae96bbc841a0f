"""The HE benchmark's tiny mode runs, so the benchmark cannot rot."""

import json
import os
import subprocess
import sys

from tests.conftest import APP_DIR


def test_he_benchmark_tiny_mode_writes_its_report(tmp_path):
    out = tmp_path / "he.json"
    subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "he.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
        env={**os.environ, "FLWR_HOME": str(tmp_path / "home")},
    )
    report = json.loads(out.read_text())
    assert report["clients"] == 2 and report["rounds"] == 2
    for model in ("default", "1m"):
        row = report["update"][model]
        assert row["bytes_encrypted"] > row["bytes_plain_float32"]
        assert row["encrypt_s"] > 0 and row["decrypt_s"] > 0
    assert report["update"]["1m"]["parameters"] > 990_000
    app = report["round_default_app"]
    assert app["plain"]["final_accuracy"] > 0 and app["he"]["final_accuracy"] > 0
    assert app["round_time_ratio"] > 0
    assert "load_average_1min_before" in report
