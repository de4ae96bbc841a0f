"""privacy.he with real TenSEAL: exact sums, keys, bad ciphertexts; fl-he keygen."""

import stat

import numpy as np
import pytest

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
