"""``fl-he``: create the HE key files, and decrypt an encrypted final model.

``fl-he keygen [--secret-context PATH] [--public-context PATH]`` writes a new key pair
(mode 0600; existing files are never overwritten). The defaults are where simulated
nodes and the server look: ``$FL_NODE_STATE_DIR/he/secret.ctx`` (the data holders'
directory) and ``$FLWR_HOME/he/public.ctx``. ``fl-he decrypt-model
RESULTS/model-encrypted.npz [--secret-context PATH] [--out model.pt]`` writes the final
model as a plain torch ``state_dict``.
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from fl_app.he.keys import default_public_context, default_secret_context, load_context_file
from fl_app.server.results import MODEL_FILE
from privacy.files import atomic_write_bytes
from privacy.he import HEError, write_key_pair
from privacy.he_model import EncryptedModel


def keygen(secret: Path, public: Path) -> str:
    """Write a new key pair; return its fingerprint (refuses to overwrite)."""
    return write_key_pair(secret, public)


def decrypt_model(encrypted: Path, secret_context: Path, out: Path) -> Path:
    """Decrypt an encrypted model file into a plain torch ``state_dict`` at ``out``.

    Raises
    ------
    HEError
        If the file is not an encrypted model or the context holds another key.
    FileExistsError
        If ``out`` exists (it is never overwritten).
    """
    if out.exists():
        raise FileExistsError(f"{out} exists; it is never overwritten")
    model = EncryptedModel.from_bytes(encrypted.read_bytes(), source=str(encrypted))
    arrays = model.decrypt(load_context_file(secret_context, secret=True))
    buffer = io.BytesIO()
    torch.save({name: torch.from_numpy(a) for name, a in arrays.items()}, buffer)
    atomic_write_bytes(out, buffer.getvalue(), overwrite=False)
    return out


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fl-he", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    gen = commands.add_parser("keygen", help="write a new secret and public HE context")
    secret_help = "the clients' secret context (default $FL_NODE_STATE_DIR/he/secret.ctx)"
    gen.add_argument("--secret-context", type=Path, default=None, help=secret_help)
    gen.add_argument(
        "--public-context",
        type=Path,
        default=None,
        help="the server's public context (default $FLWR_HOME/he/public.ctx)",
    )
    dec = commands.add_parser("decrypt-model", help="decrypt model-encrypted.npz to model.pt")
    dec.add_argument("encrypted", type=Path, help="a run's model-encrypted.npz")
    dec.add_argument("--secret-context", type=Path, default=None, help=secret_help)
    dec.add_argument("--out", type=Path, default=None, help="default: model.pt next to it")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    args = _parser().parse_args(argv)
    try:
        secret = args.secret_context or default_secret_context()
        if args.command == "keygen":
            public = args.public_context or default_public_context()
            key = keygen(secret, public)
            print(f"key {key}\nsecret context (clients only): {secret}\npublic context: {public}")
        else:
            out = args.out or args.encrypted.parent / MODEL_FILE
            print(f"wrote {decrypt_model(args.encrypted, secret, out)}")
    except (HEError, FileExistsError, OSError) as err:
        print(f"fl-he: error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
