"""Homomorphic encryption in the app: the HE run in-process, the client mod, fl-he decrypt."""

import stat

import numpy as np
import pytest
import torch
from flwr.app import (
    Array,
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MessageType,
    MetricRecord,
    RecordDict,
)

from fl_app.config import ConfigError, RunConfig, _cross_field_errors, parse_run_config
from fl_app.he import server as he_server
from fl_app.he.client import he_mod
from fl_app.he.keys import load_context_file
from fl_app.he.records import KEY_RECORD, UPDATE_KEY, ciphertext_record, ciphertexts_of
from fl_app.model import build_model
from privacy import he
from privacy.he_model import EncryptedModel
from strategies import STRATEGIES
from strategies.base import BaseStrategy
from strategies.fedavg import FedAvg
from strategies.linear import LinearRule
from testing.inprocess_grid import RunNotStartedError, run_server_app_in_process, set_task_identity
from tools.he_cli import main as fl_he

pytestmark = pytest.mark.usefixtures("he_keys")

MODEL_VALUES = sum(v.numel() for v in build_model("auto", (1, 8, 8), 10).state_dict().values())


def test_he_config_validation():
    assert parse_run_config({"he": True}).he is True
    with pytest.raises(ConfigError, match="'he' = 'yes' has type str; expected bool"):
        parse_run_config({"he": "yes"})
    with pytest.raises(ConfigError, match="max-update-norm' = 5 cannot be used with he = true"):
        parse_run_config({"he": True, "max-update-norm": 5.0})


class _Median(BaseStrategy):
    name = "test-median"

    def aggregate(self, server_round, updates):
        return [
            np.median([u.arrays[i] for u in updates], axis=0) for i in range(len(updates[0].arrays))
        ]


def test_non_linear_strategy_is_rejected_at_start_up(monkeypatch, tmp_path):
    monkeypatch.setitem(STRATEGIES, _Median.name, _Median)
    errors = _cross_field_errors(RunConfig(he=True, strategy=_Median.name))
    assert len(errors) == 1
    assert "'test-median' cannot be used with he = true" in errors[0]
    assert "needs a linear aggregation" in errors[0] and "'fedavg'" in errors[0]
    assert _cross_field_errors(RunConfig(strategy=_Median.name)) == []
    template = {"w": np.zeros((3, 2), dtype=np.float32)}
    with pytest.raises(ValueError, match="has no linear rule"):
        he_server.EncryptedAggregation(_Median(), tmp_path / "public.ctx", template)


def test_he_run_matches_plaintext_and_server_holds_only_public_context(
    tmp_path, flwr_home, monkeypatch, he_keys
):
    loaded = []

    def recording_load(path, *, secret):
        context = load_context_file(path, secret=secret)
        loaded.append(context.is_private())
        return context

    monkeypatch.setattr(he_server, "load_context_file", recording_load)
    overrides = {"num-server-rounds": 2, "seed": 4}
    plain = run_server_app_in_process(tmp_path / "plain", overrides)
    encrypted = run_server_app_in_process(tmp_path / "he", {**overrides, "he": True})
    assert loaded and not any(loaded)
    assert encrypted["status"] == "completed"
    assert encrypted["final"]["accuracy_source"] == "federated-validation"
    for record in (*plain["rounds"], *encrypted["rounds"]):
        assert 0 <= record["evaluate"]["accuracy"] <= 1
    assert all(not r["server"] for r in encrypted["rounds"])
    assert (
        abs(encrypted["final"]["accuracy"] - plain["rounds"][-1]["evaluate"]["accuracy"]) <= 0.002
    )
    plain_up = plain["rounds"][0]["bytes_up"]
    assert 1.5 * plain_up < encrypted["rounds"][0]["bytes_up"] < 8 * plain_up
    assert not (tmp_path / "he" / "model.pt").exists()
    for path in (he_keys.secret, he_keys.public):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    encrypted_model = tmp_path / "he" / he_server.ENCRYPTED_MODEL_FILE
    out = tmp_path / "decrypted.pt"
    secret = he_keys.secret
    assert (
        fl_he(
            [
                "decrypt-model",
                str(encrypted_model),
                "--secret-context",
                str(secret),
                "--out",
                str(out),
            ]
        )
        == 0
    )
    state = torch.load(out)
    build_model("auto", (1, 8, 8), 10).load_state_dict(state, strict=True)
    reference = torch.load(tmp_path / "plain" / "model.pt")
    assert max(float((state[k] - reference[k]).abs().max()) for k in reference) < 1e-5
    assert (
        fl_he(
            [
                "decrypt-model",
                str(encrypted_model),
                "--secret-context",
                str(secret),
                "--out",
                str(out),
            ]
        )
        == 1
    )
    public = he_keys.public
    with pytest.raises(he.HEError, match="is a public context"):
        EncryptedModel.from_bytes(encrypted_model.read_bytes()).decrypt(
            load_context_file(public, secret=True)
        )


