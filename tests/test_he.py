"""Homomorphic encryption: privacy.he with real TenSEAL, the HE run in-process, fl-he."""

import os
import stat
from multiprocessing import get_context

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message

from fl_app import he_client, he_server
from fl_app.config import ConfigError, RunConfig, _cross_field_errors, parse_run_config
from fl_app.he_cli import main as fl_he
from fl_app.he_keys import default_key_dir, load_context_file
from fl_app.he_records import KEY_RECORD, UPDATE_KEY, ciphertext_record, ciphertexts_of
from fl_app.inprocess_grid import run_server_app_in_process
from fl_app.model import build_model
from privacy import he
from privacy.he_model import EncryptedModel
from strategies import STRATEGIES
from strategies.base import BaseStrategy
from strategies.fedavg import FedAvg

SHAPES = [(16, 1, 3, 3), (16,), (5000,), (7, 5), (3,)]
MODEL_VALUES = sum(v.numel() for v in build_model("auto", (1, 8, 8), 10).state_dict().values())


@pytest.fixture(scope="module")
def context():
    return he.generate_key()


@pytest.fixture
def flwr_home(tmp_path, monkeypatch):
    home = tmp_path / "flwr-home"
    monkeypatch.setenv("FLWR_HOME", str(home))
    return home


def _updates(count, seed=0):
    rng = np.random.default_rng(seed)
    return [[rng.normal(0, 1.5, s).astype(np.float32) for s in SHAPES] for _ in range(count)]


@pytest.mark.parametrize("clients", [2, 10])
def test_decrypted_aggregate_equals_plaintext_aggregate(context, clients):
    public = he.load_key(he.serialize_key(context, secret=False), secret=False)
    updates = _updates(clients)
    weights = [float(w) for w in np.random.default_rng(1).integers(1, 400, clients)]
    specs = he.array_specs(updates[0])
    encrypted = [he.encrypt_arrays(context, u, w) for u, w in zip(updates, weights, strict=True)]
    assert len(encrypted[0]) == he.num_ciphertexts(he.num_values(specs)) == 3
    total = he.sum_ciphertexts(public, encrypted, he.num_values(specs))
    result = he.decrypt_arrays(context, total, specs, sum(weights), public.fingerprint)
    for position, array in enumerate(result):
        expected = sum(
            w * u[position].astype(np.float64) for u, w in zip(updates, weights, strict=True)
        ) / sum(weights)
        assert array.shape == SHAPES[position] and array.dtype == np.float32
        assert np.max(np.abs(array - expected)) < 1e-5


def test_sums_are_exact_on_the_fixed_point_grid(context):
    updates = _updates(3, seed=5)
    specs = he.array_specs(updates[0])
    runs = [
        he.decrypt_arrays(
            context,
            he.sum_ciphertexts(
                context, [he.encrypt_arrays(context, u) for u in updates], he.num_values(specs)
            ),
            specs,
        )
        for _ in range(2)
    ]
    for first, second in zip(*runs, strict=True):
        np.testing.assert_array_equal(first, second)


def test_public_context_cannot_decrypt_and_secret_is_refused_as_public(context):
    public_bytes = he.serialize_key(context, secret=False)
    public = he.load_key(public_bytes, secret=False)
    assert not public.is_private()
    with pytest.raises(he.HEError, match="secret context"):
        he.decrypt_arrays(public, he.encrypt_arrays(context, [np.ones(3)]), [((3,), np.float64)])
    with pytest.raises(he.HEError, match="must only get the public context"):
        he.load_key(he.serialize_key(context, secret=True), secret=False)
    with pytest.raises(he.HEError, match="is a public context"):
        he.load_key(public_bytes, secret=True)


