"""Transport security: TLS on every server and channel of the suite, mutual
TLS when client certificates are required, and the service a peer's
certificate names.

Certificates and keys are read again when their files change, because
cert-manager renews them in place (the kubelet swaps a Secret volume's files
through a symlink). A server looks at the files (a stat) before each
handshake, so new connections get the new certificate with no restart; a
client looks every few seconds (runtime.clients opens new channels for new
calls and lets the old ones finish theirs). A change that does not read back
as a usable set, a rotation half written, is ignored until it does: the
files in use stay in use.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import grpc
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

from runtime.config import SERVICE_NAMES, TLS_VARIABLES, ConfigError, TlsConfig

log = logging.getLogger(__name__)

# The trust domain of the services' SPIFFE ids (spiffe://lifecycle-ops/<service>).
TRUST_DOMAIN = "lifecycle-ops"
# How often a client looks at its files.
CLIENT_CHECK_SECONDS = 5.0

# What a stat tells of a file: a rotation changes at least one of these.
_Stamp = tuple[int, int, int, int] | None


@dataclass(frozen=True)
class TlsMaterial:
    """The contents of a TlsConfig's files, checked to belong together."""

    certificate_chain: bytes | None
    private_key: bytes | None
    ca: bytes | None


def read_material(config: TlsConfig) -> TlsMaterial:
    """Reads and checks the files: certificates parse, the key is the certificate's.
    ConfigError names the variable of a file that cannot be used."""
    chain = _read(config, "cert_file")
    key = _read(config, "key_file")
    ca = _read(config, "ca_file")
    if ca is not None:
        _certificates(config, "ca_file", ca)
    if chain is not None:
        leaf = _certificates(config, "cert_file", chain)[0]
        if key is not None:
            _check_key(config, leaf, key)
    return TlsMaterial(chain, key, ca)


def _read(config: TlsConfig, field: str) -> bytes | None:
    path: Path | None = getattr(config, field)
    if path is None:
        return None
    try:
        return path.read_bytes()
    except OSError as error:
        raise _unusable(field, path, error.strerror or str(error)) from error


def _unusable(field: str, path: Path | None, why: str) -> ConfigError:
    return ConfigError(f"{TLS_VARIABLES[field]}={path}: {why}")


def _certificates(config: TlsConfig, field: str, pem: bytes) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(pem)
    except ValueError as error:
        raise _unusable(field, getattr(config, field), "holds no PEM certificate") from error


def _check_key(config: TlsConfig, leaf: x509.Certificate, key: bytes) -> None:
    try:
        private_key = serialization.load_pem_private_key(key, password=None)
    except (ValueError, TypeError) as error:
        raise _unusable("key_file", config.key_file, "holds no unencrypted PEM key") from error
    if _public(private_key.public_key()) != _public(leaf.public_key()):
        raise _unusable(
            "key_file", config.key_file, f"is not the key of the certificate in {config.cert_file}"
        )


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _stamps(config: TlsConfig) -> tuple[_Stamp, ...]:
    def stamp(path: Path | None) -> _Stamp:
        if path is None:
            return None
        try:
            # stat follows the symlinks of a Secret volume to the file they name now.
            info = os.stat(path)
        except OSError:
            return None
        return (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)

    return (stamp(config.cert_file), stamp(config.key_file), stamp(config.ca_file))


class TlsFiles:
    """A TlsConfig's files as last read, read again when they change."""

    def __init__(self, config: TlsConfig, check_every: float = 0.0) -> None:
        self.config = config
        self._check_every = check_every
        self._stamps = _stamps(config)
        self.material = read_material(config)
        self._checked = time.monotonic()
        self._refused: tuple[_Stamp, ...] | None = None

    def refresh(self) -> TlsMaterial | None:
        """The files' new material if they changed (and read back usable) since
        they were last read; None if not, or if not checked yet again."""
        now = time.monotonic()
        if now - self._checked < self._check_every:
            return None
        self._checked = now
        stamps = _stamps(self.config)
        if stamps == self._stamps:
            return None
        try:
            material = read_material(self.config)
        except ConfigError as error:
            if stamps != self._refused:
                self._refused = stamps
                log.warning("TLS files changed but are not usable (yet), kept the last: %s", error)
            return None
        self._stamps, self.material = stamps, material
        log.info("TLS files changed: new certificates in use (%s)", self.config.cert_file)
        return material


