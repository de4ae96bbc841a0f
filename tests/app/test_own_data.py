"""Users' own data: silo files of a new shape, a server test file or none, synthetic devices."""

import logging

import numpy as np
import pytest

from fl_app.config import ConfigError, parse_run_config
from testing.inprocess_grid import RunNotStartedError, run_server_app_in_process
from testing.silos import write_image_silos

FILES_RUN = {"dataset": "files", "num-server-rounds": 3}


@pytest.fixture(scope="module")
def silos(tmp_path_factory):
    return write_image_silos(tmp_path_factory.mktemp("silos"), num_silos=10)


def test_ten_silos_of_28x28_images_learn_with_a_server_test_file(tmp_path, silos):
    files, test = silos
    run = {
        **FILES_RUN,
        "partition-files": str(files[0].parent),
        "server-test-path": str(test),  # flat (N, 784) images: it gives the class count
        "input-shape": "28,28",
        "learning-rate": 0.02,  # the default 0.05 is tuned for the 8x8 digits
    }
    results = run_server_app_in_process(tmp_path / "run", run, num_nodes=10)
    assert results["model"] == {
        "kind": "cnn",
        "parameters": results["model"]["parameters"],
        "input-shape": "1,28,28",
        "num-classes": 10,
    }
    assert all(not r["failures"] and r["num_clients"] == 10 for r in results["rounds"])
    assert results["final"]["accuracy_source"] == "server-test-set"
    assert results["final"]["accuracy"] > 0.75  # chance is 0.1 (measured 0.83)


def test_without_a_server_test_file_the_run_reports_federated_validation(tmp_path, silos):
    files, _ = silos
    listed = ",".join(str(f) for f in files[:4])
    run = {
        **FILES_RUN,
        "partition-files": listed,
        "input-shape": "784",
        "num-classes": 10,
        "num-server-rounds": 2,
    }
    results = run_server_app_in_process(tmp_path / "run", run, num_nodes=4)
    assert results["model"]["kind"] == "mlp" and results["model"]["input-shape"] == "784"
    assert all(not r["server"] for r in results["rounds"])
    assert results["final"]["accuracy_source"] == "federated-validation"
    assert results["final"]["accuracy"] > 0.5
    # round 1's model as the clients of round 2 saw it, on their train and validation data
    assert results["rounds"][0]["evaluate"]["train-loss"] > 0


@pytest.mark.parametrize(
    ("name", "arrays", "problem"),
    [
        ("features.npz", {"x": np.zeros((40, 17), np.uint8), "y": np.zeros(40)}, "(17 values)"),
        ("labels.npz", {"x": np.zeros((40, 784), np.uint8), "y": np.full(40, 12)}, "12 to 12"),
        ("nan.npz", {"x": np.full((40, 784), np.nan), "y": np.zeros(40)}, "contain NaN"),
        ("nolabel.npz", {"x": np.zeros((40, 784), np.uint8)}, "needs arrays 'x' and 'y'"),
        ("pickled.npz", {"x": np.array([None] * 40), "y": np.zeros(40)}, "pickled"),
        ("cut.npz", None, "truncated or corrupt"),
        ("nolabel.csv", None, "no label column 'label'"),
    ],
)
def test_a_bad_silo_is_named_and_the_others_train_on(
    tmp_path, silos, caplog, name, arrays, problem
):
    files, test = silos
    bad = tmp_path / name
    if name == "cut.npz":
        bad.write_bytes(files[0].read_bytes()[:500])
    elif name == "nolabel.csv":
        bad.write_text("a,b\n1,2\n")
    else:
        np.savez(bad, **arrays)
    listed = ",".join(str(f) for f in [*files[:3], bad])
    run = {**FILES_RUN, "partition-files": listed, "server-test-path": str(test)}
    run["num-server-rounds"] = 1
    with caplog.at_level(logging.WARNING, logger="flwr"):
        results = run_server_app_in_process(tmp_path / "run", run, num_nodes=4)
    (round_1,) = results["rounds"]
    assert round_1["aggregated"] and len(round_1["clients"]) == 3
    (failure,) = round_1["failures"]
    assert str(bad) in failure["reason"] and problem in failure["reason"]
    console = [r.getMessage() for r in caplog.records if str(bad) in r.getMessage()]
    assert console and f"Node {failure['node']} left out of train" in console[0]


def test_the_shape_must_come_from_somewhere_before_anything_starts(tmp_path, silos):
    with pytest.raises(ConfigError, match="dataset 'files' needs the model's shape"):
        parse_run_config({"dataset": "files"})
    with pytest.raises(ConfigError, match="'input-shape' = '28,28' is only for dataset 'files'"):
        parse_run_config({"input-shape": "28,28"})
    with pytest.raises(RunNotStartedError):
        run_server_app_in_process(
            tmp_path / "run", {"dataset": "files", "server-test-path": str(tmp_path / "none.npz")}
        )
    assert not (tmp_path / "run").exists()


def test_synthetic_devices_learn_with_federated_validation_only(tmp_path):
    run = {
        "dataset": "synthetic",
        "synthetic-alpha": 0.5,
        "synthetic-beta": 0.5,
        "num-server-rounds": 3,
        "fraction-train": 0.5,
        "local-epochs": 1,
    }
    results = run_server_app_in_process(tmp_path / "run", run, num_nodes=30)
    assert results["model"]["input-shape"] == "60" and results["model"]["kind"] == "mlp"
    assert [r["num_clients"] for r in results["rounds"]] == [15, 15, 15]
    assert results["final"]["accuracy_source"] == "federated-validation"
    assert results["final"]["accuracy"] > 0.3  # chance is 0.1
