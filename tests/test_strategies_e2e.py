"""Every strategy completes a whole run of the real ServerApp and ClientApp.

Four strategies that exercise distinct paths (gradients instead of weights, a round
config the clients read, server-optimiser state, client selection) run through a real
``flwr run`` (private SuperLink, 3 SuperNodes, 2 rounds; fedavg's is in
``tests/test_e2e.py``). Every strategy also runs in process over the in-process grid:
the same ServerApp, strategy and ClientApp code, without the transport, in a second.
"""

import pytest

from fl_app.inprocess_grid import run_server_app_in_process
from strategies import STRATEGIES
from tests.conftest import APP_DIR

EXTRA = {
    "krum": {"min-train-nodes": 3},
    "multikrum": {"min-train-nodes": 3},
}
THROUGH_FLWR_RUN = ("fedsgd", "fedprox", "fedadam", "multikrum")


def _config(name, out):
    return {
        "output-dir": str(out),
        "strategy": name,
        "num-server-rounds": 2,
        "local-epochs": 1,
        **EXTRA.get(name, {}),
    }


def _check(results, name, out):
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
    config = _config(name, out)
    del config["output-dir"]
    _check(run_server_app_in_process(out, config, num_nodes=3), name, out)


@pytest.mark.integration
@pytest.mark.parametrize("name", THROUGH_FLWR_RUN)
def test_strategy_completes_flwr_run(superlink, tmp_path, name):
    out = tmp_path / name
    outcome = superlink.run(APP_DIR, _config(name, out), num_supernodes=3, timeout=300)
    assert outcome.results["status"] == "completed", outcome.output[-2000:]
    _check(outcome.results, name, out)
