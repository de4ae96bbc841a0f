"""TLS for the SuperLink: a certificate authority and a SuperLink certificate signed by it.

Layout under a deployment directory::

    ca/ca.crt                 the CA certificate: goes to every machine (SuperLink,
                              SuperNodes, the machine running ``flwr``)
    ca/ca.key                 the CA private key: stays with the operator, nowhere else
    superlink/superlink.crt   the SuperLink's certificate (SANs: 127.0.0.1, localhost
                              and every host named) - SuperLink machine only
    superlink/superlink.key   its private key - SuperLink machine only

Existing files are reused, never overwritten: a SuperLink certificate that does
not cover a requested host is an error, not a silent re-issue.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deploy.files import DeployError, existing_files, write_new_file

DEFAULT_HOSTS: tuple[str, ...] = ("127.0.0.1", "localhost")
VALIDITY_DAYS = 365
SUPERLINK_NAME = "fl-privacy-app SuperLink"
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
)


@dataclass(frozen=True)
class TlsFiles:
    """Where a deployment's certificate authority and SuperLink certificate live."""

    ca_certificate: Path
    ca_key: Path
    superlink_certificate: Path
    superlink_key: Path

    @classmethod
    def under(cls, directory: Path) -> TlsFiles:
        """Return the standard layout under a deployment directory."""
        return cls(
            directory / "ca" / "ca.crt",
            directory / "ca" / "ca.key",
            directory / "superlink" / "superlink.crt",
            directory / "superlink" / "superlink.key",
        )


def _san(host: str) -> x509.GeneralName:
    """Return the subject-alternative-name entry for a host (IP address or DNS name)."""
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _HOSTNAME.match(host):
        raise DeployError(
            f"host {host!r} is neither an IP address nor a DNS name (letters, digits, "
            "'-' and '.', no scheme or port)"
        )
    return x509.DNSName(host.lower())


def certificate_hosts(certificate: x509.Certificate) -> set[str]:
    """Return the hosts (IP addresses and DNS names) a certificate is valid for."""
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    ips = {str(ip) for ip in names.get_values_for_type(x509.IPAddress)}
    return ips | {name.lower() for name in names.get_values_for_type(x509.DNSName)}


def _private_key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _validity(days: int) -> tuple[datetime.datetime, datetime.datetime]:
    now = datetime.datetime.now(datetime.UTC)
    return now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def _create_ca(files: TlsFiles, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP384R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-privacy-app deployment CA")])
    start, end = _validity(days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA384())
    )
    write_new_file(files.ca_key, _private_key_pem(key), mode=0o600)
    write_new_file(files.ca_certificate, certificate.public_bytes(serialization.Encoding.PEM))
    return certificate, key


def _load_ca(files: TlsFiles) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    certificate = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != (
        certificate.public_key()
    ):
        raise DeployError(f"{files.ca_key} is not the private key of {files.ca_certificate}")
    return certificate, key


def _issue_superlink_certificate(
    files: TlsFiles,
    ca: tuple[x509.Certificate, ec.EllipticCurvePrivateKey],
    hosts: list[str],
    days: int,
) -> None:
    ca_certificate, ca_key = ca
    key = ec.generate_private_key(ec.SECP384R1())
    start, end = _validity(days)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fl-privacy-app SuperLink")])
        )
        .issuer_name(ca_certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(end, ca_certificate.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA384())
    )
    write_new_file(files.superlink_key, _private_key_pem(key), mode=0o600)
    write_new_file(
        files.superlink_certificate, certificate.public_bytes(serialization.Encoding.PEM)
    )


def _check_superlink_certificate(files: TlsFiles, hosts: list[str]) -> None:
    ca_certificate = x509.load_pem_x509_certificate(files.ca_certificate.read_bytes())
    certificate = x509.load_pem_x509_certificate(files.superlink_certificate.read_bytes())
    try:
        certificate.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError) as err:
        raise DeployError(
            f"{files.superlink_certificate} was not issued by {files.ca_certificate}: {err}"
        ) from err
    missing = [h for h in hosts if h.lower() not in certificate_hosts(certificate)]
    if missing:
        raise DeployError(
            f"{files.superlink_certificate} is valid for "
            f"{', '.join(sorted(certificate_hosts(certificate)))} but not for "
            f"{', '.join(missing)}; move {files.superlink_certificate.parent} away to issue a "
            "new SuperLink certificate (existing certificates are never overwritten)"
        )
    if certificate.not_valid_after_utc <= datetime.datetime.now(datetime.UTC):
        raise DeployError(
            f"{files.superlink_certificate} expired on {certificate.not_valid_after_utc:%Y-%m-%d}; "
            f"move {files.superlink_certificate.parent} away to issue a new one"
        )


def ensure_tls(
    directory: Path, hosts: list[str] | None = None, days: int = VALIDITY_DAYS
) -> TlsFiles:
    """Create (or reuse) the CA and the SuperLink certificate under ``directory``.

    Parameters
    ----------
    directory : Path
        The deployment directory (see the module docstring for the layout).
    hosts : list[str], optional
        Hosts the SuperLink is reached at besides 127.0.0.1 and localhost: IP
        addresses or DNS names, as SuperNodes and ``flwr`` will address it.
    days : int
        Validity of newly created certificates.

    Returns
    -------
    TlsFiles
        The paths of the four files.

    Raises
    ------
    DeployError
        If a host is malformed, if only part of a set of files exists, or if an
        existing SuperLink certificate does not cover every host or is not signed
        by the CA. Nothing is ever overwritten.
    """
    if days < 1:
        raise DeployError(f"certificate validity must be >= 1 day, got {days}")
    wanted = list(dict.fromkeys([*DEFAULT_HOSTS, *(h.strip() for h in hosts or [])]))
    for host in wanted:
        _san(host)
    files = TlsFiles.under(directory)
    if existing_files([files.superlink_certificate, files.superlink_key]):
        if not files.ca_certificate.exists():
            raise DeployError(
                f"{files.superlink_certificate} exists but {files.ca_certificate} not"
            )
        _check_superlink_certificate(files, wanted)
        return files
    if existing_files([files.ca_certificate, files.ca_key]):
        ca = _load_ca(files)
    else:
        ca = _create_ca(files, days)
    _issue_superlink_certificate(files, ca, wanted, days)
    return files
