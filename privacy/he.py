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
59 + 40 = 99). The ciphertext lives at the 59-bit data prime; the 40-bit prime is
SEAL's special prime, used only for key switching, which summation never does (it
sets no ciphertext size).

Encoding: two values per slot, seeded uploads (:data:`ENCODING`)
----------------------------------------------------------------
A CKKS slot holds a *complex* number; the encoding puts two consecutive values in
the real and the imaginary part of one slot, so one ciphertext carries ``N = 4096``
values (2,048 slots) instead of 2,048: half the ciphertexts, half the encryption,
addition and decryption work and half the bytes per value, at the same precision (the
CKKS noise is the same in both parts; measured below). Symmetric encryption draws
the ciphertext's uniformly random half from a PRNG seed, and SEAL's *seeded*
serialisation sends the 64-byte seed instead of that half: a fresh update is
≈ 32 KB for 4,094 values (1.97x float32; 7.8x before both changes). The server
expands the seed when it loads the update; the sum it sends back is a full
ciphertext (≈ 64 KB, 3.9x float32). TenSEAL's ``ckks_vector`` encodes real values
only and keeps no seed, so encoding and encryption use SEAL's own API as TenSEAL
bundles it (``tenseal.sealapi``); the ciphertexts travel and are added as ordinary
TenSEAL ``CKKSVector`` bytes.

Fixed-point values, exact sums
------------------------------
Each weighted value is snapped to the grid ``2^-16`` before encryption, and the
decrypted sum is snapped to the same grid again. At scale ``2^35`` the CKKS error of
a sum of 100 fresh ciphertexts is about 1.5e-7 (measured, both parts of a slot), well
under half a grid step (7.6e-6), so the sum of the snapped values is recovered
*exactly*: the result does not depend on the random encryption noise (runs are
deterministic) and the aggregate differs from the plaintext one only by the snapping,
at most ``2^-17 * n / W`` for ``n`` clients of total weight ``W`` (<= 7.6e-6 when every
weight is >= 1, e.g. example counts).

The data prime bounds the plaintext polynomial's coefficients: ``|c| < 2^(59-1-35) =
2^23``. A coefficient is at most ``sqrt(2)`` times the largest real or imaginary part
of the slots, so values are limited to ``|sum| < 2^22`` (:attr:`CKKSParameters.max_abs_sum`,
as with one real value per slot and a 58-bit prime before); a client refuses an update
whose weighted values exceed ``2^22 / 100`` so that up to :data:`MAX_CLIENTS` = 100
clients cannot overflow, and :class:`EncryptedSum` refuses a 101st update.

Detecting a sum that wrapped around
-----------------------------------
A sum beyond the range does not fail: it wraps around. So the last slot of every
ciphertext is a *check slot*: each update puts 1 in both its parts, and the aggregate
carries, in plaintext, the number of updates summed. The decrypting client refuses
the sum unless both parts of every check slot read exactly that count and every value
is within ``count x 2^22 / 100`` (what that many admissible updates can reach). A wrap
adds a multiple of 2^24 to a coefficient of the plaintext polynomial, which moves
*every* slot, the check slot included, by that much in the complex plane: one of its
two parts moves by at least 2^24 / sqrt(2), and the check fails. Two values in 4,096
are the cost.

At least :data:`MIN_CLIENTS` = 3 updates per sum: every key holder decrypts the sum, and
with two updates each client would subtract its own and read the other's exactly.

Packing several quantised values per slot part is not used: a part holds about
59 - 35 - 2 + 16 = 38 exact fixed-point bits including the range, too few for two
values on the 2^-16 grid once weighted by example counts and summed over 100 clients.
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import shutil
import struct
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import tenseal as ts
import tenseal.sealapi as sealapi

from privacy.files import write_new_file

MAX_CLIENTS = 100
"""Clients whose updates may be summed without overflowing the plaintext range."""
MIN_CLIENTS = 3
"""Fewest updates a released sum may hold: with 2, each client reads the other's update."""
CHECK_VALUE = 1.0
"""What every update puts in both parts of the check slot (the last slot) of each ciphertext."""
ENCODING = "ckks-complex-slots/1"
"""How values are laid out in ciphertexts (two per complex slot, check slot last).

Carried with every encrypted global model, so that ciphertexts written by an earlier
encoding are refused by name instead of decrypting to nonsense.
"""
CHECKS_PER_CIPHERTEXT = 2
"""Values of each ciphertext taken by its check slot (its real and imaginary part)."""


