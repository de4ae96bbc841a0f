"""End-to-end: ``flwr run`` with ``he = true`` and local DP on a private local SuperLink."""

import os
import stat

from fl_app.he.server import ENCRYPTED_MODEL_FILE
from tests.integration.conftest import APP


def test_flwr_run_with_local_dp_and_he_keeps_the_private_model_encrypted(superlink, tmp_path):
    out = tmp_path / "dp-he-run"
    overrides = {
        "output-dir": str(out),
        "num-server-rounds": 2,
        "he": True,
        "dp": "local",
        "dp-target-epsilon": 8.0,
        "local-epochs": 1,
    }
    results = superlink.run(APP, overrides, num_supernodes=3).results
    assert results["status"] == "completed"
    assert results["final"]["accuracy_source"] == "federated-validation"
    assert results["final"]["accuracy"] == results["rounds"][-1]["evaluate"]["accuracy"] > 0.1
    epsilons = [r["train"]["dp-epsilon"] for r in results["rounds"]]
    assert 0 < epsilons[0] < epsilons[1] == results["final"]["epsilon"] <= 8.0
    for record in results["rounds"]:
        assert record["failures"] == [] and record["aggregated"]
        assert record["server"] == {}
        assert record["bytes_up"] > 3 * 5 * 30_000
        assert all("dp-epsilon" in c and "he-weight" in c for c in record["clients"])
    assert (out / ENCRYPTED_MODEL_FILE).stat().st_size > 100_000
    assert not (out / "model.pt").exists()
    keys = superlink.flwr_home / "he"
    assert sorted(os.listdir(keys)) == ["public.ctx", "secret.ctx"]
    assert stat.S_IMODE((keys / "secret.ctx").stat().st_mode) == 0o600
    assert list((superlink.flwr_home / "dp-ledgers").glob("*/partition-*.json"))
