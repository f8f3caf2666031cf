"""The console's settings, from environment variables like the services'."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from runtime.config import (
    DEFAULT_PORTS,
    SERVICE_NAMES,
    SettingsReader,
    TlsConfig,
    load_tls_config,
    service_env_name,
)

# The console's name among the processes `lifecycle up` runs.
CONSOLE = "console"
CONSOLE_PORT = "LIFECYCLE_CONSOLE_PORT"
CONSOLE_HOST = "LIFECYCLE_CONSOLE_HOST"
DEFAULT_PORT = 8080
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ConsoleConfig:
    host: str
    port: int
    # Where each service listens.
    addresses: dict[str, str]
    # How the console dials them: the client settings of LIFECYCLE_TLS_*.
    tls: TlsConfig | None
    # The services check bearer tokens: an authenticating proxy in front of the
    # console passes the person's, which every call carries on.
    authenticated: bool
    call_timeout: float


def _port(raw: str) -> int:
    value = int(raw)
    if not 0 <= value <= 65535:
        raise ValueError(raw)
    return value


def _host(env: Mapping[str, str], authenticated: bool) -> str:
    """Without authentication anyone who reaches the console acts as the console:
    it is then open on this machine only, whatever LIFECYCLE_HOST says, unless
    LIFECYCLE_CONSOLE_HOST says otherwise on purpose (a container whose port is
    published on the host's loopback only)."""
    if env.get(CONSOLE_HOST):
        return env[CONSOLE_HOST]
    return env.get("LIFECYCLE_HOST", LOOPBACK) if authenticated else LOOPBACK


def _addresses(env: Mapping[str, str]) -> dict[str, str]:
    """LIFECYCLE_<SERVICE>_ADDRESS, else the service's port (LIFECYCLE_<SERVICE>_PORT,
    as `lifecycle up` runs it) on LIFECYCLE_PEER_HOST."""
    host = env.get("LIFECYCLE_PEER_HOST", LOOPBACK)
    return {
        name: env.get(service_env_name(name, "ADDRESS"))
        or f"{host}:{env.get(service_env_name(name, 'PORT')) or DEFAULT_PORTS[name]}"
        for name in SERVICE_NAMES
    }


def load_console_config(env: Mapping[str, str] | None = None) -> ConsoleConfig:
    env = os.environ if env is None else env
    reader = SettingsReader(env)
    authenticated = bool(env.get("LIFECYCLE_AUTH_JWKS_FILE") or env.get("LIFECYCLE_AUTH_JWKS_URL"))
    config = ConsoleConfig(
        host=_host(env, authenticated),
        port=reader.get(CONSOLE_PORT, DEFAULT_PORT, _port, "a port number"),
        addresses=_addresses(env),
        tls=load_tls_config(env),
        authenticated=authenticated,
        call_timeout=reader.seconds("LIFECYCLE_CALL_TIMEOUT_SECONDS", 5.0),
    )
    reader.check()
    return config
