"""CKKS homomorphic encryption of model updates with TenSEAL, without Flower.

Clients encrypt their (already weighted) updates under one shared secret key; whoever
holds only the *public* context (the encryption parameters, no key at all) can add
ciphertexts but can neither decrypt nor encrypt; clients holding the secret key
decrypt the sum. Encryption is symmetric (only key holders encrypt), which is twice as
fast as public-key encryption. Arrays and bytes in, arrays and bytes out.

Parameters (:data:`DEFAULT_PARAMETERS`) and why
-----------------------------------------------
Summation uses no multiplicative level, so the smallest ring that reaches 128-bit
security with room for the values suffices: ``N = 4096`` (the HomomorphicEncryption.org
standard allows at most 109 coefficient-modulus bits at 128-bit security; we use
58 + 40 = 98). The ciphertext lives at the 58-bit data prime; the 40-bit prime is
SEAL's special prime, used only for key switching, which summation never does (it
sets no ciphertext size). A ciphertext of 2,048 values serialises to about 63.7 KB
(7.8x float32; measured 7.6x with a 56-bit prime, 8.0x with 60 bits).

Fixed-point values, exact sums
------------------------------
Each weighted value is snapped to the grid ``2^-16`` before encryption, and the
decrypted sum is snapped to the same grid again. At scale ``2^35`` the CKKS error of
a sum of 100 fresh ciphertexts is about 1.2e-6 (measured; 2e-7 for 2), well under
half a grid step (7.6e-6), so the sum of the snapped values is recovered *exactly*:
the result does not depend on the random encryption noise (runs are deterministic)
and the aggregate differs from the plaintext one only by the snapping, at most
``2^-17 * n / W`` for ``n`` clients of total weight ``W`` (<= 7.6e-6 when every weight
is >= 1, e.g. example counts). The data prime bounds the plaintext:
``|sum| < 2^(58-1-35) = 2^22``; a client refuses an update whose weighted values exceed
``2^22 / 100`` so that up to 100 clients cannot overflow.

Packing several quantised values per slot is not used: a slot holds about
58 - 35 - 1 + 16 = 38 exact fixed-point bits including the range, too few for two
values on the 2^-16 grid once weighted by example counts and summed over 100 clients.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tenseal as ts

from privacy.files import write_new_file

MAX_CLIENTS = 100
"""Clients whose updates may be summed without overflowing the plaintext range."""


class HEError(ValueError):
    """A context or ciphertext is missing, invalid, or under another key."""


@dataclass(frozen=True)
class CKKSParameters:
    """CKKS encryption parameters (see the module docstring for the choice)."""

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (58, 40)
    scale_bits: int = 35
    grid_bits: int = 16

    @property
    def slots(self) -> int:
        """Values one ciphertext holds (``N / 2``)."""
        return self.poly_modulus_degree // 2

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude a (summed) slot value may take without wrapping around."""
        return float(2.0 ** (self.coeff_mod_bit_sizes[0] - 1 - self.scale_bits))

    def snap(self, values: np.ndarray) -> np.ndarray:
        """Round values to the fixed-point grid ``2^-grid_bits``."""
        step = 2.0**self.grid_bits
        return np.rint(values * step) / step


DEFAULT_PARAMETERS = CKKSParameters()

ArraySpec = tuple[tuple[int, ...], np.dtype]


KEY_FORMAT = "fl-privacy-he-key/1"


@dataclass(frozen=True)
class HEKey:
    """A CKKS context and the fingerprint of the secret key it belongs to.

    The secret form (clients) encrypts and decrypts; the public form (server) holds
    only the encryption parameters: it can add ciphertexts, nothing else.
    """

    context: ts.Context
    fingerprint: str

    def is_private(self) -> bool:
        """Tell whether this key holds the secret key."""
        return bool(self.context.is_private())


def _secret_fingerprint(context: ts.Context) -> str:
    data = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(KEY_FORMAT.encode() + data).hexdigest()[:32]


def generate_key(params: CKKSParameters = DEFAULT_PARAMETERS) -> HEKey:
    """Generate a new secret key (symmetric CKKS; no public, Galois or relin keys).

    Only clients encrypt, and they hold the secret key, so symmetric encryption is
    used: it is twice as fast as public-key encryption and leaves the server's
    context with nothing but the parameters.
    """
    context = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=params.poly_modulus_degree,
        coeff_mod_bit_sizes=list(params.coeff_mod_bit_sizes),
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    context.global_scale = 2.0**params.scale_bits
    return HEKey(context, _secret_fingerprint(context))


