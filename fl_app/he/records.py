"""How encrypted updates and encrypted global models travel in Flower records, both ways.

Ciphertexts are ``uint8`` arrays in an ``ArrayRecord``, so they are counted by the
bytes-on-the-wire figures and kept by checkpoints like any other array. The
encrypted global model replaces the plaintext arrays under the usual key; it holds
the encrypted weighted sum, the total weight to divide it by, the number of updates
summed (each client checks it against the sum's check slots, so a sum that wrapped
around the fixed-point range is refused), the layout (names, shapes, dtypes) to
unpack it with and the encoding (:data:`privacy.he.ENCODING`), so a client needs
nothing else to decrypt it, and a model written by an earlier encoding (a checkpoint
from before) is refused by name.

Ciphertext bytes go into and come out of ``Array`` objects without ``np.save`` /
``np.load``: the ``.npy`` header is written directly and skipped on reading (the
bytes stay a valid ``numpy.ndarray`` serialisation, so anything else reads them as
``uint8`` arrays).

Under distributed DP (:func:`noisy_encrypted_update`) the server's round config also
carries the round's :class:`~privacy.client_level.NoiseShare`: how many clients were
sampled, the fixed denominator and the noise multiplier.
"""

from __future__ import annotations

import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from numpy.lib import format as npy_format

from privacy.client_level import NoiseShare, add_noise, clip_delta
from privacy.he import ENCODING, ArraySpec, HEError, HEKey, decrypt_arrays, encrypt_arrays
from strategies.core import Arrays
from strategies.linear import LinearRule
from strategies.protocol import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

CIPHERTEXT_PREFIX = "he-ciphertext-"
TOTAL_WEIGHT_KEY = "he-total-weight"
COUNT_KEY = "he-count"
"""Encrypted global model: the number of updates its sum holds (checked by every client)."""
LAYOUT_KEY = "he-layout"
ENCODING_KEY = "he-encoding"
"""Encrypted global model: how its values are laid out in the ciphertexts."""
UPDATE_KEY = "he-update"
"""Reply record holding a client's encrypted weighted update."""
KEY_RECORD = "he"
"""Reply ConfigRecord with the ``fingerprint`` of the key the update is under."""
FINGERPRINT_KEY = "he-fingerprint"
"""Train/evaluate config entry: the key the encrypted global model is under."""
WEIGHT_KEY = "he-weight"
"""Reply metric: the weight the client multiplied its update by."""
SHARES_KEY = "distributed-dp-shares"
"""Train config under distributed DP: the clients sampled in the round (noise shares)."""
EXPECTED_CLIENTS_KEY = "distributed-dp-expected-clients"
"""Train config under distributed DP: ``m = q N``, the fixed denominator."""
NOISE_MULTIPLIER_KEY = "distributed-dp-noise-multiplier"
"""Train config under distributed DP: ``z``; the round's shares add up to ``N(0, (z C)^2)``."""

Layout = tuple[list[str], list[ArraySpec]]


def ciphertext_record(
    ciphertexts: Sequence[bytes],
    total_weight: float | None = None,
    layout: Layout | None = None,
    count: int | None = None,
) -> ArrayRecord:
    """Pack ciphertexts (and, for a global model, its total weight, layout, count, encoding)."""
    record = ArrayRecord(
        {f"{CIPHERTEXT_PREFIX}{i:05d}": bytes_array(data) for i, data in enumerate(ciphertexts)}
    )
    if total_weight is not None:
        record[TOTAL_WEIGHT_KEY] = Array(np.array([total_weight], dtype=np.float64))
    if count is not None:
        record[COUNT_KEY] = Array(np.array([count], dtype=np.int64))
    if layout is not None:
        names, specs = layout
        text = json.dumps(
            [
                [name, list(shape), str(dtype)]
                for name, (shape, dtype) in zip(names, specs, strict=True)
            ]
        )
        record[LAYOUT_KEY] = bytes_array(text.encode())
        record[ENCODING_KEY] = bytes_array(ENCODING.encode())
    return record


_NPY_MAGIC = b"\x93NUMPY\x01\x00"
_NPY_UINT8 = b"{'descr': '|u1', 'fortran_order': False, 'shape': ("


