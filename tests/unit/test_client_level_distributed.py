"""Distributed client-level DP on the numpy/TenSEAL level: the noise the decrypted sum carries.

The promise: the ``n`` noise shares of a complete round add up to ``N(0, (z C)^2)`` on
the sum, central DP's noise. The attacks, each of which must fail by exactly the
amount the docs state: a colluding client subtracting its own share from the sum
still faces noise of variance ``(n - 1) / n (z C)^2``; the server with one client,
decrypting a single update, faces its share ``(z C)^2 / n``; nobody regenerates a
share from what the server sent.
"""

import numpy as np
import pytest
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

from fl_app.he.client import NOISE_LABEL, he_mod
from fl_app.he.keys import load_context_file
from fl_app.he.records import UPDATE_KEY, ciphertexts_of, noisy_payload, share_config
from privacy import he
from privacy.client_level import NoiseShare, add_noise, clip_delta
from privacy.secrets import derive_generator
from strategies.linear import UNIFORM, LinearRule
from testing.inprocess_grid import set_task_identity

FIXED_SECRET = bytes(range(32))  # the test's own node secret, so that the draws are replayable
CLIENTS, EXPECTED, Z, C = 3, 4.5, 1.3, 0.8
VALUES = 4000


@pytest.fixture(scope="module")
def key():
    return he.generate_key()


def _setup():
    rng = np.random.default_rng(11)
    received = [rng.normal(0, 0.3, VALUES).astype(np.float32), np.array([5, 7, 9], np.int64)]
    updates = [
        [received[0] + rng.normal(0, 0.05, VALUES).astype(np.float32), received[1]]
        for _ in range(CLIENTS)
    ]
    return received, updates


def test_noise_share_parameters_and_integer_arrays():
    share = NoiseShare(shares=4, expected_clients=6.0, noise_multiplier=2.0, clipping_norm=0.5)
    assert share.std == pytest.approx(0.5) and share.weight == 1.5
    assert share.std**2 * share.shares == pytest.approx((2.0 * 0.5) ** 2)  # n shares: (zC)^2
    with pytest.raises(ValueError, match="noise shares must be >= 1"):
        NoiseShare(0, 6.0, 2.0, 0.5)
    noisy = add_noise(
        [np.zeros(3), np.zeros(2)],
        [np.zeros(3, np.float32), np.zeros(2, np.int64)],
        1.0,
        np.random.default_rng(0),
    )
    assert np.all(noisy[0] != 0) and np.all(noisy[1] == 0)


def test_decrypted_noisy_sum_carries_the_claimed_noise_and_no_less(key):
    """Many draws under a fixed secret: the variance of every view the docs state."""
    public = he.load_key(he.serialize_key(key, secret=False), secret=False)
    received, updates = _setup()
    share = NoiseShare(CLIENTS, EXPECTED, Z, C)
    specs = he.array_specs(received)
    values = he.num_values(specs)
    clipped = [clip_delta(u, received, C)[0] for u in updates]
    assert all(norm > C for norm in (clip_delta(u, received, C)[1] for u in updates))
    base = share.weight * received[0].astype(np.float64)
    noiseless_sum = EXPECTED * received[0].astype(np.float64) + sum(c[0] for c in clipped)
    on_sum, others, single = [], [], []
    for draw in range(25):
        payloads = [
            noisy_payload(
                update,
                received,
                UNIFORM,
                share,
                derive_generator(FIXED_SECRET, f"draw {draw} client {k}".encode(), NOISE_LABEL),
            )
            for k, update in enumerate(updates)
        ]
        encrypted = [he.encrypt_arrays(key, p) for p in payloads]
        total = he.EncryptedSum(public, values)
        for update in encrypted:
            total.add(update)
        mean, counters = he.decrypt_arrays(key, total.ciphertexts(), specs, EXPECTED, count=3)
        np.testing.assert_array_equal(counters, received[1])  # counters carry no noise
        decrypted_sum = mean.astype(np.float64) * EXPECTED
        on_sum.append(decrypted_sum - noiseless_sum)
        # a colluding client 0 removes its own payload (it knows it) from the sum
        others.append(decrypted_sum - payloads[0][0] - (noiseless_sum - base - clipped[0][0]))
        # the server with one client decrypts client 1's update alone
        (alone, _) = he.decrypt_arrays(key, encrypted[1], specs, 1.0, count=1)
        single.append(alone.astype(np.float64) - base - clipped[1][0])
    # float32 unpacking of the mean adds ~1e-8 of rounding: negligible against these
    for residuals, variance in (
        (on_sum, (Z * C) ** 2),
        (others, (CLIENTS - 1) / CLIENTS * (Z * C) ** 2),
        (single, (Z * C) ** 2 / CLIENTS),
    ):
        samples = np.concatenate(residuals)
        # 100,000 samples: the variance estimate's relative sd is 0.45 %; 3 % is > 6 sd
        assert np.var(samples) == pytest.approx(variance, rel=0.03)
        assert abs(np.mean(samples)) < 6 * np.sqrt(variance / samples.size)


def test_each_share_is_fresh_and_not_a_function_of_what_the_server_sent(flwr_home, he_keys):
    """The same train message twice: the two encrypted updates differ by fresh noise."""
    set_task_identity()
    received = [np.linspace(-1, 1, 4000, dtype=np.float32)]
    share = NoiseShare(CLIENTS, 3.0, Z, C)
    config = ConfigRecord({**LinearRule().to_config(), **share_config(share), "server-round": 1})
    context = Context(
        run_id=7,
        node_id=1,
        node_config={},
        state=RecordDict(),
        run_config={"he": True, "dp": "distributed", "dp-clipping-norm": C},
    )

    def client(msg, ctx):
        update = ArrayRecord({"w": Array(received[0] + np.float32(0.001))})
        metrics = MetricRecord({"num-examples": 80, "train-loss": 0.5})
        return Message(RecordDict({"arrays": update, "metrics": metrics}), reply_to=msg)

    def reply():
        message = Message(
            RecordDict({"arrays": ArrayRecord({"w": Array(received[0])}), "config": config}),
            dst_node_id=1,
            message_type=MessageType.TRAIN,
        )
        return he_mod(message, context, client).content

    secret = load_context_file(he_keys.secret, secret=True)
    first, second = reply(), reply()
    assert dict(first["metrics"]) == {"num-examples": 1, "he-weight": 1.0}  # nothing else leaves
    decrypted = [
        he.decrypt_arrays(secret, ciphertexts_of(r[UPDATE_KEY]), he.array_specs(received), 1.0)[0]
        for r in (first, second)
    ]
    difference = decrypted[0].astype(np.float64) - decrypted[1]
    # two independent shares: the difference has variance 2 (zC)^2 / n, not 0
    assert np.var(difference) == pytest.approx(2 * share.std**2, rel=0.25)  # 4000 values: ±8σ
