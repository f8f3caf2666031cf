"""How the runtime runs the segments service. Its contract (protos/lifecycle/segments/v1)
and tables are in place; its RPCs answer UNIMPLEMENTED until issue #5 builds them."""

from __future__ import annotations

from pathlib import Path

from runtime.server import ServiceDefinition, contract_only

DEFINITION = ServiceDefinition(
    name="segments",
    migrations=Path(__file__).parent / "migrations",
    build=contract_only,
)