def bytes_array(data: bytes) -> Array:
    """Return ``data`` as a 1-D ``uint8`` Array (what ``Array(np.frombuffer(data))`` gives).

    The ``.npy`` header is numpy's own (``write_array_header_1_0``); the bytes are
    copied once, into the serialisation.
    """
    header = io.BytesIO()
    npy_format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (len(data),)}
    )
    return Array(
        dtype="uint8",
        shape=(len(data),),
        stype="numpy.ndarray",
        data=header.getvalue() + data,
    )


def bytes_of(array: Array) -> bytes:
    """Return the bytes of a 1-D ``uint8`` Array (the inverse of :func:`bytes_array`).

    Reads past the ``.npy`` header without parsing it with ``np.load``; any other
    serialisation falls back to ``array.numpy()``.
    """
    data = array.data
    if data[:8] == _NPY_MAGIC and len(data) >= 10:
        start = 10 + int.from_bytes(data[8:10], "little")
        header = data[10:start]
        if header.startswith(_NPY_UINT8):
            size = header[len(_NPY_UINT8) :].split(b",", 1)[0]
            if size.isdigit() and int(size) == len(data) - start:
                return data[start:]
    return array.numpy().tobytes()


def ciphertexts_of(record: ArrayRecord) -> list[bytes]:
    """Return the ciphertexts of a record, in order."""
    keys = sorted(k for k in record if k.startswith(CIPHERTEXT_PREFIX))
    return [bytes_of(record[k]) for k in keys]


def is_encrypted(record: ArrayRecord) -> bool:
    """Tell whether a global-model record is the encrypted form."""
    return TOTAL_WEIGHT_KEY in record


def total_weight_of(record: ArrayRecord) -> float:
    """Return the total weight an encrypted global model must be divided by."""
    return float(record[TOTAL_WEIGHT_KEY].numpy()[0])


def count_of(record: ArrayRecord) -> int | None:
    """Return the number of updates an encrypted global model sums (None if not recorded)."""
    return int(record[COUNT_KEY].numpy()[0]) if COUNT_KEY in record else None


def layout_of(record: ArrayRecord) -> Layout:
    """Return the names and specs an encrypted global model unpacks into."""
    entries = json.loads(bytes_of(record[LAYOUT_KEY]))
    return [name for name, _, _ in entries], [
        (tuple(shape), np.dtype(dtype)) for _, shape, dtype in entries
    ]


def decrypted_arrays(
    record: ArrayRecord, config: ConfigRecord, key: HEKey
) -> dict[str, np.ndarray]:
    """Return the plaintext arrays of an encrypted global model, by name.

    Raises
    ------
    HEError
        If it was written by another encoding, is under another key or its sum
        wrapped around the fixed-point range.
    """
    encoding = bytes_of(record[ENCODING_KEY]).decode() if ENCODING_KEY in record else None
    if encoding != ENCODING:
        found = (
            f"encoding {encoding!r}" if encoding else "no recorded encoding (an earlier version's)"
        )
        raise HEError(
            f"the encrypted global model has {found}; this version reads {ENCODING!r} (a "
            "checkpoint from an earlier version cannot be resumed)"
        )
    names, specs = layout_of(record)
    arrays = decrypt_arrays(
        key,
        ciphertexts_of(record),
        specs,
        total_weight_of(record),
        str(config.get(FINGERPRINT_KEY, "")),
        count=count_of(record),
    )
    return dict(zip(names, arrays, strict=True))


def decrypted_model(record: ArrayRecord, config: ConfigRecord, key: HEKey) -> ArrayRecord:
    """Return the plaintext global model of an encrypted one (see :func:`decrypted_arrays`)."""
    return ArrayRecord(
        {name: Array(a) for name, a in decrypted_arrays(record, config, key).items()}
    )


def encrypted_update(
    reply: RecordDict, received: Arrays, rule: LinearRule, key: HEKey
) -> RecordDict:
    """Return a train reply's content with its update weighted, finished and encrypted."""
    update = reply[ARRAYS_KEY]
    metrics = dict(reply[METRICS_KEY])
    weight = rule.weight(int(metrics[NUM_EXAMPLES_KEY]), metrics)
    payload = rule.finish([update[k].numpy() for k in update], received)
    ciphertexts = encrypt_arrays(key, payload, weight)
    return RecordDict(
        {
            UPDATE_KEY: ciphertext_record(ciphertexts),
            METRICS_KEY: MetricRecord({**metrics, WEIGHT_KEY: weight}),
            KEY_RECORD: ConfigRecord({"fingerprint": key.fingerprint}),
        }
    )


