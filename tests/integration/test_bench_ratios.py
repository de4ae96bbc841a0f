"""The ratios benchmark's tiny mode runs all four benchmarks, so none of them can rot."""

import json
import os
import subprocess
import sys

import pytest

from tests.conftest import APP_DIR

DP_MODES = {"fused", "vmap", "hooks", "ghost", "functorch", "ew"}


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    out = tmp_path_factory.mktemp("ratios")
    completed = subprocess.run(
        [sys.executable, str(APP_DIR / "bench" / "ratios.py"), "--tiny", "--out", str(out)],
        timeout=900,
        capture_output=True,
        text=True,
        env={**os.environ, "FLWR_HOME": str(out / "flwr-home")},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert "Privacy and overhead ratios (tiny mode)" in completed.stdout
    return out


def report(out, name):
    return json.loads((out / f"{name}.json").read_text())


def test_the_table_has_every_figure_with_its_goal(out):
    ratios = report(out, "ratios")
    assert ratios["tiny"] is True and ratios["baseline"] is None
    assert len(ratios["rows"]) == 6
    for row in ratios["rows"]:
        assert row["before"] is None and row["after"] > 0 and row["goal"] > 0
        assert row["met"] == (row["after"] <= row["goal"])
    assert ratios["load_average_1min"]["start"] >= 0


def test_dp_reports_every_per_sample_mode_with_the_same_epsilon(out):
    dp = report(out, "dp")
    (timing,) = dp["timing"]
    assert set(timing["seconds_per_epoch"]) == {"non-private", *DP_MODES}
    assert all(v > 0 for v in timing["seconds_per_epoch"].values())
    assert set(timing["ratio"]) == DP_MODES
    assert timing["physical_batches"]["physical_steps_per_logical_step"] >= 1
    (paired,) = dp["accuracy_before_after"]
    before, after = paired["runs"]["hooks"], paired["runs"]["fused"]
    for run in before + after:
        assert run["status"] == "completed" and 0 < run["epsilon"] <= 8.0
        assert run["final_accuracy"] > 0.1
    # the same randomness, the same accounting: the same ε, (nearly) the same accuracy
    assert [r["epsilon"] for r in before] == [r["epsilon"] for r in after]
    assert paired["max_abs_accuracy_difference"] < 0.02
    assert dp["default_grad_sample_mode"] == "fused"


def test_he_reports_both_models_with_a_profile(out):
    he = report(out, "he")
    assert he["clients"] == 3 and he["rounds"] == 2
    for model in ("default", "1m"):
        row = he["update"][model]
        assert row["bytes_encrypted"] > row["bytes_plain_float32"]
        assert row["encrypt_s"] > 0 and row["decrypt_s"] > 0
        app = he["app"][model]
        assert app["plain"]["final_accuracy"] > 0 and app["he"]["final_accuracy"] > 0
        assert app["round_time_ratio"] > 0 and app["bytes_up_ratio"] > 1
        assert "client: encrypt" in app["he"]["sections_cpu_s_per_round"]
    assert he["update"]["1m"]["parameters"] > 990_000
    assert he["summary"]["round_time_ratio_1m"] == he["app"]["1m"]["round_time_ratio"]


def test_deploy_measures_flowers_floor_beside_ours(out):
    deploy = report(out, "deploy")
    assert deploy["rounds"] == 1 and deploy["nodes"] == 2
    for side in ("deployment", "simulation"):
        assert len(deploy[side]["round_seconds"]) == 1
    assert deploy["same_accuracy"] is True and deploy["deployment"]["final_accuracy"] > 0.5
    for floor in ("floor", "floor_torch"):
        assert len(deploy["deployment"][floor]["round_seconds"]) == 2
    assert 0 < deploy["flower_floor_seconds"] < deploy["goal_seconds_per_round"]
    assert deploy["clientapp_process_startup_seconds"] > 0


def test_overhead_splits_the_start_up_between_ray_and_ours(out):
    overhead = report(out, "overhead")
    assert overhead["same_accuracy"] is True and overhead["ratio_wall"] > 1
    assert overhead["flower"]["floor_first_round_seconds"] > 0
    assert overhead["load_average_1min"] >= 0