class HEError(ValueError):
    """A context or ciphertext is missing, invalid, or under another key."""


@dataclass(frozen=True)
class CKKSParameters:
    """CKKS encryption parameters (see the module docstring for the choice)."""

    poly_modulus_degree: int = 4096
    coeff_mod_bit_sizes: tuple[int, ...] = (59, 40)
    scale_bits: int = 35
    grid_bits: int = 16

    @property
    def slots(self) -> int:
        """Complex slots of one ciphertext (``N / 2``), its check slot included."""
        return self.poly_modulus_degree // 2

    @property
    def values_per_ciphertext(self) -> int:
        """Real values one ciphertext holds, two per slot (``N``), check slot included."""
        return 2 * self.slots

    @property
    def data_values(self) -> int:
        """Update values one ciphertext holds: every value but the check slot's two."""
        return self.values_per_ciphertext - CHECKS_PER_CIPHERTEXT

    @property
    def max_abs_sum(self) -> float:
        """Largest magnitude a (summed) value may take without wrapping around.

        Half the coefficient range ``2^(q0 - 1 - scale)``: a coefficient is at most
        ``sqrt(2)`` times the largest real or imaginary part of the slots.
        """
        return float(2.0 ** (self.coeff_mod_bit_sizes[0] - 2 - self.scale_bits))

    @property
    def max_abs_update(self) -> float:
        """Largest magnitude of one (weighted) update value: ``max_abs_sum / MAX_CLIENTS``."""
        return self.max_abs_sum / MAX_CLIENTS

    def snap(self, values: np.ndarray) -> np.ndarray:
        """Round values to the fixed-point grid ``2^-grid_bits``."""
        step = 2.0**self.grid_bits
        return np.rint(values * step) / step

    def snap_(self, values: np.ndarray) -> np.ndarray:
        """Round a float64 array to the fixed-point grid in place (as :meth:`snap`); return it."""
        step = 2.0**self.grid_bits
        np.multiply(values, step, out=values)
        np.rint(values, out=values)
        np.divide(values, step, out=values)
        return values


DEFAULT_PARAMETERS = CKKSParameters()

ArraySpec = tuple[tuple[int, ...], np.dtype]


KEY_FORMAT = "fl-privacy-he-key/1"


class _Codec:
    """SEAL's encoder, and with the secret key its symmetric encryptor and decryptor."""

    def __init__(self, context: ts.Context) -> None:
        seal_context = context.seal_context().data
        self.scale = context.global_scale
        self.encoder = sealapi.CKKSEncoder(seal_context)
        self.encryptor = self.decryptor = None
        if context.is_private():
            secret = context.secret_key().data
            self.encryptor = sealapi.Encryptor(seal_context, secret)
            self.decryptor = sealapi.Decryptor(seal_context, secret)


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

    @cached_property
    def codec(self) -> _Codec:
        """SEAL's encoder, encryptor and decryptor for this key (built once per key)."""
        return _Codec(self.context)


def _secret_fingerprint(context: ts.Context) -> str:
    data = context.serialize(
        save_public_key=False, save_secret_key=True, save_galois_keys=False, save_relin_keys=False
    )
    return hashlib.sha256(KEY_FORMAT.encode() + data).hexdigest()[:32]


