"""The five services and the database roles they run as."""

from __future__ import annotations

import os
from collections.abc import Mapping
from urllib.parse import unquote, urlsplit

from runtime.config import SERVICE_NAMES, service_role
from runtime.migrations import SchemaOwner
from runtime.server import ServiceDefinition
from services.metrics.service import DEFINITION as METRICS
from services.segments.service import DEFINITION as SEGMENTS
from services.triggers.service import DEFINITION as TRIGGERS
from services.users.service import DEFINITION as USERS
from services.workflows.service import DEFINITION as WORKFLOWS

DEFINITIONS: dict[str, ServiceDefinition] = {
    definition.name: definition for definition in (USERS, WORKFLOWS, SEGMENTS, TRIGGERS, METRICS)
}
assert tuple(DEFINITIONS) == SERVICE_NAMES

# The peers each service calls directly (ServiceDefinition.calls), which
# tests/deploy/test_k8s.py checks against the channels the services' code opens.
# With the outbox destinations they are `calls` below: what
# deploy/k8s/generate.py allows in the NetworkPolicies, and what the test checks
# against docs/architecture.md.
DIRECT_CALLS: dict[str, frozenset[str]] = {
    name: definition.calls for name, definition in DEFINITIONS.items()
}


def calls(service: str) -> tuple[str, ...]:
    """The services `service` calls, directly or through its outbox, in the suite's order."""
    return tuple(name for name in SERVICE_NAMES if name in DEFINITIONS[service].callees)


def schema_owners(admin_url: str, env: Mapping[str, str] | None = None) -> list[SchemaOwner]:
    """Each service's schema, owned by the role in its own database URL when one
    is set (with that URL's password), else by `<database>_<service>`."""
    env = os.environ if env is None else env
    owners = []
    for name, definition in DEFINITIONS.items():
        own_url = env.get(f"LIFECYCLE_{name.upper()}_DATABASE_URL")
        parts = urlsplit(own_url) if own_url else None
        role = (
            unquote(parts.username) if parts and parts.username else service_role(admin_url, name)
        )
        password = unquote(parts.password) if parts and parts.password else None
        owners.append(
            SchemaOwner(
                schema=name,
                role=role,
                password=password,
                migrations=definition.migrations,
                partitioned_tables=definition.partitioned_tables,
            )
        )
    return owners
