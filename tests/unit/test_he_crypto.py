"""privacy.he with real TenSEAL: exact sums, keys, bad ciphertexts; fl-he keygen."""

import stat

import numpy as np
import pytest
import tenseal as ts
import tenseal.sealapi as sealapi

from fl_app.he.keys import load_context_file
from fl_app.model import build_model
from privacy import he
from tools.he_cli import main as fl_he

SHAPES = [(16, 1, 3, 3), (16,), (5000,), (7, 5), (3,)]
MODEL_VALUES = sum(v.numel() for v in build_model("auto", (1, 8, 8), 10).state_dict().values())


@pytest.fixture(scope="module")
def context():
    return he.generate_key()


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
    assert len(encrypted[0]) == he.num_ciphertexts(he.num_values(specs)) == 2  # 4,094 per ct
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
    update = _updates(1)[0]
    specs = he.array_specs(update)
    values = he.num_values(specs)
    good = he.encrypt_arrays(context, update)
    total = he.EncryptedSum(context, values)
    total.add(good)
    with pytest.raises(he.HEError, match="1 ciphertexts where 2 are expected"):
        total.add(good[:1])
    with pytest.raises(he.HEError, match="ciphertext 1 cannot be read"):
        total.add([good[0], good[1][:500]])
    other = he.generate_key(he.CKKSParameters(8192, (60, 40, 60), 40))
    with pytest.raises(he.HEError):
        total.add(he.encrypt_arrays(other, update))
    # readable, but its second ciphertext is at another scale: the first one, already
    # added in place, is taken out again
    codec = context.codec
    plain = sealapi.Plaintext()
    codec.encoder.encode([0.5] * he.DEFAULT_PARAMETERS.slots, 2.0**30, plain)
    odd = he._vector_bytes(he._saved_bytes(codec.encryptor.encrypt_symmetric(plain)), 2048, 2.0**30)
    with pytest.raises(he.HEError, match="cannot be added to the sum"):
        total.add([good[0], odd])
    assert total.count == 1
    result = he.decrypt_arrays(context, total.ciphertexts(), specs, count=1)
    for got, sent in zip(result, update, strict=True):
        np.testing.assert_array_equal(got, he.DEFAULT_PARAMETERS.snap(sent.astype(np.float64)))


def test_an_update_is_two_values_per_slot_and_uploads_seeded(context):
    """4,094 values per ciphertext; a fresh (seeded) update ~2x float32, a sum ~4x."""
    params = he.DEFAULT_PARAMETERS
    assert params.data_values == 4094 and he.num_ciphertexts(3 * 4094 + 1) == 4
    update = [np.random.default_rng(3).normal(0, 1, 2 * 4094).astype(np.float32)]
    ciphertexts = he.encrypt_arrays(context, update)
    assert len(ciphertexts) == 2
    float32 = 4 * params.data_values
    assert all(1.9 * float32 < len(c) < 2.05 * float32 for c in ciphertexts)
    total = he.sum_ciphertexts(context, [ciphertexts] * 3, 2 * 4094)
    assert all(3.8 * float32 < len(c) < 4.05 * float32 for c in total)


def test_keys_of_other_parameters_are_refused_naming_keygen(context):
    old = he.generate_key(he.CKKSParameters(4096, (58, 40), 35))
    with pytest.raises(he.HEError, match=r"coefficient modulus \[58, 40\].*fl-he keygen"):
        he.load_key(he.serialize_key(old, secret=True), secret=True, source="old.ctx")


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
    assert fl_he(["keygen", "--secret-context", str(secret), "--public-context", str(public)]) == 0
    for path in (secret, public):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    content = secret.read_bytes()
    assert (
        fl_he(["keygen", "--secret-context", str(secret), "--public-context", str(tmp_path / "p2")])
        == 1
    )
    assert "never overwritten" in capsys.readouterr().err
    assert secret.read_bytes() == content
    assert load_context_file(secret, secret=True).is_private()
    assert not load_context_file(public, secret=False).is_private()


def _raw_update(key, values):
    """Ciphertexts a key holder writes by hand (bypassing encrypt_arrays' bound), check slot 1."""
    return he.encrypt_packed(key, np.asarray(values, dtype=np.float64))


