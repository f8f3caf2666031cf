"""TLS and mutual TLS, with real handshakes on loopback and certificates made
here: who is refused, services calling each other, the service a peer
certificate names, the plaintext health port, and certificates renewed under
load with no failed call."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import socket
import ssl
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lifecycle.segments.v1 import segments_pb2, segments_pb2_grpc
from lifecycle.users.v1 import users_pb2, users_pb2_grpc
from runtime.clients import ServiceClients
from runtime.config import ConfigError, TlsConfig, load_service_config
from runtime.server import LIVENESS
from runtime.structs import dict_to_struct
from runtime.tls import CLIENT_CHECK_SECONDS, peer_service, read_material, server_credentials
from suite.certificates import (
    CLIENT,
    Authority,
    LocalCertificates,
    local_certificates,
    subject_alternative_name,
)
from tests.support import (
    ScratchDatabase,
    channel_to,
    free_port,
    rpc_error,
    running,
    serve_and_fail,
    service_env,
)

pytestmark = pytest.mark.users

SERVING = health_pb2.HealthCheckResponse.SERVING
# How long a renewed certificate may take to be presented: a server reads its
# files at each handshake, a client every CLIENT_CHECK_SECONDS.
RENEWAL_SECONDS = CLIENT_CHECK_SECONDS + 10
PEER = "/tests.Peer/Who"
HOLD = b"hold"


@pytest.fixture(scope="module")
def authority() -> Authority:
    return Authority.create()


@pytest.fixture
def certificates(tmp_path: Path, authority: Authority) -> LocalCertificates:
    """`authority` as the CA, with a certificate for each service and the client."""
    files = LocalCertificates(tmp_path / "tls")
    files.folder.mkdir()
    files.store_authority(authority)
    return local_certificates(files.folder)


def only_the_ca(files: LocalCertificates) -> dict[str, str]:
    return {"LIFECYCLE_TLS_CA_FILE": str(files.ca_file)}


def service_tls(files: LocalCertificates, service: str, *, mutual: bool = True) -> dict[str, str]:
    return {
        **files.environment(service),
        "LIFECYCLE_TLS_CLIENT_AUTH": "require" if mutual else "none",
    }


async def health(address: str, client_env: Mapping[str, str], service: str = "") -> int:
    async with channel_to(address, client_env) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=service), timeout=5
        )
        return int(reply.status)


async def refusal(address: str, client_env: Mapping[str, str]) -> grpc.StatusCode:
    """The code a health check fails with; fails the test if it is answered."""
    async with channel_to(address, client_env) as channel:
        error = await rpc_error(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        )
        return error.code()


async def ready(address: str, client_env: Mapping[str, str]) -> None:
    for _ in range(100):
        if await health(address, client_env) == SERVING:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{address} never became ready")


def served_certificate(port: int, files: LocalCertificates) -> x509.Certificate:
    """The certificate a server presents to a new connection (a raw TLS handshake
    as the client)."""
    context = ssl.create_default_context(cafile=str(files.ca_file))
    context.load_cert_chain(files.cert_file(CLIENT), files.key_file(CLIENT))
    context.set_alpn_protocols(["h2"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as connection,
    ):
        der = connection.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def serial_of(pem_file: Path) -> int:
    return x509.load_pem_x509_certificate(pem_file.read_bytes()).serial_number


async def test_tls_refuses_plaintext_and_clients_that_cannot_verify_the_server(
    database: ScratchDatabase,
    certificates: LocalCertificates,
    authority: Authority,
    tmp_path: Path,
) -> None:
    port = free_port()
    env = service_env(database, {"users": port}, **service_tls(certificates, "users", mutual=False))
    async with running("users", env) as host:
        # Without mutual TLS a client needs only the CA bundle.
        await ready(host.address, only_the_ca(certificates))
        assert await refusal(host.address, {}) == grpc.StatusCode.UNAVAILABLE
        strangers = local_certificates(tmp_path / "strangers")
        assert await refusal(host.address, only_the_ca(strangers)) == grpc.StatusCode.UNAVAILABLE
        # The right CA, but a certificate that does not name the address dialled.
        named_elsewhere = x509.SubjectAlternativeName([x509.DNSName("users")])
        certificates.store("users", *authority.issue("users", named_elsewhere))
        assert await refusal(host.address, only_the_ca(certificates)) == (
            grpc.StatusCode.UNAVAILABLE
        )


async def test_mutual_tls_refuses_clients_without_a_certificate_of_its_ca(
    database: ScratchDatabase, certificates: LocalCertificates, tmp_path: Path
) -> None:
    env = service_env(database, {"users": free_port()}, **service_tls(certificates, "users"))
    async with running("users", env) as host:
        await ready(host.address, certificates.environment(CLIENT))
        assert await refusal(host.address, only_the_ca(certificates)) == (
            grpc.StatusCode.UNAVAILABLE
        )
        strangers = local_certificates(tmp_path / "strangers")
        of_another_ca = {
            **strangers.environment(CLIENT),
            "LIFECYCLE_TLS_CA_FILE": str(certificates.ca_file),
        }
        assert await refusal(host.address, of_another_ca) == grpc.StatusCode.UNAVAILABLE
        assert await refusal(host.address, {}) == grpc.StatusCode.UNAVAILABLE


async def test_services_call_each_other_over_mutual_tls(
    database: ScratchDatabase, certificates: LocalCertificates
) -> None:
    """A segment preview: segments counts and matches the users in the users
    service (CountUsers, MatchUserIds), each with its own certificate."""
    ports = {"users": free_port(), "segments": free_port()}
    client = certificates.environment(CLIENT)
    tag = f"tls-{secrets.token_hex(4)}"
    async with (
        running("users", service_env(database, ports, **service_tls(certificates, "users"))),
        running(
            "segments", service_env(database, ports, **service_tls(certificates, "segments"))
        ) as segments_host,
    ):
        async with channel_to(f"127.0.0.1:{ports['users']}", client) as channel:
            created = await users_pb2_grpc.UserServiceStub(channel).CreateUser(
                users_pb2.CreateUserRequest(
                    user=users_pb2.User(
                        email=f"{tag}@example.com", attributes=dict_to_struct({"plan": tag})
                    )
                ),
                timeout=5,
            )
        async with channel_to(segments_host.address, client) as channel:
            preview = await segments_pb2_grpc.SegmentServiceStub(channel).PreviewSegment(
                segments_pb2.PreviewSegmentRequest(
                    conditions=dict_to_struct({"v": 1, "attr": "plan", "op": "eq", "value": tag})
                ),
                timeout=10,
            )
    assert (preview.estimated_size, list(preview.sample_user_ids)) == (1, [created.user.id])


@asynccontextmanager
async def peer_reporter(tls: TlsConfig, release: asyncio.Event | None = None) -> AsyncIterator[str]:
    """A server under mutual TLS that answers each call with what it read of the
    caller's certificate: the service it names and its serial number. A call
    that asks to be held is answered once `release` is set."""

    async def who(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        if request == HOLD and release is not None:
            await release.wait()
        auth = context.auth_context()
        certificate = x509.load_pem_x509_certificate(next(iter(auth["x509_pem_cert"])))
        return json.dumps(
            {"service": peer_service(auth), "serial": certificate.serial_number}
        ).encode()

    server = grpc.aio.server()
    handler = grpc.unary_unary_rpc_method_handler(who)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("tests.Peer", {"Who": handler})]
    )
    port = server.add_secure_port("127.0.0.1:0", server_credentials(tls))
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def files_of(certificates: LocalCertificates, name: str) -> TlsConfig:
    return TlsConfig(
        certificates.cert_file(name), certificates.key_file(name), certificates.ca_file, True
    )


async def who_calls(channel: grpc.aio.Channel, *, hold: bool = False) -> dict[str, object]:
    call = channel.unary_unary(PEER, request_serializer=None, response_deserializer=None)
    reply = await call(HOLD if hold else b"", timeout=60)
    answer: dict[str, object] = json.loads(reply)
    return answer


URI = x509.UniformResourceIdentifier
DNS = x509.DNSName


@pytest.mark.parametrize(
    ("names", "service"),
    [
        (subject_alternative_name("segments"), "segments"),
        # Istio and SPIRE name Kubernetes workloads by their service account.
        ([URI("spiffe://cluster.local/ns/lifecycle/sa/triggers"), DNS("localhost")], "triggers"),
        ([DNS("metrics-headless"), DNS("metrics"), DNS("localhost")], "metrics"),
        (subject_alternative_name(CLIENT), None),
        ([URI("spiffe://lifecycle-ops/users"), URI("spiffe://lifecycle-ops/metrics")], None),
        # The SPIFFE id is the identity: a DNS name does not make a client a service.
        ([URI("spiffe://lifecycle-ops/client"), DNS("users")], None),
        ([URI("spiffe://lifecycle-ops/team/users"), DNS("localhost")], None),
        ([DNS("users"), DNS("workflows")], None),
    ],
)
async def test_the_service_a_peer_certificate_names(
    certificates: LocalCertificates,
    authority: Authority,
    names: x509.SubjectAlternativeName | list[x509.GeneralName],
    service: str | None,
) -> None:
    san = names if isinstance(names, x509.SubjectAlternativeName) else None
    certificates.store(
        "caller", *authority.issue("caller", san or x509.SubjectAlternativeName(names))
    )
    async with (
        peer_reporter(files_of(certificates, "users")) as address,
        channel_to(address, certificates.environment("caller")) as channel,
    ):
        assert (await who_calls(channel))["service"] == service


def test_no_service_without_a_verified_certificate() -> None:
    assert peer_service({"transport_security_type": [b"insecure"]}) is None
    assert peer_service({}) is None
    assert (
        peer_service({"transport_security_type": [b"insecure"], "peer_uri": [b"spiffe://x/users"]})
        is None
    )


class SecretVolume:
    """Files as the kubelet shows a Secret, and as cert-manager's renewals reach
    them: each name links through `..data` to a folder of the current version,
    and an update swaps `..data` at once."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir()

    def path(self, name: str) -> Path:
        return self.folder / name

    def update(self, files: Mapping[str, bytes]) -> None:
        version = self.folder / f"..{secrets.token_hex(4)}"
        version.mkdir()
        for name, content in files.items():
            (version / name).write_bytes(content)
        staged = self.folder / "..data_tmp"
        staged.symlink_to(version.name)
        os.replace(staged, self.folder / "..data")
        for name in files:
            if not self.path(name).is_symlink():
                self.path(name).symlink_to(Path("..data") / name)


