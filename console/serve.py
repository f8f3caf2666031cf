"""Running the console: `lifecycle serve console` (uvicorn, one process), and
how `lifecycle up` knows it is ready."""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from console.app import create_app
from console.config import ConsoleConfig, load_console_config


def url_of(config: ConsoleConfig) -> str:
    return f"http://{config.host}:{config.port}"


def serve(config: ConsoleConfig | None = None) -> None:
    """Serves until SIGINT or SIGTERM (uvicorn's graceful stop)."""
    config = config or load_console_config()
    uvicorn.run(
        create_app(config),
        host=config.host,
        port=config.port,
        log_level="info",
        # The proxy in front sets the scheme and client address; only trust it on loopback.
        proxy_headers=True,
        server_header=False,
    )


async def answering(config: ConsoleConfig) -> bool:
    """Whether the console's /healthz answers now (a plain HTTP/1.1 GET)."""
    try:
        reader, writer = await asyncio.open_connection(config.host, config.port)
    except OSError:
        return False
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: console\r\nConnection: close\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
    except OSError:
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    return status.split(b" ")[1:2] == [b"200"]


async def until_answering(config: ConsoleConfig, process: asyncio.subprocess.Process) -> bool:
    """Waits until the console answers (True) or its process exits (False)."""
    while process.returncode is None:
        if await answering(config):
            return True
        await asyncio.sleep(0.2)
    return False
