"""``fl-compare``: a tiny sweep end to end through real ``flwr run``, interrupted and resumed."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fl_app.server.checkpoint import CHECKPOINT_FILE
from tests.conftest import APP_DIR
from tools import compare

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SWEEP = ["--settings", "none,he", "--rounds", "3", "--clients", "3", "--seeds", "1"]


def test_list_prints_every_setting_name(capsys):
    assert compare.main(["--list"]) == 0
    assert capsys.readouterr().out.split() == list(compare.SETTINGS)


def test_unknown_setting_fails_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert compare.main(["--settings", "none,dp-bogus", "--out", str(out)]) == 2
    message = capsys.readouterr().out
    assert "'dp-bogus'" in message
    for name in compare.SETTINGS:
        assert name in message
    assert not out.exists()


def test_a_setting_the_strategy_cannot_serve_fails_before_anything_runs(tmp_path, capsys):
    out = tmp_path / "sweep"
    code = compare.main(["--settings", "he", "--strategy", "fedmedian", "--out", str(out)])
    assert code == 2
    assert "setting 'he'" in capsys.readouterr().out
    assert not out.exists()


def _wait_for(path, timeout):
    deadline = time.monotonic() + timeout
    while not path.is_file():
        assert time.monotonic() < deadline, f"no {path} after {timeout} s"
        time.sleep(0.05)


def test_tiny_sweep_is_interrupted_resumed_and_reported(tmp_path):
    out = tmp_path / "sweep"
    first = subprocess.Popen(
        [sys.executable, "-m", "tools.compare", *SWEEP, "--out", str(out)],
        cwd=APP_DIR,
        env={**os.environ, "PYTHONPATH": str(APP_DIR)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(out / "runs" / "he" / "seed-0" / CHECKPOINT_FILE, timeout=400)
        first.send_signal(signal.SIGINT)
        assert first.wait(timeout=120) == 130
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    finished = out / "runs" / "none" / "seed-0" / "results.json"
    assert json.loads(finished.read_text())["status"] == "completed"
    finished_mtime = finished.stat().st_mtime_ns
    assert not (out / "comparison.md").exists()

    assert compare.main([*SWEEP, "--out", str(out)]) == 0

    assert finished.stat().st_mtime_ns == finished_mtime
    interrupted = list((out / "runs" / "he").glob("seed-0.interrupted-*"))
    assert len(interrupted) == 1
    resumed = json.loads((out / "runs" / "he" / "seed-0" / "results.json").read_text())
    assert resumed["status"] == "completed"
    assert resumed["resumed_from"]["round"] >= 1
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3]

    report = json.loads((out / "comparison.json").read_text())
    rows = {row["setting"]: row for row in report["rows"]}
    assert list(rows) == ["none", "he"]
    with (out / "comparison.csv").open() as handle:
        table = {line[0]: line for line in csv.reader(handle)}
    for setting, row in rows.items():
        results = json.loads((out / "runs" / setting / "seed-0" / "results.json").read_text())
        federated = results["rounds"][-1]["evaluate"]["accuracy"]
        assert row["final_accuracy"] == pytest.approx(federated)
        assert row["best_accuracy"] >= row["final_accuracy"]
        assert row["rounds"] == len(results["rounds"])
        up = sum(r["bytes_up"] for r in results["rounds"]) / len(results["rounds"]) / 1e6
        assert row["mb_up_per_round"] == pytest.approx(up)
        assert table[setting][1] == f"{federated:.4f}"
        if setting == "he":
            assert row["test_accuracy"] is None and table[setting][3] == "–"
        else:
            assert row["test_accuracy"] == pytest.approx(results["final"]["accuracy"])
    assert rows["none"]["epsilon"] is None is rows["he"]["epsilon"]
    assert rows["he"]["mb_up_per_round"] > rows["none"]["mb_up_per_round"]
    markdown = (out / "comparison.md").read_text()
    for setting in rows:
        assert f"| {setting} |" in markdown
    for plot in ("accuracy_per_round.png", "privacy_utility.png", "cost_per_round.png"):
        data = (out / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000
