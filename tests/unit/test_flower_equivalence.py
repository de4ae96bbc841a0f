"""Our strategies and Flower's own (flwr.serverapp.strategy) aggregate the same replies alike."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower

from fl_app import client_app
from fl_app.config import RunConfig
from strategies.fedadagrad import FedAdagrad
from strategies.fedadam import FedAdam
from strategies.fedavg import FedAvg
from strategies.fedavgm import FedAvgM
from strategies.fedmedian import FedMedian
from strategies.fedprox import FedProx
from strategies.fedtrimmedavg import FedTrimmedAvg
from strategies.fedyogi import FedYogi
from strategies.krum import Krum, MultiKrum
from testing.inprocess_grid import InProcessGrid

SHAPES = {"conv.weight": (2, 1, 3, 3), "conv.bias": (2,), "fc.weight": (4, 3), "fc.bias": (4,)}
NUM_CLIENTS = 7
ROUNDS = 4

PAIRS = {
    "fedavg": (lambda: FedAvg(), lambda: flower.FedAvg()),
    "fedprox": (lambda: FedProx(proximal_mu=0.3), lambda: flower.FedProx(proximal_mu=0.3)),
    "fedavgm": (
        lambda: FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
        lambda: flower.FedAvgM(server_learning_rate=0.7, server_momentum=0.9),
    ),
    "fedadam": (
        lambda: FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
        lambda: flower.FedAdam(eta=0.1, beta_1=0.9, beta_2=0.99, tau=1e-3),
    ),
    "fedyogi": (
        lambda: FedYogi(eta=0.03, beta_1=0.8, beta_2=0.95, tau=1e-2),
        lambda: flower.FedYogi(eta=0.03, beta_1=0.8, beta_2=0.95, tau=1e-2),
    ),
    "fedadagrad": (
        lambda: FedAdagrad(eta=0.1, tau=1e-3),
        lambda: flower.FedAdagrad(eta=0.1, tau=1e-3),
    ),
    "fedmedian": (lambda: FedMedian(), lambda: flower.FedMedian()),
    "fedtrimmedavg": (
        lambda: FedTrimmedAvg(beta=0.3),
        lambda: flower.FedTrimmedAvg(beta=0.3),
    ),
    "krum": (
        lambda: Krum(num_malicious=2),
        lambda: flower.Krum(num_malicious_nodes=2),
    ),
    "multikrum": (
        lambda: MultiKrum(num_malicious=2, num_selected=3),
        lambda: flower.MultiKrum(num_malicious_nodes=2, num_nodes_to_select=3),
    ),
}


def replies_to(messages, client_arrays, num_examples):
    """Reply to each train message with one client's arrays and num-examples."""
    replies = []
    for i, message in enumerate(sorted(messages, key=lambda m: m.metadata.dst_node_id)):
        message.metadata.__dict__["_message_id"] = f"m{i}"
        content = RecordDict(
            {
                "arrays": ArrayRecord({k: Array(v.copy()) for k, v in client_arrays[i].items()}),
                "metrics": MetricRecord({"num-examples": num_examples[i], "train-loss": 0.5 * i}),
            }
        )
        replies.append(Message(content, reply_to=message))
    return replies


@pytest.mark.parametrize("name", list(PAIRS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_same_replies_give_the_same_arrays_as_flower(name, dtype):
    ours, theirs = (make() for make in PAIRS[name])
    grid = InProcessGrid(client_app.app, NUM_CLIENTS, RunConfig().to_dict())
    rng = np.random.default_rng(1234)
    global_arrays = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    for server_round in range(1, ROUNDS + 1):
        sent = {}
        for label, strategy in (("ours", ours), ("theirs", theirs)):
            record = ArrayRecord({k: Array(v.copy()) for k, v in global_arrays.items()})
            sent[label] = list(strategy.configure_train(server_round, record, ConfigRecord(), grid))
        assert len(sent["ours"]) == len(sent["theirs"]) == NUM_CLIENTS
        # clients move from the global model; two outliers make the robust rules matter
        clients = [
            {
                k: (v + rng.normal(scale=0.3, size=v.shape)).astype(dtype)
                for k, v in global_arrays.items()
            }
            for _ in range(NUM_CLIENTS)
        ]
        for outlier in clients[-2:]:
            for k in outlier:
                outlier[k] = (outlier[k] * -8.0).astype(dtype)
        examples = rng.integers(5, 60, size=NUM_CLIENTS).tolist()
        outcome = ours.aggregate_round(server_round, replies_to(sent["ours"], clients, examples))
        ours_arrays = outcome.arrays
        theirs_arrays, _ = theirs.aggregate_train(
            server_round, replies_to(sent["theirs"], clients, examples)
        )
        assert outcome.failures == []
        assert list(ours_arrays.keys()) == list(SHAPES)
        for key in SHAPES:
            got, want = ours_arrays[key].numpy(), theirs_arrays[key].numpy()
            assert got.dtype == dtype and np.all(np.isfinite(got))
            # float32 keeps ~7 digits: Flower sums in float32, we in float64, so allow
            # 1e-6 relative there on top of 1e-6 absolute (values reach ~20)
            rtol = 1e-6 if dtype == np.float32 else 0.0
            np.testing.assert_allclose(got, want, rtol=rtol, atol=1e-6, err_msg=f"{name} {key}")
        global_arrays = {k: ours_arrays[k].numpy() for k in SHAPES}
    if name in ("fedavgm", "fedadam", "fedyogi", "fedadagrad"):
        assert ours.state_dict()  # the server-optimiser state that made rounds 2+ agree


def test_fedprox_sends_proximal_mu_like_flower():
    grid = InProcessGrid(client_app.app, 3, RunConfig().to_dict())
    record = ArrayRecord({"w": Array(np.zeros(2))})
    (ours, *_) = FedProx(proximal_mu=0.3).configure_train(1, record, ConfigRecord(), grid)
    (theirs, *_) = flower.FedProx(proximal_mu=0.3).configure_train(1, record, ConfigRecord(), grid)
    assert ours.content["config"]["proximal-mu"] == theirs.content["config"]["proximal-mu"] == 0.3
