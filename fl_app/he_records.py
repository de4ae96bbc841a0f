"""How encrypted updates and encrypted global models travel in Flower records.

Ciphertexts are ``uint8`` arrays in an ``ArrayRecord``, so they are counted by the
bytes-on-the-wire figures and kept by checkpoints like any other array. The
encrypted global model replaces the plaintext arrays under the usual key; it holds
the encrypted weighted sum and the total weight to divide it by.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord

CIPHERTEXT_PREFIX = "he-ciphertext-"
TOTAL_WEIGHT_KEY = "he-total-weight"
UPDATE_KEY = "he-update"
"""Reply record holding a client's encrypted weighted update."""
KEY_RECORD = "he"
"""Reply ConfigRecord with the ``fingerprint`` of the key the update is under."""
FINGERPRINT_KEY = "he-fingerprint"
"""Train/evaluate config entry: the key the encrypted global model is under."""
WEIGHT_KEY = "he-weight"
"""Reply metric: the weight the client multiplied its update by."""


def ciphertext_record(
    ciphertexts: Sequence[bytes], total_weight: float | None = None
) -> ArrayRecord:
    """Pack ciphertexts (and the total weight of an encrypted global model)."""
    record = ArrayRecord(
        {
            f"{CIPHERTEXT_PREFIX}{i:05d}": Array(np.frombuffer(data, dtype=np.uint8))
            for i, data in enumerate(ciphertexts)
        }
    )
    if total_weight is not None:
        record[TOTAL_WEIGHT_KEY] = Array(np.array([total_weight], dtype=np.float64))
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