def share_config(share: NoiseShare) -> dict[str, Any]:
    """Return the train-config entries that tell a client its :class:`NoiseShare`."""
    return {
        SHARES_KEY: share.shares,
        EXPECTED_CLIENTS_KEY: share.expected_clients,
        NOISE_MULTIPLIER_KEY: share.noise_multiplier,
    }


def share_of(config: Mapping[str, Any], clipping_norm: float) -> NoiseShare:
    """Read the round's :class:`NoiseShare` from the train config (``C`` from the run config).

    Raises
    ------
    ValueError
        If an entry is missing or invalid.
    """
    missing = [
        k for k in (SHARES_KEY, EXPECTED_CLIENTS_KEY, NOISE_MULTIPLIER_KEY) if k not in config
    ]
    if missing:
        raise ValueError(f"the round config has no {', '.join(missing)} (distributed DP)")
    return NoiseShare(
        shares=int(config[SHARES_KEY]),
        expected_clients=float(config[EXPECTED_CLIENTS_KEY]),
        noise_multiplier=float(config[NOISE_MULTIPLIER_KEY]),
        clipping_norm=clipping_norm,
    )


def noisy_payload(
    update: Arrays,
    received: Arrays,
    rule: LinearRule,
    share: NoiseShare,
    rng: np.random.Generator,
) -> Arrays:
    """Return what a client encrypts under distributed DP (float64, already weighted).

    The update's change to ``received`` (or the gradient) is clipped to ``C``, gets this
    client's noise share ``N(0, (z C)^2 / n)`` and is finished by the strategy's rule;
    the payload is ``w * received + change`` with ``w = m / n``. The ``n`` payloads of a
    complete round sum to ``m * received + sum of changes``, so the sum divided by ``m``
    is ``received + (sum of clipped changes + N(0, (z C)^2)) / m``: central DP's noisy
    fixed-denominator mean, without anyone but the key holders seeing an update.

    Parameters
    ----------
    update : Arrays
        The client's trained arrays (or its gradient, for a gradient rule).
    received : Arrays
        The global model the client started from.
    rule : LinearRule
        The strategy's rule (its reference and affine finish; its weights are unused).
    share : NoiseShare
        The round's share: ``n``, ``m``, ``z`` and ``C``.
    rng : np.random.Generator
        Seeded from the node's secret and a fresh nonce.
    """
    reference = rule.reference(received)
    clipped, _ = clip_delta(update, reference, share.clipping_norm)
    noisy = add_noise(clipped, received, share.std, rng)
    finished = rule.finish(
        [r.astype(np.float64) + d for r, d in zip(reference, noisy, strict=True)], received
    )
    return [
        share.weight * c.astype(np.float64) + (np.asarray(f, np.float64) - c.astype(np.float64))
        for c, f in zip(received, finished, strict=True)
    ]


def noisy_encrypted_update(
    reply: RecordDict,
    received: Arrays,
    rule: LinearRule,
    key: HEKey,
    share: NoiseShare,
    rng: np.random.Generator,
    report_metrics: bool,
) -> RecordDict:
    """Return a train reply's content with its noisy, clipped update encrypted.

    Only ``num-examples = 1`` (the estimator weighs clients equally) and the weight
    leave the client, unless its node opts in to reporting its metrics
    (``report_metrics``), which ε does not cover.
    """
    update = reply[ARRAYS_KEY]
    payload = noisy_payload([update[k].numpy() for k in update], received, rule, share, rng)
    ciphertexts = encrypt_arrays(key, payload, 1.0)
    metrics: dict[str, Any] = dict(reply[METRICS_KEY]) if report_metrics else {NUM_EXAMPLES_KEY: 1}
    return RecordDict(
        {
            UPDATE_KEY: ciphertext_record(ciphertexts),
            METRICS_KEY: MetricRecord({**metrics, WEIGHT_KEY: share.weight}),
            KEY_RECORD: ConfigRecord({"fingerprint": key.fingerprint}),
        }
    )
