"""A strategy whose messages differ from FedAvg's completes a real ``flwr run``.

A round config the clients read (fedprox) on ten silo files of 28×28 images, a shape no
embedded dataset has (``dataset = "files"``, simulated node ``i`` reads file ``i``);
fedavg's run is in ``test_e2e.py``. Every strategy, fedsgd's gradients included, runs
the real ServerApp and ClientApp in ``tests/app/test_strategy_runs.py`` (a ``flwr run``
adds ~40 s of CPU per strategy, which the suite's time cannot afford for all).
"""

from testing.silos import write_image_silos
from tests.app.test_strategy_runs import run_config
from tests.integration.conftest import APP


def test_fedprox_on_ten_image_silos_completes_flwr_run(superlink, tmp_path):
    silos, test = write_image_silos(tmp_path / "data", num_silos=10)
    out = tmp_path / "fedprox"
    config = {
        **run_config("fedprox", out),
        "dataset": "files",
        "partition-files": str(silos[0].parent),
        "server-test-path": str(test),
        "input-shape": "28,28",
        "learning-rate": 0.02,
        "local-epochs": 2,
    }
    outcome = superlink.run(APP, config, num_supernodes=10, timeout=300)
    results = outcome.results
    assert results["status"] == "completed", outcome.output[-2000:]
    assert results["model"]["kind"] == "cnn" and results["model"]["input-shape"] == "1,28,28"
    assert all(r["num_clients"] == 10 and not r["failures"] for r in results["rounds"])
    assert results["final"]["accuracy_source"] == "server-test-set"
    assert results["final"]["accuracy"] > 0.6  # chance is 0.1