@dataclass
class Load:
    calls: int = 0
    connections: int = 0
    failures: list[str] = field(default_factory=list)


async def call_until(
    stop: asyncio.Event,
    load: Load,
    address: str,
    client_env: Mapping[str, str],
    user_id: str,
    calls_per_connection: int,
) -> None:
    """GetUser over and over, `calls_per_connection` calls on each new connection."""
    while not stop.is_set():
        async with channel_to(address, client_env) as channel:
            load.connections += 1
            stub = users_pb2_grpc.UserServiceStub(channel)
            for _ in range(calls_per_connection):
                try:
                    await stub.GetUser(users_pb2.GetUserRequest(user_id=user_id), timeout=5)
                    load.calls += 1
                except grpc.aio.AioRpcError as error:
                    load.failures.append(f"{error.code().name}: {error.details()}")
                if stop.is_set():
                    break


async def until_served(port: int, certificates: LocalCertificates, serial: int) -> None:
    """Until a new connection is served the certificate with `serial`."""
    for _ in range(int(RENEWAL_SECONDS * 10)):
        served = await asyncio.to_thread(served_certificate, port, certificates)
        if served.serial_number == serial:
            return
        await asyncio.sleep(0.1)
    raise AssertionError("the renewed certificate was never served")


async def test_a_renewed_server_certificate_serves_new_connections_with_no_failed_call(
    database: ScratchDatabase,
    certificates: LocalCertificates,
    authority: Authority,
    tmp_path: Path,
) -> None:
    """Renewed twice under a loop of calls: as cert-manager's renewals arrive in
    a Secret volume (one swap), then by files written in place one after the
    other (a key that is not yet the certificate's is not taken)."""
    volume = SecretVolume(tmp_path / "volume")
    issued = authority.issue("users", subject_alternative_name("users"))
    volume.update({"tls.crt": issued[0], "tls.key": issued[1]})
    port = free_port()
    env = service_env(
        database,
        {"users": port},
        LIFECYCLE_TLS_CERT_FILE=str(volume.path("tls.crt")),
        LIFECYCLE_TLS_KEY_FILE=str(volume.path("tls.key")),
        LIFECYCLE_TLS_CA_FILE=str(certificates.ca_file),
        LIFECYCLE_TLS_CLIENT_AUTH="require",
    )
    client = certificates.environment(CLIENT)
    async with running("users", env) as host:
        await ready(host.address, client)
        async with channel_to(host.address, client) as channel:
            created = await users_pb2_grpc.UserServiceStub(channel).CreateUser(
                users_pb2.CreateUserRequest(
                    user=users_pb2.User(email=f"renewal-{secrets.token_hex(4)}@example.com")
                ),
                timeout=5,
            )
        stop, load = asyncio.Event(), Load()
        callers = [
            asyncio.create_task(
                call_until(stop, load, host.address, client, created.user.id, per_connection)
            )
            for per_connection in (3, 3, 5, 10_000)
        ]
        try:
            await asyncio.sleep(0.5)
            swapped = authority.issue("users", subject_alternative_name("users"))
            volume.update({"tls.crt": swapped[0], "tls.key": swapped[1]})
            await until_served(port, certificates, serial_of(volume.path("tls.crt")))
            connections = load.connections
            await asyncio.sleep(0.5)
            rewritten = authority.issue("users", subject_alternative_name("users"))
            volume.path("tls.crt").write_bytes(rewritten[0])
            await asyncio.sleep(0.3)
            volume.path("tls.key").write_bytes(rewritten[1])
            await until_served(port, certificates, serial_of(volume.path("tls.crt")))
            await asyncio.sleep(0.5)
        finally:
            stop.set()
            await asyncio.gather(*callers)
    assert load.failures == []
    assert load.connections > connections + 10, "new connections kept coming"
    assert load.calls > 100


