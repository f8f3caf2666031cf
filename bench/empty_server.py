"""The limits the gRPC benchmarks are measured against: a grpc.aio server whose
one method does nothing (or, with a database URL, one `SELECT 1`), in a
process of its own like the services.

    python -m bench.empty_server PORT [DATABASE_URL]
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2_grpc

METHOD = "/bench.Empty/Call"


async def serve(port: int, database_url: str | None) -> None:
    pool = (
        await asyncpg.create_pool(database_url, min_size=10, max_size=10) if database_url else None
    )

    async def call(request: bytes, context: object) -> bytes:
        if pool is not None:
            await pool.fetchval("SELECT 1")
        return b""

    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(
        "bench.Empty", {"Call": grpc.unary_unary_rpc_method_handler(call)}
    )
    server.add_generic_rpc_handlers((handler,))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)  # type: ignore[attr-defined]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
