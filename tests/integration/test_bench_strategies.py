"""The strategy and reliability benchmarks' tiny modes run, so they cannot rot."""

import json
import subprocess
import sys

from tests.conftest import APP_DIR


def run_bench(name, out, *extra):
    subprocess.run(
        [
            sys.executable,
            str(APP_DIR / "bench" / f"{name}.py"),
            "--tiny",
            "--out",
            str(out),
            *extra,
        ],
        check=True,
        timeout=600,
        capture_output=True,
    )
    return json.loads(out.read_text())


def test_strategies_benchmark_tiny_mode_writes_json_and_markdown(tmp_path):
    out = tmp_path / "strategies.json"
    report = run_bench("strategies", out, "--strategies", "fedavg", "fedsgd", "krum")
    assert report["clients"] == 4 and report["rounds"] == 2
    assert set(report["cases"]) == {
        f"{s}/{c}" for s in ("fedavg", "fedsgd", "krum") for c in report["scenarios"]
    }
    for case in report["cases"].values():
        assert case["status"] == "completed"
        assert 0.0 <= case["final_accuracy"] <= 1.0 and case["seconds"] > 0
    assert report["cases"]["krum/iid"]["settings"]["num-malicious"] == 1
    table = out.with_suffix(".md").read_text()
    assert "| `krum` |" in table and "load average" in table
    paper = report["fedavg_vs_fedsgd"]
    assert paper["model"] == "mlp" and set(paper["rounds"]) == {"fedavg", "fedsgd"}
    assert "FedAvg against FedSGD" in table


def test_reliability_benchmark_tiny_mode_writes_its_report(tmp_path):
    report = run_bench("reliability", tmp_path / "reliability.json")
    assert report["clients"] == 4 and report["rounds"] == 2
    cases = {(c["strategy"], c["scenario"]): c for c in report["cases"]}
    assert set(cases) == {
        (s, c) for s in ("fedavg", "fedmedian") for c in ("clean", "drop-20%", "2-sign-flip-x10")
    }
    assert all(0.0 <= c["final_accuracy"] <= 1.0 for c in cases.values())
    assert "start" in report["load_average_1min"]
    assert "| `fedmedian` |" in (tmp_path / "reliability.md").read_text()