async def test_a_client_presents_its_renewed_certificate_on_new_calls(
    certificates: LocalCertificates, authority: Authority
) -> None:
    """A service's ServiceClients while its certificate is renewed: a key
    without its certificate yet is not taken, new calls then present the new
    certificate, and a call under way finishes on the old channel, which
    closes after it."""
    segments = files_of(certificates, "segments")
    first = serial_of(certificates.cert_file("segments"))
    release = asyncio.Event()
    async with peer_reporter(files_of(certificates, "users"), release) as address:
        clients = ServiceClients({"users": address}, default_timeout=5, tls=segments)
        try:
            old_channel = clients.channel("users")
            held = asyncio.create_task(who_calls(old_channel, hold=True))
            renewed, key = authority.issue("segments", subject_alternative_name("segments"))
            certificates.key_file("segments").write_bytes(key)
            half_written = [await who_calls(clients.channel("users"))]
            loop = asyncio.get_running_loop()
            until = loop.time() + CLIENT_CHECK_SECONDS + 1
            while loop.time() < until:
                half_written.append(await who_calls(clients.channel("users")))
                await asyncio.sleep(0.1)
            assert all(a == {"service": "segments", "serial": first} for a in half_written)
            certificates.cert_file("segments").write_bytes(renewed)
            serial = serial_of(certificates.cert_file("segments"))
            seen = []
            for _ in range(int(RENEWAL_SECONDS * 10)):
                seen.append(await who_calls(clients.channel("users")))
                if seen[-1]["serial"] == serial:
                    break
                await asyncio.sleep(0.1)
            assert seen[-1] == {"service": "segments", "serial": serial}
            assert clients.channel("users") is not old_channel
            assert not held.done()
            release.set()
            assert await held == {"service": "segments", "serial": first}
            with pytest.raises(grpc.aio.UsageError):
                await who_calls(old_channel)
        finally:
            await clients.close()


