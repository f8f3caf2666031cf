"""How the runtime runs the metrics service. Its contract (protos/lifecycle/metrics/v1)
and tables are in place; its RPCs answer UNIMPLEMENTED until issue #4 builds them."""

from __future__ import annotations

from pathlib import Path

from runtime.partitions import PartitionedTable
from runtime.server import ServiceDefinition, contract_only

DEFINITION = ServiceDefinition(
    name="metrics",
    migrations=Path(__file__).parent / "migrations",
    build=contract_only,
    partitioned_tables=(
        PartitionedTable("lifecycle_events", "month", ahead=3),
        PartitionedTable("metrics_daily", "year", ahead=3, timestamped=False),
    ),
)