def serialize_key(key: HEKey, *, secret: bool) -> bytes:
    """Serialise a key: with the secret key (clients) or without it (server).

    A one-line JSON header (format, kind, fingerprint) precedes TenSEAL's bytes.
    Neither form holds Galois or relinearisation keys: summation needs none.
    """
    if secret and not key.is_private():
        raise HEError("this context has no secret key to save")
    header = {"format": KEY_FORMAT, "secret": secret, "fingerprint": key.fingerprint}
    data = key.context.serialize(
        save_public_key=False, save_secret_key=secret, save_galois_keys=False, save_relin_keys=False
    )
    return json.dumps(header).encode() + b"\n" + data


def load_key(data: bytes, *, secret: bool, source: str = "context") -> HEKey:
    """Load a serialised key, checking that it is the kind expected.

    Parameters
    ----------
    data : bytes
        What :func:`serialize_key` produced.
    secret : bool
        True if a secret context is expected (clients), False for a public one
        (server): loading a secret context where a public one belongs is refused.
    source : str
        Name used in error messages (usually the file path).

    Raises
    ------
    HEError
        If the bytes are not a key file, or of the other kind.
    """
    head, _, body = data.partition(b"\n")
    try:
        header = json.loads(head)
        if header.get("format") != KEY_FORMAT:
            raise ValueError(f"format {header.get('format')!r}, expected {KEY_FORMAT!r}")
        context = ts.context_from(body)
    except Exception as err:
        raise HEError(f"{source} is not an HE key file: {err}") from err
    if secret and not context.is_private():
        raise HEError(f"{source} is a public context; the clients need the secret one")
    if not secret and context.is_private():
        raise HEError(f"{source} holds the secret key; the server must only get the public context")
    if secret and header.get("fingerprint") != _secret_fingerprint(context):
        raise HEError(f"{source}: the fingerprint in its header does not match its key")
    return HEKey(context, str(header.get("fingerprint", "")))


def write_key_pair(
    secret_path: Path, public_path: Path, params: CKKSParameters = DEFAULT_PARAMETERS
) -> str:
    """Generate a key and write the secret and public context files (mode 0600).

    Returns
    -------
    str
        The key's fingerprint.

    Raises
    ------
    FileExistsError
        If either file exists: key files are never overwritten.
    """
    for path in (secret_path, public_path):
        if path.exists():
            raise FileExistsError(f"{path} exists; key files are never overwritten")
    key = generate_key(params)
    write_new_file(secret_path, serialize_key(key, secret=True))
    write_new_file(public_path, serialize_key(key, secret=False))
    return key.fingerprint


def array_specs(arrays: Sequence[np.ndarray]) -> list[ArraySpec]:
    """Return the shapes and dtypes needed to unpack ``arrays`` after decryption."""
    return [(tuple(a.shape), np.dtype(a.dtype)) for a in arrays]


def num_values(specs: Sequence[ArraySpec]) -> int:
    """Return the number of scalars the arrays of ``specs`` hold together."""
    return int(sum(int(np.prod(shape, dtype=np.int64)) for shape, _ in specs))


def num_ciphertexts(values: int, params: CKKSParameters = DEFAULT_PARAMETERS) -> int:
    """Return how many ciphertexts hold ``values`` scalars (``N / 2`` per ciphertext)."""
    return max(1, -(-values // params.slots))


def _chunk_sizes(values: int, params: CKKSParameters) -> list[int]:
    count = num_ciphertexts(values, params)
    return [min(params.slots, values - i * params.slots) for i in range(count)]


def encrypt_arrays(
    key: HEKey,
    arrays: Sequence[np.ndarray],
    weight: float = 1.0,
    params: CKKSParameters = DEFAULT_PARAMETERS,
) -> list[bytes]:
    """Multiply the arrays by ``weight`` in plaintext, snap, pack and encrypt them.

    The weighted values are snapped to the fixed-point grid (see the module
    docstring), so that sums decrypt exactly. All arrays are flattened into one
    vector, cut into ``N / 2``-value pieces, one ciphertext each (the fewest
    possible). Weighting before encryption costs no multiplicative level.

    Raises
    ------
    HEError
        If a weighted value is not finite or so large that summing
        :data:`MAX_CLIENTS` such updates could overflow the plaintext range.
    """
    flat = np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]) * weight
    if not np.all(np.isfinite(flat)):
        raise HEError("the weighted update contains NaN or infinity")
    peak = float(np.max(np.abs(flat))) if flat.size else 0.0
    limit = params.max_abs_sum / MAX_CLIENTS
    if peak > limit:
        raise HEError(
            f"the weighted update reaches |value| = {peak:.4g}; at most {limit:.4g} is "
            f"allowed so that the sum of {MAX_CLIENTS} clients cannot overflow"
        )
    flat = params.snap(flat)
    ciphertexts = []
    start = 0
    for size in _chunk_sizes(flat.size, params):
        vector = ts.ckks_vector(key.context, flat[start : start + size].tolist())
        ciphertexts.append(vector.serialize())
        start += size
    return ciphertexts