async def test_the_health_port_answers_probes_in_plaintext_and_nothing_else(
    database: ScratchDatabase, certificates: LocalCertificates
) -> None:
    env = service_env(
        database,
        {"users": free_port()},
        **service_tls(certificates, "users"),
        LIFECYCLE_HEALTH_PORT=str(free_port()),
    )
    async with running("users", env) as host:
        probes = f"127.0.0.1:{host.health_port}"
        await ready(probes, {})
        assert await health(probes, {}, LIVENESS) == SERVING
        assert await refusal(host.address, {}) == grpc.StatusCode.UNAVAILABLE
        async with channel_to(probes, {}) as channel:
            error = await rpc_error(
                users_pb2_grpc.UserServiceStub(channel).GetUser(
                    users_pb2.GetUserRequest(email="a@example.com"), timeout=5
                )
            )
        assert error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert await refusal(probes, {}) == grpc.StatusCode.UNAVAILABLE


def settings(**tls: str) -> dict[str, str]:
    return {
        "LIFECYCLE_DATABASE_URL": "postgresql://admin@db/lifecycle",
        "LIFECYCLE_PAGE_TOKEN_SECRET": "key",
        **tls,
    }


def test_tls_settings_are_checked_at_start(certificates: LocalCertificates) -> None:
    users = certificates.environment("users")
    config = load_service_config("users", settings(**users))
    assert config.tls == files_of(certificates, "users")
    assert load_service_config("users", settings()).tls is None
    cases = {
        "LIFECYCLE_TLS_KEY_FILE": {**users, "LIFECYCLE_TLS_KEY_FILE": ""},
        "LIFECYCLE_TLS_CERT_FILE='/nowhere/users.pem'": {
            **users,
            "LIFECYCLE_TLS_CERT_FILE": "/nowhere/users.pem",
        },
        "LIFECYCLE_TLS_CLIENT_AUTH=require needs LIFECYCLE_TLS_CA_FILE": {
            **users,
            "LIFECYCLE_TLS_CA_FILE": "",
        },
        "LIFECYCLE_TLS_CLIENT_AUTH='sometimes'": {
            **users,
            "LIFECYCLE_TLS_CLIENT_AUTH": "sometimes",
        },
        "a certificate of its own": {"LIFECYCLE_TLS_CA_FILE": str(certificates.ca_file)},
        "LIFECYCLE_REQUIRE_MUTUAL_TLS=true": {"LIFECYCLE_REQUIRE_MUTUAL_TLS": "true"},
    }
    for named, env in cases.items():
        with pytest.raises(ConfigError, match=named.replace("(", r"\(")):
            load_service_config("users", settings(**env))
    without_client_auth = {**users, "LIFECYCLE_TLS_CLIENT_AUTH": "none"}
    with pytest.raises(ConfigError, match="LIFECYCLE_REQUIRE_MUTUAL_TLS=true"):
        load_service_config(
            "users", settings(**without_client_auth, LIFECYCLE_REQUIRE_MUTUAL_TLS="true")
        )
    required = load_service_config("users", settings(**users, LIFECYCLE_REQUIRE_MUTUAL_TLS="true"))
    assert required.tls is not None and required.tls.client_auth


