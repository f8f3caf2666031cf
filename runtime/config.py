"""Typed configuration read from environment variables.

Every variable has a default that works on a developer machine. A bad value
stops the process at start with a message that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TypeVar
from urllib.parse import quote, urlsplit, urlunsplit

from runtime.auth import AuthConfig

SERVICE_NAMES = ("users", "workflows", "segments", "triggers", "metrics")
DEFAULT_PORTS = {
    "users": 50051,
    "workflows": 50052,
    "segments": 50053,
    "triggers": 50054,
    "metrics": 50055,
}
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
PAGE_TOKEN_SECRET = "LIFECYCLE_PAGE_TOKEN_SECRET"  # noqa: S105 (the variable's name)

T = TypeVar("T")


class ConfigError(Exception):
    """One or more environment variables have bad values."""


class SettingsReader:
    """Reads environment variables into typed values and collects every problem,
    so that one start names all the bad values; `check` then fails once."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.env = os.environ if env is None else env
        self.problems: list[str] = []

    def get(self, name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
        raw = self.env.get(name)
        if raw is None or raw == "":
            return default
        try:
            return parse(raw)
        except ValueError:
            self.problems.append(f"{name}={raw!r} is not {expected}")
            return default

    def text(self, name: str, default: str) -> str:
        return self.env.get(name) or default

    def seconds(self, name: str, default: float, *, zero_allowed: bool = False) -> float:
        parse = _non_negative_float if zero_allowed else _positive_float
        kind = "a number of seconds" if zero_allowed else "a positive number of seconds"
        return self.get(name, default, parse, kind)

    def duration(self, name: str, default: timedelta, *, zero_allowed: bool = False) -> timedelta:
        return timedelta(
            seconds=self.seconds(name, default.total_seconds(), zero_allowed=zero_allowed)
        )

    def count(self, name: str, default: int, *, zero_allowed: bool = False) -> int:
        parse = _non_negative_int if zero_allowed else _positive_int
        kind = "a whole number >= 0" if zero_allowed else "a positive whole number"
        return self.get(name, default, parse, kind)

    def required(self, name: str, meaning: str) -> str:
        value = self.env.get(name, "")
        if not value:
            self.problems.append(f"{name} is not set: {meaning}")
        return value

    def problem(self, text: str) -> None:
        """A problem found by a check across values (a maximum, a pair that must match)."""
        self.problems.append(text)

    def check(self) -> None:
        if self.problems:
            raise ConfigError("invalid configuration: " + "; ".join(self.problems))


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


def _positive_float(raw: str) -> float:
    value = float(raw)
    if not 0 < value < float("inf"):
        raise ValueError(raw)
    return value


def _positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise ValueError(raw)
    return value


def _non_negative_float(raw: str) -> float:
    value = float(raw)
    if not 0 <= value < float("inf"):
        raise ValueError(raw)
    return value


def _non_negative_int(raw: str) -> int:
    value = int(raw)
    if value < 0:
        raise ValueError(raw)
    return value


def _log_level(raw: str) -> str:
    if raw.upper() not in LOG_LEVELS:
        raise ValueError(raw)
    return raw.upper()


def _database_url(raw: str) -> str:
    if urlsplit(raw).scheme not in ("postgres", "postgresql"):
        raise ValueError(raw)
    return raw


def service_env_name(service: str, suffix: str) -> str:
    return f"LIFECYCLE_{service.upper()}_{suffix}"


def database_name(url: str) -> str:
    return urlsplit(url).path.lstrip("/") or "postgres"


def service_role(admin_url: str, service: str) -> str:
    """The role a service connects as by default: `<database>_<service>`.

    Deriving it from the database name keeps the roles of two databases on one
    server (say, a test run beside a dev suite) apart.
    """
    return f"{database_name(admin_url)}_{service}"[:63]


def with_user(url: str, user: str) -> str:
    """The same URL with another user and no password."""
    parts = urlsplit(url)
    host = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{host}"))


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@dataclass(frozen=True)
class TelemetryConfig:
    service_name: str
    otlp_endpoint: str | None
    # OTEL_TRACES_SAMPLER, which the SDK reads itself when it is set.
    sampler: str | None = None


@dataclass(frozen=True)
class ConnectionLimits:
    """What one service process holds open for its callers, at most."""

    # A connection that has not finished the HTTP/2 handshake by then is closed.
    handshake_timeout: float
    # A connection with no call for this long is closed (its client reconnects on its next call).
    max_idle: float
    # Calls at once on one connection; a client queues the others.
    streams_per_connection: int
    # Calls at once in the process; past it, RESOURCE_EXHAUSTED.
    concurrent_calls: int


@dataclass(frozen=True)
class TlsConfig:
    """Where a process finds its certificate, key and the CA bundle it trusts
    (runtime.tls reads them, and again when they change)."""

    # PEM certificate chain and its private key: the server certificate, also
    # presented as the client certificate on calls to other services.
    cert_file: Path | None
    key_file: Path | None
    # PEM CA bundle that verifies servers and, under mutual TLS, clients;
    # None trusts the system's roots.
    ca_file: Path | None
    # Mutual TLS: a server refuses clients without a certificate its CA bundle verifies.
    client_auth: bool


@dataclass(frozen=True)
class ServiceConfig:
    """Everything one service process needs to run."""

    service: str
    host: str
    port: int
    database_url: str
    pool_max_size: int
    log_level: str
    shutdown_grace: float
    drain_delay: float
    max_connection_age: float
    call_timeout: float
    telemetry: TelemetryConfig
    peers: Mapping[str, str]
    page_token_secret: str
    outbox_poll_interval: float
    outbox_max_refusals: int
    outbox_max_backoff: float
    db_connect_timeout: float
    limits: ConnectionLimits
    auth: AuthConfig
    # None: plaintext.
    tls: TlsConfig | None = None
    # A plaintext port serving only grpc.health.v1, for probes that cannot do TLS.
    health_port: int | None = None


def admin_database_url(env: Mapping[str, str] | None = None) -> str | None:
    """The suite's database URL, or None when an embedded PostgreSQL should be used."""
    env = os.environ if env is None else env
    reader = SettingsReader(env)
    url = reader.get("LIFECYCLE_DATABASE_URL", "", _database_url, "a postgresql:// URL")
    reader.check()
    return url or None


def peer_addresses(env: Mapping[str, str]) -> dict[str, str]:
    """Where each service listens, as seen by the others."""
    host = env.get("LIFECYCLE_PEER_HOST", "127.0.0.1")
    return {
        name: env.get(service_env_name(name, "ADDRESS")) or f"{host}:{DEFAULT_PORTS[name]}"
        for name in SERVICE_NAMES
    }


def _connection_limits(reader: SettingsReader) -> ConnectionLimits:
    return ConnectionLimits(
        handshake_timeout=reader.seconds("LIFECYCLE_HANDSHAKE_TIMEOUT_SECONDS", 10.0),
        max_idle=reader.seconds("LIFECYCLE_MAX_CONNECTION_IDLE_SECONDS", 60.0),
        streams_per_connection=reader.count("LIFECYCLE_MAX_STREAMS_PER_CONNECTION", 100),
        concurrent_calls=reader.count("LIFECYCLE_MAX_CONCURRENT_CALLS", 1000),
    )


def _auth_config(reader: SettingsReader, service: str) -> AuthConfig:
    """Authentication is on when a JWKS is named; then the issuer and audience
    every token must carry are required too."""
    env = reader.env
    jwks_file = reader.get("LIFECYCLE_AUTH_JWKS_FILE", None, _readable_file, "a readable file")
    jwks_url = env.get("LIFECYCLE_AUTH_JWKS_URL") or None
    config = AuthConfig(
        jwks_file=jwks_file,
        jwks_url=jwks_url,
        issuer=env.get("LIFECYCLE_AUTH_ISSUER", ""),
        audience=env.get("LIFECYCLE_AUTH_AUDIENCE", ""),
        leeway_seconds=reader.seconds("LIFECYCLE_AUTH_LEEWAY_SECONDS", 30.0),
        service_key_file=reader.get(
            service_env_name(service, "AUTH_KEY_FILE"), None, _readable_file, "a readable file"
        ),
    )
    if config.enabled:
        for name in ("LIFECYCLE_AUTH_ISSUER", "LIFECYCLE_AUTH_AUDIENCE"):
            if not env.get(name):
                reader.problems.append(f"{name} is not set: tokens are checked against it")
    elif reader.get(REQUIRE_AUTH, False, _boolean, "true or false"):
        reader.problems.append(
            f"{REQUIRE_AUTH}=true: callers must be authenticated; set"
            " LIFECYCLE_AUTH_JWKS_FILE or LIFECYCLE_AUTH_JWKS_URL"
        )
    return config


TLS_VARIABLES = {
    "cert_file": "LIFECYCLE_TLS_CERT_FILE",
    "key_file": "LIFECYCLE_TLS_KEY_FILE",
    "ca_file": "LIFECYCLE_TLS_CA_FILE",
}
REQUIRE_MUTUAL_TLS = "LIFECYCLE_REQUIRE_MUTUAL_TLS"
REQUIRE_AUTH = "LIFECYCLE_REQUIRE_AUTH"


def _client_auth(raw: str) -> bool:
    if raw.lower() not in ("none", "require"):
        raise ValueError(raw)
    return raw.lower() == "require"


def _boolean(raw: str) -> bool:
    if raw.lower() not in ("true", "false"):
        raise ValueError(raw)
    return raw.lower() == "true"


def _tls_config(reader: SettingsReader) -> TlsConfig | None:
    """TLS is on when any of its files is named; each must be readable now
    (runtime.tls checks what they hold when it reads them)."""
    files = {
        field: reader.get(name, None, _readable_file, "a readable file")
        for field, name in TLS_VARIABLES.items()
    }
    client_auth = reader.get("LIFECYCLE_TLS_CLIENT_AUTH", False, _client_auth, "none or require")
    if not any(files.values()):
        if client_auth:
            reader.problems.append(
                "LIFECYCLE_TLS_CLIENT_AUTH=require needs TLS: set LIFECYCLE_TLS_CERT_FILE,"
                " LIFECYCLE_TLS_KEY_FILE and LIFECYCLE_TLS_CA_FILE"
            )
        return None
    config = TlsConfig(**files, client_auth=client_auth)
    if (config.cert_file is None) != (config.key_file is None):
        reader.problems.append(
            "set both LIFECYCLE_TLS_CERT_FILE and LIFECYCLE_TLS_KEY_FILE, or neither"
        )
    if client_auth and config.ca_file is None:
        reader.problems.append(
            "LIFECYCLE_TLS_CLIENT_AUTH=require needs LIFECYCLE_TLS_CA_FILE,"
            " the CA bundle that verifies the clients"
        )
    return config


def _served_tls(reader: SettingsReader) -> TlsConfig | None:
    """A service serves TLS with a certificate of its own; with
    LIFECYCLE_REQUIRE_MUTUAL_TLS=true it refuses to start with less than mutual TLS."""
    tls = _tls_config(reader)
    if tls is not None and tls.cert_file is None and tls.key_file is None:
        reader.problems.append(
            "a service serves TLS with a certificate of its own:"
            " set LIFECYCLE_TLS_CERT_FILE and LIFECYCLE_TLS_KEY_FILE"
        )
    required = reader.get(REQUIRE_MUTUAL_TLS, False, _boolean, "true or false")
    if required and (tls is None or not tls.client_auth):
        reader.problems.append(
            f"{REQUIRE_MUTUAL_TLS}=true: the service serves mutual TLS only; set"
            " LIFECYCLE_TLS_CERT_FILE, LIFECYCLE_TLS_KEY_FILE, LIFECYCLE_TLS_CA_FILE"
            " and LIFECYCLE_TLS_CLIENT_AUTH=require"
        )
    return tls


def load_tls_config(env: Mapping[str, str] | None = None) -> TlsConfig | None:
    """How a client of the suite dials it: the TLS settings of `env` (the
    process environment by default), None for plaintext."""
    reader = SettingsReader(os.environ if env is None else env)
    tls = _tls_config(reader)
    reader.check()
    return tls


def _readable_file(text: str) -> Path | None:
    path = Path(text)
    try:
        with path.open("rb"):
            return path
    except OSError as error:
        raise ValueError(str(error)) from error


def load_service_config(service: str, env: Mapping[str, str] | None = None) -> ServiceConfig:
    """Reads the configuration of `service` from `env` (the process environment by default)."""
    if service not in SERVICE_NAMES:
        raise ConfigError(
            f"unknown service {service!r}; expected one of {', '.join(SERVICE_NAMES)}"
        )
    env = os.environ if env is None else env
    reader = SettingsReader(env)
    admin_url = reader.get("LIFECYCLE_DATABASE_URL", "", _database_url, "a postgresql:// URL")
    own_url = reader.get(
        service_env_name(service, "DATABASE_URL"), "", _database_url, "a postgresql:// URL"
    )
    if not own_url and not admin_url:
        reader.problems.append(
            f"set {service_env_name(service, 'DATABASE_URL')} or LIFECYCLE_DATABASE_URL "
            "(or start the whole suite with `lifecycle up`, which provides one)"
        )
    config = ServiceConfig(
        service=service,
        host=env.get("LIFECYCLE_HOST", "127.0.0.1"),
        port=reader.get(
            service_env_name(service, "PORT"), DEFAULT_PORTS[service], _port, "a port number"
        ),
        database_url=own_url or with_user(admin_url, service_role(admin_url, service)),
        pool_max_size=reader.count("LIFECYCLE_DB_POOL_SIZE", 10),
        log_level=reader.get("LIFECYCLE_LOG_LEVEL", "INFO", _log_level, f"one of {LOG_LEVELS}"),
        shutdown_grace=reader.seconds("LIFECYCLE_SHUTDOWN_GRACE_SECONDS", 10.0),
        drain_delay=reader.get("LIFECYCLE_DRAIN_DELAY_SECONDS", 0.0, float, "a number of seconds"),
        max_connection_age=reader.seconds("LIFECYCLE_MAX_CONNECTION_AGE_SECONDS", 300.0),
        call_timeout=reader.seconds("LIFECYCLE_CALL_TIMEOUT_SECONDS", 5.0),
        telemetry=TelemetryConfig(
            service_name=env.get("OTEL_SERVICE_NAME") or f"lifecycle-{service}",
            otlp_endpoint=env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or None,
            sampler=env.get("OTEL_TRACES_SAMPLER") or None,
        ),
        peers=peer_addresses(env),
        page_token_secret=reader.required(
            PAGE_TOKEN_SECRET,
            "the key of the page tokens, the same for every replica of the service"
            " (`lifecycle up` keeps one in its data folder)",
        ),
        outbox_poll_interval=reader.seconds("LIFECYCLE_OUTBOX_POLL_SECONDS", 1.0),
        outbox_max_refusals=reader.count("LIFECYCLE_OUTBOX_MAX_REFUSALS", 10),
        outbox_max_backoff=reader.seconds("LIFECYCLE_OUTBOX_MAX_BACKOFF_SECONDS", 60.0),
        db_connect_timeout=reader.seconds("LIFECYCLE_DB_CONNECT_TIMEOUT_SECONDS", 3.0),
        limits=_connection_limits(reader),
        auth=_auth_config(reader, service),
        tls=_served_tls(reader),
        health_port=reader.get("LIFECYCLE_HEALTH_PORT", None, _port, "a port number"),
    )
    reader.check()
    return config
