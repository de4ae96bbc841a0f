"""File format of an encrypted model: ciphertexts plus what is needed to unpack them.

An ``.npz`` archive (no pickle, so loading one never runs code) holding one ``uint8``
array per ciphertext, and a JSON header: the key fingerprint, the total weight the
sum must be divided by, and the names, shapes and dtypes of the arrays.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privacy.files import write_new_file
from privacy.he import ArraySpec, HEError, HEKey, decrypt_arrays

FORMAT = "fl-privacy-he-model/1"
_HEADER = "header"
_CIPHERTEXT = "ciphertext-"


@dataclass(frozen=True)
class EncryptedModel:
    """An encrypted global model: ``decrypt(ciphertexts) / total_weight`` are its arrays."""

    names: list[str]
    specs: list[ArraySpec]
    ciphertexts: list[bytes]
    total_weight: float
    fingerprint: str

    def to_bytes(self) -> bytes:
        """Serialise to the ``.npz`` format."""
        header = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "total_weight": self.total_weight,
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
        if header.get("format") != FORMAT:
            raise HEError(f"{source} has format {header.get('format')!r}, expected {FORMAT!r}")
        arrays = header["arrays"]
        return cls(
            names=[a["name"] for a in arrays],
            specs=[(tuple(a["shape"]), np.dtype(a["dtype"])) for a in arrays],
            ciphertexts=ciphertexts,
            total_weight=float(header["total_weight"]),
            fingerprint=str(header["fingerprint"]),
        )

    def decrypt(self, key: HEKey) -> dict[str, np.ndarray]:
        """Decrypt with the secret key; return the arrays by name."""
        arrays = decrypt_arrays(
            key, self.ciphertexts, self.specs, self.total_weight, self.fingerprint
        )
        return dict(zip(self.names, arrays, strict=True))

    def save(self, path: Path) -> None:
        """Write the model to a new file (an existing file is never replaced)."""
        write_new_file(path, self.to_bytes(), mode=0o644)
