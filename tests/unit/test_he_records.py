"""Ciphertexts in Flower records and in model files: byte-exact, cheap, refused when old."""

import io
import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord

from fl_app.he.records import (
    ENCODING_KEY,
    bytes_array,
    bytes_of,
    ciphertext_record,
    ciphertexts_of,
    decrypted_arrays,
)
from privacy import he
from privacy.he_model import FORMAT, EncryptedModel


@pytest.fixture(scope="module")
def key():
    return he.generate_key()


@pytest.mark.parametrize("size", [0, 1, 99, 32_335, 1_000_001])
def test_bytes_array_is_what_numpy_would_have_written(size):
    data = np.random.default_rng(size).integers(0, 256, size, dtype=np.uint8).tobytes()
    array = bytes_array(data)
    reference = Array(np.frombuffer(data, dtype=np.uint8))
    assert (array.dtype, array.shape, array.stype, array.data) == (
        reference.dtype,
        reference.shape,
        reference.stype,
        reference.data,
    )
    assert bytes_of(array) == data == array.numpy().tobytes()


def test_bytes_of_reads_any_uint8_array_serialisation():
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.arange(7, dtype=np.uint8), version=(2, 0))
    other = Array(dtype="uint8", shape=(7,), stype="numpy.ndarray", data=buffer.getvalue())
    assert bytes_of(other) == bytes(range(7))


def _model(key, weight=2.0):
    arrays = [np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4), np.arange(3)]
    specs = he.array_specs(arrays)
    total = he.sum_ciphertexts(key, [he.encrypt_arrays(key, arrays, weight)] * 3, 15)
    record = ciphertext_record(total, 3 * weight, (["w", "step"], specs), 3)
    return arrays, record


def test_an_encrypted_global_model_round_trips_through_its_record(key):
    arrays, record = _model(key)
    assert bytes_of(record[ENCODING_KEY]).decode() == he.ENCODING
    decrypted = decrypted_arrays(record, ConfigRecord(), key)
    np.testing.assert_allclose(decrypted["w"], arrays[0], atol=1e-5)
    np.testing.assert_array_equal(decrypted["step"], arrays[1])


def test_a_global_model_of_an_earlier_encoding_is_refused_by_name(key):
    _, record = _model(key)
    del record[ENCODING_KEY]  # what a checkpoint written before the encoding looks like
    with pytest.raises(he.HEError, match=r"has no recorded encoding .* cannot be resumed"):
        decrypted_arrays(record, ConfigRecord(), key)
    record[ENCODING_KEY] = bytes_array(b"ckks-real-slots/0")
    with pytest.raises(he.HEError, match="'ckks-real-slots/0'"):
        decrypted_arrays(record, ConfigRecord(), key)


def test_model_files_carry_the_encoding_and_older_ones_are_refused(key):
    arrays, record = _model(key)
    model = EncryptedModel(
        names=["w", "step"],
        specs=he.array_specs(arrays),
        ciphertexts=ciphertexts_of(record),
        total_weight=6.0,
        fingerprint=key.fingerprint,
        count=3,
    )
    data = model.to_bytes()
    loaded = EncryptedModel.from_bytes(data)
    np.testing.assert_array_equal(loaded.decrypt(key)["step"], arrays[1])
    with np.load(io.BytesIO(data)) as archive:
        members = {name: archive[name] for name in archive.files}
    header = json.loads(members["header"].tobytes())
    assert header["format"] == FORMAT and header["encoding"] == he.ENCODING
    header["format"] = "fl-privacy-he-model/2"
    del header["encoding"]
    members["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)
    old = io.BytesIO()
    np.savez(old, **members)
    with pytest.raises(he.HEError, match="has format 'fl-privacy-he-model/2'"):
        EncryptedModel.from_bytes(old.getvalue(), "old.npz")


def test_the_client_mod_leaves_the_received_content_to_the_other_nodes(key, monkeypatch):
    """A shared incoming RecordDict (one per round for every node) is never modified."""
    from flwr.app import Context, Message, MessageType, MetricRecord, RecordDict

    from fl_app.he import client as he_client
    from strategies.linear import LinearRule
    from testing.inprocess_grid import set_task_identity

    set_task_identity()
    _, record = _model(key)
    shared = RecordDict(
        {
            "arrays": record,
            "config": ConfigRecord({**LinearRule().to_config(), "he-fingerprint": key.fingerprint}),
        }
    )
    context = Context(
        run_id=7, node_id=1, node_config={}, state=RecordDict(), run_config={"he": True}
    )
    seen = []

    def client(msg, ctx):
        seen.append(msg.content["arrays"])
        metrics = MetricRecord({"num-examples": 5})
        return Message(
            RecordDict({"arrays": msg.content["arrays"], "metrics": metrics}), reply_to=msg
        )

    monkeypatch.setattr(he_client, "client_secret_context", lambda node: key)
    for _ in range(2):
        message = Message(shared, dst_node_id=1, message_type=MessageType.TRAIN)
        assert not he_client.he_mod(message, context, client).has_error()
    assert shared["arrays"] is record and ENCODING_KEY in shared["arrays"]
    assert all(set(a) == {"w", "step"} for a in seen) and seen[0] is not seen[1]
    assert isinstance(shared["arrays"], ArrayRecord)


def test_without_an_in_memory_file_ciphertexts_go_through_a_private_temporary_file(
    key, monkeypatch
):
    """Where ``os.memfd_create`` is missing (not Linux), the seeded bytes are the same kind."""
    import os

    from privacy.he import _SCRATCH

    monkeypatch.delattr(os, "memfd_create")
    he.encrypt_arrays(key, [np.zeros(1)])  # this thread's scratch file exists: restored after
    for name, value in (("pid", None), ("fd", -1), ("path", "")):
        monkeypatch.setattr(_SCRATCH, name, value)
    try:
        ciphertexts = he.encrypt_arrays(key, [np.full(5, 0.25)])
        assert not _SCRATCH.path.startswith("/proc/")
        assert oct(os.stat(_SCRATCH.path).st_mode & 0o777) == "0o600"
    finally:
        os.close(_SCRATCH.fd)
    (values,) = he.decrypt_arrays(key, ciphertexts, [((5,), np.float64)], count=1)
    np.testing.assert_array_equal(values, np.full(5, 0.25))


def test_encryption_works_again_after_the_fallback_test(key):
    (values,) = he.decrypt_arrays(
        key, he.encrypt_arrays(key, [np.ones(2)]), [((2,), np.float64)], count=1
    )
    np.testing.assert_array_equal(values, np.ones(2))
