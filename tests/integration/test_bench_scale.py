"""The many-clients benchmark's tiny mode runs (real ``flwr run`` and client-level DP)."""

import contextlib
import json
import math
import subprocess
import sys

import psutil

from tests.conftest import APP_DIR


def test_scale_benchmark_tiny_mode_measures_and_stops_everything(tmp_path):
    out = tmp_path / "scale.json"
    done = subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "scale.py"), "--tiny", "--out", str(out)],
        check=True,
        timeout=600,
        capture_output=True,
        text=True,
    )
    assert "(a) simulated clients" in done.stdout and "(b) client-level DP" in done.stdout
    report = json.loads(out.read_text())

    (case,) = report["simulation"]["cases"]
    assert case["clients"] == 20 and case["status"] == "completed"
    assert len(case["round_seconds"]) == 2 and case["final_evaluation_clients"] == 20
    for key in ("first_round_seconds", "steady_seconds_per_round", "startup_seconds"):
        assert math.isfinite(case[key]) and case[key] > 0
    memory = case["memory"]
    assert math.isfinite(memory["peak_rss_mb"]) and memory["peak_rss_mb"] > 500
    assert 0 < memory["peak_pss_mb"] <= memory["peak_rss_mb"]
    processes = case["processes"]
    assert all(processes["ray_found"].values()), processes["ray_found"]
    assert {"superlink", "simulation", "ray-core", "ray-workers"} <= set(processes["roles"])
    assert processes["still_alive_after_stop"] == []
    for seen in processes["detail"]:  # checked again here, by PID and start time
        with contextlib.suppress(psutil.NoSuchProcess):
            assert psutil.Process(seen["pid"]).create_time() != seen["create_time"], seen

    cases = {c["dp"]: c for c in report["dp"]["cases"]}
    assert set(cases) == {"none", "clip-only", "central"}
    for dp_case in cases.values():
        assert dp_case["clients"] == 20 and dp_case["status"] == "completed"
        assert len(dp_case["accuracy_curve"]) == 3
        assert all(0.0 <= a <= 1.0 for a in dp_case["accuracy_curve"])
    private = cases["central"]
    assert 0 < private["epsilon"] <= 8.0 + 1e-9 and private["noise_multiplier"] > 0
    assert cases["none"]["epsilon"] is None
    assert cases["clip-only"]["noise_multiplier"] < 1e-3  # the control has no real noise

    table = out.with_suffix(".md").read_text()
    assert "(a) `flwr run` simulation" in table and "(b) Client-level DP" in table
    assert out.with_suffix(".png").read_bytes().startswith(b"\x89PNG")
