"""Every strategy completes a whole run of the real ServerApp and ClientApp, in process.

The same ServerApp, strategy and ClientApp code as a real ``flwr run``, over the
in-process grid: the transport is left out, so each run takes about a second.
"""

import pytest

from strategies import STRATEGIES
from testing.inprocess_grid import run_server_app_in_process

EXTRA = {
    "krum": {"min-train-nodes": 3},
    "multikrum": {"min-train-nodes": 3},
}


def run_config(name, out):
    return {
        "output-dir": str(out),
        "strategy": name,
        "num-server-rounds": 2,
        "local-epochs": 1,
        **EXTRA.get(name, {}),
    }


def check_results(results, name, out):
    assert results["status"] == "completed"
    assert results["strategy"]["name"] == name
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert record["aggregated"] and record["failures"] == []
        assert len(record["clients"]) == 3
    assert 0.0 <= results["final"]["accuracy"] <= 1.0
    assert (out / "model.pt").is_file()


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategy_completes_a_run_in_process(tmp_path, name):
    out = tmp_path / name
    config = run_config(name, out)
    del config["output-dir"]
    check_results(run_server_app_in_process(out, config, num_nodes=3), name, out)
