"""A real deployment on 127.0.0.1: SuperLink and three SuperNodes, TLS and node authentication.

One federation (free port, its own FLWR_HOME under a temporary directory) serves
every test in this module; at the end every process it started, with the
processes those started, must be gone. Every SuperNode holds the clients' secret HE
context (node-config ``he-secret-context``); the SuperLink's ServerApp gets only the
public one (run-config ``he-public-context``). Each SuperNode trains on its own silo
file of 28×28 images (``dataset = "files"``), a shape no embedded dataset has; the
ServerApp evaluates on a server test file. (Demo partitions of the embedded dataset
are deployed by ``bench/deploy.py``'s test.)

An entry of ``DEPLOYED_RUNS`` is one deployed run; its second value says whether the
run must give the same server accuracies as the same run in process
(``InProcessGrid``, no node config beyond the partition).
"""

from collections.abc import Iterator

import psutil
import pytest
import torch
from flwr.app import Context, RecordDict

from deploy.federation import Federation
from deploy.node_keys import ensure_node_key
from deploy.nodes import SuperNodeSpec, default_names, prepare_supernodes
from deploy.tls import ensure_tls
from fl_app.client_app import client_setup
from fl_app.config import parse_run_config
from fl_app.data import TaskShape
from fl_app.he.keys import PUBLIC_FILE, SECRET_FILE
from fl_app.he.server import ENCRYPTED_MODEL_FILE
from fl_app.model import build_model
from testing.silos import write_image_silos
from tests.app.test_training_loop import run_loop
from tests.integration.conftest import APP
from tools.he_cli import decrypt_model, keygen

IMAGES = TaskShape((1, 28, 28), 10)
NUM_NODES = 3  # encrypted aggregation refuses rounds of fewer than 3 clients
FILES_RUN = {"dataset": "files", "input-shape": "28,28", "num-classes": 10, "model": "mlp"}

DEPLOYED_RUNS = [
    pytest.param({"strategy": "fedavg"}, True, id="fedavg"),
    pytest.param({"strategy": "fedavg", "he": True}, False, id="he"),
]


def _process_tree(federation: Federation) -> list[psutil.Process]:
    processes = []
    for managed in [federation.superlink, *federation.supernodes.values()]:
        if managed is not None and managed.returncode() is None:
            parent = psutil.Process(managed.pid)
            processes += [parent, *parent.children(recursive=True)]
    return processes


def _node_context(federation: Federation, name: str) -> Context:
    """The context a node's ClientApp sees in a files-mode run."""
    config = parse_run_config(FILES_RUN).to_dict()
    return Context(1, 1, federation.node_configs[name], RecordDict(), config)


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    directory = tmp_path_factory.mktemp("deployment")
    tls = ensure_tls(directory)
    keygen(directory / "he" / SECRET_FILE, directory / "he" / PUBLIC_FILE)
    silos, _ = write_image_silos(directory / "data", num_silos=NUM_NODES)
    names = default_names(NUM_NODES)
    specs = prepare_supernodes(
        directory,
        names,
        parse_run_config(FILES_RUN),
        dict(zip(names, silos, strict=True)),
        extra_node_config={"he-secret-context": str(directory / "he" / SECRET_FILE)},
    )
    with Federation(directory, tls) as running:
        running.start(specs)
        yield running
        started = _process_tree(running)
        assert len(started) >= 1 + 2 * NUM_NODES  # SuperLink, SuperNodes, their SuperExecs
    left = [p.pid for p in started if _alive(p)]
    assert left == [], f"processes still running after stop: {left}"


@pytest.mark.parametrize(("run_config", "same_as_in_process"), DEPLOYED_RUNS)
def test_deployed_run_trains_each_node_on_its_own_file(
    federation, run_config, same_as_in_process, tmp_path
):
    out = tmp_path / "run"
    test_file = federation.directory / "data" / "server-test.npz"
    config = {
        "num-server-rounds": 1,
        "output-dir": str(out),
        "server-test-path": str(test_file),
        **FILES_RUN,
        **run_config,
    }
    if run_config.get("he"):
        config["he-public-context"] = str(federation.directory / "he" / PUBLIC_FILE)
    outcome = federation.run(APP, config, timeout=600)
    results = outcome.results
    assert results["status"] == "completed"
    assert results["config"]["strategy"] == run_config["strategy"]
    assert [r["round"] for r in results["rounds"]] == [1]
    node_ids = set(federation.node_ids.values())
    expected_examples = {
        node_id: len(client_setup(_node_context(federation, name), IMAGES).data.train)
        for name, node_id in federation.node_ids.items()
    }
    for record in results["rounds"]:
        assert record["num_clients"] == NUM_NODES
        assert record["failures"] == []
        assert {c["node"] for c in record["clients"]} == node_ids
        assert {c["node"]: c["num-examples"] for c in record["clients"]} == expected_examples
    assert results["final"]["rounds_completed"] == 1
    assert results["model"]["input-shape"] == "1,28,28"
    assert results["final"]["accuracy"] > 0.5  # chance is 0.1
    assert results["rounds"][-1]["evaluate"]["num-examples"] > 0
    if run_config.get("he"):
        assert results["final"]["accuracy_source"] == "federated-validation"
        assert all(r["server"] == {} for r in results["rounds"])
        assert not (out / "model.pt").exists()
        decrypt_model(
            out / ENCRYPTED_MODEL_FILE, federation.directory / "he" / SECRET_FILE, out / "model.pt"
        )
    build_model("mlp", (1, 28, 28), 10).load_state_dict(torch.load(out / "model.pt"), strict=True)
    if same_as_in_process:
        (tmp_path / "in-process").mkdir()
        silos = sorted((federation.directory / "data" / "silos").glob("*.npz"))
        in_process_config = {**config, "partition-files": ",".join(map(str, silos))}
        in_process, _, _ = run_loop(
            tmp_path / "in-process", parse_run_config(in_process_config), num_nodes=NUM_NODES
        )
        expected = [r.server["accuracy"] for r in in_process.record.rounds]
        assert [r["server"]["accuracy"] for r in results["rounds"]] == pytest.approx(expected)


def test_a_supernode_whose_key_was_not_registered_is_refused(federation):
    key = ensure_node_key(federation.directory, "intruder")
    process = federation.start_supernode(
        SuperNodeSpec("intruder", key.private_key, key.public_key, {})
    )
    code = process.wait_exit(90)
    assert code is not None and code != 0, process.log_text()[-2000:]
    assert "Failed to activate SuperNode" in process.log_text()
    assert "No SuperNode found with the given public key" in federation.superlink.log_text()
    status = federation.node_status()
    assert set(status) == set(federation.node_ids.values())
    assert set(status.values()) == {"online"}