def generate_key(params: CKKSParameters = DEFAULT_PARAMETERS) -> HEKey:
    """Generate a new secret key (symmetric CKKS; no public, Galois or relin keys).

    Only clients encrypt, and they hold the secret key, so symmetric encryption is
    used: it is twice as fast as public-key encryption, halves the uploaded
    ciphertexts (seeded serialisation) and leaves the server's context with nothing
    but the parameters.
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


def _context_parameters(context: ts.Context) -> tuple[int, tuple[int, ...], float]:
    parms = context.seal_context().data.key_context_data().parms()
    bits = tuple(int(m.bit_count()) for m in parms.coeff_modulus())
    return int(parms.poly_modulus_degree()), bits, float(context.global_scale)


def load_key(
    data: bytes,
    *,
    secret: bool,
    source: str = "context",
    params: CKKSParameters = DEFAULT_PARAMETERS,
) -> HEKey:
    """Load a serialised key, checking that it is the kind and the parameters expected.

    Parameters
    ----------
    data : bytes
        What :func:`serialize_key` produced.
    secret : bool
        True if a secret context is expected (clients), False for a public one
        (server): loading a secret context where a public one belongs is refused.
    source : str
        Name used in error messages (usually the file path).
    params : CKKSParameters
        The parameters the key must have been generated with (the encoding's range
        and precision rest on them).

    Raises
    ------
    HEError
        If the bytes are not a key file, of the other kind, or of other parameters.
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
    degree, bits, scale = _context_parameters(context)
    wanted = (params.poly_modulus_degree, tuple(params.coeff_mod_bit_sizes), 2.0**params.scale_bits)
    if (degree, bits, scale) != wanted:
        raise HEError(
            f"{source} was generated for N = {degree}, coefficient modulus {list(bits)}, scale "
            f"2^{np.log2(scale):g}; this version encrypts with N = {wanted[0]}, "
            f"{list(wanted[1])}, 2^{params.scale_bits}: generate new keys with 'fl-he keygen'"
        )
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
    """Return how many ciphertexts hold ``values`` scalars (``N - 2`` per ciphertext)."""
    return max(1, -(-values // params.data_values))


# --- seeded serialisation ---------------------------------------------------------------
# SEAL's bindings save a (seeded) ciphertext only to a file path. An anonymous in-memory
# file (memfd, never on disk) serves as that path; where there is none (not Linux), a file
# in a private temporary directory. One per thread, and a new one after a fork.


class _Scratch(threading.local):
    pid: int | None = None
    fd: int = -1
    path: str = ""


_SCRATCH = _Scratch()
_SCRATCH_DIRS: list[str] = []


def _remove_scratch_dirs() -> None:
    for directory in _SCRATCH_DIRS:
        shutil.rmtree(directory, ignore_errors=True)


atexit.register(_remove_scratch_dirs)


def _scratch_file() -> _Scratch:
    scratch = _SCRATCH
    if scratch.pid == os.getpid():
        return scratch
    fd, path = -1, ""
    memfd_create = getattr(os, "memfd_create", None)
    if memfd_create is not None:
        try:
            fd = memfd_create("he-ciphertext", os.MFD_CLOEXEC)
            path = f"/proc/self/fd/{fd}"
            if not os.path.exists(path):
                os.close(fd)
                fd = -1
        except OSError:
            fd = -1
    if fd < 0:
        directory = tempfile.mkdtemp(prefix="he-scratch-")
        _SCRATCH_DIRS.append(directory)
        path = os.path.join(directory, "ciphertext")
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    scratch.pid, scratch.fd, scratch.path = os.getpid(), fd, path
    return scratch


def _saved_bytes(serializable: object) -> bytes:
    """Return what a SEAL object's ``save(path)`` writes (seeded form for fresh encryptions)."""
    scratch = _scratch_file()
    serializable.save(scratch.path)  # type: ignore[attr-defined]
    if hasattr(os, "pread"):
        return os.pread(scratch.fd, os.fstat(scratch.fd).st_size, 0)
    with open(scratch.path, "rb") as handle:  # pragma: no cover - platforms without pread
        return handle.read()


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _vector_bytes(ciphertext: bytes, size: int, scale: float) -> bytes:
    """Wrap one SEAL ciphertext as TenSEAL's ``CKKSVectorProto`` (sizes, ciphertexts, scale)."""
    sizes = _varint(size)
    return b"".join(
        (
            b"\x0a",
            _varint(len(sizes)),
            sizes,
            b"\x12",
            _varint(len(ciphertext)),
            ciphertext,
            b"\x19",
            struct.pack("<d", scale),
        )
    )


# --- encryption ---------------------------------------------------------------------------


def _weighted_flat(
    arrays: Sequence[np.ndarray], weight: float, params: CKKSParameters
) -> np.ndarray:
    """Return the arrays flattened into one float64 vector, times ``weight``, checked, snapped."""
    sizes = [int(np.size(a)) for a in arrays]
    flat = np.empty(sum(sizes), dtype=np.float64)
    start = 0
    for array, size in zip(arrays, sizes, strict=True):
        flat[start : start + size] = np.asarray(array).reshape(-1)  # cast to float64 here
        start += size
    flat *= weight
    peak = float(np.max(np.abs(flat))) if flat.size else 0.0
    if not np.isfinite(peak):
        raise HEError("the weighted update contains NaN or infinity")
    limit = params.max_abs_update
    if peak > limit:
        raise HEError(
            f"the weighted update reaches |value| = {peak:.4g}; at most {limit:.4g} is "
            f"allowed so that the sum of {MAX_CLIENTS} clients cannot overflow"
        )
    return params.snap_(flat)


def _pack(flat: np.ndarray, params: CKKSParameters) -> np.ndarray:
    """Lay ``flat`` out as complex slot rows, one per ciphertext, check slot last (zero padding)."""
    count = num_ciphertexts(flat.size, params)
    rows = np.zeros((count, params.values_per_ciphertext), dtype=np.float64)
    data = params.data_values
    full, rest = divmod(flat.size, data)
    rows[:full, :data] = flat[: full * data].reshape(full, data)
    if rest:
        rows[full, :rest] = flat[full * data :]
    rows[:, data:] = CHECK_VALUE
    return rows.view(np.complex128)  # (re, im) pairs: two values per slot, no copy


def encrypt_packed(
    key: HEKey, flat: np.ndarray, params: CKKSParameters = DEFAULT_PARAMETERS
) -> list[bytes]:
    """Encrypt a flat float64 vector as it is (no weighting, snapping or range check).

    :func:`encrypt_arrays` is the checked way in; this is the packing and encryption
    step alone (two values per slot, check slot last, seeded serialisation), one
    ciphertext per ``N - 2`` values.
    """
    if not key.is_private():
        raise HEError("encryption needs the secret context (symmetric encryption)")
    codec = key.codec
    ciphertexts = []
    for row in _pack(np.asarray(flat, dtype=np.float64).reshape(-1), params):
        plain = sealapi.Plaintext()
        codec.encoder.encode(row.tolist(), codec.scale, plain)
        seeded = codec.encryptor.encrypt_symmetric(plain)
        ciphertexts.append(_vector_bytes(_saved_bytes(seeded), params.slots, codec.scale))
    return ciphertexts


def encrypt_arrays(
    key: HEKey,
    arrays: Sequence[np.ndarray],
    weight: float = 1.0,
    params: CKKSParameters = DEFAULT_PARAMETERS,
) -> list[bytes]:
    """Multiply the arrays by ``weight`` in plaintext, snap, pack and encrypt them.

    The weighted values are snapped to the fixed-point grid (see the module
    docstring), so that sums decrypt exactly. All arrays are flattened into one
    vector, cut into ``N - 2``-value pieces, one ciphertext each (the fewest
    possible: two values per complex slot), each followed by the check slot
    (:data:`CHECK_VALUE` in both parts). Weighting before encryption costs no
    multiplicative level.

    Raises
    ------
    HEError
        If a weighted value is not finite or so large that summing
        :data:`MAX_CLIENTS` such updates could overflow the plaintext range.
    """
    return encrypt_packed(key, _weighted_flat(arrays, weight, params), params)


def _load_vectors(
    context: ts.Context, ciphertexts: Sequence[bytes], values: int, params: CKKSParameters
) -> list[ts.CKKSVector]:
    expected = num_ciphertexts(values, params)
    if len(ciphertexts) != expected:
        raise HEError(f"{len(ciphertexts)} ciphertexts where {expected} are expected")
    vectors = []
    for index, data in enumerate(ciphertexts):
        try:
            vector = ts.ckks_vector_from(context, data if type(data) is bytes else bytes(data))
        except Exception as err:
            raise HEError(f"ciphertext {index} cannot be read: {err}") from err
        if vector.size() != params.slots:
            raise HEError(
                f"ciphertext {index} holds {vector.size()} slots, expected {params.slots} "
                f"(encoding {ENCODING})"
            )
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
    max_count : int
        Updates the sum accepts (at most :data:`MAX_CLIENTS`, what the encoding allows).
    """

    def __init__(
        self,
        key: HEKey,
        values: int,
        params: CKKSParameters = DEFAULT_PARAMETERS,
        max_count: int = MAX_CLIENTS,
    ) -> None:
        if not 1 <= max_count <= MAX_CLIENTS:
            raise HEError(
                f"max_count = {max_count} is invalid: the encoding sums 1 to {MAX_CLIENTS} updates"
            )
        self.key = key
        self.values = values
        self.params = params
        self.max_count = max_count
        self.count = 0
        self._vectors: list[ts.CKKSVector] | None = None

    def add(self, ciphertexts: Sequence[bytes]) -> None:
        """Add one update in place; on any error the sum is left unchanged.

        Raises
        ------
        HEError
            For an update beyond ``max_count`` (the encoding's :data:`MAX_CLIENTS`), a
            wrong number of ciphertexts, unreadable bytes, a wrong slot count, or
            ciphertexts that cannot be added (other parameters or scale).
        """
        if self.count >= self.max_count:
            raise HEError(
                f"the sum already holds {self.count} updates; the fixed-point encoding sums at "
                f"most {self.max_count} without overflowing (MAX_CLIENTS)"
            )
        vectors = _load_vectors(self.key.context, ciphertexts, self.values, self.params)
        if self._vectors is None:
            self._vectors = vectors
        else:
            added = 0
            try:
                for total, vector in zip(self._vectors, vectors, strict=True):
                    total.add_(vector)
                    added += 1
            except Exception as err:
                for total, vector in zip(self._vectors[:added], vectors[:added], strict=True):
                    total.sub_(vector)  # exact: ciphertext arithmetic is modular
                raise HEError(f"ciphertexts cannot be added to the sum: {err}") from err
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


def check_sum(
    check_slots: np.ndarray,
    values: np.ndarray,
    count: int | None,
    params: CKKSParameters = DEFAULT_PARAMETERS,
) -> None:
    """Refuse a decrypted (snapped) sum that wrapped around the fixed-point range.

    Parameters
    ----------
    check_slots : np.ndarray
        Both parts of the check slot of every ciphertext (each update adds
        :data:`CHECK_VALUE` to each).
    values : np.ndarray
        The summed update values.
    count : int or None
        How many updates the sum claims to hold (the aggregate carries it); None when
        unknown: then every check slot must read the same whole number of updates.

    Raises
    ------
    HEError
        Naming the value that shows the wrap and what the count allows.
    """
    if count is None:
        first = float(check_slots[0]) if check_slots.size else 0.0
        if first != np.rint(first) or not 1 <= first <= MAX_CLIENTS:
            raise HEError(
                f"the decrypted sum wrapped around the fixed-point range: its check slot reads "
                f"{first:.6g}, not a number of updates from 1 to {MAX_CLIENTS}"
            )
        count = int(first)
    if not 1 <= count <= MAX_CLIENTS:
        raise HEError(
            f"the aggregate claims {count} updates; an encrypted sum holds 1 to {MAX_CLIENTS}"
        )
    expected = count * CHECK_VALUE
    wrong = check_slots[check_slots != expected]
    if wrong.size:
        raise HEError(
            f"the decrypted sum wrapped around the fixed-point range: a check slot reads "
            f"{float(wrong[0]):.6g} where the {count} updates summed put {expected:g}; "
            "the updates were too large or too many"
        )
    limit = count * params.max_abs_update
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak > limit:
        raise HEError(
            f"the decrypted sum wrapped around the fixed-point range: it reaches |value| = "
            f"{peak:.6g}, more than the {limit:.6g} that {count} updates of at most "
            f"{params.max_abs_update:.6g} each can reach"
        )


def _decrypt_rows(
    key: HEKey, vectors: Sequence[ts.CKKSVector], params: CKKSParameters
) -> np.ndarray:
    """Decrypt and decode every ciphertext: one row of ``N`` values (slot parts) each."""
    codec = key.codec
    rows = np.empty((len(vectors), params.slots), dtype=np.complex128)
    for index, vector in enumerate(vectors):
        (ciphertext,) = vector.ciphertext()
        plain = sealapi.Plaintext()
        codec.decryptor.decrypt(ciphertext, plain)
        rows[index] = codec.encoder.decode_complex(plain)
    return rows.view(np.float64)


def decrypt_arrays(
    key: HEKey,
    ciphertexts: Sequence[bytes],
    specs: Sequence[ArraySpec],
    divisor: float = 1.0,
    expected_fingerprint: str = "",
    params: CKKSParameters = DEFAULT_PARAMETERS,
    count: int | None = None,
) -> list[np.ndarray]:
    """Decrypt, check, snap to the fixed-point grid, divide by ``divisor``, unpack into ``specs``.

    Integer arrays are rounded to the nearest integer. ``count`` is the number of
    updates summed (carried with the aggregate); :func:`check_sum` refuses a sum that
    wrapped around the fixed-point range.

    Raises
    ------
    HEError
        If the context has no secret key, ``expected_fingerprint`` names another
        key, the divisor is not positive, the ciphertexts do not match ``specs``, or
        the sum wrapped around.
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
    total = num_values(specs)
    vectors = _load_vectors(key.context, ciphertexts, total, params)
    rows = params.snap_(_decrypt_rows(key, vectors, params))
    data = params.data_values
    summed = rows[:, :data].reshape(-1)[:total]
    check_sum(rows[:, data:].reshape(-1), summed, count, params)
    flat = summed / divisor
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