def _corrupt_round_2(kind):
    other = he.generate_key()

    def hook(partition, message: Message, reply: Message):
        round_2 = message.content["config"].get("server-round") == 2
        if partition != 1 or not round_2 or UPDATE_KEY not in reply.content.array_records:
            return reply
        record = reply.content[UPDATE_KEY]
        ciphertexts = ciphertexts_of(record)
        if kind == "corrupted":
            ciphertexts[0] = ciphertexts[0][: len(ciphertexts[0]) // 2]
        elif kind == "count":
            ciphertexts = ciphertexts[:-1]
        else:
            ciphertexts = he.encrypt_arrays(other, [np.zeros(MODEL_VALUES)])
            reply.content[KEY_RECORD] = ConfigRecord({"fingerprint": other.fingerprint})
        reply.content[UPDATE_KEY] = ciphertext_record(ciphertexts)
        return reply

    return hook


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("corrupted", "cannot be read"),
        ("count", "ciphertexts where"),
        ("other-key", "is under key"),
    ],
)
def test_bad_encrypted_update_is_left_out_naming_the_client(tmp_path, flwr_home, kind, reason):
    results = run_server_app_in_process(  # 4 nodes: the 3 valid updates are enough to release
        tmp_path / "run",
        {"num-server-rounds": 2, "he": True},
        num_nodes=4,
        reply_hook=_corrupt_round_2(kind),
    )
    assert results["status"] == "completed"
    failures = results["rounds"][1]["failures"]
    assert len(failures) == 1
    assert failures[0]["node"] == 1017 and failures[0]["stage"] == "train"
    assert "encrypted update rejected" in failures[0]["reason"] and reason in failures[0]["reason"]
    assert results["rounds"][1]["aggregated"] is True
    assert results["rounds"][0]["failures"] == []


def test_client_mod_finishing_equals_the_rule_applied_to_the_mean(flwr_home, he_keys):
    set_task_identity()
    rule = LinearRule(gradient_step=0.5)
    current = [np.full((4, 3), 2.0, dtype=np.float32), np.arange(5, dtype=np.float32)]
    gradients = [[np.full((4, 3), 0.1 * k, np.float32), np.ones(5, np.float32) * k] for k in (1, 3)]
    examples = [30, 10]
    context = Context(
        run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config={"he": True}
    )
    replies = []
    for gradient, n in zip(gradients, examples, strict=True):
        message = Message(
            RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(current[0]), "b": Array(current[1])}),
                    "config": ConfigRecord(rule.to_config()),
                }
            ),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )

        def client(msg, ctx, gradient=gradient, n=n):
            content = RecordDict(
                {
                    "arrays": ArrayRecord({"w": Array(gradient[0]), "b": Array(gradient[1])}),
                    "metrics": MetricRecord({"num-examples": n}),
                }
            )
            return Message(content, reply_to=msg)

        replies.append(he_mod(message, context, client).content)
    public = load_context_file(he_keys.public, secret=False)
    total = he.EncryptedSum(public, 17)
    for reply in replies:
        assert reply.metric_records["metrics"]["he-weight"] in (30.0, 10.0)
        total.add(ciphertexts_of(reply.array_records[UPDATE_KEY]))
    secret = load_context_file(he_keys.secret, secret=True)
    decrypted = he.decrypt_arrays(
        secret, total.ciphertexts(), he.array_specs(current), float(sum(examples))
    )
    mean = [(30 * a + 10 * b) / 40 for a, b in zip(*gradients, strict=True)]
    for got, expected in zip(decrypted, rule.finish(mean, current), strict=True):
        assert np.max(np.abs(got - expected)) < 1e-5


