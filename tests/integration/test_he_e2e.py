"""End-to-end: ``flwr run`` with ``he = true`` and local DP on a private local SuperLink."""

import torch

from fl_app.data import server_split
from fl_app.he.server import ENCRYPTED_MODEL_FILE
from fl_app.model import build_model
from fl_app.task import evaluate
from privacy.he import write_key_pair
from tests.integration.conftest import APP
from tools.he_cli import decrypt_model


def test_flwr_run_with_local_dp_and_he_keeps_the_private_model_encrypted(superlink, tmp_path):
    secret = superlink.node_state / "he" / "secret.ctx"  # where the simulated nodes look
    write_key_pair(secret, superlink.flwr_home / "he" / "public.ctx")
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
    # the server cannot read the model, and clients under local DP report no evaluation
    assert results["final"]["accuracy_source"] == "none"
    assert results["final"]["accuracy"] is None
    decrypted = tmp_path / "model.pt"
    decrypt_model(out / ENCRYPTED_MODEL_FILE, secret, decrypted)
    model = build_model("auto", (1, 8, 8), 10, prefer_mlp=True)
    model.load_state_dict(torch.load(decrypted), strict=True)
    _, test = server_split("digits", 0.2, 42)
    assert evaluate(model, test)[1] > 0.2
    epsilons = [r["train"]["dp-epsilon"] for r in results["rounds"]]
    assert 0 < epsilons[0] < epsilons[1] == results["final"]["epsilon"] <= 8.0
    for record in results["rounds"]:
        assert record["failures"] == [] and record["aggregated"]
        assert record["server"] == {}
        assert record["bytes_up"] > 3 * 2 * 30_000
        assert all("dp-epsilon" in c and "he-weight" in c for c in record["clients"])
    assert (out / ENCRYPTED_MODEL_FILE).stat().st_size > 100_000
    assert not (out / "model.pt").exists()
    assert not list(superlink.flwr_home.rglob("secret.ctx"))  # not where the server runs
    assert len(list((superlink.node_state / "ledgers").glob("*.json"))) == 3  # one per silo
