"""What the browser tests share: Debian's Chromium driven by Playwright, a
console served by uvicorn as `lifecycle serve console` serves it, and the
check that a page logs no error."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator

import uvicorn
from playwright.async_api import Browser, Page, async_playwright

from console.app import create_app
from console.calls import Services
from console.config import ConsoleConfig

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@contextlib.asynccontextmanager
async def served(config: ConsoleConfig, services: Services) -> AsyncIterator[str]:
    """The console on its loopback port; its base URL."""
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, services), host=config.host, port=config.port, log_level="warning"
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    try:
        yield f"http://{config.host}:{config.port}"
    finally:
        server.should_exit = True
        await serving


@contextlib.contextmanager
def no_errors(page: Page) -> Iterator[None]:
    """Fails if the page logs an error (a CSP violation, a failed load, a
    script's exception) or a payload ran."""
    errors: list[str] = []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    yield
    assert errors == []
