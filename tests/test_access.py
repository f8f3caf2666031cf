"""Every RPC declares who may call it (lifecycle.common.v1.Access), with one of
the documented permissions or the services that call it, in agreement with
what the services declare they call (suite.registry, docs/architecture.md)."""

from __future__ import annotations

from google.protobuf import descriptor_pool

from lifecycle.common.v1 import access_pb2
from runtime.auth import access_of, grants
from runtime.clients import GRPC_SERVICES, OPERATIONS_SERVICE
from suite.permissions import DOCUMENT, PERMISSIONS, with_table
from suite.registry import DEFINITIONS


def declared() -> dict[str, dict[str, access_pb2.Access]]:
    """Each service's RPCs and their access, by service name, and those every
    service serves (runtime.operations) as "operations"."""
    pool = descriptor_pool.Default()
    return {
        **{name: access_of(pool.FindServiceByName(GRPC_SERVICES[name])) for name in DEFINITIONS},
        "operations": access_of(pool.FindServiceByName(OPERATIONS_SERVICE)),
    }


def test_every_rpc_declares_a_permission_or_its_services() -> None:
    missing = []
    for service, methods in declared().items():
        for path, access in methods.items():
            permission, services = access.permission, list(access.services)
            if bool(permission) == bool(services):
                missing.append(path)
            assert not permission or permission in PERMISSIONS, path
            assert permission.split(":")[0] in (service, "events", ""), path
    assert not missing, f"declare lifecycle.common.v1.access on: {missing}"


def test_the_services_an_rpc_admits_are_those_that_call_it() -> None:
    """A service named on an RPC declares it calls that RPC's service; a service
    whose outbox sends to an RPC for the services is named on it."""
    rpcs = declared()
    for service, methods in rpcs.items():
        for path, access in methods.items():
            for caller in access.services:
                assert service in DEFINITIONS[caller].callees, (path, caller)
    for definition in DEFINITIONS.values():
        for destination in definition.destinations.values():
            access = rpcs[destination.service][destination.method]
            if access.services:
                assert definition.name in access.services, (destination.method, definition.name)


def test_wildcards_grant_a_service_or_everything() -> None:
    assert grants(frozenset({"users:read"}), "users:read")
    assert grants(frozenset({"users:*"}), "users:erase")
    assert grants(frozenset({"*"}), "metrics:admin")
    assert not grants(frozenset({"users:*"}), "metrics:read")
    assert not grants(frozenset({"users:read"}), "users:write")
    assert not grants(frozenset(), "users:read")


def test_the_permission_table_of_docs_security_is_up_to_date() -> None:
    document = DOCUMENT.read_text()
    assert with_table(document) == document, "run `python -m suite.permissions`"