def test_a_sum_that_wrapped_around_is_refused(context):
    # three updates of 3e6 in every value sum to 9e6: the plaintext polynomial's constant
    # coefficient passes 2^23 and wraps around by 2^24 (every real part moves by -2^24)
    public = he.load_key(he.serialize_key(context, secret=False), secret=False)
    values = he.DEFAULT_PARAMETERS.data_values
    updates = [_raw_update(context, [3e6] * values) for _ in range(3)]
    total = he.sum_ciphertexts(public, updates, values)
    wrapped = np.asarray(ts.ckks_vector_from(context.context, total[0]).decrypt())  # real parts
    assert wrapped[0] == pytest.approx(9e6 - 2**24, abs=1.0)  # what decrypting used to return
    assert wrapped[-1] == pytest.approx(3 * he.CHECK_VALUE - 2**24, abs=1.0)  # the check slot
    specs = [((values,), np.float64)]
    with pytest.raises(he.HEError, match="wrapped around the fixed-point range: a check slot"):
        he.decrypt_arrays(context, total, specs, 3.0, count=3)
    with pytest.raises(he.HEError, match="wrapped around the fixed-point range: its check slot"):
        he.decrypt_arrays(context, total, specs, 3.0)  # count unknown: the check slot alone
    # the same three updates scaled into range decrypt fine
    fine = he.sum_ciphertexts(public, [_raw_update(context, [2e4] * values)] * 3, values)
    (mean,) = he.decrypt_arrays(context, fine, specs, 3.0, count=3)
    np.testing.assert_array_equal(mean, np.full(values, 2e4))


def test_a_sum_beyond_what_its_count_allows_is_refused(context):
    limit = he.DEFAULT_PARAMETERS.max_abs_update
    single = _raw_update(context, [3 * limit, 1.0])  # a key holder's out-of-range update
    with pytest.raises(he.HEError, match=r"more than the .* that 1 updates of at most"):
        he.decrypt_arrays(context, single, [((2,), np.float64)], count=1)
    good = he.encrypt_arrays(context, [np.array([limit, -limit])])
    (values,) = he.decrypt_arrays(context, good, [((2,), np.float64)], count=1)
    edge = float(he.DEFAULT_PARAMETERS.snap(np.array(limit)))  # on the fixed-point grid
    assert values.tolist() == [edge, -edge]
    with pytest.raises(he.HEError, match="a check slot reads 1 where the 2 updates summed put 2"):
        he.decrypt_arrays(context, good, [((2,), np.float64)], count=2)  # a count that lies


def test_the_sum_refuses_more_updates_than_the_encoding_allows(context):
    assert he.EncryptedSum(context, 3).max_count == he.MAX_CLIENTS == 100
    with pytest.raises(he.HEError, match="sums 1 to 100 updates"):
        he.EncryptedSum(context, 3, max_count=101)
    total = he.EncryptedSum(context, 3, max_count=2)
    update = he.encrypt_arrays(context, [np.ones(3)])
    total.add(update)
    total.add(update)
    with pytest.raises(he.HEError, match=r"already holds 2 updates; .* at most 2"):
        total.add(update)
    assert total.count == 2
    with pytest.raises(he.HEError, match="claims 101 updates"):
        he.decrypt_arrays(context, total.ciphertexts(), [((3,), np.float64)], count=101)


def test_the_server_refuses_rounds_the_encoding_cannot_sum_before_round_1(tmp_path):
    from fl_app.dp.central import ClientLevelDP
    from fl_app.dp.distributed import DistributedDP
    from fl_app.he.server import EncryptedAggregation
    from strategies.fedavg import FedAvg

    he.write_key_pair(tmp_path / "secret.ctx", tmp_path / "public.ctx")
    template = {"w": np.zeros(4, np.float32)}
    plain = EncryptedAggregation(FedAvg(min_train_nodes=2), tmp_path / "public.ctx", template)
    assert plain.floor == he.MIN_CLIENTS == 3  # a strategy's floor of 2 is raised
    assert plain.round_size_problems(10) == []
    (few,) = plain.round_size_problems(2)
    assert few.startswith("homomorphic encryption needs at least 3 clients in every round")
    (many,) = plain.round_size_problems(150)
    assert "sums at most 100 updates (MAX_CLIENTS); rounds would sample 150" in many
    dp = ClientLevelDP(1.0, 1.0, 0.0, 1e-5, 0.5, 2, "rdp")
    noisy = DistributedDP(FedAvg(), tmp_path / "public.ctx", template, dp, b"s" * 32)
    assert noisy.round_size_problems(100) == []
    assert "samples 2.5 on average" in noisy.round_size_problems(5)[0]
    assert "samples 250 on average: lower fraction-train" in noisy.round_size_problems(500)[0]
