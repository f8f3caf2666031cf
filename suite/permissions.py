"""The permission table of docs/security.md, made from what each RPC declares
in its .proto (lifecycle.common.v1.Access): `python -m suite.permissions`
writes it into the document, and tests/test_access.py fails when it is stale."""

from __future__ import annotations

import importlib
from pathlib import Path

from google.protobuf import descriptor_pool

from runtime.auth import access_of
from runtime.clients import GRPC_SERVICES, OPERATIONS_SERVICE

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "security.md"
BEGIN = "<!-- permissions: made by `python -m suite.permissions` -->"
END = "<!-- end of permissions -->"
PERMISSIONS = (
    "users:read",
    "users:write",
    "users:erase",
    "workflows:read",
    "workflows:write",
    "workflows:jobs",
    "segments:read",
    "segments:write",
    "triggers:read",
    "triggers:write",
    "events:track",
    "metrics:read",
    "metrics:admin",
    "operations:read",
    "operations:write",
)


# Who serves each gRPC service: a service of the suite, or every one of them.
SERVED_BY = {
    **{full_name: service for service, full_name in GRPC_SERVICES.items()},
    OPERATIONS_SERVICE: "every service",
}


def table() -> str:
    """A row per RPC: who serves it, its name, and who may call it."""
    rows = ["| Service | RPC | Who may call it |", "|---|---|---|"]
    for full_name, served_by in SERVED_BY.items():
        package = full_name.split(".")[1]
        importlib.import_module(f"lifecycle.{package}.v1.{package}_pb2")
        descriptor = descriptor_pool.Default().FindServiceByName(full_name)
        for path, access in access_of(descriptor).items():
            who = (
                f"the services {', '.join(access.services)} only"
                if access.services
                else f"`{access.permission}`"
            )
            rows.append(f"| {served_by} | `{path.rsplit('/', 1)[1]}` | {who} |")
    return "\n".join(rows)


def with_table(document: str) -> str:
    """The document with the table between its markers made afresh."""
    head, _, rest = document.partition(BEGIN)
    _, _, tail = rest.partition(END)
    return f"{head}{BEGIN}\n{table()}\n{END}{tail}"


def main() -> None:
    DOCUMENT.write_text(with_table(DOCUMENT.read_text()))


if __name__ == "__main__":
    main()
