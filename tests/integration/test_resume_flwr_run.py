"""A killed ``flwr run`` (SuperLink, ServerApp, Ray: SIGKILL) resumes to identical weights.

The reference is the same run uninterrupted, in process (the same numbers as ``flwr run``).
"""

import json
import time

import torch

from fl_app.server.checkpoint import CHECKPOINT_FILE, load_checkpoint
from testing.inprocess_grid import run_server_app_in_process
from tests.integration.conftest import APP
from tools.local_superlink import LocalSuperLink


def test_killed_flwr_run_resumes_to_identical_weights(superlink, tmp_path):
    config = {"num-server-rounds": 6, "seed": 5}
    reference = run_server_app_in_process(tmp_path / "reference", config, num_nodes=3)
    with LocalSuperLink(tmp_path / "home-a", cwd=tmp_path) as link:
        handle = link.start_run(
            APP, {**config, "output-dir": str(tmp_path / "killed")}, num_supernodes=3
        )
        deadline = time.monotonic() + 240
        checkpoint = tmp_path / "killed" / CHECKPOINT_FILE
        while time.monotonic() < deadline:
            if checkpoint.is_file() and load_checkpoint(checkpoint).server_round >= 3:
                break
            time.sleep(0.05)
        link.kill()  # SIGKILL to the SuperLink, the ServerApp's process, Ray, everything
        handle.process.wait(timeout=60)
        assert link.processes() == []
    killed_at = load_checkpoint(checkpoint).server_round
    assert 3 <= killed_at < 6
    assert json.loads((tmp_path / "killed" / "results.json").read_text())["status"] == "running"
    resumed = superlink.run(
        APP,
        {
            **config,
            "output-dir": str(tmp_path / "resumed"),
            "resume-from": str(tmp_path / "killed"),
        },
        num_supernodes=3,
    )
    assert resumed.results["resumed_from"]["round"] == killed_at
    a = torch.load(tmp_path / "reference" / "model.pt")
    b = torch.load(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.results["final"]["accuracy"] == reference["final"]["accuracy"]