def server_credentials(config: TlsConfig) -> grpc.ServerCredentials:
    """Credentials of a server port whose certificate follows its files."""
    files = TlsFiles(config)

    def fetch() -> grpc.ServerCertificateConfiguration | None:
        # gRPC asks before each handshake; None keeps the configuration it has.
        try:
            material = files.refresh()
        except Exception:
            log.exception("reading the TLS files failed; the last ones stay in use")
            return None
        return None if material is None else _certificate_configuration(material)

    return grpc.dynamic_ssl_server_credentials(
        _certificate_configuration(files.material),
        # grpc-stubs leave out the None that keeps the configuration (grpc's docstring).
        fetch,  # type: ignore[arg-type]
        require_client_authentication=config.client_auth,
    )


def _certificate_configuration(material: TlsMaterial) -> grpc.ServerCertificateConfiguration:
    assert material.private_key is not None and material.certificate_chain is not None
    return grpc.ssl_server_certificate_configuration(
        [(material.private_key, material.certificate_chain)], material.ca
    )


def channel_with(
    address: str,
    material: TlsMaterial | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Channel:
    """A channel over TLS with `material` (its certificate presented when it has
    one), or in plaintext without."""
    if material is None:
        return grpc.aio.insecure_channel(address, options=options, interceptors=interceptors)
    credentials = grpc.ssl_channel_credentials(
        material.ca, material.private_key, material.certificate_chain
    )
    return grpc.aio.secure_channel(address, credentials, options=options, interceptors=interceptors)


def open_channel(
    address: str,
    tls: TlsConfig | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
    interceptors: Sequence[Any] = (),
) -> grpc.aio.Channel:
    """A channel to a service of the suite with the TLS settings (their files
    as they are now), in plaintext without them."""
    material = None if tls is None else read_material(tls)
    return channel_with(address, material, options=options, interceptors=interceptors)


def spiffe_id(service: str) -> str:
    """The URI that names a service in its certificate."""
    return f"spiffe://{TRUST_DOMAIN}/{service}"


def peer_service(auth_context: Mapping[str, Iterable[bytes]]) -> str | None:
    """The service of the suite a call's peer certificate names (a verified one:
    the server asks for client certificates only under mutual TLS), or None.

    SPIFFE ids name a workload, so when the certificate has any, they alone
    count: `spiffe://<trust domain>/<service>` or, as Istio and SPIRE name
    Kubernetes service accounts, `spiffe://<trust domain>/ns/<ns>/sa/<service>`.
    Without them a DNS name that is a service's name counts. A certificate
    naming more than one service, or something else, names none."""
    if list(auth_context.get("transport_security_type", ())) != [b"ssl"]:
        return None
    uris = [uri.decode() for uri in auth_context.get("peer_uri", ())]
    spiffe = [uri for uri in uris if uri.startswith("spiffe://")]
    if spiffe:
        named: set[str | None] = {_workload(uri) for uri in spiffe}
    else:
        named = {dns.decode() for dns in auth_context.get("peer_dns", ())}
        named &= set(SERVICE_NAMES)
    return named.pop() if len(named) == 1 else None


def _workload(uri: str) -> str | None:
    """The service a SPIFFE id names, if it names one."""
    parts = urlsplit(uri)
    segments = parts.path.split("/")[1:]
    if not parts.netloc or parts.query or parts.fragment:
        return None
    if len(segments) == 4 and segments[0] == "ns" and segments[2] == "sa":
        segments = segments[3:]
    return segments[0] if len(segments) == 1 and segments[0] in SERVICE_NAMES else None