def test_a_key_that_is_not_the_certificates_stops_the_service_naming_it(
    certificates: LocalCertificates,
) -> None:
    mismatched = files_of(certificates, "users")
    mismatched = TlsConfig(
        mismatched.cert_file, certificates.key_file("metrics"), mismatched.ca_file, True
    )
    with pytest.raises(ConfigError, match=r"LIFECYCLE_TLS_KEY_FILE=.*metrics-key\.pem"):
        read_material(mismatched)
    certificates.cert_file("users").write_text("not a certificate")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("LIFECYCLE_")},
        **settings(**certificates.environment("users")),
    }
    result = serve_and_fail("users", env)
    assert result.returncode == 2
    assert "LIFECYCLE_TLS_CERT_FILE=" in result.stderr and "no PEM certificate" in result.stderr


def test_the_local_ca_is_kept_and_renews_what_it_must(tmp_path: Path) -> None:
    first = local_certificates(tmp_path)
    assert (first.key_file("ca").stat().st_mode & 0o777) == 0o600
    assert (first.key_file("users").stat().st_mode & 0o777) == 0o600
    serials = {name: serial_of(first.cert_file(name)) for name in ("ca", "users", CLIENT)}
    again = local_certificates(tmp_path)
    assert {name: serial_of(again.cert_file(name)) for name in serials} == serials
    # A certificate of another CA is made afresh; the kept CA stays.
    first.cert_file("users").write_bytes(
        Authority.create().issue("users", subject_alternative_name("users"))[0]
    )
    local_certificates(tmp_path)
    assert serial_of(first.cert_file("users")) != serials["users"]
    assert serial_of(first.ca_file) == serials["ca"]
    read_material(files_of(first, "users"))
