"""A local certificate authority, so that mutual TLS is one flag to try:
`lifecycle up --tls` keeps it in the data folder, `lifecycle tls init` makes
it where Docker Compose mounts it.

The CA (ECDSA P-256) signs one certificate per service, used both to serve
and to call the others, naming the service as a DNS name and as a SPIFFE id
(runtime.tls.peer_service), with `localhost` and 127.0.0.1 for local
clients; and one for the person at the keyboard (`client.pem`), for
`lifecycle demo` and grpcurl. What is there is used again while it has more
than RENEW_DAYS to live and was signed by the CA in use; the rest is made
afresh.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from runtime.config import SERVICE_NAMES, TLS_VARIABLES
from runtime.tls import TRUST_DOMAIN, spiffe_id
from suite.database import data_dir

CA_DAYS = 365
LEAF_DAYS = 90
RENEW_DAYS = 30
# The person's certificate: a client of the suite, not one of its services.
CLIENT = "client"
_CA = "ca"
_LOCAL_NAMES = ("localhost",)
_LOCAL_ADDRESSES = ("127.0.0.1",)


@dataclass(frozen=True)
class Authority:
    """A CA: its key and self-signed certificate."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def create(cls, name: str = f"{TRUST_DOMAIN} local CA", days: int = CA_DAYS) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        usage = _key_usage(signs_certificates=True)
        certificate = (
            _valid_for(x509.CertificateBuilder(), days)
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        return cls(key, certificate)

    def issue(
        self, name: str, san: x509.SubjectAlternativeName, days: int = LEAF_DAYS
    ) -> tuple[bytes, bytes]:
        """A new key and a certificate for it, server and client alike, in PEM."""
        key = ec.generate_private_key(ec.SECP256R1())
        certificate = (
            _valid_for(x509.CertificateBuilder(), days)
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .add_extension(san, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), False
            )
            .sign(self.key, hashes.SHA256())
        )
        return certificate.public_bytes(serialization.Encoding.PEM), _pem_key(key)

    def signed(self, certificate: x509.Certificate) -> bool:
        try:
            certificate.verify_directly_issued_by(self.certificate)
        except (ValueError, TypeError, InvalidSignature):
            return False
        return True


def subject_alternative_name(name: str) -> x509.SubjectAlternativeName:
    """What a certificate of the local CA names: a service by its name (as
    Compose dials it) and SPIFFE id, the person as a client; both on this
    machine's loopback."""
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in _LOCAL_NAMES]
    names += [x509.IPAddress(ipaddress.ip_address(a)) for a in _LOCAL_ADDRESSES]
    if name in SERVICE_NAMES:
        names.insert(0, x509.DNSName(name))
    names.append(x509.UniformResourceIdentifier(spiffe_id(name)))
    return x509.SubjectAlternativeName(names)


@dataclass(frozen=True)
class LocalCertificates:
    """The files of the local CA and what it signed, in `folder`."""

    folder: Path

    @property
    def ca_file(self) -> Path:
        return self.folder / f"{_CA}.pem"

    def cert_file(self, name: str) -> Path:
        return self.folder / f"{name}.pem"

    def key_file(self, name: str) -> Path:
        return self.folder / f"{name}-key.pem"

    def environment(self, name: str) -> dict[str, str]:
        """The TLS settings of `name` (a service, or CLIENT), under mutual TLS."""
        files = {
            "cert_file": self.cert_file(name),
            "key_file": self.key_file(name),
            "ca_file": self.ca_file,
        }
        env = {TLS_VARIABLES[field]: str(path) for field, path in files.items()}
        return {**env, "LIFECYCLE_TLS_CLIENT_AUTH": "require"}

    def store_authority(self, authority: Authority) -> None:
        _write(self.key_file(_CA), _pem_key(authority.key), private=True)
        _write(self.ca_file, authority.certificate.public_bytes(serialization.Encoding.PEM))

    def store(self, name: str, certificate: bytes, key: bytes) -> None:
        """Replaces the certificate and key of `name`, each file at once."""
        _write(self.key_file(name), key, private=True)
        _write(self.cert_file(name), certificate)


def local_certificates(folder: Path) -> LocalCertificates:
    """The local CA in `folder` and a certificate for each service and for the
    client: kept while usable, made where missing, stale or of another CA."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    files = LocalCertificates(folder)
    authority = _kept_authority(files)
    if authority is None:
        authority = Authority.create()
        files.store_authority(authority)
    for name in (*SERVICE_NAMES, CLIENT):
        san = subject_alternative_name(name)
        if not _usable_leaf(files.cert_file(name), authority, san):
            files.store(name, *authority.issue(name, san))
    return files


def _kept_authority(files: LocalCertificates) -> Authority | None:
    try:
        certificate = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
        key = serialization.load_pem_private_key(files.key_file(_CA).read_bytes(), None)
    except (OSError, ValueError):
        return None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or _near_expiry(certificate):
        return None
    authority = Authority(key, certificate)
    return authority if authority.signed(certificate) else None


def _usable_leaf(path: Path, authority: Authority, san: x509.SubjectAlternativeName) -> bool:
    try:
        certificate = x509.load_pem_x509_certificate(path.read_bytes())
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        return False
    return names.value == san and authority.signed(certificate) and not _near_expiry(certificate)


def _near_expiry(certificate: x509.Certificate) -> bool:
    return certificate.not_valid_after_utc - datetime.now(UTC) < timedelta(days=RENEW_DAYS)


def _valid_for(builder: x509.CertificateBuilder, days: int) -> x509.CertificateBuilder:
    # A little in the past, for clocks a little apart.
    now = datetime.now(UTC)
    return (
        builder.serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


def _key_usage(*, signs_certificates: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, content: bytes, *, private: bool = False) -> None:
    """Replaces `path` at once (a running server never reads half a file), a
    key readable by its owner only."""
    staged = path.with_name(f".{path.name}.new")
    staged.unlink(missing_ok=True)
    descriptor = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o644)
    with os.fdopen(descriptor, "wb") as file:
        file.write(content)
    os.replace(staged, path)


def kept_certificates(folder: Path | None = None) -> LocalCertificates:
    """The local CA and certificates in `folder`, by default the data folder's
    `tls/` (`lifecycle up --tls`)."""
    return local_certificates(folder or data_dir() / "tls")
