"""The overview's "Waiting in outboxes": what each of the five services says
waits in its outbox and dead letters (OperationsService.GetOutbox), its
errors shown as text, and a service that does not answer shown as
unreachable while the rest of the page is served."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest

from console.app import create_app
from console.calls import Services
from console.config import load_console_config
from tests.console.conftest import IMAGE, SCRIPT, Console
from tests.console.test_pages import inert, page_of
from tests.support import free_port

# A topic no relay sends (left by an older version, say): it stays pending.
LEGACY = "legacy.old_topic"


@pytest.fixture
async def waiting(console_suite: Console) -> AsyncIterator[None]:
    """A dead letter in the segments service's outbox and a message pending in
    the metrics service's, both with payloads for errors; removed afterwards."""
    conn = await asyncpg.connect(console_suite.env["LIFECYCLE_DATABASE_URL"])
    try:
        await conn.execute(
            "INSERT INTO segments.outbox_dead_letters"
            " (id, topic, payload, created_at, attempts, last_error)"
            " VALUES (-7, 'metrics.record_events', '', now(), 10, $1)",
            f"INVALID_ARGUMENT: dead {SCRIPT}",
        )
        await conn.execute(
            "INSERT INTO metrics.outbox (topic, payload, created_at, attempts, last_error)"
            " VALUES ($1, '', now() - interval '3 minutes 12 seconds', 4, $2)",
            LEGACY,
            f"UNAVAILABLE: pending {IMAGE}",
        )
        yield
    finally:
        await conn.execute("DELETE FROM segments.outbox_dead_letters WHERE id = -7")
        await conn.execute("DELETE FROM metrics.outbox WHERE topic = $1", LEGACY)
        await conn.close()


def row_of(html: str, text: str) -> str:
    """The table row holding `text`."""
    at = html.index(text)
    return html[html.rindex("<tr", 0, at) : html.index("</tr>", at)]


async def test_the_overview_shows_what_waits_in_each_outbox_escaped(
    client: httpx.AsyncClient, waiting: None
) -> None:
    html = await page_of(client, "/")
    assert "Waiting in outboxes" in html
    dead = row_of(html, "INVALID_ARGUMENT: dead")
    assert "<td>segments</td><td><code>metrics.record_events</code></td>" in dead
    assert '<td class="number">1</td>' in dead
    assert "dead &lt;script&gt;window.__xss = 1&lt;/script&gt;" in dead
    pending = row_of(html, LEGACY)
    assert "<td>metrics</td>" in pending
    # Pending 1, waiting 3m 12s (or a second more), no dead letter.
    assert '<td class="number">1</td><td class="number">3m 1' in pending
    assert "pending &lt;img src=&#34;x&#34; onerror=" in pending
    assert "unreachable" not in html
    inert(html)


async def test_a_service_that_does_not_answer_is_unreachable_and_the_page_is_served(
    console_suite: Console,
) -> None:
    env = {**console_suite.env, "LIFECYCLE_USERS_ADDRESS": f"127.0.0.1:{free_port()}"}
    config = load_console_config(env)
    calls = Services(config)
    try:
        transport = httpx.ASGITransport(app=create_app(config, calls))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            html = await page_of(client, "/")
    finally:
        await calls.close()
    assert '<td>users</td><td colspan="5" class="problem">unreachable</td>' in html
    # The other four answered, and the rest of the page is there.
    assert html.count('class="unanswered"') == 1
    assert "Stage funnel" in html and "Open incidents" in html
