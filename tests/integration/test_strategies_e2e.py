"""Strategies whose messages differ from FedAvg's complete a real ``flwr run``.

Gradients instead of weights (fedsgd) and a round config the clients read (fedprox),
each on a private SuperLink with 3 SuperNodes for 2 rounds; fedavg's run is in
``test_e2e.py``. What other strategies change happens on the server only, and every
strategy runs the real ServerApp and ClientApp in ``tests/app/test_strategy_runs.py``.
"""

import pytest

from tests.app.test_strategy_runs import check_results, run_config
from tests.integration.conftest import APP

THROUGH_FLWR_RUN = ("fedsgd", "fedprox")


@pytest.mark.parametrize("name", THROUGH_FLWR_RUN)
def test_strategy_completes_flwr_run(superlink, tmp_path, name):
    out = tmp_path / name
    outcome = superlink.run(APP, run_config(name, out), num_supernodes=3, timeout=300)
    assert outcome.results["status"] == "completed", outcome.output[-2000:]
    check_results(outcome.results, name, out)
