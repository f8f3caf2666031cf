"""How the runtime runs the workflows service. Its contract (protos/lifecycle/workflows/v1)
and tables are in place; its RPCs answer UNIMPLEMENTED until issue #3 builds them."""

from __future__ import annotations

from pathlib import Path

from runtime.server import ServiceDefinition, contract_only

DEFINITION = ServiceDefinition(
    name="workflows",
    migrations=Path(__file__).parent / "migrations",
    build=contract_only,
)
