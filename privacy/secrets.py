"""A participant's secret, and the seeds of its privacy noise and sampling.

DP noise and Poisson sampling must be unpredictable to whoever sees the outputs,
the server above all. Opacus' ``secure_mode`` would draw them from ``torchcsprng``,
which has no build for torch 2.x here, so each participant keeps a secret of its
own instead: 32 bytes from the OS CSPRNG (:func:`os.urandom`), created once in its
state directory with mode 0600, never sent. Every private session draws a fresh
nonce from the OS CSPRNG and derives its seeds as HMAC-SHA256(secret, nonce, label),
one seed per use ("sampler", "noise"): two sessions never share noise (a replayed
round gets independent noise), and the sampler and the noise never share a stream.
A seed seeds torch's Mersenne Twister, which is not itself a CSPRNG: its state
follows from 64 secret bits per session, not from anything public.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import os
import stat
from pathlib import Path

import numpy as np

from privacy.files import write_new_file

SECRET_BYTES = 32
NONCE_BYTES = 16


class SecretError(RuntimeError):
    """A secret file is unreadable, of the wrong size, or readable by others."""


def load_or_create_secret(path: Path) -> bytes:
    """Return the secret in ``path``, creating it (0600) from the OS CSPRNG if absent.

    Safe when several processes call it at once: the first to create the file wins.

    Raises
    ------
    SecretError
        If the file has another size, or other users may read it.
    """
    if not path.exists():
        with contextlib.suppress(FileExistsError):
            write_new_file(path, os.urandom(SECRET_BYTES), mode=0o600)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise SecretError(
            f"secret file '{path}' has mode {mode:o}: only its owner may read it (chmod 600)"
        )
    secret = path.read_bytes()
    if len(secret) != SECRET_BYTES:
        raise SecretError(f"secret file '{path}' holds {len(secret)} bytes, not {SECRET_BYTES}")
    return secret


def new_nonce() -> bytes:
    """Return a fresh nonce from the OS CSPRNG."""
    return os.urandom(NONCE_BYTES)


def _digest(secret: bytes, nonce: bytes, label: str) -> bytes:
    return hmac.new(secret, nonce + b"|" + label.encode(), hashlib.sha256).digest()


def derive_seed(secret: bytes, nonce: bytes, label: str) -> int:
    """Return a 63-bit seed (for torch's generator): HMAC-SHA256(secret, nonce, label)."""
    return int.from_bytes(_digest(secret, nonce, label)[:8], "big") >> 1


def derive_generator(secret: bytes, nonce: bytes, label: str) -> np.random.Generator:
    """Return a numpy generator seeded with all 256 bits of HMAC-SHA256(secret, nonce, label)."""
    return np.random.default_rng(int.from_bytes(_digest(secret, nonce, label), "big"))