def _load_vectors(
    context: ts.Context, ciphertexts: Sequence[bytes], values: int, params: CKKSParameters
) -> list[ts.CKKSVector]:
    sizes = _chunk_sizes(values, params)
    if len(ciphertexts) != len(sizes):
        raise HEError(f"{len(ciphertexts)} ciphertexts where {len(sizes)} are expected")
    vectors = []
    for index, (data, size) in enumerate(zip(ciphertexts, sizes, strict=True)):
        try:
            vector = ts.ckks_vector_from(context, bytes(data))
        except Exception as err:
            raise HEError(f"ciphertext {index} cannot be read: {err}") from err
        if vector.size() != size:
            raise HEError(f"ciphertext {index} holds {vector.size()} values, expected {size}")
        vectors.append(vector)
    return vectors


class EncryptedSum:
    """Running sum of encrypted updates; needs only the public context.

    Parameters
    ----------
    key : HEKey
        The public (or secret) key the updates were encrypted under.
    values : int
        Scalars per update (see :func:`num_values`).
    params : CKKSParameters
        The parameters of the context.
    """

    def __init__(
        self, key: HEKey, values: int, params: CKKSParameters = DEFAULT_PARAMETERS
    ) -> None:
        self.key = key
        self.values = values
        self.params = params
        self.count = 0
        self._vectors: list[ts.CKKSVector] | None = None

    def add(self, ciphertexts: Sequence[bytes]) -> None:
        """Add one update; on any error the sum is left unchanged.

        Raises
        ------
        HEError
            For a wrong number of ciphertexts, unreadable bytes, a wrong value count,
            or ciphertexts that cannot be added (other parameters or scale).
        """
        vectors = _load_vectors(self.key.context, ciphertexts, self.values, self.params)
        if self._vectors is not None:
            try:
                vectors = [a + b for a, b in zip(self._vectors, vectors, strict=True)]
            except Exception as err:
                raise HEError(f"ciphertexts cannot be added to the sum: {err}") from err
        self._vectors = vectors
        self.count += 1

    def ciphertexts(self) -> list[bytes]:
        """Return the serialised sum."""
        if self._vectors is None:
            raise HEError("no update was added")
        return [v.serialize() for v in self._vectors]


def sum_ciphertexts(
    key: HEKey,
    updates: Sequence[Sequence[bytes]],
    values: int,
    params: CKKSParameters = DEFAULT_PARAMETERS,
) -> list[bytes]:
    """Return the encrypted sum of several encrypted updates (public context suffices)."""
    total = EncryptedSum(key, values, params)
    for update in updates:
        total.add(update)
    return total.ciphertexts()


def decrypt_arrays(
    key: HEKey,
    ciphertexts: Sequence[bytes],
    specs: Sequence[ArraySpec],
    divisor: float = 1.0,
    expected_fingerprint: str = "",
    params: CKKSParameters = DEFAULT_PARAMETERS,
) -> list[np.ndarray]:
    """Decrypt, snap to the fixed-point grid, divide by ``divisor``, unpack into ``specs``.

    Integer arrays are rounded to the nearest integer.

    Raises
    ------
    HEError
        If the context has no secret key, ``expected_fingerprint`` names another
        key, the divisor is not positive, or the ciphertexts do not match ``specs``.
    """
    if not key.is_private():
        raise HEError("decryption needs the secret context")
    if expected_fingerprint and expected_fingerprint != key.fingerprint:
        raise HEError(
            f"the ciphertexts are under key {expected_fingerprint}, the secret context "
            f"holds key {key.fingerprint}"
        )
    if not (divisor > 0 and np.isfinite(divisor)):
        raise HEError(f"divisor must be a finite number > 0, got {divisor!r}")
    vectors = _load_vectors(key.context, ciphertexts, num_values(specs), params)
    decrypted = np.concatenate([np.asarray(v.decrypt(), dtype=np.float64) for v in vectors])
    flat = params.snap(decrypted) / divisor
    arrays = []
    start = 0
    for shape, dtype in specs:
        size = int(np.prod(shape, dtype=np.int64))
        piece = flat[start : start + size].reshape(shape)
        start += size
        if np.issubdtype(dtype, np.integer):
            piece = np.rint(piece)
        arrays.append(piece.astype(dtype))
    return arrays
