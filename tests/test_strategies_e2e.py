"""Every strategy completes a real ``flwr run`` (private SuperLink, 3 SuperNodes, 2 rounds)."""

import pytest

from strategies import STRATEGIES
from tests.conftest import APP_DIR

pytestmark = pytest.mark.integration

EXTRA = {
    "krum": {"min-train-nodes": 3},
    "multikrum": {"min-train-nodes": 3},
}


# fedavg's own end-to-end run is tests/test_e2e.py
@pytest.mark.parametrize("name", sorted(set(STRATEGIES) - {"fedavg"}))
def test_strategy_completes_flwr_run(superlink, tmp_path, name):
    out = tmp_path / name
    outcome = superlink.run(
        APP_DIR,
        {
            "output-dir": str(out),
            "strategy": name,
            "num-server-rounds": 2,
            "local-epochs": 1,
            **EXTRA.get(name, {}),
        },
        num_supernodes=3,
        timeout=300,
    )
    results = outcome.results
    assert results["status"] == "completed", outcome.output[-2000:]
    assert results["strategy"]["name"] == name
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for record in results["rounds"]:
        assert record["aggregated"] and record["failures"] == []
        assert len(record["clients"]) == 3
    assert 0.0 <= results["final"]["accuracy"] <= 1.0
    assert (out / "model.pt").is_file()