def test_bad_ciphertexts_are_rejected_and_leave_the_sum_unchanged(context):
    values = he.num_values(he.array_specs(_updates(1)[0]))
    good = he.encrypt_arrays(context, _updates(1)[0])
    total = he.EncryptedSum(context, values)
    total.add(good)
    before = total.ciphertexts()
    with pytest.raises(he.HEError, match="2 ciphertexts where 3 are expected"):
        total.add(good[:2])
    with pytest.raises(he.HEError, match="ciphertext 1 cannot be read"):
        total.add([good[0], good[1][:500], good[2]])
    other = he.generate_key(he.CKKSParameters(8192, (60, 40, 60), 40))
    with pytest.raises(he.HEError):
        total.add(he.encrypt_arrays(other, _updates(1)[0]))
    assert total.count == 1
    assert [len(c) for c in total.ciphertexts()] == [len(c) for c in before]


def test_another_key_is_detected_by_fingerprint(context):
    other = he.generate_key()
    assert other.fingerprint != context.fingerprint
    with pytest.raises(he.HEError, match="under key"):
        he.decrypt_arrays(
            context,
            he.encrypt_arrays(other, [np.ones(3)]),
            [((3,), np.float64)],
            expected_fingerprint=other.fingerprint,
        )


def test_overflowing_update_is_refused(context):
    with pytest.raises(he.HEError, match="at most"):
        he.encrypt_arrays(context, [np.array([1.0])], weight=1e6)


def test_keygen_refuses_to_overwrite_and_files_are_0600(tmp_path, capsys):
    secret, public = tmp_path / "k" / "secret.ctx", tmp_path / "k" / "public.ctx"
    assert fl_he(["keygen", "--secret", str(secret), "--public", str(public)]) == 0
    for path in (secret, public):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = secret.read_bytes()
    assert fl_he(["keygen", "--secret", str(secret), "--public", str(tmp_path / "p2")]) == 1
    assert "never overwritten" in capsys.readouterr().err
    assert secret.read_bytes() == content
    assert load_context_file(secret, secret=True).is_private()
    assert not load_context_file(public, secret=False).is_private()


def _ensure(directory):
    he.ensure_key_pair(directory / "secret.ctx", directory / "public.ctx")
    return (directory / "secret.ctx").read_bytes()


def test_concurrent_default_keygen_creates_one_key_pair(tmp_path):
    with get_context("fork").Pool(3) as pool:
        secrets = pool.map(_ensure, [tmp_path] * 3)
    assert len(set(secrets)) == 1
    assert sorted(os.listdir(tmp_path)) == ["public.ctx", "secret.ctx"]


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


class _Squared(FedAvg):
    name = "test-squared"

    def finish_linear(self, mean, current):
        return [m * m for m in mean]


def test_non_linear_strategy_is_rejected_at_start_up(monkeypatch):
    monkeypatch.setitem(STRATEGIES, _Median.name, _Median)
    errors = _cross_field_errors(RunConfig(he=True, strategy=_Median.name))
    assert len(errors) == 1
    assert "'test-median' cannot be used with he = true" in errors[0]
    assert "needs a linear aggregation" in errors[0] and "'fedavg'" in errors[0]
    assert _cross_field_errors(RunConfig(strategy=_Median.name)) == []
    template = {"w": np.zeros((3, 2), dtype=np.float32)}
    with pytest.raises(ConfigError, match="not affine"):
        he_server.EncryptedAggregation(
            _Squared.from_run_config(RunConfig()), default_key_dir(), template
        )


