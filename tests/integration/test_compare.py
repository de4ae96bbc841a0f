"""``fl-compare``: a tiny sweep end to end through real ``flwr run``, interrupted and resumed.

The resumed invocation also runs the privacy audit (on by default) on both runs.
"""

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
        table = {line["setting"]: line for line in csv.DictReader(handle)}
    for setting, row in rows.items():
        results = json.loads((out / "runs" / setting / "seed-0" / "results.json").read_text())
        values = row["values"]
        assert values["federated_accuracy"] == pytest.approx(
            results["rounds"][-1]["evaluate"]["accuracy"]
        )
        assert 0.3 < values["test_accuracy"] <= 1.0  # HE too: fl-compare decrypts it
        assert values["rounds"] == len(results["rounds"])
        up = sum(r["bytes_up"] for r in results["rounds"][1:]) / 2 / 1e6
        assert values["mb_up_per_round"] == pytest.approx(up)
        assert float(table[setting]["test_accuracy"]) == pytest.approx(values["test_accuracy"])
        assert table[setting]["epsilon"] == ""
    assert rows["he"]["values"]["mb_up_per_round"] > rows["none"]["values"]["mb_up_per_round"]
    # the clients' secret context lives with the simulated nodes, not in the server's home
    assert (out / "node-state" / "he" / "he" / "secret.ctx").is_file()
    assert not list((out / "flwr-home").rglob("secret.ctx"))
    markdown = (out / "comparison.md").read_text()
    for setting in rows:
        assert f"| {setting} |" in markdown
    plots = ("accuracy_per_round.png", "privacy_utility.png", "cost_per_round.png")
    for plot in (*plots, "privacy_audit.png", "reconstruction.png", "reconstruction-none.png"):
        data = (out / plot).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 2000, plot
    # the privacy audit: the plain update gives the digit back, the HE reply is refused
    assert float(table["none"]["reconstruction_psnr"]) > 20
    assert table["he"]["reconstruction_psnr"] == ""
    assert not (out / "reconstruction-he.png").exists()
    for setting in rows:
        assert 0.0 < float(table[setting]["mia_auc"]) < 1.0
        assert table[setting]["epsilon_lower_bound"] == ""  # no DP in this sweep
        audit = json.loads((out / "runs" / setting / "seed-0" / "audit" / "audit.json").read_text())
        assert audit["membership"]["num_members"] > 0
    he_audit = rows["he"]["audits"][0]
    assert he_audit["reconstruction_note"] == "nothing to invert: the server holds only ciphertexts"
    assert "secret key" in he_audit["mia_adversary"]
    assert "— (ciphertexts only)" in markdown and "privacy audit" in markdown
    # the same --out with other options is refused, nothing is mixed
    assert compare.main([*SWEEP, "--rounds", "4", "--out", str(out)]) == 2
