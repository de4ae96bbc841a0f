"""How encrypted updates and encrypted global models travel in Flower records, both ways.

Ciphertexts are ``uint8`` arrays in an ``ArrayRecord``, so they are counted by the
bytes-on-the-wire figures and kept by checkpoints like any other array. The
encrypted global model replaces the plaintext arrays under the usual key; it holds
the encrypted weighted sum, the total weight to divide it by, and the layout (names,
shapes, dtypes) to unpack it with, so a client needs nothing else to decrypt it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict

from privacy.he import ArraySpec, HEKey, decrypt_arrays, encrypt_arrays
from strategies.core import Arrays
from strategies.linear import LinearRule
from strategies.protocol import ARRAYS_KEY, METRICS_KEY, NUM_EXAMPLES_KEY

CIPHERTEXT_PREFIX = "he-ciphertext-"
TOTAL_WEIGHT_KEY = "he-total-weight"
LAYOUT_KEY = "he-layout"
UPDATE_KEY = "he-update"
"""Reply record holding a client's encrypted weighted update."""
KEY_RECORD = "he"
"""Reply ConfigRecord with the ``fingerprint`` of the key the update is under."""
FINGERPRINT_KEY = "he-fingerprint"
"""Train/evaluate config entry: the key the encrypted global model is under."""
WEIGHT_KEY = "he-weight"
"""Reply metric: the weight the client multiplied its update by."""

Layout = tuple[list[str], list[ArraySpec]]


def ciphertext_record(
    ciphertexts: Sequence[bytes],
    total_weight: float | None = None,
    layout: Layout | None = None,
) -> ArrayRecord:
    """Pack ciphertexts (and, for a global model, its total weight and layout)."""
    record = ArrayRecord(
        {
            f"{CIPHERTEXT_PREFIX}{i:05d}": Array(np.frombuffer(data, dtype=np.uint8))
            for i, data in enumerate(ciphertexts)
        }
    )
    if total_weight is not None:
        record[TOTAL_WEIGHT_KEY] = Array(np.array([total_weight], dtype=np.float64))
    if layout is not None:
        names, specs = layout
        text = json.dumps(
            [
                [name, list(shape), str(dtype)]
                for name, (shape, dtype) in zip(names, specs, strict=True)
            ]
        )
        record[LAYOUT_KEY] = Array(np.frombuffer(text.encode(), dtype=np.uint8))
    return record


def ciphertexts_of(record: ArrayRecord) -> list[bytes]:
    """Return the ciphertexts of a record, in order."""
    keys = sorted(k for k in record if k.startswith(CIPHERTEXT_PREFIX))
    return [record[k].numpy().tobytes() for k in keys]


def is_encrypted(record: ArrayRecord) -> bool:
    """Tell whether a global-model record is the encrypted form."""
    return TOTAL_WEIGHT_KEY in record


def total_weight_of(record: ArrayRecord) -> float:
    """Return the total weight an encrypted global model must be divided by."""
    return float(record[TOTAL_WEIGHT_KEY].numpy()[0])


def layout_of(record: ArrayRecord) -> Layout:
    """Return the names and specs an encrypted global model unpacks into."""
    entries = json.loads(record[LAYOUT_KEY].numpy().tobytes())
    return [name for name, _, _ in entries], [
        (tuple(shape), np.dtype(dtype)) for _, shape, dtype in entries
    ]


def decrypted_model(record: ArrayRecord, config: ConfigRecord, key: HEKey) -> ArrayRecord:
    """Return the plaintext global model of an encrypted one."""
    names, specs = layout_of(record)
    arrays = decrypt_arrays(
        key,
        ciphertexts_of(record),
        specs,
        total_weight_of(record),
        str(config.get(FINGERPRINT_KEY, "")),
    )
    return ArrayRecord({name: Array(a) for name, a in zip(names, arrays, strict=True)})


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
