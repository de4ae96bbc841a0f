"""File format of an encrypted model: ciphertexts plus what is needed to unpack them.

An ``.npz`` archive (no pickle, so loading one never runs code) holding one ``uint8``
array per ciphertext, and a JSON header: the key fingerprint, the total weight the
sum must be divided by, the number of updates summed (checked against the check slots,
:func:`privacy.he.check_sum`), the encoding (:data:`privacy.he.ENCODING`) and the names,
shapes and dtypes of the arrays. Format ``/3`` holds two values per complex slot;
``/2`` (one value per slot) and ``/1`` (no check slot) files are refused by name.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.files import write_new_file
from privacy.he import ENCODING, ArraySpec, HEError, HEKey, decrypt_arrays

FORMAT = "fl-privacy-he-model/3"
_HEADER = "header"
_CIPHERTEXT = "ciphertext-"


@dataclass(frozen=True)
class EncryptedModel:
    """An encrypted global model: ``decrypt(ciphertexts) / total_weight`` are its arrays.

    ``count`` is the number of updates the ciphertexts sum (None: unknown, then only
    the check slots' agreement is checked).
    """

    names: list[str]
    specs: list[ArraySpec]
    ciphertexts: list[bytes]
    total_weight: float
    fingerprint: str
    count: int | None = None

    def to_bytes(self) -> bytes:
        """Serialise to the ``.npz`` format."""
        header = {
            "format": FORMAT,
            "encoding": ENCODING,
            "fingerprint": self.fingerprint,
            "total_weight": self.total_weight,
            "count": self.count,
            "arrays": [
                {"name": name, "shape": list(shape), "dtype": str(dtype)}
                for name, (shape, dtype) in zip(self.names, self.specs, strict=True)
            ],
        }
        members = {_HEADER: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}
        for index, data in enumerate(self.ciphertexts):
            members[f"{_CIPHERTEXT}{index:05d}"] = np.frombuffer(data, dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **members)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes, source: str = "encrypted model") -> EncryptedModel:
        """Parse what :meth:`to_bytes` wrote.

        Raises
        ------
        HEError
            If the bytes are not an encrypted model of this format.
        """
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                header = json.loads(archive[_HEADER].tobytes())
                names = sorted(k for k in archive.files if k.startswith(_CIPHERTEXT))
                ciphertexts = [archive[k].tobytes() for k in names]
        except Exception as err:
            raise HEError(f"{source} is not an encrypted model file: {err}") from err
        if header.get("format") != FORMAT or header.get("encoding") != ENCODING:
            raise HEError(
                f"{source} has format {header.get('format')!r} (encoding "
                f"{header.get('encoding')!r}), expected {FORMAT!r} ({ENCODING!r})"
            )
        arrays = header["arrays"]
        return cls(
            names=[a["name"] for a in arrays],
            specs=[(tuple(a["shape"]), np.dtype(a["dtype"])) for a in arrays],
            ciphertexts=ciphertexts,
            total_weight=float(header["total_weight"]),
            fingerprint=str(header["fingerprint"]),
            count=None if header.get("count") is None else int(header["count"]),
        )

    def decrypt(self, key: HEKey) -> dict[str, np.ndarray]:
        """Decrypt with the secret key; return the arrays by name.

        Raises
        ------
        HEError
            If the key is another one, or the sum wrapped around the fixed-point range.
        """
        arrays = decrypt_arrays(
            key, self.ciphertexts, self.specs, self.total_weight, self.fingerprint, count=self.count
        )
        return dict(zip(self.names, arrays, strict=True))

    def save(self, path: Path) -> None:
        """Write the model to a new file (an existing file is never replaced)."""
        write_new_file(path, self.to_bytes(), mode=0o644)