def test_he_run_resumes_to_identical_encrypted_weights(tmp_path, flwr_home, he_keys):
    full = run_server_app_in_process(tmp_path / "full", {"num-server-rounds": 2, "he": True})
    run_server_app_in_process(tmp_path / "part", {"num-server-rounds": 1, "he": True})
    resumed = run_server_app_in_process(
        tmp_path / "resumed",
        {"num-server-rounds": 2, "he": True, "resume-from": str(tmp_path / "part")},
    )
    assert resumed["resumed_from"]["round"] == 1
    assert resumed["final"]["accuracy"] == full["final"]["accuracy"]
    key = load_context_file(he_keys.secret, secret=True)
    a, b = (
        EncryptedModel.from_bytes(
            (tmp_path / d / he_server.ENCRYPTED_MODEL_FILE).read_bytes()
        ).decrypt(key)
        for d in ("full", "resumed")
    )
    assert all(np.array_equal(a[k], b[k]) for k in a)


def test_server_refuses_a_secret_context_at_start_up(tmp_path):
    secret, public = tmp_path / "secret.ctx", tmp_path / "public.ctx"
    he.write_key_pair(secret, public)
    template = {"w": np.zeros((3, 2), dtype=np.float32)}
    strategy = FedAvg()
    with pytest.raises(he.HEError, match="must only get the public context"):
        he_server.EncryptedAggregation(strategy, secret, template)
    assert not he_server.EncryptedAggregation(strategy, public, template).key.is_private()


def test_too_few_valid_encrypted_updates_stop_the_run_cleanly(tmp_path, flwr_home):
    corrupt = _corrupt_round_2("other-key")

    def every_client(partition, message, reply):
        return corrupt(1, message, reply) if partition > 0 else reply

    results = run_server_app_in_process(
        tmp_path / "run",
        {"num-server-rounds": 3, "he": True, "max-round-retries": 0},
        reply_hook=every_client,
    )
    assert results["status"] == "stopped-too-few-updates"
    assert results["final"]["rounds_completed"] == 2
    assert [f["node"] for f in results["rounds"][1]["failures"]] == [1017, 1034]
    assert (tmp_path / "run" / he_server.ENCRYPTED_MODEL_FILE).is_file()


LINEAR = sorted(name for name, cls in STRATEGIES.items() if cls.linear and name != "fedavg")


def test_every_non_linear_strategy_is_refused_with_he():
    for name, cls in STRATEGIES.items():
        errors = _cross_field_errors(RunConfig(he=True, strategy=name, min_train_nodes=5))
        refused = any("cannot be used with he = true" in e for e in errors)
        assert refused != cls.linear, (name, errors)


@pytest.mark.parametrize("strategy", LINEAR)
def test_every_linear_strategy_gives_the_plaintext_model_under_he(
    tmp_path, flwr_home, strategy, he_keys
):
    overrides = {"num-server-rounds": 1, "seed": 5, "strategy": strategy, "local-epochs": 1}
    plain = run_server_app_in_process(tmp_path / "plain", overrides)
    encrypted = run_server_app_in_process(tmp_path / "he", {**overrides, "he": True})
    assert plain["status"] == encrypted["status"] == "completed"
    out = tmp_path / "decrypted.pt"
    secret = he_keys.secret
    model = tmp_path / "he" / he_server.ENCRYPTED_MODEL_FILE
    assert (
        fl_he(["decrypt-model", str(model), "--secret-context", str(secret), "--out", str(out)])
        == 0
    )
    state, reference = torch.load(out), torch.load(tmp_path / "plain" / "model.pt")
    weights = [c["he-weight"] for c in encrypted["rounds"][0]["clients"]]
    snapping_bound = 2.0**-17 * len(weights) / sum(weights)
    error = max(float((state[k] - reference[k]).abs().max()) for k in reference)
    assert error <= snapping_bound + 1e-6


def test_a_run_without_the_public_context_is_refused_before_anything(tmp_path, caplog):
    (tmp_path / "keys").mkdir()
    with pytest.raises(RunNotStartedError):
        run_server_app_in_process(
            tmp_path / "run",
            {"he": True, "he-public-context": str(tmp_path / "keys" / "missing.ctx")},
        )
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert "Run not started" in line and "there is no public HE context at" in line
    assert "fl-he keygen" in line and not (tmp_path / "run").exists()


def test_nodes_without_the_secret_context_stop_the_run_before_round_1(
    tmp_path, he_keys, node_state, caplog
):
    results = run_server_app_in_process(
        tmp_path / "run",
        {"he": True},
        node_configs=[{}, {"he-secret-context": str(tmp_path / "nowhere.ctx")}, {}],
    )
    assert results["status"] == "failed" and results["rounds"] == []
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert line.startswith("Stopping before round 1: node 1017: there is no secret HE context")
    assert "nowhere.ctx" in line
    assert not list(node_state.glob("**/*.ctx"))[1:]  # no node created a key of its own
