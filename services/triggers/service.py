"""How the runtime runs the triggers service. Its contract (protos/lifecycle/triggers/v1)
and tables are in place; its RPCs answer UNIMPLEMENTED until issue #6 builds them."""

from __future__ import annotations

from pathlib import Path

from runtime.partitions import PartitionedTable
from runtime.server import ServiceDefinition, contract_only

DEFINITION = ServiceDefinition(
    name="triggers",
    migrations=Path(__file__).parent / "migrations",
    build=contract_only,
    partitioned_tables=(PartitionedTable("trigger_executions", "month", ahead=3),),
)
