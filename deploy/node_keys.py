"""SuperNode authentication keys in the format Flower 1.41 expects.

``flower-supernode --auth-supernode-private-key`` reads an unencrypted OpenSSH
private key of a NIST elliptic curve; ``flwr supernode register`` reads the
matching OpenSSH public key (``ecdsa-sha2-nistp384 ...``). Flower's guide uses
P-384 (``ssh-keygen -t ecdsa -b 384``); so do we.

Layout: ``nodes/<name>/auth.key`` (private, that SuperNode's machine only) and
``nodes/<name>/auth.pub`` (public, given to whoever registers the node).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from deploy.files import DeployError, existing_files, write_new_file

_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass(frozen=True)
class NodeKey:
    """A SuperNode's authentication key pair on disk."""

    private_key: Path
    public_key: Path


def check_node_name(name: str) -> str:
    """Return ``name`` if it is a valid node name (it names a directory), else raise."""
    if not _NODE_NAME.match(name):
        raise DeployError(
            f"node name {name!r} is invalid: use 1-64 letters, digits, '_', '-' or '.', "
            "starting with a letter or digit"
        )
    return name


def node_directory(directory: Path, name: str) -> Path:
    """Return the directory of node ``name`` in a deployment directory."""
    return directory / "nodes" / check_node_name(name)


def _load_pair(key: NodeKey) -> None:
    """Check that an existing key pair is a valid, matching NIST EC pair."""
    try:
        private = serialization.load_ssh_private_key(key.private_key.read_bytes(), password=None)
        public = serialization.load_ssh_public_key(key.public_key.read_bytes())
    except (ValueError, TypeError) as err:
        raise DeployError(
            f"{key.private_key} / {key.public_key} is not an unencrypted OpenSSH key pair: {err}"
        ) from err
    if not isinstance(private, ec.EllipticCurvePrivateKey) or private.public_key() != public:
        raise DeployError(
            f"{key.public_key} is not the EC public key of {key.private_key}; Flower needs a "
            "NIST-curve ECDSA pair (ssh-keygen -t ecdsa -b 384)"
        )


def ensure_node_key(directory: Path, name: str) -> NodeKey:
    """Create (or reuse) the authentication key pair of node ``name``.

    Parameters
    ----------
    directory : Path
        The deployment directory.
    name : str
        The node's name.

    Returns
    -------
    NodeKey
        Paths of the private key (mode 0600) and the public key.

    Raises
    ------
    DeployError
        If only one of the two files exists or they do not match. Existing keys
        are reused, never overwritten.
    """
    home = node_directory(directory, name)
    key = NodeKey(home / "auth.key", home / "auth.pub")
    if existing_files([key.private_key, key.public_key]):
        _load_pair(key)
        return key
    private = ec.generate_private_key(ec.SECP384R1())
    write_new_file(
        key.private_key,
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption(),
        ),
        mode=0o600,
    )
    public = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    write_new_file(key.public_key, public + f" {name}\n".encode())
    return key