def test_he_run_matches_plaintext_and_server_holds_only_public_context(
    tmp_path, flwr_home, monkeypatch
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
    assert 5 * plain_up < encrypted["rounds"][0]["bytes_up"] < 8 * plain_up
    assert not (tmp_path / "he" / "model.pt").exists()
    for path in (flwr_home / "he" / "secret.ctx", flwr_home / "he" / "public.ctx"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600

    encrypted_model = tmp_path / "he" / he_server.ENCRYPTED_MODEL_FILE
    out = tmp_path / "decrypted.pt"
    secret = flwr_home / "he" / "secret.ctx"
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
    public = flwr_home / "he" / "public.ctx"
    with pytest.raises(he.HEError, match="is a public context"):
        EncryptedModel.from_bytes(encrypted_model.read_bytes()).decrypt(
            load_context_file(public, secret=True)
        )


def _corrupt_round_2(kind):
    other = he.generate_key()

    def hook(partition, message: Message, reply: Message):
        round_2 = message.content["config"]["server-round"] == 2
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
    results = run_server_app_in_process(
        tmp_path / "run", {"num-server-rounds": 2, "he": True}, reply_hook=_corrupt_round_2(kind)
    )
    assert results["status"] == "completed"
    failures = results["rounds"][1]["failures"]
    assert len(failures) == 1
    assert failures[0]["node"] == 1017 and failures[0]["stage"] == "train"
    assert "encrypted update rejected" in failures[0]["reason"] and reason in failures[0]["reason"]
    assert results["rounds"][1]["aggregated"] is True
    assert results["rounds"][0]["failures"] == []


class _StepSGD(FedAvg):
    name = "test-sgd"

    def finish_linear(self, mean, current):
        return [c - 0.5 * m for m, c in zip(mean, current, strict=True)]


def test_client_side_finishing_equals_finish_linear_of_the_mean(flwr_home, monkeypatch):
    strategy = _StepSGD.from_run_config(RunConfig())
    monkeypatch.setattr(he_client, "_strategy", lambda config: strategy)
    current = [np.full((4, 3), 2.0, dtype=np.float32), np.arange(5, dtype=np.float32)]
    gradients = [[np.full((4, 3), 0.1 * k, np.float32), np.ones(5, np.float32) * k] for k in (1, 3)]
    examples = [30, 10]
    replies = [
        he_client.encrypted_reply(
            ArrayRecord({"w": Array(g[0]), "b": Array(g[1])}),
            current,
            {"num-examples": n},
            RunConfig(he=True),
            {},
        )
        for g, n in zip(gradients, examples, strict=True)
    ]
    public = load_context_file(flwr_home / "he" / "public.ctx", secret=False)
    total = he.EncryptedSum(public, 17)
    for reply in replies:
        assert reply.metric_records["metrics"]["he-weight"] in (30.0, 10.0)
        total.add(ciphertexts_of(reply.array_records[UPDATE_KEY]))
    record = ciphertext_record(total.ciphertexts(), float(sum(examples)))
    config = ConfigRecord({"he-fingerprint": public.fingerprint})
    template = {"w": torch.zeros(4, 3), "b": torch.zeros(5)}
    state = he_client.received_state_dict(record, config, template, {})
    mean = [(30 * a + 10 * b) / 40 for a, b in zip(*gradients, strict=True)]
    for name, expected in zip(template, strategy.finish_linear(mean, current), strict=True):
        assert np.max(np.abs(state[name].numpy() - expected)) < 1e-5


def test_he_run_resumes_to_identical_encrypted_weights(tmp_path, flwr_home):
    full = run_server_app_in_process(tmp_path / "full", {"num-server-rounds": 2, "he": True})
    run_server_app_in_process(tmp_path / "part", {"num-server-rounds": 1, "he": True})
    resumed = run_server_app_in_process(
        tmp_path / "resumed",
        {"num-server-rounds": 2, "he": True, "resume-from": str(tmp_path / "part")},
    )
    assert resumed["resumed_from"]["round"] == 1
    assert resumed["final"]["accuracy"] == full["final"]["accuracy"]
    key = load_context_file(flwr_home / "he" / "secret.ctx", secret=True)
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
    strategy = FedAvg.from_run_config(RunConfig())
    with pytest.raises(he.HEError, match="must only get the public context"):
        he_server.EncryptedAggregation(strategy, secret, template)
    assert not he_server.EncryptedAggregation(strategy, public, template).key().is_private()


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
def test_every_linear_strategy_gives_the_plaintext_model_under_he(tmp_path, flwr_home, strategy):
    overrides = {"num-server-rounds": 1, "seed": 5, "strategy": strategy, "local-epochs": 1}
    plain = run_server_app_in_process(tmp_path / "plain", overrides)
    encrypted = run_server_app_in_process(tmp_path / "he", {**overrides, "he": True})
    assert plain["status"] == encrypted["status"] == "completed"
    out = tmp_path / "decrypted.pt"
    secret = flwr_home / "he" / "secret.ctx"
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
